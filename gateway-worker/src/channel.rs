//! Channel: the Durable Object `ch:{tenant}:{public|private}:{topic}` of one channel.
//!
//! It knows which hubs have members (not which sockets) and holds the authoritative presence
//! registry. Hubs call it with coalesced [`ChannelRequest`]s; it relays broadcasts to the *other*
//! hubs and presence diffs to all of them, so fan-out costs one request per hub, not per client.
//! Broadcasts from the database arrive here from the replicator and go to every hub with members.
//! Its state is in Durable Object storage, so eviction loses nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use sluice_shared::frame::Broadcast;
use sluice_shared::internal::{
    access_of_channel, Access, ChannelOp, ChannelRequest, ChannelResponse, DbBroadcasts, Delivery, HubEvent,
};
use sluice_shared::position::{StreamPosition, Watermark};
use sluice_shared::presence::{phx_ref, Owner, Registry};
use worker::*;

use sluice_shared::limits::Limits;

use crate::config::SOCKET_HUB;
use crate::tenancy::{self, Resolved};
use crate::{random, rpc};

#[derive(Default, Serialize, Deserialize)]
struct ChannelState {
    hubs: BTreeSet<String>,
    presence: Registry,
}

#[durable_object]
pub struct Channel {
    state: State,
    env: Env,
    /// Loaded from storage on first use after a (re)start.
    data: RefCell<Option<ChannelState>>,
}

const STATE_KEY: &str = "state";
/// The last database broadcast relayed (a [`StreamPosition`]).
const RELAYED_KEY: &str = "relayed_db_broadcast";

impl DurableObject for Channel {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            data: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == "/internal/v1/db-broadcasts" {
            let batch: DbBroadcasts = rpc::json_body(&mut req).await?;
            return self.relay_from_database(batch).await;
        }
        if req.path() != "/internal/v1/channel" || req.method() != Method::Post {
            return Response::error("Not Found", 404);
        }
        let request: ChannelRequest = rpc::json_body(&mut req).await?;
        self.load().await?;
        let (response, deliveries, changed) = self.apply(&request);
        if changed {
            // Stored as JSON text; snapshot first so no RefCell borrow lives across the await.
            let snapshot = serde_json::to_string(self.data.borrow().as_ref().expect("loaded"))?;
            self.state.storage().put(STATE_KEY, snapshot).await?;
        }
        self.deliver(&request.topic, deliveries).await;
        Response::from_json(&response)
    }
}

impl Channel {
    /// Relays broadcasts from the database to every hub with members, each message once: those at
    /// or below the last relayed position are dropped. Answers 500, without moving the position,
    /// if a hub could not be reached, so the replicator sends them again; hubs that already had
    /// them drop them by position.
    async fn relay_from_database(&self, batch: DbBroadcasts) -> Result<Response> {
        self.load().await?;
        let storage = self.state.storage();
        let relayed: Option<StreamPosition> = storage.get(RELAYED_KEY).await.unwrap_or(None);
        let mut mark = Watermark::new(relayed);
        let mut events = Vec::new();
        let name = self.state.id().name().unwrap_or_default();
        let tenant = name.split(':').nth(1).unwrap_or_default();
        let limits = match tenancy::for_tenant(&self.env, tenant).await? {
            Resolved::Found(settings) => (*settings.limits).clone(),
            _ => Limits::default(),
        };
        for message in batch.messages {
            if !mark.admit(&batch.stream, message.lsn, message.seq) {
                continue;
            }
            let position = mark.last().cloned().expect("just admitted");
            // Upstream drops (and logs) what is over the tenant's payload size.
            if let Broadcast::User(user) = &message.broadcast {
                if limits.payload_too_big(user.payload.len()) {
                    console_warn!(
                        "UnableToBroadcastChanges: a message to {} is over the payload size limit",
                        batch.topic
                    );
                    continue;
                }
            }
            events.push(HubEvent::DbBroadcast {
                broadcast: message.broadcast,
                position,
            });
        }
        if events.is_empty() {
            return Response::ok("");
        }
        let hubs: Vec<String> = self
            .data
            .borrow()
            .as_ref()
            .expect("loaded")
            .hubs
            .iter()
            .cloned()
            .collect();
        let topic = format!("realtime:{}", batch.topic);
        let sends = hubs.iter().map(|hub| {
            let delivery = Delivery {
                topic: topic.clone(),
                access: batch.access,
                events: events.clone(),
            };
            async move { self.post_to_hub(hub, &delivery).await }
        });
        if let Some(Err(e)) = join_all(sends).await.into_iter().find(Result::is_err) {
            console_error!("channel {topic}: relaying database broadcasts failed: {e}");
            return Response::error("a hub could not be reached", 500);
        }
        if let Some(position) = mark.last() {
            storage.put(RELAYED_KEY, position).await?;
        }
        Response::ok("")
    }

