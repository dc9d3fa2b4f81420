//! [`Channel`]: a subscribed topic, its events as a stream, and what it can send.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::{json, Value};
use sluice_shared::frame::{Encoding, InboundPayload, UserBroadcast, Vsn};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, Shared};
use crate::connection::{Binding, JoinParams};
use crate::driver::Command;
use crate::event::{ChannelEvent, Payload, PostgresChangeEvent};
use crate::presence::Presences;
use crate::{rest, Error};

/// How a channel joins: `broadcast`, `presence`, `postgres_changes` and `private` settings, as
/// realtime-js's channel options. Defaults: no self-broadcast, no ack, presence off, public.
#[must_use]
pub struct ChannelBuilder {
    client: Client,
    name: String,
    broadcast_self: bool,
    broadcast_ack: bool,
    presence: bool,
    presence_key: String,
    private: bool,
    replay: Option<Value>,
    bindings: Vec<Binding>,
}

impl ChannelBuilder {
    pub(crate) fn new(client: Client, name: String) -> Self {
        let name = name.strip_prefix("realtime:").unwrap_or(&name).to_string();
        ChannelBuilder {
            client,
            name,
            broadcast_self: false,
            broadcast_ack: false,
            presence: false,
            presence_key: String::new(),
            private: false,
            replay: None,
            bindings: vec![],
        }
    }

    /// Receive this client's own broadcasts too. Default false.
    pub fn broadcast_self(mut self, on: bool) -> Self {
        self.broadcast_self = on;
        self
    }

    /// Have the server acknowledge each broadcast: `send_broadcast` returns once it did.
    /// Default false (returns once sent).
    pub fn broadcast_ack(mut self, on: bool) -> Self {
        self.broadcast_ack = on;
        self
    }

    /// Presence events (`PresenceSync`, `PresenceJoin`, `PresenceLeave`). Default off; a
    /// presence key turns them on.
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// The key this client's presence is tracked under. Default: one the server picks.
    pub fn presence_key(mut self, key: impl Into<String>) -> Self {
        self.presence_key = key.into();
        self.presence = true;
        self
    }

    /// A private channel: the server checks `realtime.messages` policies. Default false.
    pub fn private(mut self, on: bool) -> Self {
        self.private = on;
        self
    }

    /// Replay stored broadcasts at join: those since `since` (epoch ms), at most `limit`
    /// (private channels only).
    pub fn replay(mut self, since: i64, limit: Option<u32>) -> Self {
        let mut replay = json!({ "since": since });
        if let Some(limit) = limit {
            replay["limit"] = limit.into();
        }
        self.replay = Some(replay);
        self
    }

    /// Row changes of `schema`.`table` (`"*"` for all tables), of `event`, optionally filtered
    /// (`done=eq.false`, `id=in.(1,2)`), delivered as `ChannelEvent::PostgresChange`.
    pub fn on_postgres_changes(mut self, event: PostgresChangeEvent, schema: &str, table: &str, filter: Option<&str>) -> Self {
        self.bindings.push(Binding {
            event: event.as_str().to_string(),
            schema: schema.to_string(),
            table: Some(table.to_string()),
            filter: filter.map(str::to_string),
        });
        self
    }

    /// Joins. `Ok` once `SUBSCRIBED` and, with Postgres bindings, once the server said
    /// `Subscribed to PostgreSQL` (from then on every committed change is delivered). A second
    /// subscribe of the same topic returns the channel already there.
    pub async fn subscribe(self) -> Result<Channel, Error> {
        let topic = format!("realtime:{}", self.name);
        let shared = self.client.shared.clone();
        let mut registry = shared.registry.lock().await;
        if let Some(inner) = registry.get(&topic).and_then(|c| c.upgrade()) {
            return Ok(Channel { inner });
        }
        let mut broadcast = json!({ "self": self.broadcast_self, "ack": self.broadcast_ack });
        if let Some(replay) = self.replay {
            broadcast["replay"] = replay;
        }
        let config = json!({
            "broadcast": broadcast,
            "presence": { "key": self.presence_key, "enabled": self.presence },
            "postgres_changes": self.bindings.iter().map(Binding::to_json).collect::<Vec<_>>(),
            "private": self.private,
        });
        let (events, first_events) = mpsc::unbounded_channel();
        let (done, wait) = oneshot::channel();
        shared.send(Command::Join {
            topic: topic.clone(),
            params: JoinParams { config, bindings: self.bindings },
            events,
            done,
        })?;
        wait.await.map_err(|_| Error::Disconnected)??;
        let inner = Arc::new(ChannelInner {
            shared: shared.clone(),
            topic: topic.clone(),
            name: self.name,
            private: self.private,
            ack: self.broadcast_ack,
            first_events: Mutex::new(Some(first_events)),
            left: AtomicBool::new(false),
        });
        registry.insert(topic, Arc::downgrade(&inner));
        Ok(Channel { inner })
    }

    /// Sends a broadcast over REST (`POST /api/broadcast`) without joining, with the client's
    /// current token: what realtime-js's `send` falls back to when the channel is not joined.
    pub async fn http_send(&self, event: &str, payload: impl Into<Payload>) -> Result<(), Error> {
        rest::send(&self.client.shared.rest, &self.name, self.private, event, payload.into()).await
    }
}

