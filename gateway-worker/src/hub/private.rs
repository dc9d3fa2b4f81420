//! Private channels (Realtime Authorization): the policies on `realtime.messages`, asked
//! through the replicator, decide who may join (read) and who may broadcast or track (write,
//! asked at the first such message and kept until the next token). Replay of stored messages.

use serde_json::{Map, Value};
use sluice_shared::frame::{self, Broadcast};
use sluice_shared::internal::{Authorize, Extension, ReplayRequest};
use sluice_shared::join::{sub_topic, Replay};
use sluice_shared::session::{Effect, Session};
use worker::*;

use super::SocketHub;
use crate::replicator;

impl SocketHub {
    /// Asks the replicator what the policies let read on each private channel being joined (or
    /// whose token changed): a join they do not admit becomes its refusal, a refreshed channel that
    /// can read nothing is shut down. The claims of an admitted channel are kept in storage for
    /// its later write checks (they are too big for the socket's attachment).
    pub(super) async fn authorize_private_joins(
        &self,
        session: &mut Session,
        effects: Vec<Effect>,
    ) -> Result<Vec<Effect>> {
        let mut out = Vec::with_capacity(effects.len());
        for effect in effects {
            let (topic, claims, join) = match &effect {
                Effect::PrivateClaims { topic, claims } => (topic, claims, None),
                Effect::Join {
                    topic,
                    reply,
                    private: Some(private),
                    ..
                } => (topic, &private.claims, Some((reply, private))),
                _ => {
                    out.push(effect);
                    continue;
                }
            };
            let request = Authorize::reading(sub_topic(topic), claims, &session.headers);
            let read = replicator::authorize(&self.replicator(), &request)
                .await
                .map(|answer| answer.read)
                .unwrap_or_default();
            let admitted = match join {
                Some((_, private)) => private.admits(&read),
                None => !read.is_empty(),
            };
            if admitted {
                session.admit_private(topic, &read);
                self.state
                    .storage()
                    .put(&claims_key(&session.id, topic), claims)
                    .await?;
            }
            match (join, admitted) {
                (Some(_), true) => out.push(effect),
                (Some((reply, _)), false) => {
                    out.extend(session.refuse_private(topic, reply));
                }
                (None, true) => {}
                (None, false) => {
                    let topic = topic.clone();
                    out.extend(session.lose_private(&topic));
                }
            }
        }
        Ok(out)
    }

    /// Whether the policies let this socket write `extension` on the private channel `topic`, with
    /// the claims it was admitted with; `None` when the replicator could not say.
    pub(super) async fn may_write(&self, session: &Session, topic: &str, extension: Extension) -> Result<Option<bool>> {
        let stored: Option<Map<String, Value>> = self.state.storage().get(&claims_key(&session.id, topic)).await?;
        let Some(claims) = stored else {
            // Kept at admission until the channel leaves: without them nobody can say who asks.
            console_error!(
                "socket {}: no claims kept for {topic}; its writes are refused",
                session.id
            );
            return Ok(Some(false));
        };
        let request = Authorize::writing(sub_topic(topic), &claims, &session.headers, extension);
        Ok(replicator::authorize(&self.replicator(), &request)
            .await
            .map(|answer| answer.write.contains(&extension)))
    }

    /// Sends a private channel's stored messages, oldest first (docs/protocol.md 5.5), and
    /// remembers their ids so their live copies are not delivered again.
    pub(super) async fn replay(&self, session: &Session, topic: &str, replay: Replay) {
        let request = ReplayRequest {
            topic: sub_topic(topic).to_string(),
            since: replay.since,
            limit: replay.limit,
        };
        let messages = replicator::replay(&self.replicator(), &request).await;
        for broadcast in messages {
            if let Some(id) = message_id(&broadcast) {
                let mut replayed = self.replayed.borrow_mut();
                replayed.entry(session.id.clone()).or_default().insert(id.to_string());
            }
            self.send_to(&session.id, |vsn| frame::encode_broadcast(vsn, topic, &broadcast));
        }
    }
}

/// The storage key of the claims a socket's private channel was admitted with.
pub(super) fn claims_key(socket: &str, topic: &str) -> String {
    format!("claims:{socket}:{topic}")
}

/// The `meta.id` of a broadcast from the database.
pub(super) fn message_id(broadcast: &Broadcast) -> Option<&str> {
    match broadcast {
        Broadcast::User(user) => user.meta.as_ref()?.get("id")?.as_str(),
        Broadcast::Json(_) => None,
    }
}
