//! The sluice gateway: a Cloudflare Worker whose Durable Objects terminate Supabase Realtime
//! WebSockets at the edge. The router below is the list of everything it serves.
//!
//! - [`routes`]: the Worker's own routes: socket upgrades, REST broadcast, tenant health, the
//!   internal API the replicator calls, and the pages a browser sees (the inspector).
//! - [`hub`]: the SocketHub Durable Object, which holds sockets through the Hibernation API.
//! - [`channel`]: the Channel Durable Object: which hubs have members, presence, relaying.
//! - [`directory`]: the Directory Durable Object: the tenants, every hub, and refused
//!   connections, for `/metrics`.
//! - [`outbox`]: ordered, coalesced calls from a hub to Channels.
//! - [`replicator`]: calls to the replicator (Postgres Changes subscriptions, authorization,
//!   replay).
//! - [`tenancy`]: which tenant a request is for, and its settings (created tenants, or the
//!   environment's).
//! - [`config`]: settings read from the Worker's environment.
//! - [`random`]: ids from the runtime's randomness.
//! - [`rpc`]: HTTP calls between Durable Objects.
//!
//! Protocol logic lives in `sluice-shared`; this crate only moves bytes and state.
//! docs/architecture.md draws the whole picture.

use worker::*;

mod channel;
mod config;
mod directory;
mod hub;
mod outbox;
mod random;
mod replicator;
mod routes;
mod rpc;
mod tenancy;

pub use channel::Channel;
pub use directory::Directory;
pub use hub::SocketHub;

use routes::{broadcast, internal, metrics, pages, tenants, websocket};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    // Supabase's gateway strips /realtime/v1 before the server; sluice is reached directly.
    let route = path
        .strip_prefix("/realtime/v1")
        .filter(|r| r.starts_with("/api/"))
        .unwrap_or(&path);
    match (req.method(), route) {
        (Method::Get, "/realtime/v1/websocket" | "/socket/websocket") => websocket::upgrade(req, &env).await,
        (Method::Get, "/healthcheck") => Response::ok("ok"),
        (Method::Get, "/") => pages::front(&env),
        (Method::Get, r) if r == "/inspector" || r.starts_with("/inspector/") => pages::inspector(&env, r),
        (Method::Get, "/metrics") => metrics::metrics(req, &env).await,
        (Method::Post, r) if r.starts_with("/internal/v1/changes/") => internal::changes(req, &env).await,
        (Method::Post, r) if r == "/internal/v1/broadcasts" || r.starts_with("/internal/v1/broadcasts/") => {
            internal::database_broadcasts(req, &env).await
        }
        (Method::Get, "/internal/v1/databases") => internal::databases(req, &env).await,
        (Method::Get, r) if r == "/internal/v1/ping" || r.starts_with("/internal/v1/ping/") => {
            internal::ping(req, &env).await
        }
        (_, r) if r == "/api/tenants" || r.starts_with("/api/tenants/") => {
            let r = r.to_string();
            tenants::route(req, &env, &r).await
        }
        (Method::Options, r) if r.starts_with("/api/broadcast") => broadcast::preflight(),
        (Method::Post, "/api/broadcast") => broadcast::broadcast_batch(req, &env).await,
        (Method::Post, r) if r.starts_with("/api/broadcast/") => match sluice_shared::rest::single_route(r) {
            Some((topic, event)) => broadcast::broadcast_single(req, &env, topic, event).await,
            None => Response::error("Not Found", 404),
        },
        _ => Response::error("Not Found", 404),
    }
}
