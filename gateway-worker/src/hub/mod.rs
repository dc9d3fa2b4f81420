//! SocketHub: the Durable Object `hub:{tenant}:{region}:{shard}` that owns client sockets.
//!
//! Sockets are accepted through the WebSocket Hibernation API, so the object may be evicted from
//! memory while they stay open. What must outlive that is each socket's
//! [`Session`](sluice_shared::session::Session), kept in its attachment (or in storage once it
//! outgrows the attachment's 16 KiB). The in-memory [`Roster`] (which sockets are in which room)
//! is a cache, rebuilt from the sessions on wake. The protocol decisions are `sluice_shared`'s;
//! this folder carries them out, one concern per file:
//!
//! - this file: the object, its state, and its entry points (upgrade, deliveries, socket events,
//!   alarm), each handing over to one of the files below.
//! - [`sockets`]: accepting sockets; sessions in attachments and storage; the roster; a socket
//!   that goes.
//! - [`messages`]: one client message: decode, hand to the session, the hold queue.
//! - [`effects`]: carrying out what the session decided (replies, joins, leaves, presence,
//!   Postgres Changes registrations).
//! - [`private`]: private channels: asking the policies at join and at first write; replay.
//! - [`deliveries`]: what arrives from elsewhere: row changes from the replicator, and relays
//!   from Channels (broadcasts, database broadcasts, presence diffs), each delivered once.
//! - [`fanout`]: delivering to this hub's members of a room; calls to a topic's Channel.
//! - [`alarms`]: the one alarm: token expiry, idle sockets, Postgres Changes registrations to
//!   try again.
//! - [`traffic`]: what the sockets send and receive, for the byte limit and `/metrics` (saved
//!   now and then, so an evicted hub resumes its counts).
//!
//! A broadcast goes straight to this hub's own members (the fast path), and through the topic's
//! Channel Durable Object to other hubs only when that Channel said it has members elsewhere.
//! Presence always goes through the Channel, which holds the registry.

mod alarms;
mod deliveries;
mod effects;
mod fanout;
mod messages;
mod private;
mod sockets;
mod traffic;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use sluice_shared::hold::Holds;
use sluice_shared::internal::{ChangeBatch, Delivery};
use sluice_shared::jwt::Keys;
use sluice_shared::limits::{Limits, Rates};
use sluice_shared::metrics::HubCounts;
use sluice_shared::position::StreamPosition;
use sluice_shared::roster::{Room, Roster};
use sluice_shared::texts;
use worker::*;

use crate::outbox::Outbox;
use crate::replicator::Target;
use crate::tenancy::{self, Resolved};
use crate::{config, directory, rpc};

/// The header a new socket's session travels in from the Worker to its hub.
pub const SESSION_HEADER: &str = "x-sluice-session";

#[durable_object]
pub struct SocketHub {
    state: State,
    env: Env,
    /// `MAX_FRAME_BYTES`, read once: every client frame is checked against it.
    max_frame_bytes: usize,
    /// `None` after a (re)start until the first event needs it ([`SocketHub::ensure_roster`]).
    roster: RefCell<Option<Roster<WebSocket>>>,
    /// Per room, how many other hubs have members, as its Channel last said. Unknown: relay.
    peers: RefCell<HashMap<Room, usize>>,
    outbox: Outbox,
    /// This hub's rate counters (transient: an evicted hub starts counting afresh).
    rates: RefCell<Rates>,
    /// What `/metrics` reports of this hub, saved now and then (see [`traffic`]).
    counts: RefCell<HubCounts>,
    /// When the counts were last saved (epoch ms).
    counts_saved_at: Cell<u64>,
    /// Whether this start of the hub told the Directory it exists.
    in_directory: Cell<bool>,
    /// When each socket last sent anything (epoch ms), for the idle timeout. Transient too.
    last_seen: RefCell<HashMap<String, u64>>,
    /// The tenant's keys and limits, and when they were read (epoch ms): refreshed at most every
    /// few seconds (`tenancy::CACHE_MS`), so a change through the management API reaches it.
    settings: RefCell<Option<(f64, TenantSettings)>>,
    /// Messages waiting behind one that waits for policies, per socket (transient).
    held: RefCell<Holds<WebSocketIncomingMessage>>,
    /// Per socket, the ids of stored messages it got by replay (transient).
    replayed: RefCell<HashMap<String, HashSet<String>>>,
    /// Per room, the last database broadcast delivered; also in storage.
    db_positions: RefCell<HashMap<Room, StreamPosition>>,
    /// The last row change delivered; also in storage.
    changes_position: RefCell<Option<StreamPosition>>,
    /// Postgres Changes registrations to try again, per (socket, topic) (transient).
    postgres_retries: RefCell<std::collections::BTreeMap<(String, String), effects::PostgresRetry>>,
}

