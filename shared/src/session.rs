//! One client socket's protocol state machine: what it has joined, and what each inbound message
//! makes happen. Pure: the hub feeds it decoded messages and the time, and carries out the
//! [`Effect`]s it returns. The whole state is serializable so the hub can keep it in the socket's
//! hibernation attachment.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::frame::{self, Broadcast, Inbound, InboundPayload, Outbound, Vsn};
use crate::join::{parse_join, parse_topic, Topic};
use crate::jwt::AuthError;

/// The state of one socket. Small on purpose: it must fit a 16 KiB hibernation attachment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub vsn: Vsn,
    /// Role and expiry of the token the socket connected with.
    pub role: String,
    pub exp: i64,
    pub channels: Vec<Membership>,
}

/// A joined channel of this socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The full topic, `realtime:<sub_topic>`.
    pub topic: String,
    pub join_ref: Option<String>,
    #[serde(rename = "self")]
    pub broadcast_self: bool,
    pub ack: bool,
}

/// What the hub must do after a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send to this socket.
    Send(Outbound),
    /// Deliver to every socket joined to `topic`; to the sender only if `include_sender`.
    Broadcast { topic: String, broadcast: Broadcast, include_sender: bool },
}

impl Session {
    pub fn new(id: String, vsn: Vsn, role: String, exp: i64) -> Session {
        Session { id, vsn, role, exp, channels: Vec::new() }
    }

    pub fn membership(&self, topic: &str) -> Option<&Membership> {
        self.channels.iter().find(|m| m.topic == topic)
    }

    /// Handles one decoded client message at time `now_secs`.
    pub fn handle(&mut self, msg: Inbound, now_secs: i64) -> Vec<Effect> {
        let topic = msg.topic.as_str();
        if msg.event == "phx_join" {
            return self.join(&msg, now_secs);
        }
        if parse_topic(topic) == Topic::Phoenix {
            return match msg.event.as_str() {
                "heartbeat" => vec![reply_ok(None, &msg)],
                _ => Vec::new(),
            };
        }
        let Some(member) = self.membership(topic) else {
            return match msg.event.as_str() {
                // Leaving a channel that is not joined is not an error.
                "phx_leave" => vec![reply_ok(msg.join_ref.as_deref(), &msg)],
                _ => vec![Effect::Send(frame::reply(
                    msg.join_ref.as_deref(),
                    msg.ref_.as_deref(),
                    topic,
                    false,
                    json!({"reason": "unmatched topic"}),
                ))],
            };
        };
        // A message for an older incarnation of the channel is ignored; one without join_ref is
        // accepted (Supabase's Phoenix fork does not drop missing join refs).
        if msg.join_ref.is_some() && msg.join_ref != member.join_ref {
            return Vec::new();
        }
        let member = member.clone();
        match msg.event.as_str() {
            "phx_leave" => {
                self.channels.retain(|m| m.topic != topic);
                vec![
                    reply_ok(member.join_ref.as_deref(), &msg),
                    Effect::Send(frame::close(member.join_ref.as_deref(), topic)),
                ]
            }
            "broadcast" => broadcast(&member, msg),
            "presence" => vec![Effect::Send(frame::reply(
                member.join_ref.as_deref(),
                msg.ref_.as_deref(),
                topic,
                false,
                json!({"reason": "Presence is not supported by this server yet"}),
            ))],
            // access_token refreshes and unknown events need no answer.
            _ => Vec::new(),
        }
    }

