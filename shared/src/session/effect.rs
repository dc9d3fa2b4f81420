//! What a session asks the hub to do after a message.

use super::*;

/// What the hub must do after a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send to this socket.
    Send(Outbound),
    /// Send this join's error reply after the join error backoff (upstream's
    /// `CHANNEL_ERROR_BACKOFF_MS`), so that a client cannot retry a refused join quickly.
    RefuseJoin(Outbound),
    /// Deliver to every socket joined to `topic`; to the sender only if `include_sender`.
    Broadcast {
        topic: String,
        broadcast: Broadcast,
        include_sender: bool,
    },
    /// The socket joined `topic`: register it with the channel, then send `reply`, then push the
    /// channel's `presence_state` if `presence_state`.
    ///
    /// With `postgres`, the channel's bindings are registered with the replicator first: the reply
    /// waits until changes committed after it will be delivered (bounded; see the gateway's
    /// `hub/effects.rs`), whether or not the client sent `postgres_changes_options.wait`.
    Join {
        topic: String,
        reply: Outbound,
        presence_state: bool,
        /// `config.broadcast.replication_ready`: after the reply, a `system` message once the
        /// database's replication connection is up, or the channel shut down when it is not in time.
        replication_ready: bool,
        postgres: Option<PostgresJoin>,
        /// A private channel: before anything else the hub asks what the policies let read, and
        /// refuses the join ([`Session::refuse_private`]) or admits it ([`Session::admit_private`]).
        private: Option<PrivateJoin>,
    },
    /// The socket is no longer on `topic` (leave, rejoin, close); `untrack` if it had a presence,
    /// `postgres` if it had Postgres Changes bindings to remove.
    Leave {
        topic: String,
        untrack: bool,
        postgres: bool,
        private: bool,
    },
    /// Track (or update) this socket's presence on `topic`.
    Track {
        topic: String,
        key: String,
        meta: Map<String, Value>,
    },
    /// Remove this socket's presence from `topic`.
    Untrack { topic: String },
    /// The channel's token changed: its Postgres Changes subscriptions now see rows as `claims`.
    PostgresClaims { topic: String, claims: Map<String, Value> },
    /// The token of a private channel changed: the hub asks the policies again, and the channel
    /// keeps its place ([`Session::admit_private`]) or is shut down ([`Session::lose_private`]).
    PrivateClaims { topic: String, claims: Map<String, Value> },
    /// The message needs to know whether this user may write `extension` on the private channel
    /// `topic`, and nobody asked its policies yet: the hub asks, records the answer
    /// ([`Session::record_write`]) and hands the same message in again.
    CheckWrite { topic: String, extension: Extension },
    /// Close the socket (code 1001), after the effects before this one.
    Disconnect,
    /// Write a line to the hub's log (already filtered by the socket's `log_level`).
    Log(LogLine),
}

/// The `postgres_changes` bindings of a join, for the replicator.
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresJoin {
    /// As the client sent them, in order.
    pub bindings: Vec<Map<String, Value>>,
    /// The claims of the token the channel runs on: RLS sees rows as this user.
    pub claims: Map<String, Value>,
}

/// What the policies of a private channel are asked about at join.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivateJoin {
    pub claims: Map<String, Value>,
    /// Whether presence is enabled (its read permission then also admits the join).
    pub presence: bool,
    /// Stored messages to send right after the reply.
    pub replay: Option<Replay>,
}

impl PrivateJoin {
    /// Whether what the policies let read admits the join: broadcast, or presence when enabled.
    pub fn admits(&self, read: &[Extension]) -> bool {
        read.contains(&Extension::Broadcast) || (self.presence && read.contains(&Extension::Presence))
    }
}

impl Effect {
    /// Whether the hub must ask a private channel's policies before carrying this out: the
    /// socket's later messages then wait behind it ([`crate::hold`]), so they keep their order.
    pub fn waits_for_policies(&self) -> bool {
        matches!(
            self,
            Effect::CheckWrite { .. } | Effect::PrivateClaims { .. } | Effect::Join { private: Some(_), .. }
        )
    }

    pub(super) fn leave(member: &Membership) -> Effect {
        Effect::Leave {
            topic: member.topic.clone(),
            untrack: member.tracked,
            postgres: member.postgres,
            private: member.private,
        }
    }
}
