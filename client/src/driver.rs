//! The machine on tokio: one task owns the WebSocket and the [`Machine`], takes the handles'
//! commands, and carries out what the machine asks for.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sluice_shared::frame::{InboundPayload, WireFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};
use url::Url;

use crate::connection::{JoinParams, Machine, OpId, Output};
use crate::event::{ChannelEvent, HeartbeatStatus};
use crate::presence::Presences;
use crate::Error;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type Reply = oneshot::Sender<Result<Value, Error>>;

/// Asks for a fresh access token; `None` keeps the one there is.
pub(crate) type TokenProvider = Arc<dyn Fn() -> BoxFuture<Option<String>> + Send + Sync>;

/// What the client's observers get (`ClientBuilder::on_heartbeat`, `ClientBuilder::metrics`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Metric {
    /// A frame from the server.
    MessageIn {
        /// Its size.
        bytes: usize,
    },
    /// A frame to the server.
    MessageOut {
        /// Its size.
        bytes: usize,
    },
    /// A reconnect was scheduled.
    Reconnect {
        /// 1 for the first attempt after a drop, then 2, …
        attempt: u32,
    },
    /// A heartbeat's round trip.
    HeartbeatRoundTrip(Duration),
}

type HeartbeatHook = Arc<dyn Fn(HeartbeatStatus, Option<Duration>) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub on_heartbeat: Option<HeartbeatHook>,
    pub metrics: Option<Arc<dyn Fn(Metric) + Send + Sync>>,
}

pub(crate) enum Command {
    /// Open the socket; `done` once the first attempt opened it or failed.
    Connect { done: oneshot::Sender<Result<(), Error>> },
    Join { topic: String, params: JoinParams, events: mpsc::UnboundedSender<ChannelEvent>, done: Reply },
    Listen { topic: String, events: mpsc::UnboundedSender<ChannelEvent> },
    Leave { topic: String, done: Reply },
    Push { topic: String, event: String, payload: InboundPayload, wants_reply: bool, done: Reply },
    SetToken { token: Option<String>, done: oneshot::Sender<()> },
    Presence { topic: String, done: oneshot::Sender<Option<Presences>> },
    Disconnect { done: oneshot::Sender<()> },
}

pub(crate) struct Driver {
    pub machine: Machine,
    pub url: Url,
    pub connect_timeout: Duration,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub provider: Option<TokenProvider>,
    pub hooks: Hooks,
    /// Shared with the handles for REST sends.
    pub token: Arc<std::sync::Mutex<Option<String>>>,
}

struct Running {
    socket: Option<Socket>,
    connecting: Option<BoxFuture<Result<Socket, String>>>,
    refreshing: Option<BoxFuture<Option<String>>>,
    calls: HashMap<OpId, Reply>,
    listeners: HashMap<String, Vec<mpsc::UnboundedSender<ChannelEvent>>>,
    connect_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    next_op: OpId,
}

