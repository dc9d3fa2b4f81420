//! SocketHub: the Durable Object `hub:{tenant}:{region}:{shard}` that owns client sockets.
//!
//! Sockets are accepted through the WebSocket Hibernation API, so the object may be evicted from
//! memory while they stay open. Everything that must outlive that is each socket's [`Session`]
//! (serializer, token role and expiry, joined channels), kept in its attachment, or in storage
//! once it outgrows the attachment's 16 KiB. The in-memory [`Index`] (which sockets joined which
//! topic) is only a cache, rebuilt from the sessions on wake.
//!
//! A broadcast goes straight to this hub's own members (the fast path), and through the topic's
//! Channel Durable Object to other hubs only when that channel said it has members elsewhere.
//! Presence always goes through the Channel, which holds the registry. A topic's public and
//! private channels are different rooms.
//!
//! With the replicator (see [`crate::replicator`]) the hub registers channels' Postgres Changes
//! bindings, asks what private channels' policies allow, fetches replays, and receives row
//! changes for its sockets (`/internal/v1/changes`), each delivered once by stream position.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};
use sluice_shared::connect::{hub_name, Accepted};
use sluice_shared::frame::{self, Broadcast, Inbound, Outbound, Vsn, WireFrame};
use sluice_shared::internal::{
    bearer_matches, channel_name, Access, Authorize, ChangeBatch, ChangeReceipt, ChannelOp, ChannelResponse, Delivery,
    Extension, HubEvent, Reauthorize, ReplayRequest, StreamPosition, Subscribe, Unsubscribe,
};
use sluice_shared::join::{parse_topic, sub_topic, Replay, Topic};
use sluice_shared::jwt::Keys;
use sluice_shared::limits::{Limits, Rates};
use sluice_shared::session::{Ctx, Effect, Membership, PostgresJoin, Session};
use worker::*;

use crate::config::{self, CHANNEL, SOCKET_HUB};
use crate::outbox::Outbox;
use crate::random;
use crate::replicator;

const HEADER_SESSION: &str = "x-sluice-session";

/// Spreads sockets over the shards. Per isolate; in production isolates are many and this is
/// as good as random, locally it makes shard assignment predictable for tests.
static NEXT_SHARD: AtomicU32 = AtomicU32::new(0);

/// Hands an authenticated upgrade to the hub that will own the socket.
pub async fn open_socket(env: &Env, accepted: &Accepted, region: &str) -> Result<Response> {
    let namespace = env.durable_object(SOCKET_HUB)?;
    let shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % config::hub_shards(env);
    let name = hub_name(&accepted.tenant, region, shard);
    let stub = match location_hint(region) {
        Some(hint) => namespace.get_by_name_with_location_hint(&name, hint)?,
        None => namespace.get_by_name(&name)?,
    };
    let mut session = Session::new(String::new(), accepted.tenant.clone(), accepted.vsn, &accepted.claims);
    session.headers = accepted.headers.clone();
    let headers = Headers::new();
    headers.set("Upgrade", "websocket")?;
    headers.set(HEADER_SESSION, &serde_json::to_string(&session)?)?;
    let request = Request::new_with_init("https://hub/connect", RequestInit::new().with_headers(headers))?;
    stub.fetch_with_request(request).await
}

/// `POST /internal/v1/changes/{hub}` from the replicator: hands the batch to that hub.
pub async fn deliver_changes(req: Request, env: &Env) -> Result<Response> {
    let authorization = req.headers().get("authorization")?;
    let secret = config::internal_secret(env).unwrap_or_default();
    if !bearer_matches(authorization.as_deref(), &secret) {
        return Response::error("Unauthorized", 401);
    }
    let path = req.path();
    let encoded = path.trim_start_matches("/internal/v1/changes/");
    let name = percent_decode_str(encoded).decode_utf8_lossy().into_owned();
    if !name.starts_with("hub:") {
        return Response::error("Not Found", 404);
    }
    let stub = env.durable_object(SOCKET_HUB)?.get_by_name(&name)?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(req.inner().body().map(Into::into));
    stub.fetch_with_request(Request::new_with_init("https://hub/internal/v1/changes", &init)?)
        .await
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
    env: Env,
    /// `None` after a (re)start until the first event needs it.
    index: RefCell<Option<Index>>,
    /// Per room, how many other hubs have members, as its Channel last said. Unknown: relay.
    peers: RefCell<HashMap<Room, usize>>,
    outbox: Outbox,
    /// This hub's rate counters (transient: an evicted hub starts counting afresh).
    rates: RefCell<Rates>,
    /// When each socket last sent anything (epoch ms), for the idle timeout. Transient too.
    last_seen: RefCell<HashMap<String, u64>>,
    /// The tenant's keys and limits, read from the environment once per instance.
    settings: std::cell::OnceCell<(Rc<Keys>, Rc<Limits>)>,
    /// Per socket being handled, the messages that arrived meanwhile (transient).
    held: RefCell<HashMap<String, VecDeque<WebSocketIncomingMessage>>>,
    /// Per socket, the ids of stored messages it got by replay (transient).
    replayed: RefCell<HashMap<String, HashSet<String>>>,
    /// Per room, the last database broadcast delivered; also in storage ([`db_position_key`]).
    db_positions: RefCell<HashMap<Room, StreamPosition>>,
    /// The last row change delivered; also in storage under [`CHANGES_POSITION`].
    changes_position: RefCell<Option<StreamPosition>>,
}

