//! One client socket's protocol state machine: what it has joined, and what each inbound message
//! makes happen. Pure: the hub feeds it decoded messages and the time, and carries out the
//! [`Effect`]s it returns. The whole state is serializable so the hub can keep it in the socket's
//! hibernation attachment.
//!
//! - this file: the session, its memberships, and the messages of a joined channel (broadcast,
//!   presence, token refresh, leave), plus what the hub reports back (private-channel answers).
//! - [`effect`]: what the session asks the hub to do.
//! - [`joining`]: a `phx_join`: limits, tokens, config, the join reply.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::bindings::binding_id;
use crate::frame::{self, Broadcast, Inbound, InboundPayload, Outbound, Vsn};
use crate::internal::Extension;
use crate::join::{parse_join, parse_replay, parse_topic, sub_topic, Replay, Topic};
use crate::jwt::{AuthError, Claims, Keys};
use crate::limits::{Limits, Rates};
use crate::texts;

/// What a message is handled with besides the session itself: the time, the tenant's keys and
/// limits, the hub's rate counters and user count, and a maker of presence keys for joins that
/// bring none (a random UUID in production).
pub struct Ctx<'a> {
    pub now_ms: u64,
    pub keys: &'a Keys,
    pub limits: &'a Limits,
    pub rates: &'a mut Rates,
    /// Sockets of this hub with at least one joined channel.
    pub users: u32,
    pub fresh_key: &'a mut dyn FnMut() -> String,
}

impl Ctx<'_> {
    pub fn now_secs(&self) -> i64 {
        (self.now_ms / 1000) as i64
    }
}

/// The state of one socket. Kept small: the hub keeps it in the socket's 16 KiB hibernation
/// attachment while it fits (in storage beyond, which costs a read per message).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub vsn: Vsn,
    /// Role and expiry of the token the socket connected with.
    pub role: String,
    pub exp: i64,
    /// Its claims: channels without a token of their own see Postgres changes as this user.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Its `x-` headers at connect: `request.headers` for private channels' policies.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    pub channels: Vec<Membership>,
    /// Which of this socket's log lines are written (the `log_level` connection parameter).
    #[serde(default, skip_serializing_if = "log::is_default")]
    pub log_level: LogLevel,
}

/// A joined channel of this socket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The full topic, `realtime:<sub_topic>`.
    pub topic: String,
    pub join_ref: Option<String>,
    #[serde(rename = "self")]
    pub broadcast_self: bool,
    pub ack: bool,
    /// The key this socket's presence goes under: the client's, or generated at join.
    pub presence_key: String,
    /// Whether this socket has a presence tracked on the channel.
    pub tracked: bool,
    /// Expiry (epoch seconds) of the token the channel runs on: its `access_token`, else the
    /// socket's. At that moment the channel is closed unless the client sent a newer one.
    pub exp: i64,
    /// The tail of that token, to ignore refreshes that resend it (tokens are too big to keep
    /// whole in a 16 KiB attachment).
    pub token_tail: String,
    /// The client presence rate window: when it started (ms) and the presence messages in it.
    #[serde(default)]
    pub presence_window: (u64, u32),
    /// Whether the channel has Postgres Changes bindings registered with the replicator.
    #[serde(default)]
    pub postgres: bool,
    /// A private channel (Realtime Authorization): its policies were asked what this user may
    /// read at join (and on each new token).
    #[serde(default)]
    pub private: bool,
    /// Admitted by presence read alone: broadcasts are not delivered to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence_only: bool,
    /// What the policies let this user write, asked at the first broadcast / presence message
    /// (`None`: not asked yet) and kept until the next token.
    #[serde(default)]
    pub broadcast_write: Option<bool>,
    #[serde(default)]
    pub presence_write: Option<bool>,
}

/// The last 24 characters of a token: part of its signature, distinct for distinct tokens.
fn token_tail(token: &str) -> String {
    token[token.len().saturating_sub(24)..].to_string()
}

/// A channel token worth looking at: upstream ignores absent ones and opaque `sb_` keys.
fn usable_token(token: Option<&str>) -> Option<&str> {
    token.filter(|t| !t.is_empty() && !t.starts_with("sb_"))
}

mod effect;
mod joining;
mod log;

pub use effect::{Effect, PostgresJoin, PrivateJoin};
pub use log::{LogLevel, LogLine};

impl Session {
    /// A socket that connected with a token bearing `claims`.
    pub fn new(id: String, tenant: String, vsn: Vsn, claims: &Claims) -> Session {
        Session {
            id,
            tenant,
            vsn,
            role: claims.role.clone(),
            exp: claims.exp,
            claims: claims.all.clone(),
            headers: Map::new(),
            channels: Vec::new(),
            log_level: LogLevel::default(),
        }
    }

    pub fn membership(&self, topic: &str) -> Option<&Membership> {
        self.channels.iter().find(|m| m.topic == topic)
    }

