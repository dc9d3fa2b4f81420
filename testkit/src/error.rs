//! What can go wrong, by what the caller can do about it.

use std::path::Path;

/// An error of the test kit. Its text says what to fix (`Debug` prints the same text: a test
/// that returns `Result` shows it as it is).
#[non_exhaustive]
pub enum Error {
    /// A program or tool is missing, or building or installing it failed; or the machine is not
    /// set up for it (a folder that cannot be written, no `postgres` user to run Postgres as).
    Setup(String),
    /// An option cannot be used (a JWT secret too short, limits that do not serialize).
    Options(String),
    /// A part of the stack did not start, or the stack was not ready in time.
    Start {
        /// `postgres`, `replicator`, `gateway`, `watchdog`, or `stack` (the readiness probe).
        component: &'static str,
        problem: String,
        /// The component's last output lines.
        log: String,
    },
    /// A statement run through [`crate::Stack::sql`] (or a connection for it) failed.
    Database(tokio_postgres::Error),
    /// Stopping left something behind (the text says what).
    Stop(String),
}

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Error {
        Error::Setup(format!("{}: {e}", path.display()))
    }
}

/// A Postgres error with its cause: tokio-postgres alone prints only "db error".
pub(crate) fn postgres_text(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Setup(text) | Error::Options(text) | Error::Stop(text) => f.write_str(text),
            Error::Start {
                component,
                problem,
                log,
            } if log.is_empty() => write!(f, "sluice's {component} did not start: {problem}"),
            Error::Start {
                component,
                problem,
                log,
            } => {
                write!(
                    f,
                    "sluice's {component} did not start: {problem}\nits last output:\n{log}"
                )
            }
            Error::Database(e) => f.write_str(&postgres_text(e)),
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        Error::Database(e)
    }
}
