//! SocketHub: the Durable Object `hub:{tenant}:{region}:{shard}` that owns client sockets.
//!
//! Sockets are accepted through the WebSocket Hibernation API, so the object may be evicted from
//! memory while they stay open. Everything that must outlive that is in each socket's attachment:
//! its [`Session`] (serializer, token role and expiry, joined channels). The in-memory [`Index`]
//! (which sockets joined which topic) is only a cache, rebuilt from the attachments on wake.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeSet, HashMap};

use sluice_shared::connect::{hub_name, Accepted};
use sluice_shared::frame::{self, Broadcast, Vsn, WireFrame};
use sluice_shared::session::{Effect, Session};
use worker::*;

use crate::config::SOCKET_HUB;

const HEADER_SESSION: &str = "x-sluice-session";

/// Hands an authenticated upgrade to the hub that will own the socket.
pub async fn open_socket(env: &Env, accepted: &Accepted, region: &str) -> Result<Response> {
    let namespace = env.durable_object(SOCKET_HUB)?;
    // One shard per tenant and region until hub sharding lands.
    let name = hub_name(&accepted.tenant, region, 0);
    let stub = match location_hint(region) {
        Some(hint) => namespace.get_by_name_with_location_hint(&name, hint)?,
        None => namespace.get_by_name(&name)?,
    };
    let session = Session::new(String::new(), accepted.vsn, accepted.claims.role.clone(), accepted.claims.exp);
    let headers = Headers::new();
    headers.set("Upgrade", "websocket")?;
    headers.set(HEADER_SESSION, &serde_json::to_string(&session)?)?;
    let request = Request::new_with_init("https://hub/connect", RequestInit::new().with_headers(headers))?;
    stub.fetch_with_request(request).await
}

/// Durable Object location hints by Cloudflare continent code.
fn location_hint(region: &str) -> Option<&'static str> {
    match region {
        "na" => Some("enam"),
        "sa" => Some("sam"),
        "eu" => Some("weur"),
        "as" => Some("apac"),
        "oc" => Some("oc"),
        "af" => Some("afr"),
        _ => None,
    }
}

#[durable_object]
pub struct SocketHub {
    state: State,
    /// `None` after a (re)start until the first event needs it.
    index: RefCell<Option<Index>>,
}

/// Which sockets are joined to which topic. A cache of the sockets' attachments.
#[derive(Default)]
struct Index {
    sockets: HashMap<String, (WebSocket, Vsn)>,
    topics: HashMap<String, BTreeSet<String>>,
}

impl Index {
    fn insert(&mut self, ws: WebSocket, session: &Session) {
        self.remove(&session.id);
        for channel in &session.channels {
            self.topics.entry(channel.topic.clone()).or_default().insert(session.id.clone());
        }
        self.sockets.insert(session.id.clone(), (ws, session.vsn));
    }

    fn remove(&mut self, socket_id: &str) {
        self.sockets.remove(socket_id);
        self.topics.retain(|_, members| {
            members.remove(socket_id);
            !members.is_empty()
        });
    }
}

