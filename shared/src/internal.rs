//! Wire types of the calls between Durable Objects (DESIGN.md "Durable Objects").
//!
//! - SocketHub → Channel: `POST /internal/v1/channel` with a [`ChannelRequest`]: the ops of one or
//!   more messages for one channel, coalesced, in order. Answered with a [`ChannelResponse`].
//! - Channel → SocketHub: `POST /internal/v1/deliver` with a [`Delivery`]: what the hub must hand
//!   to its own members of the channel.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::frame::Broadcast;

/// Which room a channel is: public and private channels with one name are different rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Public,
    Private,
}

/// `ch:{tenant}:{public|private}:{sub_topic}`: the Channel Durable Object of a topic.
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
    pub events: Vec<HubEvent>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HubEvent {
    Broadcast {
        broadcast: Broadcast,
    },
    PresenceDiff {
        diff: Value,
    },
    /// The number of other hubs with members changed.
    Peers {
        peers: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Encoding, UserBroadcast};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn names() {
        assert_eq!(channel_name("t", Access::Public, "room:1"), "ch:t:public:room:1");
        assert_eq!(channel_name("t", Access::Private, "room"), "ch:t:private:room");
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
