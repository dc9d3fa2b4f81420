//! Carrying out what a socket's session decided ([`Effect`]s), in order: replies, local
//! fan-out, joins and leaves with the topic's Channel, presence, and the channel's Postgres
//! Changes registration with the replicator.

use sluice_shared::frame::{self, Outbound};
use sluice_shared::internal::{ChannelOp, Reauthorize, Subscribe, Unsubscribe};
use sluice_shared::roster::access;
use sluice_shared::session::{Effect, LogLevel, LogLine, PostgresJoin, Session};
use sluice_shared::{metrics, texts};
use worker::*;

use super::deliveries::db_position_key;
use super::fanout::{fan_out, room_of, Deliverable};
use super::private::claims_key;
use super::traffic;
use super::SocketHub;
use crate::{config, replicator};

impl SocketHub {
    /// Carries out a session's effects in order. Replies and local deliveries happen at once;
    /// calls to Channels are awaited, joins before their reply, the rest after. Says whether the
    /// socket must be disconnected.
    pub(super) async fn perform(&self, session: &Session, effects: Vec<Effect>) -> Result<bool> {
        let mut later = Vec::new();
        let mut later_joins = Vec::new();
        let mut disconnect = false;
        let to_client = |out: &Outbound| self.push_to(&session.id, out);
        for effect in effects {
            match effect {
                Effect::Send(out) => to_client(&out),
                Effect::RefuseJoin(out) => {
                    let reason = out.payload["response"]["reason"].as_str().unwrap_or_default();
                    let code = metrics::refusal_code(reason).to_string();
                    *self.counts.borrow_mut().refused_joins.entry(code).or_default() += 1;
                    let backoff = config::channel_error_backoff_ms(&self.env);
                    Delay::from(std::time::Duration::from_millis(backoff)).await;
                    to_client(&out)
                }
                Effect::Broadcast {
                    topic,
                    broadcast,
                    include_sender,
                } => {
                    let skip = |socket: &str| !include_sender && socket == session.id;
                    let room = (room_of(session, &topic), topic);
                    let sent = fan_out(&self.roster(), &room, Deliverable::Broadcast(&broadcast), skip);
                    self.rates.borrow_mut().events.add(Date::now().as_millis(), sent.frames);
                    self.sent(sent, Some(traffic::BROADCAST));
                    if self.peers.borrow().get(&room) != Some(&0) {
                        later.push((room, ChannelOp::Broadcast { broadcast }));
                    }
                }
                Effect::Join {
                    topic,
                    reply,
                    presence_state,
                    replication_ready,
                    postgres,
                    private,
                } => {
                    self.counts.borrow_mut().joins += 1;
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
                        Some(pg) => Some(self.subscribe(&session.id, &topic, pg).await),
                        None => None,
                    };
                    if let (Some(Err(text)), Some(pg)) = (&registered, postgres) {
                        if text == texts::DATABASE_UNREACHABLE {
                            self.retry_postgres_later(&session.id, &topic, join_ref.clone(), pg)
                                .await?;
                        }
                    }
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
                    if replication_ready {
                        later_joins.push((topic, join_ref));
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
                        replicator::unsubscribe(&self.replicator(), &request).await;
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
                    let outcome = replicator::reauthorize(&self.replicator(), &request).await.map(|_| ());
                    let join_ref = session.membership(&topic).and_then(|m| m.join_ref.clone());
                    to_client(&postgres_system_message(join_ref.as_deref(), &topic, outcome));
                }
                // Handled before: see `authorize_private_joins` and `handle_message`.
                Effect::PrivateClaims { .. } | Effect::CheckWrite { .. } => {}
                Effect::Disconnect => disconnect = true,
                Effect::Log(line) => self.log(session, &line),
            }
        }
        for (room, op) in later {
            self.call_channel(session, &room, vec![op]).await;
        }
        for (topic, join_ref) in later_joins {
            self.notify_replication_ready(&session.id, &topic, join_ref.as_deref())
                .await?;
        }
        Ok(disconnect)
    }

    /// Writes one of a socket's log lines, at its level.
    pub(super) fn log(&self, session: &Session, line: &LogLine) {
        let (hub, socket, message) = (self.name(), &session.id, &line.message);
        match line.level {
            LogLevel::Info => console_log!("{hub}: socket {socket}: {message}"),
            LogLevel::Warning => console_warn!("{hub}: socket {socket}: {message}"),
            LogLevel::Error => console_error!("{hub}: socket {socket}: {message}"),
        }
    }