/// The storage key of the last row change a hub delivered.
const CHANGES_POSITION: &str = "delivered_change";

/// A topic's public or private room.
type Room = (Access, String);

fn access(private: bool) -> Access {
    if private {
        Access::Private
    } else {
        Access::Public
    }
}

/// Which sockets are joined to which topic. A cache of the sockets' attachments.
#[derive(Default)]
struct Index {
    sockets: HashMap<String, (WebSocket, Vsn)>,
    /// Members per room: a topic's public and private channels are different rooms.
    topics: HashMap<Room, BTreeSet<String>>,
    /// Sockets with at least one joined channel: upstream's "users".
    users: BTreeSet<String>,
    /// Per topic, the sockets admitted to its private channel by presence read alone: they get
    /// no broadcasts.
    presence_only: HashMap<String, HashSet<String>>,
}

impl Index {
    fn insert(&mut self, ws: WebSocket, session: &Session) {
        self.remove(&session.id);
        for channel in &session.channels {
            self.topics
                .entry((access(channel.private), channel.topic.clone()))
                .or_default()
                .insert(session.id.clone());
            if channel.presence_only {
                self.presence_only
                    .entry(channel.topic.clone())
                    .or_default()
                    .insert(session.id.clone());
            }
        }
        if !session.channels.is_empty() {
            self.users.insert(session.id.clone());
        }
        self.sockets.insert(session.id.clone(), (ws, session.vsn));
    }

    fn remove(&mut self, socket_id: &str) {
        self.sockets.remove(socket_id);
        self.users.remove(socket_id);
        self.presence_only.retain(|_, sockets| {
            sockets.remove(socket_id);
            !sockets.is_empty()
        });
        self.topics.retain(|_, members| {
            members.remove(socket_id);
            !members.is_empty()
        });
    }

    fn has_members(&self, room: &Room) -> bool {
        self.topics.contains_key(room)
    }

    /// Whether a socket is joined to `topic`, in either room.
    fn is_joined(&self, socket: &str, topic: &str) -> bool {
        [Access::Public, Access::Private].into_iter().any(|a| {
            self.topics
                .get(&(a, topic.to_string()))
                .is_some_and(|m| m.contains(socket))
        })
    }
}

