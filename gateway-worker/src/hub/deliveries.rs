//! What arrives at a hub from elsewhere, each delivered once:
//! - row changes from the replicator (`/internal/v1/changes`), dropped at or below the last
//!   position this hub delivered (a retry, or a replicator that restarted);
//! - relays from a topic's Channel (`/internal/v1/deliver`): broadcasts from other hubs, presence
//!   diffs, and broadcasts from the database, which a Channel may send again when another hub
//!   failed, so they are dropped by position per room too.
//!
//! The "is it new" rule is `sluice_shared::position::Watermark`; positions live in storage.

use sluice_shared::frame::{self, WireFrame};
use sluice_shared::internal::{ChangeBatch, ChangeReceipt, Delivery, HubEvent, Unsubscribe};
use sluice_shared::position::{StreamPosition, Watermark};
use sluice_shared::roster::Room;
use sluice_shared::texts;
use worker::*;

use super::fanout::{fan_out, Deliverable};
use super::private::message_id;
use super::sockets::send;
use super::traffic::{self, Sent};
use super::SocketHub;

/// The storage key of the last row change a hub delivered.
const CHANGES_POSITION: &str = "delivered_change";

/// The storage key of the last database broadcast a hub delivered to a room.
pub(super) fn db_position_key((access, topic): &Room) -> String {
    format!("db_broadcast:{access:?}:{topic}")
}

impl SocketHub {
    /// Delivers a batch of row changes to its recipients on this hub, each change once. Answers
    /// which recipients are gone, so the replicator drops their subscriptions.
    pub(super) async fn receive_changes(&self, batch: ChangeBatch) -> Result<ChangeReceipt> {
        let known = self.changes_position.borrow().clone();
        let delivered = match known {
            Some(position) => Some(position),
            None => self.stored_position(CHANGES_POSITION).await,
        };
        let mut mark = Watermark::new(delivered.clone());
        let mut receipt = ChangeReceipt::default();
        let mut sent = Sent::default();
        {
            let roster = self.roster();
            // Lost changes are announced before the changes that follow them.
            for lost in &batch.lost {
                if let Some((ws, vsn)) = roster.member(&lost.socket, &lost.topic) {
                    let notice = frame::system(None, &lost.topic, "postgres_changes", false, texts::CHANGES_LOST);
                    sent.add(send(ws, WireFrame::Text(frame::encode(vsn, &notice))));
                }
            }
            for change in &batch.changes {
                if !mark.admit(&batch.stream, change.lsn, change.seq) {
                    continue;
                }
                for payload in &change.payloads {
                    for to in &payload.to {
                        let Some((ws, vsn)) = roster.member(&to.socket, &to.topic) else {
                            let gone = Unsubscribe {
                                hub: self.name(),
                                socket: to.socket.clone(),
                                topic: Some(to.topic.clone()),
                            };
                            if !receipt.gone.contains(&gone) {
                                receipt.gone.push(gone);
                            }
                            continue;
                        };
                        let out = frame::fanout(
                            &to.topic,
                            "postgres_changes",
                            serde_json::json!({"ids": to.ids, "data": payload.data}),
                        );
                        sent.add(send(ws, WireFrame::Text(frame::encode(vsn, &out))));
                    }
                }
            }
        }
        self.sent(sent, Some(traffic::POSTGRES_CHANGES));
        if mark.last() != delivered.as_ref() {
            if let Some(position) = mark.last() {
                self.state.storage().put(CHANGES_POSITION, position).await?;
            }
        }
        *self.changes_position.borrow_mut() = mark.last().cloned();
        Ok(receipt)
    }

    /// Hands what a Channel relayed to this hub's members of the room.
    pub(super) async fn receive_relay(&self, delivery: Delivery) -> Result<()> {
        let room = (delivery.access, delivery.topic.clone());
        let from_database = delivery
            .events
            .iter()
            .any(|e| matches!(e, HubEvent::DbBroadcast { .. }));
        let delivered = match from_database {
            true => self.db_position(&room).await,
            false => None,
        };
        let mut mark = Watermark::new(delivered.clone());
        let (_, limits) = self.settings();
        let mut over_rate = 0;
        {
            let roster = self.roster();
            for event in delivery.events {
                match event {
                    HubEvent::DbBroadcast { broadcast, position } => {
                        if !mark.admit(&position.stream, position.lsn, position.seq) {
                            continue;
                        }
                        // Upstream drops database broadcasts while the tenant is over its rate.
                        let now = Date::now().as_millis();
                        if self
                            .rates
                            .borrow_mut()
                            .events
                            .exceeds(now, limits.max_events_per_second)
                        {
                            over_rate += 1;
                            continue;
                        }
                        // A stored message a socket already got by replay is not delivered again.
                        let id = message_id(&broadcast);
                        let replayed = self.replayed.borrow();
                        let skip = |socket: &str| {
                            id.is_some_and(|id| replayed.get(socket).is_some_and(|ids| ids.contains(id)))
                        };
                        let sent = fan_out(&roster, &room, Deliverable::Broadcast(&broadcast), skip);
                        self.rates.borrow_mut().events.add(now, sent.frames);
                        self.sent(sent, Some(traffic::BROADCAST));
                    }
                    HubEvent::Broadcast { broadcast } => {
                        let sent = fan_out(&roster, &room, Deliverable::Broadcast(&broadcast), |_| false);
                        self.rates.borrow_mut().events.add(Date::now().as_millis(), sent.frames);
                        self.sent(sent, Some(traffic::BROADCAST));
                    }
                    HubEvent::PresenceDiff { diff } => {
                        let out = frame::fanout(&delivery.topic, "presence_diff", diff);
                        let sent = fan_out(&roster, &room, Deliverable::Push(&out), |_| false);
                        self.rates
                            .borrow_mut()
                            .presence
                            .add(Date::now().as_millis(), sent.frames);
                        self.sent(sent, Some(traffic::PRESENCE));
                    }
                    HubEvent::Peers { peers } => {
                        self.peers.borrow_mut().insert(room.clone(), peers);
                    }
                }
            }
        }
        if over_rate > 0 {
            console_warn!(
                "UnableToBroadcastChanges: dropped {over_rate} database broadcasts to {}: too many messages per second",
                delivery.topic
            );
        }
        if mark.last() != delivered.as_ref() {
            if let Some(position) = mark.last() {
                self.state.storage().put(&db_position_key(&room), position).await?;
                self.db_positions.borrow_mut().insert(room, position.clone());
            }
        }
        Ok(())
    }

    /// The last database broadcast this hub delivered to a room, if any since it had members.
    async fn db_position(&self, room: &Room) -> Option<StreamPosition> {
        if let Some(position) = self.db_positions.borrow().get(room) {
            return Some(position.clone());
        }
        self.stored_position(&db_position_key(room)).await
    }

    /// A stored position. Unreadable (written by another version, or storage failed): logged and
    /// taken as none, so the hub delivers rather than block the stream or drop.
    async fn stored_position(&self, key: &str) -> Option<StreamPosition> {
        self.state.storage().get(key).await.unwrap_or_else(|e| {
            console_warn!(
                "{}: ignoring an unreadable delivered position ({key}): {e}",
                self.name()
            );
            None
        })
    }
}
