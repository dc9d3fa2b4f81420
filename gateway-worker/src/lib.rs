//! The sluice gateway: a Cloudflare Worker whose Durable Objects terminate Supabase Realtime
//! WebSockets at the edge.
//!
//! - [`connect`]: the Worker's WebSocket endpoints: tenant, apikey check, routing to a hub.
//! - [`api`]: the HTTP API: REST broadcast, tenant health; database broadcasts from the replicator.
//! - [`hub`]: the SocketHub Durable Object, which holds sockets through the Hibernation API.
//! - [`channel`]: the Channel Durable Object: which hubs have members, presence, relaying.
//! - [`outbox`]: ordered, coalesced calls from a hub to Channels.
//! - [`config`]: settings read from the Worker's environment.
//! - [`random`]: ids from the runtime's randomness.
//! - [`rpc`]: HTTP calls between Durable Objects.
//! - [`replicator`]: calls to the replicator (Postgres Changes subscriptions, authorization,
//!   replay).
//!
//! Protocol logic lives in `sluice-shared`; this crate only moves bytes and state.

use worker::*;

mod api;
mod channel;
mod config;
mod connect;
mod hub;
mod outbox;
mod random;
mod replicator;
mod rpc;

pub use channel::Channel;
pub use hub::SocketHub;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    // Supabase's gateway strips /realtime/v1 before the server; sluice is reached directly.
    let route = path
        .strip_prefix("/realtime/v1")
        .filter(|r| r.starts_with("/api/"))
        .unwrap_or(&path);
    match (req.method(), route) {
        (Method::Get, "/realtime/v1/websocket" | "/socket/websocket") => connect::websocket(req, &env).await,
        (Method::Get, "/healthcheck") => Response::ok("ok"),
        (Method::Post, r) if r.starts_with("/internal/v1/changes/") => hub::deliver_changes(req, &env).await,
        (Method::Post, "/internal/v1/broadcasts") => api::database_broadcasts(req, &env).await,
        (Method::Get, r) if r.starts_with("/api/tenants/") && r.ends_with("/health") => {
            api::tenant_health(req, &env).await
        }
        (Method::Options, r) if r.starts_with("/api/broadcast") => api::preflight(),
        (Method::Post, "/api/broadcast") => api::broadcast_batch(req, &env).await,
        (Method::Post, r) if r.starts_with("/api/broadcast/") => match sluice_shared::rest::single_route(r) {
            Some((topic, event)) => api::broadcast_single(req, &env, topic, event).await,
            None => Response::error("Not Found", 404),
        },
        _ => Response::error("Not Found", 404),
    }
}
