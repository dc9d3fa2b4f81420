//! The tenants API, as far as sluice has one: `GET /api/tenants/:id/health` (admin JWT signed with
//! `API_JWT_SECRET`).

use serde_json::json;
use worker::*;

use super::signed_by;
use super::websocket::region_of;
use crate::{config, replicator};

/// `GET /api/tenants/:id/health` (admin JWT signed with `API_JWT_SECRET`): upstream's shape,
/// with the database state from the replicator's `/healthz` (`REPLICATOR_URL`).
pub async fn tenant_health(req: Request, env: &Env) -> Result<Response> {
    if !signed_by(&req, config::admin_secret(env))? {
        // Upstream answers failed admin auth with 403 and an empty body.
        return Ok(Response::empty()?.with_status(403));
    }
    let health = replicator::health(env).await;
    let db_connected = health.is_some();
    let replication_connected = health.is_some_and(|h| h.replication_connected);
    let region = region_of(&req);
    Response::from_json(&json!({"data": {
        "healthy": db_connected,
        "db_connected": db_connected,
        "replication_connected": replication_connected,
        "connected_cluster": 1,
        "region": region,
        "node": "sluice-gateway",
    }}))
}
