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

/// Whether the request carries `Authorization: Bearer <JWT>` signed with one of `secrets`
/// (`sluice_shared::jwt::bearer_signed_by`).
pub fn signed_by(req: &Request, secrets: &[String]) -> Result<bool> {
    let authorization = req.headers().get("authorization")?;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    Ok(sluice_shared::jwt::bearer_signed_by(authorization.as_deref(), &secrets, now_secs))
}
