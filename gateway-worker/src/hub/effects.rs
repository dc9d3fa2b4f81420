//! Carrying out what a socket's session decided ([`Effect`]s), in order: replies, local
//! fan-out, joins and leaves with the topic's Channel, presence, and the channel's Postgres
//! Changes registration with the replicator.

use sluice_shared::frame::{self, Outbound, WireFrame};
use sluice_shared::internal::{ChannelOp, Reauthorize, Subscribe, Unsubscribe};
use sluice_shared::join::sub_topic;
use sluice_shared::roster::access;
use sluice_shared::session::{Effect, PostgresJoin, Session};
use sluice_shared::texts;
use worker::*;

use super::deliveries::db_position_key;
use super::fanout::{fan_out, room_of, Deliverable};
use super::private::claims_key;
use super::SocketHub;
use crate::replicator;

impl SocketHub {
    /// Carries out a session's effects in order. Replies and local deliveries happen at once;
    /// calls to Channels are awaited, joins before their reply, the rest after. Says whether the
    /// socket must be disconnected.
    pub(super) async fn perform(&self, session: &Session, effects: Vec<Effect>) -> Result<bool> {
        let mut later = Vec::new();
        let mut disconnect = false;
        let to_client = |out: &Outbound| self.send_to(&session.id, WireFrame::Text(frame::encode(session.vsn, out)));
        for effect in effects {
            match effect {
                Effect::Send(out) => to_client(&out),
                Effect::Broadcast {
                    topic,
                    broadcast,
                    include_sender,
                } => {
                    let skip = |socket: &str| !include_sender && socket == session.id;
                    let room = (room_of(session, &topic), topic);
                    let sent = fan_out(&self.roster(), &room, Deliverable::Broadcast(&broadcast), skip);
                    self.rates.borrow_mut().events.add(Date::now().as_millis(), sent);
                    if self.peers.borrow().get(&room) != Some(&0) {
                        later.push((room, ChannelOp::Broadcast { broadcast }));
                    }
                }
                Effect::Join {
                    topic,
                    reply,
                    presence_state,
                    postgres,
                    private,
                } => {
                    let ops = if presence_state {
                        vec![ChannelOp::Subscribe, ChannelOp::PresenceState]
                    } else {
                        vec![ChannelOp::Subscribe]
                    };
                    let room = (room_of(session, &topic), topic.clone());
                    let state = self
                        .call_channel(session, &room, ops)
                        .await
                        .and_then(|r| r.presence_state.clone());
                    let join_ref = reply.join_ref.clone();
                    // No subscribe race: the reply (the client's SUBSCRIBED) waits until every
                    // change committed after it will reach this channel, or the bound passed.
                    let registered = match &postgres {
                        Some(pg) => Some(self.subscribe(session, &topic, pg).await),
                        None => None,
                    };
                    to_client(&reply);
                    if presence_state {
                        let state = state.unwrap_or_else(|| serde_json::json!({}));
                        to_client(&frame::push(join_ref.as_deref(), &topic, "presence_state", state));
                    }
                    if let Some(replay) = private.as_ref().and_then(|p| p.replay) {
                        self.replay(session, &topic, replay).await;
                    }
                    if let Some(outcome) = registered {
                        to_client(&postgres_system_message(join_ref.as_deref(), &topic, outcome));
                    }
                }
                Effect::Leave {
                    topic,
                    untrack,
                    postgres,
                    private,
                } => {
                    let room = (access(private), topic.clone());
                    // A rejoin leaves the old incarnation after the new one was admitted: its
                    // claims, under the same key, stay while the topic is still joined privately.
                    if private && !session.membership(&topic).is_some_and(|m| m.private) {
                        self.state.storage().delete(&claims_key(&session.id, &topic)).await?;
                    }
                    if postgres {
                        let request = Unsubscribe {
                            hub: self.name(),
                            socket: session.id.clone(),
                            topic: Some(topic.clone()),
                        };
                        replicator::unsubscribe(&self.env, &request).await;
                    }
                    if untrack {
                        later.push((
                            room.clone(),
                            ChannelOp::Untrack {
                                socket: session.id.clone(),
                            },
                        ));
                    }
                    if !self.roster().has_members(&room) {
                        // Nothing left here to deliver to: its database position can go.
                        self.db_positions.borrow_mut().remove(&room);
                        self.state.storage().delete(&db_position_key(&room)).await?;
                        later.push((room, ChannelOp::Unsubscribe));
                    }
                }
                Effect::Track { topic, key, meta } => later.push((
                    (room_of(session, &topic), topic),
                    ChannelOp::Track {
                        socket: session.id.clone(),
                        key,
                        meta,
                    },
                )),
                Effect::Untrack { topic } => later.push((
                    (room_of(session, &topic), topic),
                    ChannelOp::Untrack {
                        socket: session.id.clone(),
                    },
                )),
                Effect::PostgresClaims { topic, claims } => {
                    let request = Reauthorize {
                        hub: self.name(),
                        socket: session.id.clone(),
                        topic: topic.clone(),
                        claims,
                    };
                    let outcome = replicator::reauthorize(&self.env, &request).await.map(|_| ());
                    let join_ref = session.membership(&topic).and_then(|m| m.join_ref.clone());
                    to_client(&postgres_system_message(join_ref.as_deref(), &topic, outcome));
                }
                // Handled before: see `authorize_private_joins` and `handle_message`.
                Effect::PrivateClaims { .. } | Effect::CheckWrite { .. } => {}
                Effect::Disconnect => disconnect = true,
            }
        }
        for (room, op) in later {
            self.call_channel(session, &room, vec![op]).await;
        }
        Ok(disconnect)
    }

    /// Registers a channel's bindings with the replicator; `Err` is the client's error text.
    async fn subscribe(&self, session: &Session, topic: &str, pg: &PostgresJoin) -> std::result::Result<(), String> {
        let request = Subscribe {
            hub: self.name(),
            socket: session.id.clone(),
            topic: topic.to_string(),
            claims: pg.claims.clone(),
            bindings: pg.bindings.clone(),
        };
        replicator::subscribe(&self.env, &request).await.map(|_| ())
    }
}

/// The `system` message that ends a channel's Postgres Changes registration
/// (docs/protocol.md 3.2).
fn postgres_system_message(join_ref: Option<&str>, topic: &str, outcome: std::result::Result<(), String>) -> Outbound {
    let (status, message) = match outcome {
        Ok(()) => ("ok", texts::SUBSCRIBED_TO_POSTGRES.to_string()),
        Err(text) => ("error", text),
    };
    let sub_topic = sub_topic(topic);
    frame::push(
        join_ref,
        topic,
        "system",
        serde_json::json!({"extension": "postgres_changes", "status": status, "message": message, "channel": sub_topic}),
    )
}
