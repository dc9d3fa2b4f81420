//! Fan-out: delivering to this hub's members of a room (who receives is
//! `sluice_shared::roster`'s decision), and calls to a topic's Channel, which relays to the
//! other hubs with members and holds presence.

use std::rc::Rc;

use sluice_shared::frame::{self, Broadcast, Outbound, Vsn, WireFrame};
use sluice_shared::internal::{channel_name, Access, ChannelOp, ChannelResponse};
use sluice_shared::join::{parse_topic, Topic};
use sluice_shared::roster::{access, Audience, Room, Roster};
use sluice_shared::session::Session;
use worker::*;

use super::sockets::send;
use super::traffic::Sent;
use super::SocketHub;
use crate::config::CHANNEL;

impl SocketHub {
    /// Sends ops to the topic's Channel through the outbox and records what it says of peers.
    pub(super) async fn call_channel(
        &self,
        session: &Session,
        room: &Room,
        ops: Vec<ChannelOp>,
    ) -> Option<Rc<ChannelResponse>> {
        let (access, topic) = room;
        let Topic::Channel(sub_topic) = parse_topic(topic) else {
            return None;
        };
        let name = channel_name(&session.tenant, *access, sub_topic);
        let stub = || self.env.durable_object(CHANNEL)?.get_by_name(&name);
        let response = self.outbox.send(stub, &name, &self.name(), topic, ops).await;
        if let Some(r) = &response {
            self.peers.borrow_mut().insert(room.clone(), r.peers);
        }
        response
    }
}

/// What a hub fans out to its members of a room.
#[derive(Clone, Copy)]
pub(super) enum Deliverable<'a> {
    Broadcast(&'a Broadcast),
    /// A text push the same for everyone (`presence_diff`).
    Push(&'a Outbound),
}

/// Delivers to this hub's members of a room, encoding once per serializer; says what it sent.
pub(super) fn fan_out(roster: &Roster<WebSocket>, room: &Room, what: Deliverable, skip: impl Fn(&str) -> bool) -> Sent {
    let audience = match what {
        Deliverable::Broadcast(_) => Audience::BroadcastReaders,
        Deliverable::Push(_) => Audience::Everyone,
    };
    let topic = room.1.as_str();
    let mut sent = Sent::default();
    let mut encoded: [Option<Option<WireFrame>>; 2] = [None, None];
    for (_, ws, vsn) in roster.recipients(room, audience, skip) {
        let slot = &mut encoded[match vsn {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        }];
        let frame = slot.get_or_insert_with(|| match what {
            Deliverable::Broadcast(b) => frame::encode_broadcast(vsn, topic, b),
            Deliverable::Push(out) => Some(WireFrame::Text(frame::encode(vsn, out))),
        });
        if let Some(frame) = frame {
            sent.add(send(ws, frame.clone()));
        }
    }
    sent
}

/// The room of one of the session's channels (public if it has left already).
pub(super) fn room_of(session: &Session, topic: &str) -> Access {
    access(session.membership(topic).is_some_and(|m| m.private))
}
