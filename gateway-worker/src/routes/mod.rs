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

use futures_util::StreamExt;
use worker::{Date, Request, Result};

/// The largest body the REST broadcast and tenants APIs read: upstream's (Plug.Parsers' default
/// `length`, 8,000,000 bytes). Larger ones get 413 without being read whole.
pub const MAX_API_BODY_BYTES: usize = 8_000_000;

/// The request's body if it is at most `max` bytes; `None` (nothing more read) once it is over,
/// by its `content-length` or by what arrives.
pub async fn body_up_to(req: &mut Request, max: usize) -> Result<Option<Vec<u8>>> {
    let declared = req.headers().get("content-length")?.and_then(|n| n.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    let Ok(mut stream) = req.stream() else {
        return Ok(Some(body)); // no body
    };
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() > max {
            return Ok(None);
        }
    }
    Ok(Some(body))
}

/// The 413 for a body over `max` bytes.
pub fn too_large(max: usize) -> Result<worker::Response> {
    Ok(worker::Response::from_json(&serde_json::json!({
        "message": sluice_shared::texts::body_too_large(max)
    }))?
    .with_status(413))
}

/// Whether the request carries `Authorization: Bearer <JWT>` signed with one of `secrets`
/// (`sluice_shared::jwt::bearer_signed_by`).
pub fn signed_by(req: &Request, secrets: &[String]) -> Result<bool> {
    let authorization = req.headers().get("authorization")?;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    Ok(sluice_shared::jwt::bearer_signed_by(authorization.as_deref(), &secrets, now_secs))
}
