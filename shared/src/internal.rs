//! Wire types of the internal API (docs/architecture.md, "The internal API").
//!
//! - SocketHub → Channel: `POST /internal/v1/channel` with a [`ChannelRequest`]: the ops of one or
//!   more messages for one channel, coalesced, in order. Answered with a [`ChannelResponse`].
//! - Channel → SocketHub: `POST /internal/v1/deliver` with a [`Delivery`]: what the hub must hand
//!   to its own members of the channel.
//! - SocketHub → replicator: `POST /v1/subscriptions` with a [`Subscribe`] (answered 200
//!   [`Subscribed`] once the subscription is live, or 422 with the client's `system` error text),
//!   `PATCH /v1/subscriptions` with a [`Reauthorize`] (new claims, answered the same way),
//!   `DELETE /v1/subscriptions` with an [`Unsubscribe`]; `POST /v1/authorize` with an
//!   [`Authorize`] (private channels), answered with [`Authorized`]; `POST /v1/replay` with a
//!   [`ReplayRequest`], answered with [`Replayed`].
//! - Replicator → gateway: `POST /internal/v1/changes/{hub}` with a [`ChangeBatch`], answered
//!   with a [`ChangeReceipt`]; `POST /internal/v1/broadcasts` with [`DbBroadcasts`] (broadcasts
//!   from the database for one channel), relayed by its Channel. Both carry
//!   `Authorization: Bearer <secret>`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::frame::Broadcast;
use crate::position::{Lsn, StreamPosition};

/// Which room a channel is: public and private channels with one name are different rooms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Public,
    Private,
}

/// `ch:{tenant}:{public|private}:{sub_topic}`: the Channel Durable Object of a topic.
/// The room a Channel object's name (see [`channel_name`]) stands for.
pub fn access_of_channel(name: &str) -> Access {
    match name.split(':').nth(2) {
        Some("private") => Access::Private,
        _ => Access::Public,
    }
}