    fn join(&mut self, msg: &Inbound, now_secs: i64) -> Vec<Effect> {
        let topic = msg.topic.as_str();
        let error = |reason: String| {
            Effect::Send(frame::reply(msg.join_ref.as_deref(), msg.ref_.as_deref(), topic, false, json!({"reason": reason})))
        };
        let sub_topic = match parse_topic(topic) {
            Topic::Channel(sub) => sub,
            _ => return vec![error("unmatched topic".into())],
        };
        let mut effects = Vec::new();
        // A second join of a joined topic ends the old incarnation first.
        if let Some(old) = self.membership(topic).cloned() {
            self.channels.retain(|m| m.topic != topic);
            effects.push(Effect::Send(frame::close(old.join_ref.as_deref(), topic)));
        }
        let payload = match &msg.payload {
            InboundPayload::Json(v) => v,
            InboundPayload::UserBroadcast(_) => &Value::Null,
        };
        let config = parse_join(payload);
        if sub_topic.is_empty() {
            effects.push(error("TopicNameRequired: You must provide a topic name".into()));
        } else if self.exp <= now_secs {
            effects.push(error(AuthError::Expired { seconds_ago: now_secs - self.exp }.join_reason()));
        } else if config.private {
            // Private channels need the replicator's RLS check, which is not built yet: refuse
            // rather than let anyone in.
            effects.push(error(format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}"
            )));
        } else {
            self.channels.push(Membership {
                topic: topic.to_string(),
                join_ref: msg.join_ref.clone(),
                broadcast_self: config.broadcast_self,
                ack: config.broadcast_ack,
            });
            effects.push(Effect::Send(frame::reply(
                msg.join_ref.as_deref(),
                msg.ref_.as_deref(),
                topic,
                true,
                json!({"postgres_changes": []}),
            )));
        }
        effects
    }
}

fn broadcast(member: &Membership, msg: Inbound) -> Vec<Effect> {
    let ack = member.ack.then(|| reply_ok(member.join_ref.as_deref(), &msg));
    let broadcast = match msg.payload {
        InboundPayload::Json(payload @ Value::Object(_)) => Broadcast::Json(payload),
        InboundPayload::UserBroadcast(user) => Broadcast::User(user),
        // Not a map: malformed, dropped like any other malformed message.
        InboundPayload::Json(_) => return Vec::new(),
    };
    let mut effects = vec![Effect::Broadcast {
        topic: member.topic.clone(),
        broadcast,
        include_sender: member.broadcast_self,
    }];
    effects.extend(ack);
    effects
}