impl Driver {
    pub async fn run(mut self) {
        let mut run = Running {
            socket: None,
            connecting: None,
            refreshing: None,
            calls: HashMap::new(),
            listeners: HashMap::new(),
            connect_waiters: vec![],
            next_op: 0,
        };
        // One timer for the task's life, moved only when the machine's next due time changes
        // (a fresh sleep per message would register and cancel a timer for every frame).
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed: Option<Instant> = None;
        loop {
            self.carry_out(&mut run).await;
            let due = self.machine.poll_timeout();
            if due != armed {
                if let Some(due) = due {
                    timer.as_mut().reset(due.into());
                }
                armed = due;
            }
            // Priorities: the user's commands first (they change what is due), then what the
            // server sent, then a connect or token refresh finishing, then timers.
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => self.command(&mut run, command),
                    None => {
                        // Every handle is gone: leave and close.
                        self.machine.disconnect(Instant::now());
                        self.carry_out(&mut run).await;
                        return;
                    }
                },
                frame = next_frame(&mut run.socket), if run.socket.is_some() => match frame {
                    Some(frame) => {
                        if let Some(metrics) = &self.hooks.metrics {
                            metrics(Metric::MessageIn { bytes: frame_len(&frame) });
                        }
                        self.machine.received(Instant::now(), frame, random());
                    }
                    None => {
                        debug!("the server closed the socket");
                        run.socket = None;
                        self.machine.closed(Instant::now(), random());
                    }
                },
                connected = poll_some(&mut run.connecting), if run.connecting.is_some() => {
                    run.connecting = None;
                    match connected {
                        Ok(socket) => {
                            info!(url = %redacted(&self.url), "connected");
                            run.socket = Some(socket);
                            self.machine.opened(Instant::now());
                            run.connect_waiters.drain(..).for_each(|w| { let _ = w.send(Ok(())); });
                        }
                        Err(e) => {
                            warn!(url = %redacted(&self.url), "connecting failed: {e}");
                            run.connect_waiters.drain(..).for_each(|w| { let _ = w.send(Err(Error::Transport(e.clone()))); });
                            self.machine.closed(Instant::now(), random());
                        }
                    }
                },
                token = poll_some(&mut run.refreshing), if run.refreshing.is_some() => {
                    run.refreshing = None;
                    if let Some(token) = token {
                        self.set_token(Some(token));
                    }
                },
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.machine.handle_timeout(Instant::now(), random());
                }
            }
        }
    }

    fn command(&mut self, run: &mut Running, command: Command) {
        let now = Instant::now();
        let mut op = |done: Reply| {
            run.next_op += 1;
            run.calls.insert(run.next_op, done);
            run.next_op
        };
        match command {
            Command::Connect { done } => {
                if self.machine.is_connected() {
                    let _ = done.send(Ok(()));
                } else {
                    run.connect_waiters.push(done);
                    self.machine.connect();
                }
            }
            Command::Join { topic, params, events, done } => {
                let id = op(done);
                run.listeners.entry(topic.clone()).or_default().push(events);
                self.machine.join(now, &topic, params, id);
            }
            Command::Listen { topic, events } => run.listeners.entry(topic).or_default().push(events),
            Command::Leave { topic, done } => {
                let id = op(done);
                self.machine.leave(now, &topic, id);
            }
            Command::Push { topic, event, payload, wants_reply, done } => {
                let id = op(done);
                self.machine.push(now, &topic, &event, payload, wants_reply, id);
            }
            Command::SetToken { token, done } => {
                self.set_token(token);
                let _ = done.send(());
            }
            Command::Presence { topic, done } => {
                let _ = done.send(self.machine.presences(&topic));
            }
            Command::Disconnect { done } => {
                self.machine.disconnect(now);
                let _ = done.send(());
            }
        }
    }

    pub fn set_token(&mut self, token: Option<String>) {
        let expires_in = token.as_deref().and_then(expires_in);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token.clone();
        self.machine.set_token(Instant::now(), token, expires_in);
    }

    /// Does what the machine asked for, until it asks for nothing more.
    async fn carry_out(&mut self, run: &mut Running) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Connect => {
                    let url = self.url.clone();
                    let timeout = self.connect_timeout;
                    run.connecting = Some(Box::pin(async move {
                        match tokio::time::timeout(timeout, tokio_tungstenite::connect_async_with_config(url.as_str(), Some(socket_config()), false)).await {
                            Ok(Ok((socket, _))) => Ok(socket),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("no answer within {timeout:?}")),
                        }
                    }));
                }
                Output::Send(frame) => {
                    let Some(socket) = &mut run.socket else {
                        continue;
                    };
                    if let Some(metrics) = &self.hooks.metrics {
                        metrics(Metric::MessageOut { bytes: frame_len(&frame) });
                    }
                    let message = match frame {
                        WireFrame::Text(text) => Message::text(text),
                        WireFrame::Binary(bytes) => Message::binary(bytes),
                    };
                    if let Err(e) = socket.send(message).await {
                        warn!("sending failed, reconnecting: {e}");
                        run.socket = None;
                        self.machine.closed(Instant::now(), random());
                    }
                }
                Output::Close => {
                    run.connecting = None;
                    if let Some(mut socket) = run.socket.take() {
                        // A dead peer never answers the close handshake: don't wait for it.
                        let _ = tokio::time::timeout(Duration::from_millis(250), socket.close(None)).await;
                    }
                    self.machine.closed(Instant::now(), random());
                }
                Output::Event { topic, event } => {
                    let closed = matches!(event, ChannelEvent::Closed(_));
                    if let Some(listeners) = run.listeners.get_mut(&topic) {
                        // Streams that were dropped go; the last one gets the event itself.
                        listeners.retain(|l| !l.is_closed());
                        if let Some((last, others)) = listeners.split_last() {
                            others.iter().for_each(|l| drop(l.send(event.clone())));
                            let _ = last.send(event);
                        }
                    }
                    if closed {
                        run.listeners.remove(&topic);
                    }
                }
                Output::Done { op, result } => {
                    if let Some(call) = run.calls.remove(&op) {
                        let _ = call.send(result);
                    }
                }
                Output::Heartbeat { status, rtt } => {
                    if let Some(hook) = &self.hooks.on_heartbeat {
                        hook(status, rtt);
                    }
                    if let (Some(metrics), Some(rtt)) = (&self.hooks.metrics, rtt) {
                        metrics(Metric::HeartbeatRoundTrip(rtt));
                    }
                }
                Output::Reconnecting { attempt, delay } => {
                    info!(attempt, "reconnecting in {delay:?}");
                    if let Some(metrics) = &self.hooks.metrics {
                        metrics(Metric::Reconnect { attempt });
                    }
                }
                Output::RefreshToken => {
                    if let (Some(provider), None) = (&self.provider, &run.refreshing) {
                        run.refreshing = Some(provider());
                    }
                }
            }
        }
    }
}