pub fn channel_name(tenant: &str, access: Access, sub_topic: &str) -> String {
    let access = match access {
        Access::Public => "public",
        Access::Private => "private",
    };
    format!("ch:{tenant}:{access}:{sub_topic}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelRequest {
    /// The sending hub's name, so the channel can deliver back to it.
    pub hub: String,
    /// The full topic, `realtime:<sub_topic>`, as the hub's clients joined it.
    pub topic: String,
    pub ops: Vec<ChannelOp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChannelOp {
    /// The hub now has members of this channel.
    Subscribe,
    /// The hub has no members left; its presences go with it.
    Unsubscribe,
    /// Relay to the other hubs with members.
    Broadcast {
        broadcast: Broadcast,
    },
    Track {
        socket: String,
        key: String,
        meta: Map<String, Value>,
    },
    Untrack {
        socket: String,
    },
    /// Answer with the presence state.
    PresenceState,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelResponse {
    /// How many other hubs have members: with none, a hub need not relay broadcasts.
    pub peers: usize,
    /// The `presence_state` payload, when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub presence_state: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub topic: String,
    /// Which room of the topic: a hub may have members of both.
    #[serde(default)]
    pub access: Access,
    pub events: Vec<HubEvent>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HubEvent {
    Broadcast {
        broadcast: Broadcast,
    },
    /// A broadcast from the database (its `meta.id` is the message's row id), at its place in
    /// the replication stream: a hub drops what it already delivered to the room (a Channel
    /// sends a batch again when another hub failed).
    DbBroadcast {
        broadcast: Broadcast,
        position: StreamPosition,
    },
    PresenceDiff {
        diff: Value,
    },
    /// The number of other hubs with members changed.
    Peers {
        peers: usize,
    },
}

/// Registers (or replaces) the `postgres_changes` bindings of one channel of one socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub hub: String,
    pub socket: String,
    pub topic: String,
    /// The verified claims of the channel's token.
    pub claims: Map<String, Value>,
    /// As the client sent them.
    pub bindings: Vec<Map<String, Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The binding ids, in request order.
    pub ids: Vec<u64>,
}

/// Replaces the claims of one channel's subscriptions (the client sent a new `access_token`).
/// Answered like a [`Subscribe`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reauthorize {
    pub hub: String,
    pub socket: String,
    pub topic: String,
    pub claims: Map<String, Value>,
}

/// Asks the replicator what a user may read (join) and write (broadcast, track) on a private
/// channel, through the RLS policies on `realtime.messages` (docs/protocol.md 5.6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Authorize {
    /// The sub-topic (`realtime.topic()`).
    pub topic: String,
    pub claims: Map<String, Value>,
    /// `request.headers`.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// The extensions whose read permission to check (at join and token refresh).
    #[serde(default)]
    pub read: Vec<Extension>,
    /// The extensions whose write permission to check (lazily: first broadcast or track).
    #[serde(default)]
    pub write: Vec<Extension>,
}

impl Authorize {
    /// What these claims may read of the private channel `topic` (a sub-topic): at join and on
    /// a new token, for broadcast and presence alike.
    pub fn reading(topic: &str, claims: &Map<String, Value>, headers: &Map<String, Value>) -> Authorize {
        Authorize {
            topic: topic.to_string(),
            claims: claims.clone(),
            headers: headers.clone(),
            read: vec![Extension::Broadcast, Extension::Presence],
            write: Vec::new(),
        }
    }

    /// Whether these claims may write `extension` on the private channel `topic`.
    pub fn writing(
        topic: &str,
        claims: &Map<String, Value>,
        headers: &Map<String, Value>,
        extension: Extension,
    ) -> Authorize {
        Authorize {
            topic: topic.to_string(),
            claims: claims.clone(),
            headers: headers.clone(),
            read: Vec::new(),
            write: vec![extension],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Extension {
    Broadcast,
    Presence,
}

impl Extension {
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

/// Asks the replicator for a private channel's stored broadcasts (`realtime.messages`) since
/// `since` (epoch ms), the newest `limit`; answered with [`Replayed`], oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub topic: String,
    pub since: i64,
    pub limit: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    /// User broadcasts with meta `{"id": ..., "replayed": true}`.
    pub messages: Vec<Broadcast>,
}

/// The answer to an [`Authorize`]: the extensions the user may read, and may write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Authorized {
    pub read: Vec<Extension>,
    pub write: Vec<Extension>,
}

/// Removes one channel's subscriptions, or all of a socket's when `topic` is absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub hub: String,
    pub socket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Row changes for the sockets of one hub, in commit order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Which replication stream the positions belong to (`{system_identifier}:{slot}`): positions
    /// of another database say nothing about this one's.
    pub stream: String,
    pub changes: Vec<Change>,
    /// Channels that must be told changes were lost ([`crate::texts::CHANGES_LOST`]) before
    /// these changes: the replicator recreated its slot since they subscribed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<ChannelOfSocket>,
}

/// The most a request between the components should carry: a quarter of what the gateway reads
/// (64 MiB), so that a batch of large rows goes in parts rather than being refused.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

impl ChangeBatch {
    /// The batch in order, in parts of at most `max_bytes` of JSON each (a change larger than that
    /// goes alone); the channels to tell of lost changes go with the first part.
    pub fn parts(&self, max_bytes: usize) -> Vec<ChangeBatch> {
        let mut parts = in_parts(&self.changes, max_bytes)
            .into_iter()
            .map(|changes| ChangeBatch {
                stream: self.stream.clone(),
                changes,
                lost: Vec::new(),
            })
            .collect::<Vec<_>>();
        match parts.first_mut() {
            Some(first) => first.lost = self.lost.clone(),
            None => parts.push(self.clone()),
        }
        parts
    }

    /// The batch as JSON request bodies of at most `max_bytes` each (see [`ChangeBatch::parts`]),
    /// with the number of changes in each: serialized once, and split only when it does not fit.
    pub fn requests(&self, max_bytes: usize) -> Vec<(usize, Vec<u8>)> {
        requests(self, self.changes.len(), max_bytes, || {
            self.parts(max_bytes).into_iter().map(|p| (p.changes.len(), p)).collect()
        })
    }
}

/// `whole` (of `items` items) as one JSON body if it fits in `max_bytes`, else `split()`'s parts,
/// each with its number of items.
fn requests<T: Serialize>(whole: &T, items: usize, max_bytes: usize, split: impl FnOnce() -> Vec<(usize, T)>) -> Vec<(usize, Vec<u8>)> {
    let json = |value: &T| serde_json::to_vec(value).expect("batches serialize as JSON (string keys, finite numbers)");
    let body = json(whole);
    if body.len() <= max_bytes || items <= 1 {
        return vec![(items, body)];
    }
    split().iter().map(|(n, part)| (*n, json(part))).collect()
}

/// `items` in order, in runs of at most `max_bytes` of JSON each (one item larger than that alone).
fn in_parts<T: Clone + Serialize>(items: &[T], max_bytes: usize) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let bytes = serde_json::to_vec(item).map_or(0, |v| v.len()) + 1;
        match parts.last_mut() {
            Some(part) if size + bytes <= max_bytes => part.push(item.clone()),
            _ => {
                parts.push(vec![item.clone()]);
                size = 0;
            }
        }
        size += bytes;
    }
    parts
}

