//! The connection's logic without I/O: a state machine fed with what happened (the socket opened,
//! a frame arrived, time passed) and drained of what to do (connect, send a frame, deliver an
//! event, complete a call). The clock and the jitter's randomness are passed in, so every
//! behaviour is unit-tested with a fake clock; `driver` runs it on tokio and a WebSocket.
//!
//! - socket: connect, heartbeat every interval with its reply awaited, reconnect with backoff;
//! - channels: join with the current token, rejoin after a reconnect or an error, leave;
//! - pushes: sent when joined, buffered (bounded) until then, each with a deadline.

mod channel;
mod schedule;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_shared::frame::{self, Encoding, Inbound, InboundPayload, Vsn, WireFrame};
use tracing::{debug, warn};

pub use channel::{Binding, JoinParams};
pub use schedule::Backoff;

use crate::event::{ChannelEvent, CloseReason, HeartbeatStatus, Payload, PostgresChange, SubscribeStatus, SystemMessage};
use crate::Error;
use channel::{is_fatal_join_error, Channel, Phase, Push};

/// Identifies a call (join, leave, push) whose completion the driver waits for.
pub type OpId = u64;

/// The settings the machine acts on.
#[derive(Clone, Debug)]
pub struct Options {
    pub vsn: Vsn,
    pub heartbeat_interval: Duration,
    /// How long a heartbeat's reply may take before the connection counts as dead.
    pub heartbeat_timeout: Duration,
    /// Joins and pushes: how long their reply may take.
    pub timeout: Duration,
    pub reconnect: Backoff,
    pub rejoin: Backoff,
    /// Pushes kept while a channel is not joined (realtime-js keeps 100); the oldest go first.
    pub buffer_limit: usize,
    /// Close the socket this long after the last channel left; `None` keeps it open.
    pub idle_disconnect: Option<Duration>,
}

/// What the driver is to do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Open the WebSocket; report `opened` or `closed`.
    Connect,
    Send(WireFrame),
    /// Close the WebSocket (code 1000); report `closed`.
    Close,
    Event { topic: String, event: ChannelEvent },
    Done { op: OpId, result: Result<Value, Error> },
    Heartbeat { status: HeartbeatStatus, rtt: Option<Duration> },
    /// Reconnecting after `delay`, attempt `attempt`.
    Reconnecting { attempt: u32, delay: Duration },
    /// Time to ask the token provider for a fresh token (each heartbeat, and before expiry).
    RefreshToken,
}

#[derive(Debug, PartialEq)]
enum Socket {
    Idle,
    Connecting,
    Open,
    /// Closing; reconnect afterwards unless the user disconnected.
    Closing { reconnect: bool },
    /// Reconnecting at `until`.
    Waiting { until: Instant },
}

pub struct Machine {
    options: Options,
    socket: Socket,
    /// Failed connection attempts in a row.
    attempts: u32,
    next_ref: u64,
    access_token: Option<String>,
    refresh_at: Option<Instant>,
    heartbeat_at: Option<Instant>,
    /// The ref and send time of the heartbeat awaiting its reply.
    heartbeat_pending: Option<(String, Instant)>,
    idle_at: Option<Instant>,
    channels: Vec<Channel>,
    outputs: VecDeque<Output>,
}