    /// Public or private, from this object's name.
    fn access(&self) -> Access {
        access_of_channel(&self.state.id().name().unwrap_or_default())
    }

    async fn load(&self) -> Result<()> {
        if self.data.borrow().is_none() {
            let stored: Option<String> = self.state.storage().get(STATE_KEY).await?;
            let state = match stored {
                Some(json) => serde_json::from_str(&json)?,
                None => ChannelState::default(),
            };
            self.data.borrow_mut().get_or_insert(state);
        }
        Ok(())
    }

    /// Applies the ops in order: the response to the caller, the events for each hub, and whether
    /// the state changed.
    fn apply(&self, request: &ChannelRequest) -> (ChannelResponse, BTreeMap<String, Vec<HubEvent>>, bool) {
        let mut slot = self.data.borrow_mut();
        let data = slot.as_mut().expect("loaded");
        let hub = &request.hub;
        let mut out: BTreeMap<String, Vec<HubEvent>> = BTreeMap::new();
        let mut changed = false;
        let mut presence_state = None;
        // Queues `event` for every hub in `hubs` but `except`.
        let to_all = |out: &mut BTreeMap<String, Vec<HubEvent>>,
                      hubs: &BTreeSet<String>,
                      except: Option<&String>,
                      event: HubEvent| {
            for h in hubs.iter().filter(|h| Some(*h) != except) {
                out.entry(h.clone()).or_default().push(event.clone());
            }
        };
        for op in &request.ops {
            // A presence change, if the op made one, goes to every hub with members.
            let diff = match op {
                ChannelOp::Subscribe => {
                    if data.hubs.insert(hub.clone()) {
                        changed = true;
                        let peers = data.hubs.len() - 1;
                        to_all(&mut out, &data.hubs, Some(hub), HubEvent::Peers { peers });
                    }
                    None
                }
                ChannelOp::Unsubscribe => {
                    if !data.hubs.remove(hub) {
                        continue;
                    }
                    changed = true;
                    let peers = data.hubs.len().saturating_sub(1);
                    to_all(&mut out, &data.hubs, None, HubEvent::Peers { peers });
                    data.presence.untrack(|o| &o.hub == hub)
                }
                ChannelOp::Broadcast { broadcast } => {
                    to_all(
                        &mut out,
                        &data.hubs,
                        Some(hub),
                        HubEvent::Broadcast {
                            broadcast: broadcast.clone(),
                        },
                    );
                    None
                }
                ChannelOp::Track { socket, key, meta } => {
                    let owner = Owner {
                        hub: hub.clone(),
                        socket: socket.clone(),
                    };
                    data.presence.track(owner, key, meta.clone(), phx_ref(random::bytes()))
                }
                ChannelOp::Untrack { socket } => data.presence.untrack(|o| &o.hub == hub && &o.socket == socket),
                ChannelOp::PresenceState => {
                    presence_state = Some(data.presence.state());
                    None
                }
            };
            if let Some(diff) = diff {
                changed = true;
                to_all(
                    &mut out,
                    &data.hubs,
                    None,
                    HubEvent::PresenceDiff {
                        diff: diff.to_payload(),
                    },
                );
            }
        }
        let peers = data.hubs.len() - usize::from(data.hubs.contains(hub));
        (ChannelResponse { peers, presence_state }, out, changed)
    }

    /// Sends each hub its events, all hubs at once.
    async fn deliver(&self, topic: &str, deliveries: BTreeMap<String, Vec<HubEvent>>) {
        let sends = deliveries.into_iter().map(|(hub, events)| async move {
            let delivery = Delivery {
                topic: topic.to_string(),
                access: self.access(),
                events,
            };
            if let Err(e) = self.post_to_hub(&hub, &delivery).await {
                console_error!("ErrorOnRpcCall: channel {topic}: delivery to {hub} failed: {e}");
            }
        });
        join_all(sends).await;
    }

    async fn post_to_hub(&self, hub: &str, delivery: &Delivery) -> Result<()> {
        let stub = self.env.durable_object(SOCKET_HUB)?.get_by_name(hub)?;
        rpc::post_json(stub, "/internal/v1/deliver", delivery).await.map(|_| ())
    }
}