impl DurableObject for SocketHub {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            index: RefCell::new(None),
            peers: RefCell::default(),
            outbox: Outbox::default(),
            rates: RefCell::default(),
            last_seen: RefCell::default(),
            settings: Default::default(),
            changes_position: RefCell::new(None),
            replayed: RefCell::default(),
            held: RefCell::default(),
            db_positions: RefCell::default(),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.ensure_index().await?;
        match req.path().as_str() {
            "/connect" => {
                let response = self.accept(&req)?;
                if response.status_code() == 101 {
                    self.wake_by(Date::now().as_millis() + config::idle_timeout_ms(&self.env))
                        .await?;
                }
                Ok(response)
            }
            "/internal/v1/deliver" => {
                let delivery: Delivery = req.json().await?;
                self.receive(delivery).await?;
                Response::ok("")
            }
            "/internal/v1/changes" => {
                let batch: ChangeBatch = req.json().await?;
                Response::from_json(&self.receive_changes(batch).await?)
            }
            _ => Response::error("Not Found", 404),
        }
    }

    /// A message that must wait for the policies of a private channel (a join, a new token, a
    /// first broadcast or track) holds its socket: messages arriving meanwhile queue behind it
    /// and are handled in order once it is done. Other messages are handled at once.
    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        self.ensure_index().await?;
        let Some(id) = socket_id_of(&ws) else {
            return Ok(());
        };
        if let Some(queue) = self.held.borrow_mut().get_mut(&id) {
            queue.push_back(message);
            return Ok(());
        }
        let mut holding = false;
        let mut next = Some(message);
        while let Some(message) = next {
            if let Err(e) = self.handle_message(&ws, message, &mut holding).await {
                console_error!("socket {id}: handling a message failed: {e}");
            }
            next = match holding {
                true => {
                    let mut held = self.held.borrow_mut();
                    let queued = held.get_mut(&id).and_then(VecDeque::pop_front);
                    if queued.is_none() {
                        held.remove(&id);
                    }
                    queued
                }
                false => None,
            };
        }
        Ok(())
    }

    /// The hub's one alarm: closes channels whose token expired and sockets silent for
    /// `IDLE_TIMEOUT_MS`, then waits for the next of either.
    async fn alarm(&self) -> Result<Response> {
        let now_ms = Date::now().as_millis();
        let idle_timeout = config::idle_timeout_ms(&self.env);
        let mut next: Option<u64> = None;
        self.ensure_index().await?;
        for ws in self.state.get_websockets() {
            let Ok(Some(mut session)) = self.load_session(&ws).await else {
                continue;
            };
            // Activity is known since this instance started; before that, count from now.
            let last = *self.last_seen.borrow_mut().entry(session.id.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(last) >= idle_timeout {
                console_log!(
                    "{}: closing socket {}, silent for {} ms",
                    self.name(),
                    session.id,
                    now_ms - last
                );
                self.socket_gone(&ws).await?;
                let _ = ws.close(Some(1000), Some("idle timeout"));
                continue;
            }
            let before = session.channels.clone();
            let effects = session.expire((now_ms / 1000) as i64);
            self.save(&ws, &session, &before).await?;
            self.perform(&ws, &session, effects).await?;
            let expiry = session.next_expiry().map(alarm_time);
            next = [next, Some(last + idle_timeout), expiry].into_iter().flatten().min();
        }
        if let Some(at) = next {
            self.state.storage().set_alarm(at_epoch_ms(at)).await?;
        }
        Response::ok("")
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, _reason: String, _clean: bool) -> Result<()> {
        // Complete the closing handshake; the socket may already be gone.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| *c >= 1000 && *c != 1005 && *c != 1006)
            .unwrap_or(1000);
        let _ = ws.close(Some(code), Some("closed"));
        self.ensure_index().await?;
        self.socket_gone(&ws).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: Error) -> Result<()> {
        console_warn!("socket error: {error}");
        self.ensure_index().await?;
        self.socket_gone(&ws).await
    }
}

impl SocketHub {
    fn accept(&self, req: &Request) -> Result<Response> {
        let Some(session) = req.headers().get(HEADER_SESSION)? else {
            return Response::error("SocketHub only accepts sockets from the gateway", 400);
        };
        let mut session: Session = serde_json::from_str(&session)?;
        let (_, limits) = self.settings(&session.tenant);
        if self.index().users.len() as u32 >= limits.max_concurrent_users {
            return limit_refusal("Too many connected users");
        }
        if self
            .rates
            .borrow_mut()
            .joins
            .exceeds(Date::now().as_millis(), limits.max_joins_per_second)
        {
            return limit_refusal("Too many joins per second");
        }
        session.id = socket_id();
        let pair = WebSocketPair::new()?;
        let mut index = self.index();
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(&session)?;
        index.insert(pair.server, &session);
        self.last_seen
            .borrow_mut()
            .insert(session.id.clone(), Date::now().as_millis());
        console_log!("{}: accepted socket {} ({:?})", self.name(), session.id, session.vsn);
        Response::from_websocket(pair.client)
    }

    /// Decodes one client message and carries out what the session makes of it. Before waiting
    /// for a private channel's policies it holds the socket (see `websocket_message`).
    async fn handle_message(
        &self,
        ws: &WebSocket,
        message: WebSocketIncomingMessage,
        holding: &mut bool,
    ) -> Result<()> {
        let Some(mut session) = self.load_session(ws).await? else {
            return Ok(());
        };
        self.last_seen
            .borrow_mut()
            .insert(session.id.clone(), Date::now().as_millis());
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
        let before = session.channels.clone();
        let mut effects = self.handle(&mut session, inbound.clone());
        let asks_policies = |e: &Effect| {
            matches!(
                e,
                Effect::CheckWrite { .. } | Effect::PrivateClaims { .. } | Effect::Join { private: Some(_), .. }
            )
        };
        if !*holding && effects.iter().any(asks_policies) {
            self.held.borrow_mut().entry(session.id.clone()).or_default();
            *holding = true;
        }
        if let [Effect::CheckWrite { topic, extension }] = effects.as_slice() {
            let (topic, extension) = (topic.clone(), *extension);
            let answer = self.may_write(&session, &topic, extension).await?;
            // Unanswered: this message is refused and the next one asks again.
            session.record_write(&topic, extension, Some(answer == Some(true)));
            effects = self.handle(&mut session, inbound);
            if answer.is_none() {
                session.record_write(&topic, extension, None);
            }
        }
        let effects = self.authorize_private_joins(&mut session, effects).await?;
        if self.save(ws, &session, &before).await? {
            self.schedule_expiry(&session).await?;
        }
        if self.perform(ws, &session, effects).await? {
            let _ = ws.close(Some(1001), Some("disconnected by the server"));
            self.socket_gone(ws).await?;
        }
        Ok(())
    }