impl Machine {
    pub fn new(options: Options, access_token: Option<String>) -> Self {
        Machine {
            options,
            socket: Socket::Idle,
            attempts: 0,
            next_ref: 0,
            access_token,
            refresh_at: None,
            heartbeat_at: None,
            heartbeat_pending: None,
            idle_at: None,
            channels: vec![],
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn is_connected(&self) -> bool {
        self.socket == Socket::Open
    }

    /// A channel's presence state; `None` for a topic this connection does not have.
    pub fn presences(&self, topic: &str) -> Option<crate::presence::Presences> {
        self.channels.iter().find(|c| c.topic == topic).map(|c| c.presence.presences())
    }

    /// The earliest time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let socket = match &self.socket {
            Socket::Waiting { until } => [Some(*until), None],
            Socket::Open => [
                self.heartbeat_at,
                self.heartbeat_pending.as_ref().map(|(_, sent)| *sent + self.options.heartbeat_timeout),
            ],
            _ => [None, None],
        };
        let channels = self.channels.iter().flat_map(|ch| {
            let phase = match &ch.phase {
                Phase::Waiting { retry_at } if self.socket == Socket::Open => *retry_at,
                Phase::Waiting { .. } => None,
                Phase::Joining { deadline } => Some(*deadline),
                Phase::Joined { postgres_by } => *postgres_by,
                Phase::Leaving { deadline, .. } => Some(*deadline),
            };
            std::iter::once(phase).chain(ch.unsent.iter().chain(&ch.awaiting_reply).map(|p| Some(p.deadline)))
        });
        [self.refresh_at, self.idle_at].into_iter().chain(socket).chain(channels).flatten().min()
    }

    // ---- What the user asks for ----

    /// Open the socket (no-op when it is open or on its way).
    pub fn connect(&mut self) {
        if self.socket == Socket::Idle {
            self.socket = Socket::Connecting;
            self.outputs.push_back(Output::Connect);
        }
    }

    /// Join `topic`; `op` completes once subscribed (or with why not).
    pub fn join(&mut self, now: Instant, topic: &str, params: JoinParams, op: OpId) {
        if let Some(ch) = self.channel_mut(topic) {
            // One channel per topic: the client layer hands out the existing one, so a second
            // join only waits for the first.
            if ch.is_joined() && ch.subscribe_op.is_none() {
                self.done(op, Ok(Value::Null));
            } else {
                self.done(op, Err(Error::JoinRefused(format!("{topic} is already being joined"))));
            }
            return;
        }
        self.idle_at = None;
        self.channels.push(Channel::new(topic.to_string(), params, op));
        let index = self.channels.len() - 1;
        if self.socket == Socket::Open {
            self.send_join(now, index);
        } else {
            // The first attempt's deadline runs from now, whether or not the socket is open yet.
            self.channels[index].phase = Phase::Joining { deadline: now + self.options.timeout };
            self.connect();
        }
    }

    /// Leave `topic`; `op` completes when the server confirmed (or the socket is gone).
    pub fn leave(&mut self, now: Instant, topic: &str, op: OpId) {
        let Some(index) = self.index_of(topic) else {
            self.done(op, Ok(Value::Null));
            return;
        };
        let open = self.socket == Socket::Open;
        let ch = &self.channels[index];
        if open && ch.join_ref.is_some() && matches!(ch.phase, Phase::Joined { .. } | Phase::Joining { .. }) {
            let ref_ = self.make_ref();
            let join_ref = self.channels[index].join_ref.clone();
            self.send(Inbound {
                join_ref,
                ref_: Some(ref_.clone()),
                topic: topic.to_string(),
                event: "phx_leave".into(),
                payload: InboundPayload::Json(json!({})),
            });
            self.channels[index].phase = Phase::Leaving {
                ref_,
                deadline: now + self.options.timeout,
                op,
            };
        } else {
            self.remove(now, index, CloseReason::Unsubscribed, Error::Disconnected);
            self.done(op, Ok(Value::Null));
        }
    }