async fn next_frame(socket: &mut Option<Socket>) -> Option<WireFrame> {
    let socket = socket.as_mut()?;
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return Some(WireFrame::Text(text.to_string())),
            Ok(Message::Binary(bytes)) => return Some(WireFrame::Binary(bytes.to_vec())),
            Ok(Message::Close(close)) => {
                if let Some(close) = close {
                    info!(code = u16::from(close.code), reason = %close.reason, "the server closed the socket");
                }
                return None;
            }
            Ok(_) => continue,
            Err(e) => {
                warn!("the socket failed: {e}");
                return None;
            }
        }
    }
}

async fn poll_some<T>(future: &mut Option<BoxFuture<T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// tungstenite zero-fills its whole read buffer before every read (128 KiB by default): with
/// realtime's small frames that memset was half the client's CPU. 8 KiB still reads a burst of
/// frames per call, and a larger frame grows the buffer to fit.
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

fn frame_len(frame: &WireFrame) -> usize {
    match frame {
        WireFrame::Text(text) => text.len(),
        WireFrame::Binary(bytes) => bytes.len(),
    }
}

/// The URL without its `apikey`, for logs.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// The jitter's randomness: the standard library's hasher keys, different for every call.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// How long a JWT has left, from its `exp` (not verified: the server does that).
pub(crate) fn expires_in(token: &str) -> Option<Duration> {
    use base64::Engine;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_lifetime_comes_from_its_exp() {
        use base64::Engine;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now + 600));
        let left = expires_in(&format!("h.{claims}.s")).unwrap();
        assert!(left <= Duration::from_secs(600) && left >= Duration::from_secs(598), "{left:?}");
        assert_eq!(expires_in("sb_publishable_key"), None);
    }
}
