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
}

/// One line for the hub's log, `Code: text` where upstream has a code for the situation.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// Sessions at the default level do not store it.
pub(super) fn is_default(level: &LogLevel) -> bool {
    *level == LogLevel::default()
}

impl Session {
    /// A line at `level`, when this socket's level lets it through.
    pub fn log_line(&self, level: LogLevel, message: impl FnOnce() -> String) -> Option<LogLine> {
        (level >= self.log_level).then(|| LogLine {
            level,
            message: message(),
        })
    }

    /// [`Session::log_line`], as an effect.
    pub(super) fn log(&self, level: LogLevel, message: impl FnOnce() -> String) -> Option<Effect> {
        self.log_line(level, message).map(Effect::Log)
    }
}