    /// Handles one decoded client message.
    pub fn handle(&mut self, msg: Inbound, ctx: &mut Ctx) -> Vec<Effect> {
        let topic = msg.topic.as_str();
        if msg.event == "phx_join" {
            return self.join(&msg, ctx);
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
                    json!({"reason": texts::UNMATCHED_TOPIC}),
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
                    Effect::leave(&member),
                    reply_ok(member.join_ref.as_deref(), &msg),
                    Effect::Send(frame::close(member.join_ref.as_deref(), topic)),
                ]
            }
            "broadcast" => self.broadcast(&member, msg, ctx),
            "presence" => self.presence(&member, &msg, ctx),
            "access_token" => self.refresh_token(&member, &msg, ctx),
            // Unknown events need no answer.
            _ => Vec::new(),
        }
    }

    /// The earliest expiry among the joined channels: when the hub must next call [`expire`].
    ///
    /// [`expire`]: Session::expire
    pub fn next_expiry(&self) -> Option<i64> {
        self.channels.iter().map(|m| m.exp).min()
    }

    /// Closes every channel whose token has expired by `now_secs`, with upstream's message.
    pub fn expire(&mut self, now_secs: i64) -> Vec<Effect> {
        let expired: Vec<Membership> = self.channels.iter().filter(|m| m.exp <= now_secs).cloned().collect();
        expired
            .iter()
            .flat_map(|m| {
                self.shut_down(
                    m,
                    &AuthError::Expired {
                        seconds_ago: now_secs - m.exp,
                    }
                    .message(),
                )
            })
            .collect()
    }

    /// `access_token`: adopt a newer token for the channel, or close it if the token is bad.
    fn refresh_token(&mut self, member: &Membership, msg: &Inbound, ctx: &mut Ctx) -> Vec<Effect> {
        let InboundPayload::Json(payload) = &msg.payload else {
            return Vec::new();
        };
        let Some(token) = usable_token(payload.get("access_token").and_then(Value::as_str)) else {
            return Vec::new();
        };
        if token_tail(token) == member.token_tail {
            return Vec::new();
        }
        match ctx.keys.verify(token, ctx.now_secs()) {
            Ok(claims) => {
                if let Some(m) = self.channels.iter_mut().find(|m| m.topic == member.topic) {
                    m.exp = claims.exp;
                    m.token_tail = token_tail(token);
                }
                let mut effects = Vec::new();
                if member.private {
                    effects.push(Effect::PrivateClaims {
                        topic: member.topic.clone(),
                        claims: claims.all.clone(),
                    });
                }
                if member.postgres {
                    effects.push(Effect::PostgresClaims {
                        topic: member.topic.clone(),
                        claims: claims.all,
                    });
                }
                effects
            }
            Err(err) => self.shut_down(member, &err.message()),
        }
    }

    /// Ends the channel `topic` for `message`, if it is still the incarnation joined with
    /// `join_ref` (a later join of the topic is left alone).
    pub fn shut_down_channel(&mut self, topic: &str, join_ref: Option<&str>, message: &str) -> Vec<Effect> {
        match self.membership(topic).cloned() {
            Some(member) if member.join_ref.as_deref() == join_ref => self.shut_down(&member, message),
            _ => Vec::new(),
        }
    }

    /// Ends a channel for a fatal reason: `system` error, then `phx_close`, then the leave.
    fn shut_down(&mut self, member: &Membership, message: &str) -> Vec<Effect> {
        self.channels.retain(|m| m.topic != member.topic);
        let join_ref = member.join_ref.as_deref();
        let log = self.log(LogLevel::Warning, || {
            format!("{}: ChannelShutdown: {message}", member.topic)
        });
        [
            Effect::Send(frame::system(join_ref, &member.topic, "system", false, message)),
            Effect::Send(frame::close(member.join_ref.as_deref(), &member.topic)),
            Effect::leave(member),
        ]
        .into_iter()
        .chain(log)
        .collect()
    }

    /// The policies let this user read nothing of the private channel `topic`: the join is undone
    /// and answered with upstream's error (after the backoff).
    pub fn refuse_private(&mut self, topic: &str, reply: &Outbound) -> Vec<Effect> {
        self.channels.retain(|m| m.topic != topic);
        let reason = texts::unauthorized_read(sub_topic(topic));
        let log = self.log(LogLevel::Error, || format!("{topic}: {reason}"));
        let refusal = frame::reply(
            reply.join_ref.as_deref(),
            reply.ref_.as_deref(),
            topic,
            false,
            json!({ "reason": reason }),
        );
        log.into_iter().chain([Effect::RefuseJoin(refusal)]).collect()
    }

    /// The policies let this user read the private channel `topic` (at join, or with a new
    /// token): broadcasts reach it only if broadcast is readable, and what it may write will be
    /// asked afresh.
    pub fn admit_private(&mut self, topic: &str, readable: &[Extension]) {
        if let Some(m) = self.channels.iter_mut().find(|m| m.topic == topic) {
            m.presence_only = !readable.contains(&Extension::Broadcast);
            m.broadcast_write = None;
            m.presence_write = None;
        }
    }

    /// Records what the policies said of writing `extension` on the private channel `topic`
    /// (`None`: ask them again at the next message).
    pub fn record_write(&mut self, topic: &str, extension: Extension, allowed: Option<bool>) {
        if let Some(m) = self.channels.iter_mut().find(|m| m.topic == topic) {
            match extension {
                Extension::Broadcast => m.broadcast_write = allowed,
                Extension::Presence => m.presence_write = allowed,
            }
        }
    }

    /// After a new token, the policies no longer let this user read the private channel `topic`:
    /// it is shut down with upstream's message.
    pub fn lose_private(&mut self, topic: &str) -> Vec<Effect> {
        let Some(member) = self.membership(topic).cloned() else {
            return Vec::new();
        };
        let sub_topic = sub_topic(topic);
        self.shut_down(&member, &texts::read_permission_lost(sub_topic))
    }

    /// The socket is going away: it leaves every channel.
    pub fn close(&mut self) -> Vec<Effect> {
        self.channels.drain(..).map(|m| Effect::leave(&m)).collect()
    }

    fn broadcast(&mut self, member: &Membership, msg: Inbound, ctx: &mut Ctx) -> Vec<Effect> {
        // Asked before anything is counted: the message comes back once the answer is known.
        if member.private && member.broadcast_write.is_none() {
            return vec![Effect::CheckWrite {
                topic: member.topic.clone(),
                extension: Extension::Broadcast,
            }];
        }
        ctx.rates.events.add(ctx.now_ms, 1);
        if ctx.rates.events.exceeds(ctx.now_ms, ctx.limits.max_events_per_second) {
            return self.shut_down(member, texts::TOO_MANY_MESSAGES);
        }
        if ctx.rates.bytes.exceeds(ctx.now_ms, ctx.limits.max_bytes_per_second) {
            return self.shut_down(member, texts::TOO_MANY_BYTES);
        }
        let size = match &msg.payload {
            InboundPayload::Json(v) => v.to_string().len(),
            InboundPayload::UserBroadcast(u) => u.payload.len(),
        };
        if ctx.limits.payload_too_big(size) {
            // Dropped; with ack the sender learns why (upstream replies with a bare string).
            return match member.ack {
                true => vec![Effect::Send(frame::reply(
                    member.join_ref.as_deref(),
                    msg.ref_.as_deref(),
                    &msg.topic,
                    false,
                    json!(texts::PAYLOAD_TOO_BIG),
                ))],
                false => Vec::new(),
            };
        }
        // Private channels: without write permission the message is dropped, with no reply even
        // when ack was asked for (upstream).
        if member.private && member.broadcast_write != Some(true) {
            return Vec::new();
        }
        let log = self.log(LogLevel::Info, || format!("{}: received a broadcast", member.topic));
        broadcast(member, msg).into_iter().chain(log).collect()
    }

    fn presence(&mut self, member: &Membership, msg: &Inbound, ctx: &mut Ctx) -> Vec<Effect> {
        let reply = |ok: bool, response: Value| {
            Effect::Send(frame::reply(
                member.join_ref.as_deref(),
                msg.ref_.as_deref(),
                &msg.topic,
                ok,
                response,
            ))
        };
        let InboundPayload::Json(payload) = &msg.payload else {
            return Vec::new();
        };
        if member.private && member.presence_write.is_none() {
            return vec![Effect::CheckWrite {
                topic: member.topic.clone(),
                extension: Extension::Presence,
            }];
        }
        // Per channel: at most N presence messages per window.
        let (start, count) = member.presence_window;
        let window = if ctx.now_ms.saturating_sub(start) >= ctx.limits.client_presence_window_ms {
            (ctx.now_ms, 1)
        } else {
            (start, count + 1)
        };
        if window.1 > ctx.limits.max_client_presence_events_per_window {
            return self.shut_down(member, texts::CLIENT_PRESENCE_RATE);
        }
        if let Some(m) = self.channels.iter_mut().find(|m| m.topic == member.topic) {
            m.presence_window = window;
        }
        ctx.rates.presence.add(ctx.now_ms, 1);
        if ctx
            .rates
            .presence
            .exceeds(ctx.now_ms, ctx.limits.max_presence_events_per_second)
        {
            return self.shut_down(member, texts::TOO_MANY_PRESENCE_MESSAGES);
        }
        if ctx.rates.bytes.exceeds(ctx.now_ms, ctx.limits.max_bytes_per_second) {
            return self.shut_down(member, texts::TOO_MANY_BYTES);
        }
        if ctx.limits.payload_too_big(payload.to_string().len()) {
            return self.shut_down(member, texts::TRACK_TOO_BIG);
        }
        // Private channels: presence needs write permission; without it the reply is an error.
        if member.private && member.presence_write != Some(true) {
            return vec![reply(false, json!({}))];
        }
        let event = payload
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let topic = member.topic.clone();
        let tracked = match event.as_str() {
            "track" => true,
            "untrack" => false,
            _ => return vec![reply(false, json!({}))],
        };
        let effect = if tracked {
            let Some(meta) = payload.get("payload").and_then(Value::as_object) else {
                return vec![reply(false, json!({"reason": texts::PRESENCE_NOT_A_MAP}))];
            };
            Effect::Track {
                topic: topic.clone(),
                key: member.presence_key.clone(),
                meta: meta.clone(),
            }
        } else {
            Effect::Untrack { topic: topic.clone() }
        };
        if let Some(m) = self.channels.iter_mut().find(|m| m.topic == topic) {
            m.tracked = tracked;
        }
        let log = self.log(LogLevel::Info, || format!("{topic}: presence {event}"));
        [effect, reply(true, json!({}))].into_iter().chain(log).collect()
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
    use crate::jwt::tests::{sign, SECRET};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: i64 = 1_800_000_000;

    fn session() -> Session {
        let claims = Claims {
            role: "anon".into(),
            exp: NOW + 3600,
            all: json!({"role": "anon", "exp": NOW + 3600, "sub": "u1"})
                .as_object()
                .unwrap()
                .clone(),
        };
        Session::new("s1".into(), "t".into(), Vsn::V2, &claims)
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

    fn keys() -> Keys {
        Keys::new(SECRET.to_vec())
    }

    fn handle(s: &mut Session, m: Inbound) -> Vec<Effect> {
        handle_at(s, m, NOW)
    }

    fn handle_at(s: &mut Session, m: Inbound, now_secs: i64) -> Vec<Effect> {
        handle_with(
            s,
            m,
            now_secs as u64 * 1000,
            &Limits::default(),
            &mut Rates::default(),
            0,
        )
    }

    fn handle_with(
        s: &mut Session,
        m: Inbound,
        now_ms: u64,
        limits: &Limits,
        rates: &mut Rates,
        users: u32,
    ) -> Vec<Effect> {
        let keys = keys();
        s.handle(
            m,
            &mut Ctx {
                now_ms,
                keys: &keys,
                limits,
                rates,
                users,
                fresh_key: &mut || "generated-key".to_string(),
            },
        )
    }

    fn join(s: &mut Session, join_ref: &str, topic: &str, config: Value) -> Vec<Effect> {
        handle(
            s,
            msg(Some(join_ref), join_ref, topic, "phx_join", json!({"config": config})),
        )
    }

    /// The reason of the join error among `effects` (answered after the backoff), or null.
    fn refused(effects: &[Effect]) -> Value {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::RefuseJoin(o) => {
                    let reply: Value = serde_json::from_str(&frame::encode(Vsn::V2, o)).unwrap();
                    Some(reply[4]["response"]["reason"].clone())
                }
                _ => None,
            })
            .unwrap_or(Value::Null)
    }

    /// What reaches the client, as V2 frames (join replies included).
    fn sent(effects: &[Effect]) -> Vec<Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(o) | Effect::Join { reply: o, .. } => {
                    Some(serde_json::from_str(&frame::encode(Vsn::V2, o)).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn join_replies_ok_with_empty_postgres_changes() {
        let mut s = session();
        let effects = join(&mut s, "1", "realtime:room1", json!({}));
        assert_eq!(
            sent(&effects),
            vec![json!(["1", "1", "realtime:room1", "phx_reply", {"status":"ok","response":{"postgres_changes":[]}}])]
        );
        assert_eq!(s.channels.len(), 1);
    }

    #[test]
    fn join_echoes_bindings_with_ids_and_asks_for_registration() {
        let mut s = session();
        let a = json!({"event": "INSERT", "schema": "public", "table": "m", "filter": "id=eq.1"});
        let b = json!({"event": "*", "schema": "public", "table": "p", "select": ["id"]});
        let config = json!({"postgres_changes": [a, b, a], "postgres_changes_options": {"wait": true}});
        let e = join(&mut s, "1", "realtime:room", config);
        let Effect::Join {
            reply,
            postgres: Some(pg),
            ..
        } = &e[0]
        else {
            panic!("expected a join with postgres bindings: {e:?}");
        };
        let reply: Value = serde_json::from_str(&frame::encode(Vsn::V2, reply)).unwrap();
        let echoed = reply[4]["response"]["postgres_changes"].as_array().unwrap().clone();
        assert_eq!(echoed.len(), 3);
        assert_eq!(echoed[0]["filter"], "id=eq.1");
        assert_eq!(echoed[1]["select"], json!(["id"]));
        assert!(echoed[0]["id"].is_u64());
        assert_eq!(echoed[0]["id"], echoed[2]["id"], "identical bindings share an id");
        assert_ne!(echoed[0]["id"], echoed[1]["id"]);
        assert_eq!(pg.bindings.len(), 3);
        assert_eq!(
            pg.claims["sub"], "u1",
            "the socket's claims when the channel brings no token"
        );
        assert!(s.channels[0].postgres);
        // A new token: the subscriptions take its claims.
        let token = sign(json!({"role": "authenticated", "exp": NOW + 60, "sub": "u2"}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "2",
                "realtime:room",
                "access_token",
                json!({"access_token": token}),
            ),
        );
        let [Effect::PostgresClaims { topic, claims }] = &e[..] else {
            panic!("expected new claims for the subscriptions: {e:?}");
        };
        assert_eq!((topic.as_str(), &claims["sub"]), ("realtime:room", &json!("u2")));
        let e = handle(&mut s, msg(Some("1"), "3", "realtime:room", "phx_leave", json!({})));
        assert!(matches!(&e[0], Effect::Leave { postgres: true, .. }));
    }

    #[test]
    fn presence_is_on_when_the_client_or_the_tenant_turns_it_on() {
        let join_with = |client: bool, tenant: bool| {
            let limits = Limits {
                presence_enabled: tenant,
                ..Limits::default()
            };
            let config = json!({"config": {"presence": {"enabled": client}, "broadcast": {"replication_ready": true}}});
            let m = msg(Some("1"), "1", "realtime:p", "phx_join", config);
            match handle_with(&mut session(), m, NOW as u64 * 1000, &limits, &mut Rates::default(), 0).remove(0) {
                Effect::Join {
                    presence_state,
                    replication_ready,
                    ..
                } => {
                    assert!(replication_ready);
                    presence_state
                }
                other => panic!("expected a join: {other:?}"),
            }
        };
        assert!(!join_with(false, false));
        assert!(join_with(true, false));
        assert!(join_with(false, true));
    }

    #[test]
    fn log_lines_follow_the_socket_log_level() {
        let lines = |e: &[Effect]| -> Vec<String> {
            e.iter()
                .filter_map(|e| match e {
                    Effect::Log(line) => Some(format!("{:?} {}", line.level, line.message)),
                    _ => None,
                })
                .collect()
        };
        let mut quiet = session();
        assert_eq!(
            lines(&join(&mut quiet, "1", "realtime:a", json!({}))),
            Vec::<String>::new()
        );
        assert_eq!(
            lines(&join(&mut quiet, "2", "realtime:", json!({}))),
            ["Error realtime:: TopicNameRequired: You must provide a topic name"],
            "join errors are logged at any level"
        );
        let mut loud = session();
        loud.log_level = LogLevel::parse(Some("info"));
        assert_eq!(
            lines(&join(&mut loud, "1", "realtime:a", json!({}))),
            ["Info realtime:a: joined"]
        );
        let m = msg(
            Some("1"),
            "2",
            "realtime:a",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {}}),
        );
        assert_eq!(lines(&handle(&mut loud, m)), ["Info realtime:a: received a broadcast"]);
        assert_eq!(LogLevel::parse(Some("debug")), LogLevel::Error);
    }

    #[test]
    fn bytes_per_second_close_the_channel_that_sends() {
        let limits = Limits {
            max_bytes_per_second: 1000,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let mut s = session();
        let now = NOW as u64 * 1000;
        handle_with(
            &mut s,
            msg(Some("1"), "1", "realtime:b", "phx_join", json!({})),
            now,
            &limits,
            &mut rates,
            0,
        );
        let send = |s: &mut Session, rates: &mut Rates| {
            let m = msg(
                Some("1"),
                "2",
                "realtime:b",
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {}}),
            );
            handle_with(s, m, now, &limits, rates, 0)
        };
        assert!(matches!(send(&mut s, &mut rates)[0], Effect::Broadcast { .. }));
        // The hub counts what the sockets sent and received: 5 KB within the first 5 s bucket.
        rates.bytes.add(now, 5_001);
        let e = send(&mut s, &mut rates);
        assert_eq!(sent(&e)[0][4]["message"], "Too many bytes per second");
        assert_eq!(sent(&e)[1][3], "phx_close");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn join_errors() {
        let mut s = session();
        let e = join(&mut s, "1", "realtime:", json!({}));
        assert_eq!(refused(&e), "TopicNameRequired: You must provide a topic name");
        let private_only = Limits {
            private_only: true,
            ..Limits::default()
        };
        let m = msg(Some("9"), "9", "realtime:open", "phx_join", json!({"config": {}}));
        let e = handle_with(&mut s, m, NOW as u64 * 1000, &private_only, &mut Rates::default(), 0);
        assert_eq!(refused(&e), "PrivateOnly: This project only allows private channels");
        let e = join(
            &mut s,
            "4",
            "realtime:pub",
            json!({"broadcast": {"replay": {"since": 1}}}),
        );
        assert_eq!(
            refused(&e),
            "UnableToReplayMessages: Replay is not allowed for public channels"
        );
        let e = join(
            &mut s,
            "5",
            "realtime:priv",
            json!({"private": true, "broadcast": {"replay": {"since": "x"}}}),
        );
        assert_eq!(refused(&e), "UnableToReplayMessages: Replay params are not valid");
        let e = join(&mut s, "2", "room1", json!({}));
        assert_eq!(
            sent(&e)[0][4],
            json!({"status":"error","response":{"reason":"unmatched topic"}})
        );
        assert!(s.channels.is_empty());
    }

    #[test]
    fn private_joins_wait_for_the_policies_and_honour_write_permissions() {
        let mut s = session();
        let e = join(
            &mut s,
            "1",
            "realtime:secret",
            json!({"private": true, "presence": {"enabled": true}}),
        );
        let Effect::Join {
            reply,
            private: Some(p),
            ..
        } = &e[0]
        else {
            panic!("expected a private join: {e:?}");
        };
        assert!(p.presence);
        assert_eq!(p.claims["sub"], "u1");
        // Refused: the join is undone with upstream's text.
        let refusal = s.refuse_private("realtime:secret", reply);
        assert!(s.channels.is_empty());
        assert_eq!(
            refused(&refusal),
            "Unauthorized: You do not have permissions to read from this Channel topic: secret"
        );
        // Admitted; write is asked at the first broadcast and at the first presence message,
        // before anything is counted, and the same message is handed in again.
        join(
            &mut s,
            "2",
            "realtime:secret",
            json!({"private": true, "broadcast": {"ack": true}}),
        );
        s.admit_private("realtime:secret", &[Extension::Broadcast]);
        let broadcast = || {
            msg(
                Some("2"),
                "3",
                "realtime:secret",
                "broadcast",
                json!({"event": "e", "payload": {}}),
            )
        };
        let track = || {
            msg(
                Some("2"),
                "4",
                "realtime:secret",
                "presence",
                json!({"event": "track", "payload": {}}),
            )
        };
        let check = |extension| {
            vec![Effect::CheckWrite {
                topic: "realtime:secret".into(),
                extension,
            }]
        };
        assert_eq!(handle(&mut s, broadcast()), check(Extension::Broadcast));
        assert_eq!(handle(&mut s, track()), check(Extension::Presence));
        // Not allowed: broadcasts dropped even with ack, tracks refused; not asked again.
        s.record_write("realtime:secret", Extension::Broadcast, Some(false));
        s.record_write("realtime:secret", Extension::Presence, Some(false));
        assert!(handle(&mut s, broadcast()).is_empty());
        assert_eq!(
            sent(&handle(&mut s, track()))[0][4],
            json!({"status": "error", "response": {}})
        );
        // Policies that could not be asked refuse this message and are asked at the next.
        s.record_write("realtime:secret", Extension::Broadcast, None);
        assert_eq!(handle(&mut s, broadcast()), check(Extension::Broadcast));
        s.record_write("realtime:secret", Extension::Broadcast, Some(true));
        assert!(matches!(handle(&mut s, broadcast())[0], Effect::Broadcast { .. }));
        // A new token readmits the channel: write is asked again.
        s.admit_private("realtime:secret", &[Extension::Presence]);
        assert!(s.channels[0].presence_only);
        assert_eq!(handle(&mut s, broadcast()), check(Extension::Broadcast));
        let e = handle(&mut s, msg(Some("2"), "6", "realtime:secret", "phx_leave", json!({})));
        assert!(matches!(&e[0], Effect::Leave { private: true, .. }));
    }

    #[test]
    fn join_with_expired_socket_token_fails() {
        let mut s = session();
        s.exp = NOW - 5;
        let e = join(&mut s, "1", "realtime:a", json!({}));
        assert_eq!(refused(&e), "InvalidJWTToken: Token has expired 5 seconds ago");
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
        let e = handle(&mut s, msg(Some("1"), "5", "realtime:a", "phx_leave", json!({})));
        assert_eq!(
            sent(&e),
            vec![
                json!(["1", "5", "realtime:a", "phx_reply", {"status":"ok","response":{}}]),
                json!(["1", "1", "realtime:a", "phx_close", {}]),
            ]
        );
        assert!(s.channels.is_empty());
        // Leaving again is still answered ok.
        let e = handle(&mut s, msg(Some("1"), "6", "realtime:a", "phx_leave", json!({})));
        assert_eq!(sent(&e)[0][4]["status"], "ok");
    }

    #[test]
    fn heartbeat() {
        let mut s = session();
        let e = handle(&mut s, msg(None, "12", "phoenix", "heartbeat", json!({})));
        assert_eq!(
            sent(&e),
            vec![json!([null, "12", "phoenix", "phx_reply", {"status":"ok","response":{}}])]
        );
    }

    #[test]
    fn unjoined_topic_is_unmatched() {
        let mut s = session();
        let e = handle(
            &mut s,
            msg(Some("1"), "2", "realtime:nope", "broadcast", json!({"event": "x"})),
        );
        assert_eq!(
            sent(&e)[0],
            json!(["1", "2", "realtime:nope", "phx_reply", {"status":"error","response":{"reason":"unmatched topic"}}])
        );
    }

    #[test]
    fn broadcast_honours_self_and_ack() {
        let mut s = session();
        join(
            &mut s,
            "1",
            "realtime:a",
            json!({"broadcast": {"self": true, "ack": true}}),
        );
        join(&mut s, "2", "realtime:b", json!({}));
        let payload = json!({"type": "broadcast", "event": "move", "payload": {"x": 1}});
        let e = handle(&mut s, msg(Some("1"), "3", "realtime:a", "broadcast", payload.clone()));
        assert_eq!(
            e[0],
            Effect::Broadcast {
                topic: "realtime:a".into(),
                broadcast: Broadcast::Json(payload.clone()),
                include_sender: true
            }
        );
        assert_eq!(
            sent(&e),
            vec![json!(["1", "3", "realtime:a", "phx_reply", {"status":"ok","response":{}}])]
        );
        let e = handle(&mut s, msg(Some("2"), "4", "realtime:b", "broadcast", payload));
        assert_eq!(e.len(), 1, "no ack without config.broadcast.ack");
        assert!(matches!(
            &e[0],
            Effect::Broadcast {
                include_sender: false,
                ..
            }
        ));
    }

    #[test]
    fn binary_broadcast_becomes_user_broadcast() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let user = UserBroadcast {
            event: "e".into(),
            encoding: Encoding::Binary,
            payload: vec![1, 2],
            meta: None,
        };
        let m = Inbound {
            join_ref: Some("1".into()),
            ref_: Some("2".into()),
            topic: "realtime:a".into(),
            event: "broadcast".into(),
            payload: InboundPayload::UserBroadcast(user.clone()),
        };
        assert!(matches!(&handle(&mut s, m)[0], Effect::Broadcast { broadcast: Broadcast::User(u), .. } if *u == user));
    }

    #[test]
    fn stale_join_ref_is_ignored_and_missing_one_accepted() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let payload = json!({"type": "broadcast", "event": "x", "payload": {}});
        assert!(handle(&mut s, msg(Some("0"), "2", "realtime:a", "broadcast", payload.clone())).is_empty());
        assert_eq!(
            handle(&mut s, msg(None, "3", "realtime:a", "broadcast", payload)).len(),
            1
        );
    }

    #[test]
    fn non_object_broadcast_is_dropped() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"broadcast": {"ack": true}}));
        assert!(handle(&mut s, msg(Some("1"), "2", "realtime:a", "broadcast", json!("nope"))).is_empty());
    }

    #[test]
    fn join_generates_a_presence_key_when_none_given_and_asks_for_state() {
        let mut s = session();
        let e = join(&mut s, "1", "realtime:a", json!({"presence": {"enabled": true}}));
        assert!(matches!(
            &e[0],
            Effect::Join {
                presence_state: true,
                ..
            }
        ));
        assert_eq!(s.channels[0].presence_key, "generated-key");
        join(&mut s, "2", "realtime:b", json!({"presence": {"key": "ana"}}));
        assert_eq!(s.channels[1].presence_key, "ana");
    }

    #[test]
    fn track_update_and_untrack() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"presence": {"key": "ana"}}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "2",
                "realtime:a",
                "presence",
                json!({"type": "presence", "event": "TRACK", "payload": {"n": 1}}),
            ),
        );
        assert_eq!(
            e[0],
            Effect::Track {
                topic: "realtime:a".into(),
                key: "ana".into(),
                meta: json!({"n": 1}).as_object().unwrap().clone()
            }
        );
        assert_eq!(
            sent(&e),
            vec![json!(["1", "2", "realtime:a", "phx_reply", {"status": "ok", "response": {}}])]
        );
        assert!(s.channels[0].tracked);
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "3",
                "realtime:a",
                "presence",
                json!({"type": "presence", "event": "untrack"}),
            ),
        );
        assert_eq!(
            e[0],
            Effect::Untrack {
                topic: "realtime:a".into()
            }
        );
        assert!(!s.channels[0].tracked);
    }

    #[test]
    fn bad_presence_messages_get_error_replies() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "2",
                "realtime:a",
                "presence",
                json!({"event": "track", "payload": [1]}),
            ),
        );
        assert_eq!(
            sent(&e)[0][4],
            json!({"status": "error", "response": {"reason": "Presence track payload must be a map"}})
        );
        let e = handle(
            &mut s,
            msg(Some("1"), "3", "realtime:a", "presence", json!({"event": "dance"})),
        );
        assert_eq!(sent(&e)[0][4], json!({"status": "error", "response": {}}));
        assert!(!s.channels[0].tracked);
    }

    #[test]
    fn leaving_and_closing_release_presence() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        join(&mut s, "2", "realtime:b", json!({}));
        handle(
            &mut s,
            msg(
                Some("1"),
                "3",
                "realtime:a",
                "presence",
                json!({"event": "track", "payload": {}}),
            ),
        );
        let e = handle(&mut s, msg(Some("1"), "4", "realtime:a", "phx_leave", json!({})));
        assert_eq!(
            e[0],
            Effect::Leave {
                topic: "realtime:a".into(),
                untrack: true,
                postgres: false,
                private: false
            }
        );
        assert_eq!(
            s.close(),
            vec![Effect::Leave {
                topic: "realtime:b".into(),
                untrack: false,
                postgres: false,
                private: false
            }]
        );
        assert!(s.channels.is_empty());
    }

    #[test]
    fn channel_runs_on_its_access_token() {
        let mut s = session();
        let token = sign(json!({"role": "authenticated", "exp": NOW + 30}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "1",
                "realtime:a",
                "phx_join",
                json!({"config": {}, "access_token": token}),
            ),
        );
        assert_eq!(sent(&e)[0][4]["status"], "ok");
        assert_eq!(s.channels[0].exp, NOW + 30);
        assert_eq!(s.next_expiry(), Some(NOW + 30));
        // sb_ keys are not JWTs: the socket token is used.
        handle(
            &mut s,
            msg(
                Some("2"),
                "2",
                "realtime:b",
                "phx_join",
                json!({"config": {}, "access_token": "sb_publishable_x"}),
            ),
        );
        assert_eq!(s.channels[1].exp, s.exp);
    }

    #[test]
    fn join_with_a_bad_access_token_fails_with_upstream_reasons() {
        let mut s = session();
        let expired = sign(json!({"role": "anon", "exp": NOW - 7}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "1",
                "realtime:a",
                "phx_join",
                json!({"access_token": expired}),
            ),
        );
        assert_eq!(refused(&e), "InvalidJWTToken: Token has expired 7 seconds ago");
        let e = handle(
            &mut s,
            msg(
                Some("2"),
                "2",
                "realtime:a",
                "phx_join",
                json!({"access_token": "garbage"}),
            ),
        );
        assert_eq!(refused(&e), "MalformedJWT: The token provided is not a valid JWT");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn refresh_extends_and_expiry_closes() {
        let mut s = session();
        let short = sign(json!({"role": "anon", "exp": NOW + 10}));
        handle(
            &mut s,
            msg(
                Some("1"),
                "1",
                "realtime:room1",
                "phx_join",
                json!({"access_token": short.clone()}),
            ),
        );
        // Unchanged, null and sb_ tokens are ignored.
        for t in [json!(short), json!(null), json!("sb_secret_x")] {
            assert!(handle(
                &mut s,
                msg(
                    Some("1"),
                    "2",
                    "realtime:room1",
                    "access_token",
                    json!({"access_token": t})
                )
            )
            .is_empty());
        }
        let longer = sign(json!({"role": "anon", "exp": NOW + 100}));
        assert!(handle(
            &mut s,
            msg(
                Some("1"),
                "3",
                "realtime:room1",
                "access_token",
                json!({"access_token": longer})
            )
        )
        .is_empty());
        assert_eq!(s.next_expiry(), Some(NOW + 100));
        assert!(s.expire(NOW + 99).is_empty());
        let e = s.expire(NOW + 103);
        assert_eq!(
            sent(&e),
            vec![
                json!(["1", null, "realtime:room1", "system", {"extension": "system", "status": "error", "message": "Token has expired 3 seconds ago", "channel": "room1"}]),
                json!(["1", "1", "realtime:room1", "phx_close", {}]),
            ]
        );
        assert!(matches!(e[2], Effect::Leave { .. }));
        assert!(s.channels.is_empty());
    }

    #[test]
    fn a_bad_refresh_closes_the_channel() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({}));
        let no_role = sign(json!({"exp": NOW + 100}));
        let e = handle(
            &mut s,
            msg(
                Some("1"),
                "2",
                "realtime:a",
                "access_token",
                json!({"access_token": no_role}),
            ),
        );
        assert_eq!(sent(&e)[0][4]["message"], "Fields `role` and `exp` are required in JWT");
        assert_eq!(sent(&e)[1][3], "phx_close");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn join_limits() {
        let limits = Limits {
            max_channels_per_client: 1,
            max_concurrent_users: 1,
            max_joins_per_second: 1000,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let mut s = session();
        let join_msg = |r: &str, t: &str| msg(Some(r), r, t, "phx_join", json!({}));
        let e = handle_with(
            &mut s,
            join_msg("1", "realtime:a"),
            NOW as u64 * 1000,
            &limits,
            &mut rates,
            1,
        );
        assert_eq!(refused(&e), "ConnectionRateLimitReached: Too many connected users");
        handle_with(
            &mut s,
            join_msg("2", "realtime:a"),
            NOW as u64 * 1000,
            &limits,
            &mut rates,
            0,
        );
        // Already a user: the user limit does not apply to its further joins, the channel limit does.
        let e = handle_with(
            &mut s,
            join_msg("3", "realtime:b"),
            NOW as u64 * 1000,
            &limits,
            &mut rates,
            1,
        );
        assert_eq!(refused(&e), "ChannelRateLimitReached: Too many channels");
    }

    #[test]
    fn joins_per_second_disconnects() {
        let limits = Limits {
            max_joins_per_second: 1,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let mut s = session();
        let now = NOW as u64 * 1000;
        let mut last = Vec::new();
        for i in 0..7 {
            last = handle_with(
                &mut s,
                msg(
                    Some("1"),
                    &i.to_string(),
                    &format!("realtime:r{i}"),
                    "phx_join",
                    json!({}),
                ),
                now,
                &limits,
                &mut rates,
                0,
            );
        }
        assert_eq!(refused(&last), "ClientJoinRateLimitReached: Too many joins per second");
        assert_eq!(last.last(), Some(&Effect::Disconnect));
    }

    #[test]
    fn events_per_second_close_the_channel() {
        let limits = Limits {
            max_events_per_second: 1,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let mut s = session();
        let now = NOW as u64 * 1000;
        handle_with(
            &mut s,
            msg(Some("1"), "1", "realtime:a", "phx_join", json!({})),
            now,
            &limits,
            &mut rates,
            0,
        );
        let payload = json!({"type": "broadcast", "event": "e", "payload": {}});
        let mut last = Vec::new();
        for i in 0..6 {
            last = handle_with(
                &mut s,
                msg(Some("1"), &format!("b{i}"), "realtime:a", "broadcast", payload.clone()),
                now,
                &limits,
                &mut rates,
                0,
            );
        }
        assert_eq!(sent(&last)[0][4]["message"], "Too many messages per second");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn oversized_broadcast_is_dropped_and_acked_with_an_error() {
        let limits = Limits {
            max_payload_size_in_kb: 1,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let mut s = session();
        let now = NOW as u64 * 1000;
        handle_with(
            &mut s,
            msg(
                Some("1"),
                "1",
                "realtime:a",
                "phx_join",
                json!({"config": {"broadcast": {"ack": true}}}),
            ),
            now,
            &limits,
            &mut rates,
            0,
        );
        let big = json!({"type": "broadcast", "event": "e", "payload": {"x": "y".repeat(2000)}});
        let e = handle_with(
            &mut s,
            msg(Some("1"), "2", "realtime:a", "broadcast", big),
            now,
            &limits,
            &mut rates,
            0,
        );
        assert_eq!(
            sent(&e),
            vec![
                json!(["1", "2", "realtime:a", "phx_reply", {"status": "error", "response": "payload_size_exceeded"}])
            ]
        );
        assert_eq!(e.len(), 1, "nothing is broadcast");
    }

    #[test]
    fn presence_limits() {
        let limits = Limits {
            max_client_presence_events_per_window: 2,
            max_payload_size_in_kb: 1,
            ..Limits::default()
        };
        let mut rates = Rates::default();
        let now = NOW as u64 * 1000;
        let track = |r: &str, meta: Value| {
            msg(
                Some("1"),
                r,
                "realtime:a",
                "presence",
                json!({"event": "track", "payload": meta}),
            )
        };
        let mut s = session();
        handle_with(
            &mut s,
            msg(Some("1"), "1", "realtime:a", "phx_join", json!({})),
            now,
            &limits,
            &mut rates,
            0,
        );
        handle_with(&mut s, track("2", json!({"n": 1})), now, &limits, &mut rates, 0);
        handle_with(&mut s, track("3", json!({"n": 2})), now, &limits, &mut rates, 0);
        let e = handle_with(&mut s, track("4", json!({"n": 3})), now, &limits, &mut rates, 0);
        assert_eq!(sent(&e)[0][4]["message"], "Client presence rate limit exceeded");
        // A new window starts after client_presence_window_ms.
        let mut s = session();
        handle_with(
            &mut s,
            msg(Some("1"), "1", "realtime:a", "phx_join", json!({})),
            now,
            &limits,
            &mut rates,
            0,
        );
        let e = handle_with(
            &mut s,
            track("2", json!({"big": "z".repeat(2000)})),
            now + 40_000,
            &limits,
            &mut rates,
            0,
        );
        assert_eq!(sent(&e)[0][4]["message"], "Track message size exceeded");
    }

    #[test]
    fn state_survives_serialization() {
        let mut s = session();
        join(&mut s, "1", "realtime:a", json!({"broadcast": {"self": true}}));
        let restored: Session = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(restored, s);
    }
}
