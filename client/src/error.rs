//! The one error type: what went wrong, typed where a caller acts on it.

/// Everything a call of this crate can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The URL given to [`Client::builder`](crate::Client::builder) cannot be used.
    BadUrl(String),
    /// The server refused the join: its reason as sent, e.g.
    /// `Unauthorized: You do not have permissions to read from this Channel topic: room1`.
    JoinRefused(String),
    /// The server accepted the join but could not subscribe to Postgres changes: its `system`
    /// message, e.g. ``Error parsing `filter` params: ["foo"]``.
    PostgresChanges(String),
    /// The server's reply named other Postgres bindings than the join asked for (realtime-js:
    /// "mismatch between server and client bindings for postgres changes").
    BindingMismatch,
    /// A reply did not come within the timeout (joins, acknowledged pushes, REST sends).
    TimedOut,
    /// The server closed the channel; its last `system` error says why, when it sent one
    /// (`Token has expired 12 seconds ago`).
    ClosedByServer(Option<String>),
    /// The server answered a push with an error (a presence message it refused, say).
    Refused(String),
    /// The socket or the HTTP request failed underneath.
    Transport(String),
    /// A payload that cannot be sent (a binary payload on protocol 1.0.0, a field over 255 bytes,
    /// a record that does not deserialize into the type asked for).
    BadPayload(String),
    /// The channel's buffer of pushes waiting for a join was full; the oldest went.
    BufferFull,
    /// The client was disconnected, or the channel unsubscribed, before the call completed.
    Disconnected,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadUrl(why) => write!(f, "bad URL: {why}"),
            Error::JoinRefused(reason) => write!(f, "join refused: {reason}"),
            Error::PostgresChanges(message) => write!(f, "postgres_changes not subscribed: {message}"),
            Error::BindingMismatch => write!(f, "mismatch between server and client bindings for postgres changes"),
            Error::TimedOut => write!(f, "timed out"),
            Error::ClosedByServer(Some(reason)) => write!(f, "channel closed by the server: {reason}"),
            Error::ClosedByServer(None) => write!(f, "channel closed by the server"),
            Error::Refused(reason) => write!(f, "refused by the server: {reason}"),
            Error::Transport(why) => write!(f, "transport: {why}"),
            Error::BadPayload(why) => write!(f, "bad payload: {why}"),
            Error::BufferFull => write!(f, "push buffer full: the channel is not joined"),
            Error::Disconnected => write!(f, "disconnected before the call completed"),
        }
    }
}

impl std::error::Error for Error {}
