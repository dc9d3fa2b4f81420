//! A socket's log lines: the `log_level` it connected with (upstream's `user_socket.ex`: info,
//! warning or error, default error) decides which of its lines the hub writes. Lines carry
//! upstream's operational error codes (its `ERROR_CODES.md`).

use serde::{Deserialize, Serialize};

use super::{Effect, Session};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warning,
    #[default]
    Error,
}

impl LogLevel {
    /// The `log_level` connection parameter; anything else is upstream's default, error.
    pub fn parse(param: Option<&str>) -> LogLevel {
        match param {
            Some("info") => LogLevel::Info,
            Some("warning") => LogLevel::Warning,
            _ => LogLevel::Error,
        }
    }

    fn is_default(&self) -> bool {
        *self == LogLevel::Error
    }
}

/// One line for the hub's log, `Code: text` where upstream has a code for the situation.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

pub(super) fn skip_default(level: &LogLevel) -> bool {
    level.is_default()
}

impl Session {
    /// Whether this socket's lines at `level` are written.
    pub fn logs(&self, level: LogLevel) -> bool {
        level >= self.log_level
    }

    /// A line at `level`, as an effect, when this socket's level lets it through.
    pub(super) fn log(&self, level: LogLevel, message: impl FnOnce() -> String) -> Option<Effect> {
        self.logs(level).then(|| {
            Effect::Log(LogLine {
                level,
                message: message(),
            })
        })
    }
}