    /// Hands one decoded message to the session.
    fn handle(&self, session: &mut Session, inbound: Inbound) -> Vec<Effect> {
        let (keys, limits) = self.settings(&session.tenant);
        let users = self.index().users.len() as u32;
        session.handle(
            inbound,
            &mut Ctx {
                now_ms: Date::now().as_millis(),
                keys: &keys,
                limits: &limits,
                rates: &mut self.rates.borrow_mut(),
                users,
                fresh_key: &mut random::uuid,
            },
        )
    }

    /// Persists the session and refreshes the index when its channels changed (says whether).
    async fn save(&self, ws: &WebSocket, session: &Session, channels_before: &[Membership]) -> Result<bool> {
        if session.channels == channels_before {
            return Ok(false);
        }
        self.store_session(ws, session).await?;
        self.index().insert(ws.clone(), session);
        Ok(true)
    }

    /// A socket's session: from its attachment, or from storage if it outgrew the attachment.
    async fn load_session(&self, ws: &WebSocket) -> Result<Option<Session>> {
        // Inline is the common case: read it as a session first (a marker fails at once).
        if let Ok(session) = ws.deserialize_attachment::<Session>() {
            return Ok(session);
        }
        match attachment_head(ws).and_then(|head| head.stored_session) {
            Some(id) => self.state.storage().get(&session_key(&id)).await,
            None => Ok(None),
        }
    }

    /// Keeps a socket's session in its attachment, or in storage when it no longer fits the
    /// attachment's 16 KiB (a socket with many channels); the attachment then says where.
    async fn store_session(&self, ws: &WebSocket, session: &Session) -> Result<()> {
        let was_stored = attachment_head(ws).is_some_and(|head| head.stored_session.is_some());
        let storage = self.state.storage();
        match ws.serialize_attachment(session) {
            Ok(()) if was_stored => storage.delete(&session_key(&session.id)).await.map(|_| ()),
            Ok(()) => Ok(()),
            Err(too_big) => {
                if !was_stored {
                    console_log!("socket {}: session kept in storage ({too_big})", session.id);
                }
                storage.put(&session_key(&session.id), session).await?;
                ws.serialize_attachment(AttachmentHead {
                    id: None,
                    stored_session: Some(session.id.clone()),
                })
            }
        }
    }

    /// Moves the hub's alarm earlier if one of this session's channels expires before it.
    async fn schedule_expiry(&self, session: &Session) -> Result<()> {
        match session.next_expiry() {
            Some(exp) => self.wake_by(alarm_time(exp)).await,
            None => Ok(()),
        }
    }

    /// Moves the alarm to `at_ms` (epoch ms) unless it is already due earlier.
    async fn wake_by(&self, at_ms: u64) -> Result<()> {
        let storage = self.state.storage();
        if storage
            .get_alarm()
            .await?
            .is_none_or(|current| (at_ms as i64) < current)
        {
            storage.set_alarm(at_epoch_ms(at_ms)).await?;
        }
        Ok(())
    }

