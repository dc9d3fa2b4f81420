//! One channel's state inside the connection: its join, its pushes, its presence.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::{Map, Value};
use sluice_shared::frame::InboundPayload;

use super::OpId;
use crate::presence::Presence;

/// What a channel joins with: the `config` of its `phx_join`, and its Postgres bindings (also
/// in the config) to check the server's reply against.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinParams {
    pub config: Value,
    pub bindings: Vec<Binding>,
}

/// A `postgres_changes` binding as the join sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub event: String,
    pub schema: String,
    pub table: Option<String>,
    pub filter: Option<String>,
}

impl Binding {
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("event".into(), self.event.clone().into());
        out.insert("schema".into(), self.schema.clone().into());
        if let Some(table) = &self.table {
            out.insert("table".into(), table.clone().into());
        }
        if let Some(filter) = &self.filter {
            out.insert("filter".into(), filter.clone().into());
        }
        Value::Object(out)
    }

    /// realtime-js `_updatePostgresBindings`: same event, and schema, table and filter equal with
    /// a missing value equal to null.
    pub fn matches_reply(&self, entry: &Value) -> bool {
        let field = |key: &str| entry.get(key).and_then(Value::as_str);
        entry.get("event").and_then(Value::as_str) == Some(self.event.as_str())
            && field("schema") == Some(self.schema.as_str())
            && field("table") == self.table.as_deref()
            && field("filter") == self.filter.as_deref()
    }
}

#[derive(Debug)]
pub enum Phase {
    /// Not joined; joined (again) when the socket is open and `retry_at` (if any) has passed.
    Waiting { retry_at: Option<Instant> },
    /// `phx_join` sent with ref `join_ref`, answered by `deadline`.
    Joining { deadline: Instant },
    /// Joined; with Postgres bindings, `Subscribed to PostgreSQL` is awaited until `postgres_by`.
    Joined { postgres_by: Option<Instant> },
    /// `phx_leave` sent with ref `ref_`.
    Leaving { ref_: String, deadline: Instant, op: OpId },
}

/// A push waiting for the channel to join, or for its reply.
#[derive(Debug)]
pub struct Push {
    pub op: OpId,
    pub event: String,
    pub payload: InboundPayload,
    pub wants_reply: bool,
    pub deadline: Instant,
    /// Set once sent.
    pub ref_: Option<String>,
}

#[derive(Debug)]
pub struct Channel {
    pub topic: String,
    pub params: JoinParams,
    pub phase: Phase,
    /// The ref of the current join; messages of other joins are dropped.
    pub join_ref: Option<String>,
    /// Resolves the first `subscribe()`; failures of later joins are reported as events.
    pub subscribe_op: Option<OpId>,
    /// Failed joins in a row, for the rejoin backoff.
    pub failed_joins: u32,
    /// The server's ids of the bindings, from the join reply.
    pub binding_ids: Vec<u64>,
    /// The last `system` error, reported when the server then closes the channel.
    pub last_error: Option<String>,
    pub unsent: VecDeque<Push>,
    pub awaiting_reply: VecDeque<Push>,
    pub presence: Presence,
}

impl Channel {
    pub fn new(topic: String, params: JoinParams, subscribe_op: OpId) -> Self {
        Channel {
            topic,
            params,
            phase: Phase::Waiting { retry_at: None },
            join_ref: None,
            subscribe_op: Some(subscribe_op),
            failed_joins: 0,
            binding_ids: vec![],
            last_error: None,
            unsent: VecDeque::new(),
            awaiting_reply: VecDeque::new(),
            presence: Presence::default(),
        }
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.phase, Phase::Joined { .. })
    }
}

/// Reasons a rejoin cannot fix by retrying: the token or the tenant is refused.
pub fn is_fatal_join_error(reason: &str) -> bool {
    ["InvalidJWTToken", "MalformedJWT", "JwtSignatureError", "TenantNotFound", "PrivateOnly", "Unauthorized"]
        .iter()
        .any(|code| reason.starts_with(code))
}
