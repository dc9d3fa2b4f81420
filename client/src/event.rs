//! What a channel delivers to its subscribers, and the payload types of each kind.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::presence::Presences;
use crate::Error;

/// One thing that happened on a channel, in the order the server sent it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A broadcast.
    Broadcast {
        /// The sender's event name.
        event: String,
        /// The sender's payload, JSON or bytes.
        payload: Payload,
    },
    /// The presence state after a `presence_state` or `presence_diff` was applied.
    PresenceSync {
        /// Every key's presences.
        state: Presences,
    },
    /// Presences joined under a key.
    PresenceJoin {
        /// The presence key.
        key: String,
        /// The key's presences before.
        current: Vec<Value>,
        /// The new ones.
        joined: Vec<Value>,
    },
    /// Presences left a key.
    PresenceLeave {
        /// The presence key.
        key: String,
        /// The key's presences that remain.
        current: Vec<Value>,
        /// The ones that went.
        left: Vec<Value>,
    },
    /// A row change matching one of the channel's Postgres bindings.
    PostgresChange(PostgresChange),
    /// A `system` message (`Subscribed to PostgreSQL`, a filter error, `Server requested disconnect`).
    System(SystemMessage),
    /// The channel's subscription status changed (realtime-js's `subscribe` callback): every
    /// join and rejoin reports `Subscribed`, a rejoin that failed reports why and is retried.
    Status(SubscribeStatus),
    /// The channel ended; nothing follows.
    Closed(CloseReason),
}

/// A broadcast payload: JSON, or bytes sent as a binary broadcast (protocol 2.0.0).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// A JSON value (sent as a JSON-encoded broadcast).
    Json(Value),
    /// Bytes (sent as a binary broadcast).
    Binary(Vec<u8>),
}

impl Payload {
    /// The JSON payload, if it is one.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(value) => Some(value),
            Payload::Binary(_) => None,
        }
    }

    /// The bytes of a binary payload, if it is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Payload::Binary(bytes) => Some(bytes),
            Payload::Json(_) => None,
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Json(value)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Binary(bytes)
    }
}

/// The row events a Postgres binding listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostgresChangeEvent {
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
    /// `*`: all three.
    All,
}

impl PostgresChangeEvent {
    /// The name on the wire: `INSERT`, `UPDATE`, `DELETE` or `*`.
    pub fn as_str(self) -> &'static str {
        match self {
            PostgresChangeEvent::Insert => "INSERT",
            PostgresChangeEvent::Update => "UPDATE",
            PostgresChangeEvent::Delete => "DELETE",
            PostgresChangeEvent::All => "*",
        }
    }

    pub(crate) fn from_wire(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "INSERT" => Some(PostgresChangeEvent::Insert),
            "UPDATE" => Some(PostgresChangeEvent::Update),
            "DELETE" => Some(PostgresChangeEvent::Delete),
            "*" => Some(PostgresChangeEvent::All),
            _ => None,
        }
    }
}

/// A column of a changed row, as the server describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// Its Postgres type (`int8`, `text`, `jsonb`, …).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A row change (`postgres_changes`), as the server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresChange {
    data: Map<String, Value>,
}

impl PostgresChange {
    pub(crate) fn new(data: Map<String, Value>) -> Self {
        PostgresChange { data }
    }

    /// `Insert`, `Update` or `Delete` (never `All`); `None` for a type this client does not know.
    pub fn event(&self) -> Option<PostgresChangeEvent> {
        self.str("type").and_then(PostgresChangeEvent::from_wire)
    }

    /// The table's schema.
    pub fn schema(&self) -> &str {
        self.str("schema").unwrap_or_default()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        self.str("table").unwrap_or_default()
    }

    /// When the transaction committed (`2026-01-02T03:04:05.678Z`); `None` on error rows.
    pub fn commit_timestamp(&self) -> Option<&str> {
        self.str("commit_timestamp")
    }

    /// The row's columns and their Postgres types.
    pub fn columns(&self) -> Vec<Column> {
        self.data
            .get("columns")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    }

    /// The server's errors for this change (`Error 401: Unauthorized`); empty when none.
    pub fn errors(&self) -> Vec<String> {
        self.data
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| errors.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The new row (INSERT, UPDATE) as JSON; `{}` for DELETE.
    pub fn record_json(&self) -> &Value {
        self.data.get("record").unwrap_or(&EMPTY)
    }

    /// The old row (UPDATE, DELETE; its primary key unless the table's replica identity is full).
    pub fn old_record_json(&self) -> &Value {
        self.data.get("old_record").unwrap_or(&EMPTY)
    }

    /// The new row deserialized into `T`.
    pub fn record<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.record_json().clone()).map_err(|e| Error::BadPayload(format!("record: {e}")))
    }

    /// The old row deserialized into `T`.
    pub fn old_record<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.old_record_json().clone())
            .map_err(|e| Error::BadPayload(format!("old_record: {e}")))
    }

    /// The whole `data` object as sent.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.data
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

static EMPTY: Value = Value::Null;

/// A `system` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemMessage {
    /// `system` or `postgres_changes`.
    pub extension: String,
    /// `true` for status `ok`, `false` for `error`.
    pub ok: bool,
    /// The server's text (`Subscribed to PostgreSQL`, ``Error parsing `filter` params: …``).
    pub message: String,
}

/// A channel's subscription status, as realtime-js names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeStatus {
    /// Joined (and, with Postgres bindings, `Subscribed to PostgreSQL`).
    Subscribed,
    /// A rejoin was refused; retried with backoff unless the reason is fatal (then `Closed` follows).
    ChannelError(String),
    /// A rejoin got no reply in time; retried with backoff.
    TimedOut,
}

/// Why a channel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Channel::unsubscribe`](crate::Channel::unsubscribe) or the client's `disconnect`.
    Unsubscribed,
    /// The server closed it (`phx_close`), with its last `system` error when it sent one
    /// (`Token has expired 3 seconds ago`, `Too many messages per second`).
    ByServer(Option<String>),
    /// A rejoin was refused for a reason retrying cannot fix (a token the server rejects).
    RejoinRefused(String),
}

/// A heartbeat's fate, as realtime-js's `onHeartbeat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatStatus {
    /// A heartbeat went out.
    Sent,
    /// The server answered it.
    Ok,
    /// The server answered with an error.
    Error,
    /// No reply in time: the connection is closed and made again.
    Timeout,
    /// The socket closed.
    Disconnected,
}
