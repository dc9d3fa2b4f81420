//! The sluice gateway: a Cloudflare Worker whose Durable Objects terminate Supabase Realtime
//! WebSockets at the edge.
//!
//! - [`connect`]: the Worker's WebSocket endpoints: tenant, apikey check, routing to a hub.
//! - [`hub`]: the SocketHub Durable Object, which holds sockets through the Hibernation API.
//! - [`channel`]: the Channel Durable Object: which hubs have members, presence, relaying.
//! - [`outbox`]: ordered, coalesced calls from a hub to Channels.
//! - [`config`]: settings read from the Worker's environment.
//! - [`random`]: ids from the runtime's randomness.
//!
//! Protocol logic lives in `sluice-shared`; this crate only moves bytes and state.

use worker::*;

mod channel;
mod config;
mod connect;
mod hub;
mod outbox;
mod random;

pub use channel::Channel;
pub use hub::SocketHub;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    match (req.method(), path.as_str()) {
        (Method::Get, "/realtime/v1/websocket" | "/socket/websocket") => connect::websocket(req, &env).await,
        (Method::Get, "/healthcheck") => Response::ok("ok"),
        _ => Response::error("Not Found", 404),
    }
}
