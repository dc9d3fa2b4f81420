//! The Worker's own routes (the router is `crate`'s `fetch`):
//!
//! - [`websocket`]: the client socket endpoints; authenticate the upgrade, pick the hub.
//! - [`broadcast`]: REST broadcast, batch and single.
//! - [`tenants`]: the management API: tenants created, read, changed, deleted, their health.
//! - [`metrics`]: Prometheus metrics for operators.
//! - [`internal`]: what the replicator calls: row changes to hubs, database broadcasts to Channels.
//! - [`pages`]: what a browser sees: the front page and the inspector (`gateway-worker/inspector/`).

pub mod broadcast;
pub mod internal;
pub mod metrics;
pub mod pages;
pub mod tenants;
pub mod websocket;

use worker::{Date, Request, Result};

/// Whether the request carries `Authorization: Bearer <JWT>` signed with one of `secrets` (HS*;
/// `exp` checked when present), as upstream checks admin and metrics tokens. No secret: no one.
pub fn signed_by(req: &Request, secrets: &[String]) -> Result<bool> {
    let authorization = req.headers().get("authorization")?;
    let token = sluice_shared::rest::caller_token(authorization.as_deref(), None).unwrap_or("");
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    Ok(secrets.iter().any(|secret| {
        sluice_shared::jwt::Keys::new(secret.clone().into_bytes())
            .verify_any(token, now_secs)
            .is_ok()
    }))
}