    /// Carries out a session's effects in order. Replies and local deliveries happen at once;
    /// calls to Channels are awaited, joins before their reply, the rest after. Says whether the
    /// socket must be disconnected.
    async fn perform(&self, ws: &WebSocket, session: &Session, effects: Vec<Effect>) -> Result<bool> {
        let mut later = Vec::new();
        let mut disconnect = false;
        let to_client = |out: &Outbound| send(ws, WireFrame::Text(frame::encode(session.vsn, out)));
        for effect in effects {
            match effect {
                Effect::Send(out) => to_client(&out),
                Effect::Broadcast {
                    topic,
                    broadcast,
                    include_sender,
                } => {
                    let skip = |socket: &str| !include_sender && socket == session.id;
                    let room = (room_of(session, &topic), topic);
                    let sent = fan_out(&self.index(), &room, &Deliverable::Broadcast(&broadcast), &skip);
                    self.rates.borrow_mut().events.add(Date::now().as_millis(), sent);
                    if self.peers.borrow().get(&room) != Some(&0) {
                        later.push((room, ChannelOp::Broadcast { broadcast }));
                    }
                }
                Effect::Join {
                    topic,
                    reply,
                    presence_state,
                    postgres,
                    private,
                } => {
                    let ops = if presence_state {
                        vec![ChannelOp::Subscribe, ChannelOp::PresenceState]
                    } else {
                        vec![ChannelOp::Subscribe]
                    };
                    let room = (room_of(session, &topic), topic.clone());
                    let state = self
                        .call_channel(session, &room, ops)
                        .await
                        .and_then(|r| r.presence_state.clone());
                    let join_ref = reply.join_ref.clone();
                    // A client that asked to wait gets its reply once changes flow.
                    let registered = match &postgres {
                        Some(pg) if pg.wait => Some(self.subscribe(session, &topic, pg).await),
                        _ => None,
                    };
                    to_client(&reply);
                    if presence_state {
                        let state = state.unwrap_or_else(|| serde_json::json!({}));
                        to_client(&frame::push(join_ref.as_deref(), &topic, "presence_state", state));
                    }
                    if let Some(replay) = private.as_ref().and_then(|p| p.replay) {
                        self.replay(ws, session, &topic, replay).await;
                    }
                    if let Some(pg) = &postgres {
                        let outcome = match registered {
                            Some(outcome) => outcome,
                            None => self.subscribe(session, &topic, pg).await,
                        };
                        to_client(&postgres_system_message(join_ref.as_deref(), &topic, outcome));
                    }
                }
                Effect::Leave {
                    topic,
                    untrack,
                    postgres,
                    private,
                } => {
                    let room = (access(private), topic.clone());
                    // A rejoin leaves the old incarnation after the new one was admitted: its
                    // claims, under the same key, stay while the topic is still joined privately.
                    if private && !session.membership(&topic).is_some_and(|m| m.private) {
                        self.state.storage().delete(&claims_key(&session.id, &topic)).await?;
                    }
                    if postgres {
                        let request = Unsubscribe {
                            hub: self.name(),
                            socket: session.id.clone(),
                            topic: Some(topic.clone()),
                        };
                        replicator::unsubscribe(&self.env, &request).await;
                    }
                    if untrack {
                        later.push((
                            room.clone(),
                            ChannelOp::Untrack {
                                socket: session.id.clone(),
                            },
                        ));
                    }
                    if !self.index().has_members(&room) {
                        // Nothing left here to deliver to: its database position can go.
                        self.db_positions.borrow_mut().remove(&room);
                        self.state.storage().delete(&db_position_key(&room)).await?;
                        later.push((room, ChannelOp::Unsubscribe));
                    }
                }
                Effect::Track { topic, key, meta } => later.push((
                    (room_of(session, &topic), topic),
                    ChannelOp::Track {
                        socket: session.id.clone(),
                        key,
                        meta,
                    },
                )),
                Effect::Untrack { topic } => later.push((
                    (room_of(session, &topic), topic),
                    ChannelOp::Untrack {
                        socket: session.id.clone(),
                    },
                )),
                Effect::PostgresClaims { topic, claims } => {
                    let request = Reauthorize {
                        hub: self.name(),
                        socket: session.id.clone(),
                        topic: topic.clone(),
                        claims,
                    };
                    let outcome = replicator::reauthorize(&self.env, &request).await.map(|_| ());
                    let join_ref = session.membership(&topic).and_then(|m| m.join_ref.clone());
                    to_client(&postgres_system_message(join_ref.as_deref(), &topic, outcome));
                }
                // Handled before: see `authorize_private_joins` and `handle_message`.
                Effect::PrivateClaims { .. } | Effect::CheckWrite { .. } => {}
                Effect::Disconnect => disconnect = true,
            }
        }
        for (room, op) in later {
            self.call_channel(session, &room, vec![op]).await;
        }
        Ok(disconnect)
    }

    /// Asks the replicator what the policies let read on each private channel being joined (or
    /// whose token changed): a join they do not admit becomes its refusal, a refreshed channel that
    /// can read nothing is shut down. The claims of an admitted channel are kept in storage for
    /// its later write checks (they are too big for the socket's attachment).
    async fn authorize_private_joins(&self, session: &mut Session, effects: Vec<Effect>) -> Result<Vec<Effect>> {
        let mut out = Vec::with_capacity(effects.len());
        for effect in effects {
            let (topic, claims, join) = match &effect {
                Effect::PrivateClaims { topic, claims } => (topic, claims, None),
                Effect::Join {
                    topic,
                    reply,
                    private: Some(private),
                    ..
                } => (topic, &private.claims, Some((reply, private))),
                _ => {
                    out.push(effect);
                    continue;
                }
            };
            let request = Authorize::reading(sub_topic(topic), claims, &session.headers);
            let read = replicator::authorize(&self.env, &request)
                .await
                .map(|answer| answer.read)
                .unwrap_or_default();
            let admitted = match join {
                Some((_, private)) => private.admits(&read),
                None => !read.is_empty(),
            };
            if admitted {
                session.admit_private(topic, &read);
                self.state
                    .storage()
                    .put(&claims_key(&session.id, topic), claims)
                    .await?;
            }
            match (join, admitted) {
                (Some(_), true) => out.push(effect),
                (Some((reply, _)), false) => {
                    let refusal = session.refuse_private(topic, reply);
                    out.push(Effect::Send(refusal));
                }
                (None, true) => {}
                (None, false) => {
                    let topic = topic.clone();
                    out.extend(session.lose_private(&topic));
                }
            }
        }
        Ok(out)
    }