impl DurableObject for SocketHub {
    fn new(state: State, env: Env) -> Self {
        let counts = traffic::saved_counts(&state);
        Self {
            max_frame_bytes: config::max_frame_bytes(&env),
            state,
            env,
            roster: RefCell::new(None),
            peers: RefCell::default(),
            outbox: Outbox::default(),
            rates: RefCell::default(),
            counts: RefCell::new(counts),
            counts_saved_at: Cell::new(0),
            in_directory: Cell::new(false),
            last_seen: RefCell::default(),
            settings: RefCell::new(None),
            held: RefCell::default(),
            replayed: RefCell::default(),
            db_positions: RefCell::default(),
            changes_position: RefCell::new(None),
            postgres_retries: RefCell::default(),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        self.ensure_roster().await?;
        self.refresh_settings().await?;
        match req.path().as_str() {
            "/connect" => {
                if let Some((status, text)) = self.tenant_settings().refusal {
                    return Ok(Response::from_json(&serde_json::json!({"error": text}))?.with_status(status));
                }
                let response = self.accept(&req)?;
                if response.status_code() == 101 {
                    self.wake_by(Date::now().as_millis() + config::idle_timeout_ms(&self.env))
                        .await?;
                    // Bookkeeping for /metrics: a failure is logged and tried again at the next
                    // socket, never refuses this one.
                    if !self.in_directory.get() {
                        match directory::register(&self.env, &self.name()).await {
                            Ok(()) => self.in_directory.set(true),
                            Err(e) => console_error!("{}: registering with the Directory: {e}", self.name()),
                        }
                    }
                }
                Ok(response)
            }
            "/internal/v1/metrics" => Response::from_json(&self.counts()),
            "/internal/v1/deliver" => {
                let delivery: Delivery = rpc::json_body(&mut req).await?;
                self.receive_relay(delivery).await?;
                Response::ok("")
            }
            "/internal/v1/disconnect" => {
                tenancy::forget();
                *self.settings.borrow_mut() = None;
                self.disconnect_all().await?;
                Response::ok("")
            }
            "/internal/v1/changes" => {
                let batch: ChangeBatch = rpc::json_body(&mut req).await?;
                Response::from_json(&self.receive_changes(batch).await?)
            }
            _ => Response::error("Not Found", 404),
        }
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let size = match &message {
            WebSocketIncomingMessage::String(text) => text.len(),
            WebSocketIncomingMessage::Binary(bytes) => bytes.len(),
        };
        let max = self.max_frame_bytes;
        if size > max {
            // Not parsed: a frame this large is an attack or a bug; only its socket goes.
            console_warn!("a socket sent a frame of {size} bytes, over MAX_FRAME_BYTES ({max}): closing it");
            self.ensure_roster().await?;
            return self
                .socket_gone(&ws, Some((1009, texts::CLOSE_FRAME_TOO_BIG)))
                .await;
        }
        // The roster and the settings are brought up to date inside, under the socket's hold:
        // a message awaiting them must not be overtaken by the socket's next one.
        self.receive_message(&ws, message).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.ensure_roster().await?;
        self.refresh_settings().await?;
        self.run_alarm().await?;
        Response::ok("")
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, _reason: String, _clean: bool) -> Result<()> {
        self.ensure_roster().await?;
        // Complete the closing handshake with the client's code (one that may be sent).
        let code = u16::try_from(code)
            .ok()
            .filter(|c| *c >= 1000 && *c != 1005 && *c != 1006)
            .unwrap_or(1000);
        self.socket_gone(&ws, Some((code, texts::CLOSE_ANSWERED))).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: Error) -> Result<()> {
        console_warn!("socket error: {error}");
        self.ensure_roster().await?;
        self.socket_gone(&ws, None).await
    }
}

impl SocketHub {
    /// The tenant's keys and limits (as last read by [`SocketHub::refresh_settings`]).
    fn settings(&self) -> (Rc<Keys>, Rc<Limits>) {
        let settings = self.tenant_settings();
        (settings.keys, settings.limits)
    }