fn reply_ok(join_ref: Option<&str>, msg: &Inbound) -> Effect {
    Effect::Send(frame::reply(join_ref, msg.ref_.as_deref(), &msg.topic, true, json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Encoding, UserBroadcast};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: i64 = 1_800_000_000;

    fn session() -> Session {
        Session::new("s1".into(), Vsn::V2, "anon".into(), NOW + 3600)
    }

    fn msg(join_ref: Option<&str>, ref_: &str, topic: &str, event: &str, payload: Value) -> Inbound {
        Inbound {
            join_ref: join_ref.map(Into::into),
            ref_: Some(ref_.into()),
            topic: topic.into(),
            event: event.into(),
            payload: InboundPayload::Json(payload),
        }
    }

    fn join(s: &mut Session, join_ref: &str, topic: &str, config: Value) -> Vec<Effect> {
        s.handle(msg(Some(join_ref), join_ref, topic, "phx_join", json!({"config": config})), NOW)
    }

    fn sent(effects: &[Effect]) -> Vec<Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(o) => Some(serde_json::from_str(&frame::encode(Vsn::V2, o)).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn join_replies_ok_with_empty_postgres_changes() {
        let mut s = session();
        let effects = join(&mut s, "1", "realtime:room1", json!({}));
        assert_eq!(sent(&effects), vec![json!(["1", "1", "realtime:room1", "phx_reply", {"status":"ok","response":{"postgres_changes":[]}}])]);
        assert_eq!(s.channels.len(), 1);
    }

    #[test]
    fn join_errors() {
        let mut s = session();
        let e = join(&mut s, "1", "realtime:", json!({}));
        assert_eq!(sent(&e)[0][4]["response"]["reason"], "TopicNameRequired: You must provide a topic name");
        let e = join(&mut s, "2", "room1", json!({}));
        assert_eq!(sent(&e)[0][4], json!({"status":"error","response":{"reason":"unmatched topic"}}));
        let e = join(&mut s, "3", "realtime:secret", json!({"private": true}));
        assert_eq!(
            sent(&e)[0][4]["response"]["reason"],
            "Unauthorized: You do not have permissions to read from this Channel topic: secret"
        );
        assert!(s.channels.is_empty());
    }

    #[test]
    fn join_with_expired_socket_token_fails() {
        let mut s = session();
        s.exp = NOW - 5;
        let e = join(&mut s, "1", "realtime:a", json!({}));
        assert_eq!(sent(&e)[0][4]["response"]["reason"], "InvalidJWTToken: Token has expired 5 seconds ago");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn duplicate_join_closes_the_old_incarnation() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let e = join(&mut s, "4", "realtime:a", json!({"broadcast": {"self": true}}));
        let frames = sent(&e);
        assert_eq!(frames[0], json!(["1", "1", "realtime:a", "phx_close", {}]));
        assert_eq!(frames[1][0], "4");
        assert_eq!(frames[1][4]["status"], "ok");
        assert_eq!(s.channels.len(), 1);
        assert!(s.channels[0].broadcast_self);
        assert_eq!(s.channels[0].join_ref.as_deref(), Some("4"));
    }

    #[test]
    fn leave_replies_then_closes() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let e = s.handle(msg(Some("1"), "5", "realtime:a", "phx_leave", json!({})), NOW);
        assert_eq!(
            sent(&e),
            vec![
                json!(["1", "5", "realtime:a", "phx_reply", {"status":"ok","response":{}}]),
                json!(["1", "1", "realtime:a", "phx_close", {}]),
            ]
        );
        assert!(s.channels.is_empty());
        // Leaving again is still answered ok.
        let e = s.handle(msg(Some("1"), "6", "realtime:a", "phx_leave", json!({})), NOW);
        assert_eq!(sent(&e)[0][4]["status"], "ok");
    }

    #[test]
    fn heartbeat() {
        let mut s = session();
        let e = s.handle(msg(None, "12", "phoenix", "heartbeat", json!({})), NOW);
        assert_eq!(sent(&e), vec![json!([null, "12", "phoenix", "phx_reply", {"status":"ok","response":{}}])]);
    }

    #[test]
    fn unjoined_topic_is_unmatched() {
        let mut s = session();
        let e = s.handle(msg(Some("1"), "2", "realtime:nope", "broadcast", json!({"event": "x"})), NOW);
        assert_eq!(sent(&e)[0], json!(["1", "2", "realtime:nope", "phx_reply", {"status":"error","response":{"reason":"unmatched topic"}}]));
    }

    #[test]
    fn broadcast_honours_self_and_ack() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"broadcast": {"self": true, "ack": true}}));
        join(&mut s, "2", "realtime:b", json!({}));
        let payload = json!({"type": "broadcast", "event": "move", "payload": {"x": 1}});
        let e = s.handle(msg(Some("1"), "3", "realtime:a", "broadcast", payload.clone()), NOW);
        assert_eq!(
            e[0],
            Effect::Broadcast { topic: "realtime:a".into(), broadcast: Broadcast::Json(payload.clone()), include_sender: true }
        );
        assert_eq!(sent(&e), vec![json!(["1", "3", "realtime:a", "phx_reply", {"status":"ok","response":{}}])]);
        let e = s.handle(msg(Some("2"), "4", "realtime:b", "broadcast", payload), NOW);
        assert_eq!(e.len(), 1, "no ack without config.broadcast.ack");
        assert!(matches!(&e[0], Effect::Broadcast { include_sender: false, .. }));
    }

    #[test]
    fn binary_broadcast_becomes_user_broadcast() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let user = UserBroadcast { event: "e".into(), encoding: Encoding::Binary, payload: vec![1, 2], meta: None };
        let m = Inbound { join_ref: Some("1".into()), ref_: Some("2".into()), topic: "realtime:a".into(), event: "broadcast".into(), payload: InboundPayload::UserBroadcast(user.clone()) };
        assert!(matches!(&s.handle(m, NOW)[0], Effect::Broadcast { broadcast: Broadcast::User(u), .. } if *u == user));
    }

    #[test]
    fn stale_join_ref_is_ignored_and_missing_one_accepted() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let payload = json!({"type": "broadcast", "event": "x", "payload": {}});
        assert!(s.handle(msg(Some("0"), "2", "realtime:a", "broadcast", payload.clone()), NOW).is_empty());
        assert_eq!(s.handle(msg(None, "3", "realtime:a", "broadcast", payload), NOW).len(), 1);
    }

    #[test]
    fn non_object_broadcast_is_dropped() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"broadcast": {"ack": true}}));
        assert!(s.handle(msg(Some("1"), "2", "realtime:a", "broadcast", json!("nope")), NOW).is_empty());
    }

    #[test]
    fn state_survives_serialization() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"broadcast": {"self": true}}));
        let restored: Session = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(restored, s);
    }
}