    /// `config.broadcast.replication_ready`: once the database's replication connection is up,
    /// a `system` message says so; when it is not up in time (`REPLICATION_READY_TIMEOUT_MS`), the
    /// channel is shut down. Upstream checks every 500 ms, for a minute by default.
    async fn notify_replication_ready(&self, socket: &str, topic: &str, join_ref: Option<&str>) -> Result<()> {
        let deadline = Date::now().as_millis() + config::replication_ready_timeout_ms(&self.env);
        loop {
            if !self.roster().is_joined(socket, topic) {
                return Ok(()); // left meanwhile: nobody to tell
            }
            if replicator::health(&self.replicator())
                .await
                .is_some_and(|h| h.replication_connected)
            {
                let ready = frame::system(join_ref, topic, "system", true, texts::REPLICATION_READY);
                self.push_to(socket, &ready);
                return Ok(());
            }
            if Date::now().as_millis() >= deadline {
                break;
            }
            Delay::from(std::time::Duration::from_millis(500)).await;
        }
        console_warn!(
            "ReplicationConnectionTimeout: {topic} of socket {socket}: {}",
            texts::REPLICATION_NOT_READY
        );
        let Some(ws) = self.roster().socket(socket).map(|(ws, _)| ws.clone()) else {
            return Ok(());
        };
        let Some(mut session) = self.load_session(&ws).await? else {
            return Ok(());
        };
        let shut_down = |s: &mut Session| s.shut_down_channel(topic, join_ref, texts::REPLICATION_NOT_READY);
        Box::pin(self.change_session(&ws, &mut session, shut_down)).await?;
        Ok(())
    }

    /// Registers a channel's bindings with the replicator; `Err` is the client's error text. A
    /// channel left (or a socket gone) while the registration was on its way is unregistered.
    async fn subscribe(&self, socket: &str, topic: &str, pg: &PostgresJoin) -> std::result::Result<(), String> {
        let request = Subscribe {
            hub: self.name(),
            socket: socket.to_string(),
            topic: topic.to_string(),
            claims: pg.claims.clone(),
            bindings: pg.bindings.clone(),
        };
        let outcome = replicator::subscribe(&self.replicator(), &request).await.map(|_| ());
        if outcome.is_ok() && !self.roster().is_joined(socket, topic) {
            let gone = Unsubscribe {
                hub: request.hub,
                socket: request.socket,
                topic: Some(request.topic),
            };
            replicator::unsubscribe(&self.replicator(), &gone).await;
        }
        outcome
    }
}

/// A channel whose Postgres Changes could not be registered because the database (or its
/// replicator) was unreachable: tried again after 5 to 10 s, as upstream, until it works or the
/// channel goes; each failure is told to the client again. Kept in memory: a hub evicted
/// meanwhile stops retrying (the client's rejoin registers afresh).
pub(super) struct PostgresRetry {
    pub due_ms: u64,
    join_ref: Option<String>,
    pg: PostgresJoin,
}

impl SocketHub {
    async fn retry_postgres_later(
        &self,
        socket: &str,
        topic: &str,
        join_ref: Option<String>,
        pg: PostgresJoin,
    ) -> Result<()> {
        let jitter = u64::from(u16::from_le_bytes(crate::random::bytes())) % 5_000;
        let due_ms = Date::now().as_millis() + 5_000 + jitter;
        let retry = PostgresRetry { due_ms, join_ref, pg };
        self.postgres_retries
            .borrow_mut()
            .insert((socket.to_string(), topic.to_string()), retry);
        self.wake_by(due_ms).await
    }

    /// Tries again the registrations that are due (the alarm went off).
    pub(super) async fn retry_postgres_due(&self, now_ms: u64) -> Result<()> {
        let due: Vec<((String, String), PostgresRetry)> = {
            let mut retries = self.postgres_retries.borrow_mut();
            let keys: Vec<_> = retries
                .iter()
                .filter(|(_, r)| r.due_ms <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| retries.remove(&k).map(|r| (k, r)))
                .collect()
        };
        for ((socket, topic), retry) in due {
            // Only while the same join of the channel is still there.
            let ws = self.roster().socket(&socket).map(|(ws, _)| ws.clone());
            let Some(ws) = ws else { continue };
            let Some(session) = self.load_session(&ws).await? else {
                continue;
            };
            let same_join = session.membership(&topic).is_some_and(|m| m.join_ref == retry.join_ref);
            if !same_join {
                continue;
            }
            let outcome = self.subscribe(&socket, &topic, &retry.pg).await;
            let failed_again = outcome.as_ref().is_err_and(|text| text == texts::DATABASE_UNREACHABLE);
            self.push_to(
                &socket,
                &postgres_system_message(retry.join_ref.as_deref(), &topic, outcome),
            );
            if failed_again {
                self.retry_postgres_later(&socket, &topic, retry.join_ref, retry.pg)
                    .await?;
            }
        }
        Ok(())
    }

    /// When the next registration is to be tried again (epoch ms).
    pub(super) fn next_postgres_retry(&self) -> Option<u64> {
        self.postgres_retries.borrow().values().map(|r| r.due_ms).min()
    }
}

/// The `system` message that ends a channel's Postgres Changes registration
/// (docs/protocol.md 3.2).
fn postgres_system_message(join_ref: Option<&str>, topic: &str, outcome: std::result::Result<(), String>) -> Outbound {
    match outcome {
        Ok(()) => frame::system(join_ref, topic, "postgres_changes", true, texts::SUBSCRIBED_TO_POSTGRES),
        Err(text) => frame::system(join_ref, topic, "postgres_changes", false, &text),
    }
}