    /// Push `event` on `topic`. Without `wants_reply` the op completes once sent.
    pub fn push(&mut self, now: Instant, topic: &str, event: &str, payload: InboundPayload, wants_reply: bool, op: OpId) {
        if let InboundPayload::UserBroadcast(user) = &payload {
            if self.options.vsn == Vsn::V1 && user.encoding == Encoding::Binary {
                self.done(op, Err(Error::BadPayload("binary payloads need protocol vsn 2.0.0".into())));
                return;
            }
        }
        let Some(index) = self.index_of(topic) else {
            self.done(op, Err(Error::Disconnected));
            return;
        };
        let push = Push {
            op,
            event: event.to_string(),
            payload,
            wants_reply,
            deadline: now + self.options.timeout,
            ref_: None,
        };
        if self.socket == Socket::Open && self.channels[index].is_joined() {
            self.send_push(index, push);
            return;
        }
        let limit = self.options.buffer_limit;
        let ch = &mut self.channels[index];
        ch.unsent.push_back(push);
        if ch.unsent.len() > limit {
            if let Some(dropped) = ch.unsent.pop_front() {
                warn!(topic, "push buffer full ({limit}): the oldest push is dropped");
                self.done(dropped.op, Err(Error::BufferFull));
            }
        }
    }

    /// A new access token (or none): every joined channel gets it as `access_token`, later joins
    /// carry it. `expires_in` schedules the next `RefreshToken` shortly before it expires.
    pub fn set_token(&mut self, now: Instant, token: Option<String>, expires_in: Option<Duration>) {
        self.refresh_at = expires_in.map(|left| now + left.saturating_sub(Duration::from_secs(30).min(left / 2)));
        if self.access_token == token {
            return;
        }
        self.access_token = token.clone();
        if self.socket != Socket::Open {
            return;
        }
        let joined: Vec<usize> = (0..self.channels.len()).filter(|i| self.channels[*i].is_joined()).collect();
        for index in joined {
            let ref_ = self.make_ref();
            let ch = &self.channels[index];
            let msg = Inbound {
                join_ref: ch.join_ref.clone(),
                ref_: Some(ref_),
                topic: ch.topic.clone(),
                event: "access_token".into(),
                payload: InboundPayload::Json(json!({ "access_token": token })),
            };
            self.send(msg);
        }
    }

    /// Leave everything and close the socket; nothing reconnects.
    pub fn disconnect(&mut self, now: Instant) {
        while !self.channels.is_empty() {
            if let Phase::Leaving { op, .. } = self.channels[0].phase {
                self.done(op, Ok(Value::Null));
            }
            self.remove(now, 0, CloseReason::Unsubscribed, Error::Disconnected);
        }
        self.idle_at = None;
        self.refresh_at = None;
        match self.socket {
            Socket::Open | Socket::Connecting => {
                self.socket = Socket::Closing { reconnect: false };
                self.outputs.push_back(Output::Close);
            }
            Socket::Closing { .. } => self.socket = Socket::Closing { reconnect: false },
            Socket::Waiting { .. } | Socket::Idle => self.socket = Socket::Idle,
        }
    }

    // ---- What the driver reports ----

    pub fn opened(&mut self, now: Instant) {
        if self.socket != Socket::Connecting {
            // Disconnected while connecting: the driver closes what opened.
            return;
        }
        debug!("socket open");
        self.socket = Socket::Open;
        self.attempts = 0;
        self.heartbeat_at = Some(now + self.options.heartbeat_interval);
        self.heartbeat_pending = None;
        for index in 0..self.channels.len() {
            if matches!(self.channels[index].phase, Phase::Waiting { .. } | Phase::Joining { .. }) {
                let deadline = match self.channels[index].phase {
                    Phase::Joining { deadline } => Some(deadline),
                    _ => None,
                };
                self.send_join(now, index);
                // A first join keeps the deadline it started with.
                if let (Some(deadline), true) = (deadline, self.channels[index].subscribe_op.is_some()) {
                    self.channels[index].phase = Phase::Joining { deadline };
                }
            }
        }
    }