/// A subscribed channel. Clones share it; when the last one is dropped the channel leaves.
#[derive(Clone)]
pub struct Channel {
    pub(crate) inner: Arc<ChannelInner>,
}

pub(crate) struct ChannelInner {
    shared: Arc<Shared>,
    topic: String,
    name: String,
    private: bool,
    ack: bool,
    /// Everything since the join, for the first `events()`.
    first_events: Mutex<Option<mpsc::UnboundedReceiver<ChannelEvent>>>,
    left: AtomicBool,
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        if !self.left.swap(true, Ordering::SeqCst) {
            let (done, _) = oneshot::channel();
            let _ = self.shared.send(Command::Leave { topic: self.topic.clone(), done });
        }
    }
}

impl Channel {
    /// The full topic, `realtime:<name>`.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The channel's events as a stream. The first call gets everything since the join; later
    /// calls get what comes after them. The stream ends after `Closed`.
    pub fn events(&self) -> Events {
        let first = self.inner.first_events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let receiver = first.unwrap_or_else(|| {
            let (events, receiver) = mpsc::unbounded_channel();
            let _ = self.inner.shared.send(Command::Listen { topic: self.inner.topic.clone(), events });
            receiver
        });
        Events { receiver }
    }

    /// Broadcasts `event` with a JSON or binary payload (binary needs protocol 2.0.0). With
    /// `broadcast_ack` it returns once the server acknowledged, else once sent. While the socket
    /// is down the push waits (bounded) and goes out after the rejoin.
    pub async fn send_broadcast(&self, event: &str, payload: impl Into<Payload>) -> Result<(), Error> {
        let payload = match (payload.into(), self.vsn()) {
            // realtime-js 2.x sends every broadcast as a binary frame on 2.0.0.
            (Payload::Json(value), Vsn::V2) => InboundPayload::UserBroadcast(UserBroadcast {
                event: event.to_string(),
                encoding: Encoding::Json,
                payload: value.to_string().into_bytes(),
                meta: None,
            }),
            (Payload::Json(value), Vsn::V1) => {
                InboundPayload::Json(json!({ "type": "broadcast", "event": event, "payload": value }))
            }
            (Payload::Binary(bytes), _) => InboundPayload::UserBroadcast(UserBroadcast {
                event: event.to_string(),
                encoding: Encoding::Binary,
                payload: bytes,
                meta: None,
            }),
        };
        self.push("broadcast", payload, self.inner.ack).await.map(drop)
    }

    /// Sends a broadcast over REST even though the channel is joined.
    pub async fn http_send(&self, event: &str, payload: impl Into<Payload>) -> Result<(), Error> {
        rest::send(&self.inner.shared.rest, &self.inner.name, self.inner.private, event, payload.into()).await
    }

    /// Tracks this client's presence with `payload` (again to update it); returns once the
    /// server accepted it.
    pub async fn track(&self, payload: Value) -> Result<(), Error> {
        let message = json!({ "type": "presence", "event": "track", "payload": payload });
        self.push("presence", InboundPayload::Json(message), true).await.map(drop)
    }

    /// Stops tracking this client's presence.
    pub async fn untrack(&self) -> Result<(), Error> {
        let message = json!({ "type": "presence", "event": "untrack" });
        self.push("presence", InboundPayload::Json(message), true).await.map(drop)
    }

    /// The presence state now (realtime-js `presenceState()`).
    pub async fn presence_state(&self) -> Presences {
        let (done, wait) = oneshot::channel();
        if self.inner.shared.send(Command::Presence { topic: self.inner.topic.clone(), done }).is_err() {
            return Presences::new();
        }
        wait.await.ok().flatten().unwrap_or_default()
    }

    /// Calls `callback` with the payload of every broadcast named `event` (`"*"`: all), until the
    /// channel closes: a thin layer over [`events`](Channel::events).
    pub fn on_broadcast(&self, event: &str, callback: impl Fn(Payload) + Send + 'static) {
        let event = event.to_string();
        let mut events = self.events();
        // The task holds the channel: it stays subscribed while someone listens.
        let channel = self.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(next) = events.receiver.recv().await {
                if let ChannelEvent::Broadcast { event: name, payload } = next {
                    if event == "*" || name.eq_ignore_ascii_case(&event) {
                        callback(payload);
                    }
                }
            }
        });
    }

    /// Leaves the channel; its streams end with `Closed(Unsubscribed)`.
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        self.inner.shared.registry.lock().await.remove(&self.inner.topic);
        if self.inner.left.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.inner.shared.send(Command::Leave { topic: self.inner.topic.clone(), done })?;
        wait.await.map_err(|_| Error::Disconnected)?.map(drop)
    }

    async fn push(&self, event: &str, payload: InboundPayload, wants_reply: bool) -> Result<Value, Error> {
        let (done, wait) = oneshot::channel();
        self.inner.shared.send(Command::Push {
            topic: self.inner.topic.clone(),
            event: event.to_string(),
            payload,
            wants_reply,
            done,
        })?;
        wait.await.map_err(|_| Error::Disconnected)?
    }

    fn vsn(&self) -> Vsn {
        self.inner.shared.vsn
    }
}

/// A channel's events; ends after `ChannelEvent::Closed`.
pub struct Events {
    receiver: mpsc::UnboundedReceiver<ChannelEvent>,
}

impl futures_core::Stream for Events {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.receiver.poll_recv(cx)
    }
}