    /// The replicator that serves the tenant's database.
    fn replicator(&self) -> Rc<Target> {
        self.tenant_settings().replicator
    }

    fn tenant_settings(&self) -> TenantSettings {
        match &*self.settings.borrow() {
            Some((_, settings)) => settings.clone(),
            None => TenantSettings {
                keys: Rc::new(Keys::default()),
                limits: Rc::new(Limits::default()),
                replicator: Rc::new(Target::from_env(&self.env)),
                refusal: None,
            },
        }
    }

    /// Whether the tenant's settings were read less than `tenancy::CACHE_MS` ago.
    fn settings_fresh(&self) -> bool {
        let now = Date::now().as_millis() as f64;
        self.settings
            .borrow()
            .as_ref()
            .is_some_and(|(at, ..)| now - at < tenancy::CACHE_MS)
    }

    /// Reads the tenant's settings again if they are older than `tenancy::CACHE_MS`. A tenant
    /// that is gone or suspended has its sockets closed; a misconfigured one gets keys that
    /// verify nothing (joins then fail with signer errors) and the default limits; both logged.
    async fn refresh_settings(&self) -> Result<()> {
        if self.settings_fresh() {
            return Ok(());
        }
        let now = Date::now().as_millis() as f64;
        let name = self.name();
        let tenant = tenant_of_hub(&name);
        let refused = |refusal| TenantSettings {
            keys: Rc::new(Keys::default()),
            limits: Rc::new(Limits::default()),
            replicator: Rc::new(Target::from_env(&self.env)),
            refusal,
        };
        let settings = match tenancy::for_tenant(&self.env, tenant).await? {
            Resolved::Found(settings) if !settings.suspended => TenantSettings {
                keys: settings.keys,
                limits: settings.limits,
                replicator: settings.replicator,
                refusal: None,
            },
            // Sockets accepted while the Worker's view was a few seconds old are closed here, and
            // new ones refused.
            Resolved::Found(_) => {
                console_warn!("tenant {tenant} is suspended: its sockets are closed");
                let refusal = Some((403, texts::TENANT_SUSPENDED));
                *self.settings.borrow_mut() = Some((now, refused(refusal)));
                return self.disconnect_all().await;
            }
            Resolved::NotFound(_) => {
                console_warn!("tenant {tenant} does not exist (any more): its sockets are closed");
                let refusal = Some((404, texts::TENANT_NOT_FOUND));
                *self.settings.borrow_mut() = Some((now, refused(refusal)));
                return self.disconnect_all().await;
            }
            Resolved::Misconfigured(problem) => {
                console_error!("{problem}");
                refused(None)
            }
        };
        *self.settings.borrow_mut() = Some((now, settings));
        Ok(())
    }

    fn name(&self) -> String {
        self.state.id().name().unwrap_or_else(|| "SocketHub".into())
    }
}

/// A tenant's keys, limits and replicator, as a hub uses them.
#[derive(Clone)]
struct TenantSettings {
    keys: Rc<Keys>,
    limits: Rc<Limits>,
    replicator: Rc<Target>,
    /// Why new sockets are refused (status, text): the tenant is suspended or gone.
    refusal: Option<(u16, &'static str)>,
}

/// The tenant part of a hub's name (`hub:{tenant}:{region}:{shard}`).
fn tenant_of_hub(name: &str) -> &str {
    name.split(':').nth(1).unwrap_or_default()
}