    /// The socket closed (or could not be opened). `random` feeds the reconnect jitter.
    pub fn closed(&mut self, now: Instant, random: u64) {
        let reconnect = !matches!(self.socket, Socket::Closing { reconnect: false } | Socket::Idle);
        let was_open = self.socket == Socket::Open || self.socket == Socket::Closing { reconnect: true };
        self.heartbeat_at = None;
        if self.heartbeat_pending.take().is_some() || was_open {
            self.outputs.push_back(Output::Heartbeat { status: HeartbeatStatus::Disconnected, rtt: None });
        }
        let mut index = 0;
        while index < self.channels.len() {
            let ch = &mut self.channels[index];
            if let Phase::Leaving { op, .. } = ch.phase {
                // The server forgets a socket's channels with it.
                self.done(op, Ok(Value::Null));
                self.remove(now, index, CloseReason::Unsubscribed, Error::Disconnected);
                continue;
            }
            // Replies to what was sent will not come: the caller learns it now. Joins are
            // made again on the next socket.
            for push in std::mem::take(&mut ch.awaiting_reply) {
                self.outputs.push_back(Output::Done { op: push.op, result: Err(Error::Disconnected) });
            }
            let ch = &mut self.channels[index];
            ch.join_ref = None;
            if !matches!(ch.phase, Phase::Joining { .. }) || ch.subscribe_op.is_none() {
                ch.phase = Phase::Waiting { retry_at: None };
            }
            index += 1;
        }
        if !reconnect {
            self.socket = Socket::Idle;
            return;
        }
        self.attempts += 1;
        let delay = self.options.reconnect.delay(self.attempts, random);
        self.socket = Socket::Waiting { until: now + delay };
        self.outputs.push_back(Output::Reconnecting { attempt: self.attempts, delay });
    }

    /// Time passed: whatever is due happens. `random` feeds the jitter of rejoins.
    pub fn handle_timeout(&mut self, now: Instant, random: u64) {
        if let Socket::Waiting { until } = self.socket {
            if until <= now {
                self.socket = Socket::Connecting;
                self.outputs.push_back(Output::Connect);
            }
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.outputs.push_back(Output::RefreshToken);
        }
        if self.idle_at.is_some_and(|at| at <= now) {
            self.idle_at = None;
            if self.channels.is_empty() {
                self.disconnect(now);
            }
        }
        if self.socket == Socket::Open {
            self.heartbeat(now);
        }
        let mut index = 0;
        while index < self.channels.len() {
            if self.channel_timers(now, index, random) {
                index += 1;
            }
        }
    }