    /// Whether the policies let this socket write `extension` on the private channel `topic`, with
    /// the claims it was admitted with; `None` when the replicator could not say.
    async fn may_write(&self, session: &Session, topic: &str, extension: Extension) -> Result<Option<bool>> {
        let stored: Option<Map<String, Value>> = self.state.storage().get(&claims_key(&session.id, topic)).await?;
        let Some(claims) = stored else {
            // Kept at admission until the channel leaves: without them nobody can say who asks.
            console_error!(
                "socket {}: no claims kept for {topic}; its writes are refused",
                session.id
            );
            return Ok(Some(false));
        };
        let request = Authorize::writing(sub_topic(topic), &claims, &session.headers, extension);
        Ok(replicator::authorize(&self.env, &request)
            .await
            .map(|answer| answer.write.contains(&extension)))
    }

    /// Sends a private channel's stored messages, oldest first (PROTOCOL.md 5.5), and remembers
    /// their ids so their live copies are not delivered again.
    async fn replay(&self, ws: &WebSocket, session: &Session, topic: &str, replay: Replay) {
        let request = ReplayRequest {
            topic: sub_topic(topic).to_string(),
            since: replay.since,
            limit: replay.limit,
        };
        let messages = replicator::replay(&self.env, &request).await;
        let mut replayed = self.replayed.borrow_mut();
        let ids = replayed.entry(session.id.clone()).or_default();
        for broadcast in messages {
            if let Some(id) = message_id(&broadcast) {
                ids.insert(id.to_string());
            }
            if let Some(frame) = frame::encode_broadcast(session.vsn, topic, &broadcast) {
                send(ws, frame);
            }
        }
    }

    /// Registers a channel's bindings with the replicator; `Err` is the client's error text.
    async fn subscribe(&self, session: &Session, topic: &str, pg: &PostgresJoin) -> std::result::Result<(), String> {
        let request = Subscribe {
            hub: self.name(),
            socket: session.id.clone(),
            topic: topic.to_string(),
            claims: pg.claims.clone(),
            bindings: pg.bindings.clone(),
        };
        replicator::subscribe(&self.env, &request).await.map(|_| ())
    }