/// One channel of one socket on a hub.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelOfSocket {
    pub socket: String,
    pub topic: String,
}

/// Broadcasts from the database (`realtime.messages` rows) for one channel, in commit order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbBroadcasts {
    /// Which replication stream the positions belong to (see [`ChangeBatch::stream`]).
    pub stream: String,
    /// The sub-topic (without `realtime:`), as the row's `topic`.
    pub topic: String,
    pub access: Access,
    pub messages: Vec<DbMessage>,
}

impl DbBroadcasts {
    /// The messages in order, in parts of at most `max_bytes` of JSON each (see
    /// [`ChangeBatch::parts`]).
    pub fn parts(&self, max_bytes: usize) -> Vec<DbBroadcasts> {
        in_parts(&self.messages, max_bytes)
            .into_iter()
            .map(|messages| DbBroadcasts {
                stream: self.stream.clone(),
                topic: self.topic.clone(),
                access: self.access,
                messages,
            })
            .collect()
    }

    /// The messages as JSON request bodies (see [`ChangeBatch::requests`]).
    pub fn requests(&self, max_bytes: usize) -> Vec<(usize, Vec<u8>)> {
        requests(self, self.messages.len(), max_bytes, || {
            self.parts(max_bytes).into_iter().map(|p| (p.messages.len(), p)).collect()
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbMessage {
    pub lsn: Lsn,
    pub seq: u32,
    pub broadcast: Broadcast,
}

/// One row change. `(lsn, seq)` orders changes and identifies them across retries and replicator
/// restarts: the hub drops any change at or below the last position it delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The end LSN of the change's transaction.
    pub lsn: Lsn,
    /// The change's place in its transaction.
    pub seq: u32,
    /// The payloads subscribers see (they differ by the columns each role may select).
    pub payloads: Vec<ChangePayload>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangePayload {
    /// The `data` of the `postgres_changes` message.
    pub data: Value,
    pub to: Vec<Recipient>,
}

/// A channel of a socket, and which of its bindings the change matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recipient {
    pub socket: String,
    pub topic: String,
    pub ids: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeReceipt {
    /// Channels no longer on the hub: their subscriptions can go.
    pub gone: Vec<Unsubscribe>,
}

impl ChangeReceipt {
    /// The receipt of a hub that is gone for good (its tenant was deleted): every socket the batch
    /// was for is gone, with all its channels.
    pub fn all_gone(hub: &str, batch: &ChangeBatch) -> ChangeReceipt {
        let sockets: std::collections::BTreeSet<&str> = batch
            .changes
            .iter()
            .flat_map(|c| &c.payloads)
            .flat_map(|p| &p.to)
            .map(|r| r.socket.as_str())
            .chain(batch.lost.iter().map(|l| l.socket.as_str()))
            .collect();
        ChangeReceipt {
            gone: sockets
                .into_iter()
                .map(|socket| Unsubscribe {
                    hub: hub.to_string(),
                    socket: socket.to_string(),
                    topic: None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Encoding, UserBroadcast};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_hub_gone_for_good_gives_up_every_socket_of_the_batch() {
        let to = |socket: &str| Recipient {
            socket: socket.into(),
            topic: "realtime:t".into(),
            ids: vec![1],
        };
        let batch = ChangeBatch {
            stream: "s".into(),
            changes: vec![Change {
                lsn: Lsn(1),
                seq: 0,
                payloads: vec![ChangePayload {
                    data: json!({}),
                    to: vec![to("a"), to("b"), to("a")],
                }],
            }],
            lost: vec![ChannelOfSocket {
                socket: "c".into(),
                topic: "realtime:t".into(),
            }],
        };
        let receipt = ChangeReceipt::all_gone("hub:x:default:0", &batch);
        let sockets: Vec<&str> = receipt.gone.iter().map(|u| u.socket.as_str()).collect();
        assert_eq!(sockets, ["a", "b", "c"]);
        assert!(receipt
            .gone
            .iter()
            .all(|u| u.topic.is_none() && u.hub == "hub:x:default:0"));
    }

    #[test]
    fn large_batches_go_in_parts_in_order_lost_channels_first() {
        let change = |seq: u32, pad: usize| Change {
            lsn: Lsn(7),
            seq,
            payloads: vec![ChangePayload {
                data: json!({"pad": "x".repeat(pad)}),
                to: Vec::new(),
            }],
        };
        let lost = vec![ChannelOfSocket {
            socket: "c".into(),
            topic: "realtime:t".into(),
        }];
        let batch = ChangeBatch {
            stream: "s".into(),
            changes: vec![change(0, 600), change(1, 600), change(2, 2_000), change(3, 10)],
            lost: lost.clone(),
        };
        let parts = batch.parts(1_500);
        let seqs: Vec<Vec<u32>> = parts.iter().map(|p| p.changes.iter().map(|c| c.seq).collect()).collect();
        assert_eq!(seqs, [vec![0, 1], vec![2], vec![3]], "in order; one too large alone");
        assert_eq!(parts[0].lost, lost);
        assert!(parts[1..].iter().all(|p| p.lost.is_empty() && p.stream == "s"));
        assert!(parts.iter().all(|p| serde_json::to_vec(p).unwrap().len() <= 1_500 + 200 || p.changes.len() == 1));
        assert_eq!(batch.parts(usize::MAX), [batch.clone()]);
        let bodies = batch.requests(1_500);
        assert_eq!(bodies.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 1, 1]);
        let back: ChangeBatch = serde_json::from_slice(&bodies[1].1).unwrap();
        assert_eq!(back, parts[1]);
        assert_eq!(batch.requests(usize::MAX), [(4, serde_json::to_vec(&batch).unwrap())], "fits: one body");
        let empty = ChangeBatch { lost, ..ChangeBatch::default() };
        assert_eq!(empty.parts(10), [empty.clone()], "lost channels alone still go");
    }

    #[test]
    fn tagged_ops_keep_every_digit_of_their_numbers() {
        // Internally tagged enums buffer their fields: numbers must survive that with
        // serde_json's arbitrary_precision, digit for digit.
        let text = r#"[{"op":"track","socket":"s","key":"k","meta":{"x":1.5,"big":123456789012345678901234567890.5}},
            {"op":"broadcast","broadcast":{"Json":{"n":0.1000000000000000000001}}}]"#;
        let ops: Vec<ChannelOp> = serde_json::from_str(text).unwrap();
        let again = serde_json::to_string(&ops).unwrap();
        assert!(again.contains(r#""big":123456789012345678901234567890.5"#), "{again}");
        assert!(again.contains(r#""n":0.1000000000000000000001"#), "{again}");
        assert_eq!(serde_json::from_str::<Vec<ChannelOp>>(&again).unwrap(), ops);
    }

    #[test]
    fn names() {
        assert_eq!(channel_name("t", Access::Public, "room:1"), "ch:t:public:room:1");
        assert_eq!(channel_name("t", Access::Private, "room"), "ch:t:private:room");
        assert_eq!(access_of_channel("ch:t:private:a:b"), Access::Private);
        assert_eq!(access_of_channel("ch:t:public:private"), Access::Public);
    }

    #[test]
    fn requests_round_trip() {
        let req = ChannelRequest {
            hub: "hub:t:default:0".into(),
            topic: "realtime:r".into(),
            ops: vec![
                ChannelOp::Subscribe,
                ChannelOp::Broadcast {
                    broadcast: Broadcast::User(UserBroadcast {
                        event: "e".into(),
                        encoding: Encoding::Binary,
                        payload: vec![0, 255],
                        meta: None,
                    }),
                },
                ChannelOp::Track {
                    socket: "s".into(),
                    key: "k".into(),
                    meta: json!({"a": 1}).as_object().unwrap().clone(),
                },
            ],
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"subscribe""#));
        assert_eq!(serde_json::from_str::<ChannelRequest>(&text).unwrap(), req);
    }
}