impl DurableObject for SocketHub {
    fn new(state: State, _env: Env) -> Self {
        Self { state, index: RefCell::new(None) }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let Some(session) = req.headers().get(HEADER_SESSION)? else {
            return Response::error("SocketHub only accepts sockets from the gateway", 400);
        };
        let mut session: Session = serde_json::from_str(&session)?;
        session.id = new_socket_id();
        let pair = WebSocketPair::new()?;
        let mut index = self.index();
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(&session)?;
        index.insert(pair.server, &session);
        console_log!("{}: accepted socket {} ({:?})", self.name(), session.id, session.vsn);
        Response::from_websocket(pair.client)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let Some(mut session) = ws.deserialize_attachment::<Session>()? else {
            return Ok(());
        };
        let decoded = match message {
            WebSocketIncomingMessage::String(text) => frame::decode_text(session.vsn, &text),
            WebSocketIncomingMessage::Binary(bytes) => frame::decode_binary(session.vsn, &bytes),
        };
        let inbound = match decoded {
            Ok(inbound) => inbound,
            Err(err) => {
                // Upstream logs MalformedWebSocketMessage and keeps the socket open.
                console_warn!("socket {}: dropped a malformed frame: {err}", session.id);
                return Ok(());
            }
        };
        let channels_before = session.channels.clone();
        let effects = session.handle(inbound, now_secs());
        let mut index = self.index();
        if session.channels != channels_before {
            ws.serialize_attachment(&session)?;
            index.insert(ws.clone(), &session);
        }
        for effect in effects {
            match effect {
                Effect::Send(out) => send(&ws, WireFrame::Text(frame::encode(session.vsn, &out))),
                Effect::Broadcast { topic, broadcast, include_sender } => {
                    let skip = (!include_sender).then_some(session.id.as_str());
                    fan_out(&index, &topic, &broadcast, skip);
                }
            }
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, _reason: String, _clean: bool) -> Result<()> {
        self.forget(&ws);
        // Complete the closing handshake; the socket may already be gone.
        let code = u16::try_from(code).ok().filter(|c| *c >= 1000 && *c != 1005 && *c != 1006).unwrap_or(1000);
        let _ = ws.close(Some(code), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: Error) -> Result<()> {
        console_warn!("socket error: {error}");
        self.forget(&ws);
        Ok(())
    }
}

impl SocketHub {
    /// The index, rebuilt from the sockets' attachments if this instance has not built it yet.
    fn index(&self) -> RefMut<'_, Index> {
        let mut slot = self.index.borrow_mut();
        if slot.is_none() {
            let mut index = Index::default();
            let sockets = self.state.get_websockets();
            for ws in &sockets {
                if let Ok(Some(session)) = ws.deserialize_attachment::<Session>() {
                    index.insert(ws.clone(), &session);
                }
            }
            console_log!("{}: rebuilt the socket index from {} sockets", self.name(), sockets.len());
            *slot = Some(index);
        }
        RefMut::map(slot, |s| s.as_mut().expect("index was just built"))
    }

    fn name(&self) -> String {
        self.state.id().name().unwrap_or_else(|| "SocketHub".into())
    }

    fn forget(&self, ws: &WebSocket) {
        if let Ok(Some(session)) = ws.deserialize_attachment::<Session>() {
            self.index().remove(&session.id);
        }
    }
}

/// Delivers a broadcast to this hub's members of `topic`, encoding it once per serializer.
fn fan_out(index: &Index, topic: &str, broadcast: &Broadcast, skip: Option<&str>) {
    let Some(members) = index.topics.get(topic) else { return };
    let mut encoded: [Option<Option<WireFrame>>; 2] = [None, None];
    for socket_id in members {
        if Some(socket_id.as_str()) == skip {
            continue;
        }
        let Some((ws, vsn)) = index.sockets.get(socket_id) else { continue };
        let slot = &mut encoded[*vsn as usize];
        if let Some(frame) = slot.get_or_insert_with(|| frame::encode_broadcast(*vsn, topic, broadcast)) {
            send(ws, frame.clone());
        }
    }
}

fn send(ws: &WebSocket, frame: WireFrame) {
    let result = match frame {
        WireFrame::Text(text) => ws.send_with_str(text),
        WireFrame::Binary(bytes) => ws.send_with_bytes(bytes),
    };
    if let Err(err) = result {
        console_warn!("send failed: {err}");
    }
}

fn now_secs() -> i64 {
    (Date::now().as_millis() / 1000) as i64
}

/// A socket id unique within its hub: time plus randomness.
fn new_socket_id() -> String {
    let random = (js_sys::Math::random() * (1u64 << 52) as f64) as u64;
    format!("{:x}-{:x}", Date::now().as_millis(), random)
}