    /// Delivers a batch of row changes from the replicator to its recipients on this hub, each
    /// change once: changes at or below the last delivered position (a retry, or a replicator
    /// that restarted) are dropped. Answers which recipients are gone.
    async fn receive_changes(&self, batch: ChangeBatch) -> Result<ChangeReceipt> {
        let storage = self.state.storage();
        let known = self.changes_position.borrow().clone();
        let delivered: Option<StreamPosition> = match known {
            Some(position) => Some(position),
            // Unreadable (written by another version): deliver rather than block the stream.
            None => storage.get(CHANGES_POSITION).await.unwrap_or_else(|e| {
                console_warn!("{}: ignoring an unreadable delivered position: {e}", self.name());
                None
            }),
        };
        let mut receipt = ChangeReceipt::default();
        let mut last = delivered.clone();
        {
            let index = self.index();
            for change in &batch.changes {
                if !delivered
                    .as_ref()
                    .is_none_or(|d| d.is_before(&batch.stream, change.lsn, change.seq))
                {
                    continue;
                }
                last = Some(StreamPosition {
                    stream: batch.stream.clone(),
                    lsn: change.lsn,
                    seq: change.seq,
                });
                for payload in &change.payloads {
                    for to in &payload.to {
                        let joined = index.is_joined(&to.socket, &to.topic);
                        let Some((ws, vsn)) = index.sockets.get(&to.socket).filter(|_| joined) else {
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
                        send(ws, WireFrame::Text(frame::encode(*vsn, &out)));
                    }
                }
            }
        }
        if last != delivered {
            if let Some(position) = &last {
                storage.put(CHANGES_POSITION, position).await?;
            }
        }
        *self.changes_position.borrow_mut() = last;
        Ok(receipt)
    }

    /// The tenant's keys and limits. Misconfigured keys verify nothing (joins then fail with
    /// signer errors) and misconfigured limits fall back to the defaults; both are logged.
    fn settings(&self, tenant: &str) -> (Rc<Keys>, Rc<Limits>) {
        let (keys, limits) = self.settings.get_or_init(|| {
            let keys = config::keys(&self.env).unwrap_or_else(|problem| {
                console_error!("{problem}");
                Keys::default()
            });
            let limits = config::limits(&self.env, tenant).unwrap_or_else(|problem| {
                console_error!("{problem}");
                Limits::default()
            });
            (Rc::new(keys), Rc::new(limits))
        });
        (keys.clone(), limits.clone())
    }

    /// Sends ops to the topic's Channel through the outbox and records what it says of peers.
    async fn call_channel(&self, session: &Session, room: &Room, ops: Vec<ChannelOp>) -> Option<Rc<ChannelResponse>> {
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

    /// Hands what a Channel delivered to this hub's members.
    async fn receive(&self, delivery: Delivery) -> Result<()> {
        let room = (delivery.access, delivery.topic.clone());
        let from_database = delivery
            .events
            .iter()
            .any(|e| matches!(e, HubEvent::DbBroadcast { .. }));
        let mut delivered = match from_database {
            true => self.db_position(&room).await?,
            false => None,
        };
        let first_delivered = delivered.clone();
        let (_, limits) = self.settings(tenant_of_hub(&self.name()));
        let mut over_rate = 0;
        {
            let index = self.index();
            for event in delivery.events {
                match event {
                    HubEvent::DbBroadcast { broadcast, position } => {
                        // Sent again by a Channel whose other hub failed: delivered here already.
                        if !delivered
                            .as_ref()
                            .is_none_or(|d| d.is_before(&position.stream, position.lsn, position.seq))
                        {
                            continue;
                        }
                        delivered = Some(position);
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
                        let sent = fan_out(&index, &room, &Deliverable::Broadcast(&broadcast), &skip);
                        self.rates.borrow_mut().events.add(now, sent);
                    }
                    HubEvent::Broadcast { broadcast } => {
                        let sent = fan_out(&index, &room, &Deliverable::Broadcast(&broadcast), &|_| false);
                        self.rates.borrow_mut().events.add(Date::now().as_millis(), sent);
                    }
                    HubEvent::PresenceDiff { diff } => {
                        let out = frame::fanout(&delivery.topic, "presence_diff", diff);
                        let sent = fan_out(&index, &room, &Deliverable::Push(&out), &|_| false);
                        self.rates.borrow_mut().presence.add(Date::now().as_millis(), sent);
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
        if delivered != first_delivered {
            if let Some(position) = delivered {
                self.state.storage().put(&db_position_key(&room), &position).await?;
                self.db_positions.borrow_mut().insert(room, position);
            }
        }
        Ok(())
    }

    /// The last database broadcast this hub delivered to a room, if any since it had members.
    async fn db_position(&self, room: &Room) -> Result<Option<StreamPosition>> {
        if let Some(position) = self.db_positions.borrow().get(room) {
            return Ok(Some(position.clone()));
        }
        // Unreadable (written by another version): deliver rather than drop.
        Ok(self
            .state
            .storage()
            .get(&db_position_key(room))
            .await
            .unwrap_or_else(|e| {
                console_warn!("{}: ignoring an unreadable delivered position: {e}", self.name());
                None
            }))
    }

    /// A socket closed or failed: it leaves its channels, releasing its presences.
    async fn socket_gone(&self, ws: &WebSocket) -> Result<()> {
        let Ok(Some(mut session)) = self.load_session(ws).await else {
            return Ok(());
        };
        self.index().remove(&session.id);
        self.last_seen.borrow_mut().remove(&session.id);
        self.replayed.borrow_mut().remove(&session.id);
        self.held.borrow_mut().remove(&session.id);
        let effects = session.close();
        self.store_session(ws, &session).await?;
        self.perform(ws, &session, effects).await?;
        Ok(())
    }

    /// Builds the index from the sockets' sessions if this instance has not yet: every entry
    /// point calls this first, so [`index`](Self::index) always sees it built.
    async fn ensure_index(&self) -> Result<()> {
        if self.index.borrow().is_some() {
            return Ok(());
        }
        let mut index = Index::default();
        let sockets = self.state.get_websockets();
        for ws in &sockets {
            if let Some(session) = self.load_session(ws).await? {
                index.insert(ws.clone(), &session);
            }
        }
        console_log!(
            "{}: rebuilt the socket index from {} sockets",
            self.name(),
            sockets.len()
        );
        self.index.borrow_mut().get_or_insert(index);
        Ok(())
    }

    fn index(&self) -> RefMut<'_, Index> {
        RefMut::map(self.index.borrow_mut(), |slot| slot.get_or_insert_with(Index::default))
    }

    fn name(&self) -> String {
        self.state.id().name().unwrap_or_else(|| "SocketHub".into())
    }
}

/// What a hub fans out to its members of a topic.
enum Deliverable<'a> {
    Broadcast(&'a Broadcast),
    /// A text push the same for everyone (`presence_diff`).
    Push(&'a Outbound),
}

/// Delivers to this hub's members of a room, encoding once per serializer; counts the sends.
fn fan_out(index: &Index, room: &Room, what: &Deliverable, skip: &dyn Fn(&str) -> bool) -> u64 {
    let Some(members) = index.topics.get(room) else {
        return 0;
    };
    let topic = room.1.as_str();
    let mut sent = 0;
    let mut encoded: [Option<Option<WireFrame>>; 2] = [None, None];
    // Broadcasts skip members admitted by presence read alone.
    let deaf = match what {
        Deliverable::Broadcast(_) => index.presence_only.get(topic),
        Deliverable::Push(_) => None,
    };
    for socket_id in members {
        if skip(socket_id) || deaf.is_some_and(|sockets| sockets.contains(socket_id)) {
            continue;
        }
        let Some((ws, vsn)) = index.sockets.get(socket_id) else {
            continue;
        };
        let slot = &mut encoded[match vsn {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        }];
        let frame = slot.get_or_insert_with(|| match what {
            Deliverable::Broadcast(b) => frame::encode_broadcast(*vsn, topic, b),
            Deliverable::Push(out) => Some(WireFrame::Text(frame::encode(*vsn, out))),
        });
        if let Some(frame) = frame {
            send(ws, frame.clone());
            sent += 1;
        }
    }
    sent
}

/// The `system` message that ends a channel's Postgres Changes registration (PROTOCOL.md 3.2).
fn postgres_system_message(join_ref: Option<&str>, topic: &str, outcome: std::result::Result<(), String>) -> Outbound {
    let (status, message) = match outcome {
        Ok(()) => ("ok", "Subscribed to PostgreSQL".to_string()),
        Err(text) => ("error", text),
    };
    let sub_topic = sub_topic(topic);
    frame::push(
        join_ref,
        topic,
        "system",
        serde_json::json!({"extension": "postgres_changes", "status": status, "message": message, "channel": sub_topic}),
    )
}

/// What a socket's attachment says about itself: it holds either the whole session (`id` is
/// the session's) or, when the session outgrew it, only `stored_session`, the id under which the
/// session is in storage. Reading these two fields alone costs far less than the whole session.
#[derive(serde::Serialize, serde::Deserialize)]
struct AttachmentHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_session: Option<String>,
}

fn attachment_head(ws: &WebSocket) -> Option<AttachmentHead> {
    ws.deserialize_attachment().ok().flatten()
}

/// The id of the socket, from its attachment.
fn socket_id_of(ws: &WebSocket) -> Option<String> {
    attachment_head(ws).and_then(|head| head.stored_session.or(head.id))
}

fn session_key(socket: &str) -> String {
    format!("session:{socket}")
}

/// The storage key of the last database broadcast a hub delivered to a room.
fn db_position_key((access, topic): &Room) -> String {
    format!("db_broadcast:{access:?}:{topic}")
}

/// The tenant part of a hub's name (`hub:{tenant}:{region}:{shard}`).
fn tenant_of_hub(name: &str) -> &str {
    name.split(':').nth(1).unwrap_or_default()
}

/// The storage key of the claims a socket's private channel was admitted with.
fn claims_key(socket: &str, topic: &str) -> String {
    format!("claims:{socket}:{topic}")
}

/// The `meta.id` of a broadcast from the database.
fn message_id(broadcast: &Broadcast) -> Option<&str> {
    match broadcast {
        Broadcast::User(user) => user.meta.as_ref()?.get("id")?.as_str(),
        Broadcast::Json(_) => None,
    }
}

/// The room of one of the session's channels (public if it has left already).
fn room_of(session: &Session, topic: &str) -> Access {
    access(session.membership(topic).is_some_and(|m| m.private))
}

/// A connection refused for a tenant limit (PROTOCOL.md 1.4).
fn limit_refusal(message: &str) -> Result<Response> {
    Ok(Response::from_json(&serde_json::json!({"error": message}))?.with_status(429))
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

/// When to wake for a token expiring at `exp` (epoch seconds): the second after, in epoch ms, so
/// the token is surely past.
fn alarm_time(exp: i64) -> u64 {
    (exp.max(0) as u64 + 1) * 1000
}

/// An absolute alarm time (a bare i64 would be an offset from now).
fn at_epoch_ms(ms: u64) -> ScheduledTime {
    ScheduledTime::new(js_sys::Date::new(&(ms as f64).into()))
}

/// A socket id unique within its hub.
fn socket_id() -> String {
    let [a, b, c, d, e, f, g, h] = random::bytes::<8>();
    format!(
        "{:x}-{:016x}",
        Date::now().as_millis(),
        u64::from_be_bytes([a, b, c, d, e, f, g, h])
    )
}