    /// A frame from the server. Malformed ones are logged and skipped.
    pub fn received(&mut self, now: Instant, frame: WireFrame, random: u64) {
        let msg = match frame::decode_at_client(self.options.vsn, &frame) {
            Ok(msg) => msg,
            Err(e) => {
                warn!("dropped a frame from the server: {e}");
                return;
            }
        };
        if msg.topic == "phoenix" {
            self.heartbeat_reply(now, &msg);
            return;
        }
        let Some(index) = self.index_of(&msg.topic) else {
            debug!(topic = msg.topic, event = msg.event, "message for a channel this client does not have");
            return;
        };
        let ch = &self.channels[index];
        if msg.join_ref.is_some() && msg.join_ref != ch.join_ref {
            debug!(topic = msg.topic, event = msg.event, "message of an earlier join dropped");
            return;
        }
        let payload = match msg.payload {
            InboundPayload::Json(payload) => payload,
            InboundPayload::UserBroadcast(user) => {
                let payload = match user.encoding {
                    Encoding::Json => match serde_json::from_slice(&user.payload) {
                        Ok(value) => Payload::Json(value),
                        Err(_) => {
                            warn!(topic = msg.topic, "binary broadcast says JSON but is not: dropped");
                            return;
                        }
                    },
                    Encoding::Binary => Payload::Binary(user.payload),
                };
                self.event(index, ChannelEvent::Broadcast { event: user.event, payload });
                return;
            }
        };
        match msg.event.as_str() {
            "phx_reply" => self.reply(now, index, msg.ref_.as_deref(), &payload, random),
            "phx_close" => {
                if let Phase::Leaving { op, .. } = self.channels[index].phase {
                    self.done(op, Ok(Value::Null));
                    self.remove(now, index, CloseReason::Unsubscribed, Error::Disconnected);
                } else {
                    let reason = self.channels[index].last_error.clone();
                    if let Some(op) = self.channels[index].subscribe_op.take() {
                        self.done(op, Err(Error::ClosedByServer(reason.clone())));
                    }
                    self.remove(now, index, CloseReason::ByServer(reason.clone()), Error::ClosedByServer(reason));
                }
            }
            "phx_error" => {
                let retry_at = now + self.options.rejoin.delay(self.channels[index].failed_joins + 1, random);
                self.channels[index].failed_joins += 1;
                self.channels[index].phase = Phase::Waiting { retry_at: Some(retry_at) };
                self.event(index, ChannelEvent::Status(SubscribeStatus::ChannelError("channel error".into())));
            }
            "presence_state" => {
                let join_ref = self.channels[index].join_ref.clone();
                let events = self.channels[index].presence.on_state(join_ref.as_deref(), &payload);
                events.into_iter().for_each(|e| self.event(index, e));
            }
            "presence_diff" => {
                let join_ref = self.channels[index].join_ref.clone();
                let events = self.channels[index].presence.on_diff(join_ref.as_deref(), &payload);
                events.into_iter().for_each(|e| self.event(index, e));
            }
            "broadcast" => {
                let Some(event) = payload.get("event").and_then(Value::as_str) else {
                    warn!(topic = msg.topic, "broadcast without an event name: dropped");
                    return;
                };
                let inner = payload.get("payload").cloned().unwrap_or(Value::Null);
                self.event(index, ChannelEvent::Broadcast { event: event.to_string(), payload: Payload::Json(inner) });
            }
            "postgres_changes" => {
                let ids: Vec<u64> = payload["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
                let Some(data) = payload.get("data").and_then(Value::as_object) else {
                    warn!(topic = msg.topic, "postgres_changes without data: dropped");
                    return;
                };
                if ids.iter().any(|id| self.channels[index].binding_ids.contains(id)) {
                    self.event(index, ChannelEvent::PostgresChange(PostgresChange::new(data.clone())));
                }
            }
            "system" => self.system(now, index, &payload),
            other => debug!(topic = msg.topic, event = other, "event this client does not handle"),
        }
    }

    // ---- Inside ----

    fn heartbeat(&mut self, now: Instant) {
        if let Some((_, sent)) = &self.heartbeat_pending {
            if *sent + self.options.heartbeat_timeout <= now {
                warn!("no heartbeat reply within {:?}: the connection is dead, reconnecting", self.options.heartbeat_timeout);
                self.heartbeat_pending = None;
                self.outputs.push_back(Output::Heartbeat { status: HeartbeatStatus::Timeout, rtt: None });
                self.socket = Socket::Closing { reconnect: true };
                self.outputs.push_back(Output::Close);
            }
            return;
        }
        if self.heartbeat_at.is_some_and(|at| at <= now) {
            let ref_ = self.make_ref();
            self.send(Inbound {
                join_ref: None,
                ref_: Some(ref_.clone()),
                topic: "phoenix".into(),
                event: "heartbeat".into(),
                payload: InboundPayload::Json(json!({})),
            });
            self.heartbeat_pending = Some((ref_, now));
            self.heartbeat_at = Some(now + self.options.heartbeat_interval);
            self.outputs.push_back(Output::Heartbeat { status: HeartbeatStatus::Sent, rtt: None });
            self.outputs.push_back(Output::RefreshToken);
        }
    }

    fn heartbeat_reply(&mut self, now: Instant, msg: &Inbound) {
        let Some((ref_, sent)) = &self.heartbeat_pending else {
            return;
        };
        if msg.event != "phx_reply" || msg.ref_.as_deref() != Some(ref_.as_str()) {
            return;
        }
        let ok = matches!(&msg.payload, InboundPayload::Json(p) if p["status"] == "ok");
        let rtt = now.saturating_duration_since(*sent);
        self.heartbeat_pending = None;
        let status = if ok { HeartbeatStatus::Ok } else { HeartbeatStatus::Error };
        self.outputs.push_back(Output::Heartbeat { status, rtt: Some(rtt) });
    }

    /// Handles a channel's due timers; `false` when the channel was removed.
    fn channel_timers(&mut self, now: Instant, index: usize, random: u64) -> bool {
        let open = self.socket == Socket::Open;
        // Pushes past their deadline fail, sent or not.
        let ch = &mut self.channels[index];
        let mut expired = vec![];
        for pushes in [&mut ch.unsent, &mut ch.awaiting_reply] {
            pushes.retain(|p| {
                let live = p.deadline > now;
                if !live {
                    expired.push(p.op);
                }
                live
            });
        }
        for op in expired {
            self.done(op, Err(Error::TimedOut));
        }
        match self.channels[index].phase {
            Phase::Waiting { retry_at: Some(at) } if open && at <= now => self.send_join(now, index),
            Phase::Joining { deadline } if deadline <= now => {
                if let Some(op) = self.channels[index].subscribe_op.take() {
                    self.done(op, Err(Error::TimedOut));
                    self.abandon(now, index);
                    return false;
                }
                self.rejoin_later(now, index, random, SubscribeStatus::TimedOut);
            }
            Phase::Joined { postgres_by: Some(by) } if by <= now => {
                if let Some(op) = self.channels[index].subscribe_op.take() {
                    self.done(op, Err(Error::TimedOut));
                    self.abandon(now, index);
                    return false;
                }
                self.channels[index].phase = Phase::Joined { postgres_by: None };
                self.event(index, ChannelEvent::Status(SubscribeStatus::TimedOut));
            }
            Phase::Leaving { op, deadline, .. } if deadline <= now => {
                self.done(op, Ok(Value::Null));
                self.remove(now, index, CloseReason::Unsubscribed, Error::Disconnected);
                return false;
            }
            _ => {}
        }
        true
    }

    fn send_join(&mut self, now: Instant, index: usize) {
        let ref_ = self.make_ref();
        let mut payload = json!({ "config": self.channels[index].params.config });
        if let Some(token) = &self.access_token {
            payload["access_token"] = token.clone().into();
        }
        let ch = &mut self.channels[index];
        ch.join_ref = Some(ref_.clone());
        ch.phase = Phase::Joining { deadline: now + self.options.timeout };
        let topic = ch.topic.clone();
        self.send(Inbound {
            join_ref: Some(ref_.clone()),
            ref_: Some(ref_),
            topic,
            event: "phx_join".into(),
            payload: InboundPayload::Json(payload),
        });
    }

    fn reply(&mut self, now: Instant, index: usize, ref_: Option<&str>, payload: &Value, random: u64) {
        let ok = payload["status"] == "ok";
        let response = payload.get("response").cloned().unwrap_or(Value::Null);
        let ch = &mut self.channels[index];
        if let Phase::Leaving { ref_: leave_ref, op, .. } = &ch.phase {
            if ref_ == Some(leave_ref.as_str()) {
                let op = *op;
                self.done(op, Ok(Value::Null));
                self.remove(now, index, CloseReason::Unsubscribed, Error::Disconnected);
                return;
            }
        }
        if matches!(ch.phase, Phase::Joining { .. }) && ref_.is_some() && ref_ == ch.join_ref.as_deref() {
            if ok {
                self.joined(now, index, &response);
            } else {
                self.join_refused(now, index, reason_of(&response), random);
            }
            return;
        }
        if let Some(at) = ch.awaiting_reply.iter().position(|p| p.ref_.as_deref() == ref_ && ref_.is_some()) {
            let Some(push) = ch.awaiting_reply.remove(at) else { return };
            let result = if ok { Ok(response) } else { Err(Error::Refused(reason_of(&response))) };
            self.done(push.op, result);
        }
    }

    fn joined(&mut self, now: Instant, index: usize, response: &Value) {
        let server = response.get("postgres_changes").and_then(Value::as_array).cloned().unwrap_or_default();
        let ids: Option<Vec<u64>> = self.channels[index]
            .params
            .bindings
            .iter()
            .enumerate()
            .map(|(i, binding)| {
                let entry = server.get(i).filter(|entry| binding.matches_reply(entry))?;
                entry["id"].as_u64()
            })
            .collect();
        let Some(ids) = ids else {
            warn!(topic = self.channels[index].topic, "mismatch between server and client bindings for postgres changes");
            if let Some(op) = self.channels[index].subscribe_op.take() {
                self.done(op, Err(Error::BindingMismatch));
                self.abandon(now, index);
            } else {
                self.leave_and_close(now, index, CloseReason::RejoinRefused(Error::BindingMismatch.to_string()));
            }
            return;
        };
        let ch = &mut self.channels[index];
        ch.binding_ids = ids;
        ch.failed_joins = 0;
        let wait_postgres = !ch.params.bindings.is_empty();
        ch.phase = Phase::Joined {
            postgres_by: wait_postgres.then(|| now + self.options.timeout),
        };
        for push in std::mem::take(&mut ch.unsent) {
            self.send_push(index, push);
        }
        if !wait_postgres {
            self.subscribed(index);
        }
    }

    fn subscribed(&mut self, index: usize) {
        if let Some(op) = self.channels[index].subscribe_op.take() {
            self.done(op, Ok(Value::Null));
        }
        self.event(index, ChannelEvent::Status(SubscribeStatus::Subscribed));
    }

    fn join_refused(&mut self, now: Instant, index: usize, reason: String, random: u64) {
        if let Some(op) = self.channels[index].subscribe_op.take() {
            self.done(op, Err(Error::JoinRefused(reason)));
            self.remove(now, index, CloseReason::RejoinRefused(String::new()), Error::Disconnected);
            return;
        }
        if is_fatal_join_error(&reason) {
            warn!(topic = self.channels[index].topic, "rejoin refused, not retried: {reason}");
            self.remove(now, index, CloseReason::RejoinRefused(reason), Error::Disconnected);
            return;
        }
        self.rejoin_later(now, index, random, SubscribeStatus::ChannelError(reason));
    }

    fn rejoin_later(&mut self, now: Instant, index: usize, random: u64, status: SubscribeStatus) {
        let ch = &mut self.channels[index];
        ch.failed_joins += 1;
        let delay = self.options.rejoin.delay(ch.failed_joins, random);
        ch.phase = Phase::Waiting { retry_at: Some(now + delay) };
        warn!(topic = ch.topic, "rejoin in {delay:?}: {status:?}");
        self.event(index, ChannelEvent::Status(status));
    }

    fn system(&mut self, now: Instant, index: usize, payload: &Value) {
        let message = SystemMessage {
            extension: payload["extension"].as_str().unwrap_or_default().to_string(),
            ok: payload["status"] == "ok",
            message: payload["message"].as_str().unwrap_or_default().to_string(),
        };
        if !message.ok {
            self.channels[index].last_error = Some(message.message.clone());
        }
        let waiting = matches!(self.channels[index].phase, Phase::Joined { postgres_by: Some(_) });
        self.event(index, ChannelEvent::System(message.clone()));
        if message.extension != "postgres_changes" || !waiting {
            return;
        }
        self.channels[index].phase = Phase::Joined { postgres_by: None };
        if message.ok {
            self.subscribed(index);
        } else if let Some(op) = self.channels[index].subscribe_op.take() {
            self.done(op, Err(Error::PostgresChanges(message.message)));
            self.abandon(now, index);
        } else {
            // A rejoin's registration failed: the server retries it and says so again.
            self.event(index, ChannelEvent::Status(SubscribeStatus::ChannelError(message.message)));
        }
    }

    fn send_push(&mut self, index: usize, mut push: Push) {
        let ref_ = self.make_ref();
        let ch = &self.channels[index];
        let msg = Inbound {
            join_ref: ch.join_ref.clone(),
            ref_: Some(ref_.clone()),
            topic: ch.topic.clone(),
            event: push.event.clone(),
            payload: push.payload.clone(),
        };
        match frame::encode_from_client(self.options.vsn, &msg) {
            Ok(frame) => self.outputs.push_back(Output::Send(frame)),
            Err(e) => {
                self.done(push.op, Err(Error::BadPayload(e.to_string())));
                return;
            }
        }
        if push.wants_reply {
            push.ref_ = Some(ref_);
            self.channels[index].awaiting_reply.push_back(push);
        } else {
            self.done(push.op, Ok(Value::Null));
        }
    }

    /// A first subscribe that failed: the channel leaves (if the server has it) and goes.
    fn abandon(&mut self, now: Instant, index: usize) {
        self.leave_and_close(now, index, CloseReason::Unsubscribed);
    }

    fn leave_and_close(&mut self, now: Instant, index: usize, reason: CloseReason) {
        if self.socket == Socket::Open && self.channels[index].join_ref.is_some() {
            let ref_ = self.make_ref();
            let ch = &self.channels[index];
            let msg = Inbound {
                join_ref: ch.join_ref.clone(),
                ref_: Some(ref_),
                topic: ch.topic.clone(),
                event: "phx_leave".into(),
                payload: InboundPayload::Json(json!({})),
            };
            self.send(msg);
        }
        self.remove(now, index, reason, Error::Disconnected);
    }

    /// The channel goes: its pending calls fail with `error`, its subscribers get `Closed`.
    fn remove(&mut self, now: Instant, index: usize, reason: CloseReason, error: Error) {
        let ch = self.channels.remove(index);
        for push in ch.unsent.into_iter().chain(ch.awaiting_reply) {
            self.outputs.push_back(Output::Done { op: push.op, result: Err(error.clone()) });
        }
        if let Some(op) = ch.subscribe_op {
            self.outputs.push_back(Output::Done { op, result: Err(error) });
        }
        self.outputs.push_back(Output::Event { topic: ch.topic, event: ChannelEvent::Closed(reason) });
        if self.channels.is_empty() {
            self.idle_at = self.options.idle_disconnect.map(|after| now + after);
        }
    }

    fn send(&mut self, msg: Inbound) {
        match frame::encode_from_client(self.options.vsn, &msg) {
            Ok(frame) => self.outputs.push_back(Output::Send(frame)),
            Err(e) => warn!(topic = msg.topic, "cannot encode {}: {e}", msg.event),
        }
    }

    fn event(&mut self, index: usize, event: ChannelEvent) {
        let topic = self.channels[index].topic.clone();
        self.outputs.push_back(Output::Event { topic, event });
    }

    fn done(&mut self, op: OpId, result: Result<Value, Error>) {
        self.outputs.push_back(Output::Done { op, result });
    }

    fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn index_of(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.topic == topic)
    }

    fn channel_mut(&mut self, topic: &str) -> Option<&mut Channel> {
        self.channels.iter_mut().find(|c| c.topic == topic)
    }
}

/// A refusal's reason: `response.reason`, or realtime-js's `Object.values(response).join(', ')`.
fn reason_of(response: &Value) -> String {
    match response {
        Value::String(s) => s.clone(),
        Value::Object(map) => match map.get("reason").and_then(Value::as_str) {
            Some(reason) => reason.to_string(),
            None => map
                .values()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        },
        _ => "error".to_string(),
    }
}

#[cfg(test)]
mod tests;
