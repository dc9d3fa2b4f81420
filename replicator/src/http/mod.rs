//! The replicator's HTTP server: `/healthz` (200 when the database answers, with the stream's
//! state; 503 with the reason when not), `/metrics` (Prometheus text), and the internal API hubs
//! call, every route of it behind the bearer secret:
//!
//! - `/v1/subscriptions` (POST, PATCH, DELETE): `crate::subscriptions::api`;
//! - `/v1/authorize`, `/v1/replay`: `crate::messages::api`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_shared::internal::bearer_matches;

use crate::db::Db;
use crate::messages;
use crate::stats::Stats;
use crate::subscriptions;
use crate::subscriptions::registry::Registry;

/// What `/healthz` and `/metrics` read.
#[derive(Clone)]
pub struct Health {
    pub db: Arc<Db>,
    pub stats: Arc<Stats>,
    pub registry: Arc<Registry>,
    pub slot: String,
}

/// Every route: health and metrics open, the internal API behind `secret`.
pub fn router(health: Health, subscriptions: subscriptions::api::Api, secret: Arc<str>) -> Router {
    let internal = subscriptions::api::routes(subscriptions)
        .merge(messages::api::routes(health.db.clone()))
        .route_layer(middleware::from_fn_with_state(secret, require_secret));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(health)
        .merge(internal)
}

/// Internal calls carry `Authorization: Bearer <SLUICE_INTERNAL_SECRET>`.
async fn require_secret(State(secret): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if bearer_matches(presented, &secret) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))).into_response()
    }
}

/// 200 while the database answers: `status` is `ok`, or `degraded` with `gateway` saying why
/// while the gateway refuses deliveries (a setting to fix; the stream waits meanwhile), and
/// `slot` while the slot holds WAL past a warning threshold.
async fn healthz(State(state): State<Health>) -> (StatusCode, Json<Value>) {
    let answer = match state.db.client().await {
        Ok(client) => client.simple_query("SELECT 1").await.map(|_| ()),
        Err(e) => Err(e),
    };
    let replication = match state.stats.connected.load(Ordering::Relaxed) {
        true => "connected",
        false => "disconnected",
    };
    match answer {
        Ok(()) => {
            let mut body = json!({"status": "ok", "database": "connected", "replication": replication});
            if let Some(refused) = state.stats.refused() {
                body["status"] = "degraded".into();
                body["gateway"] = refused.into();
            }
            if let Some(warning) = state.stats.slot().warning {
                body["status"] = "degraded".into();
                body["slot"] = warning.into();
            }
            (StatusCode::OK, Json(body))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "database": format!("unreachable: {e}"), "replication": replication})),
        ),
    }
}

async fn metrics(State(state): State<Health>) -> String {
    let lag = match state.db.client().await {
        Ok(client) => client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&state.slot],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get::<_, Option<i64>>(0)),
        Err(_) => None,
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
    let stats = &state.stats;
    for (name, help, value) in [
        (
            "sluice_changes_total",
            "Row changes decoded from the slot.",
            counter(&stats.changes),
        ),
        (
            "sluice_transactions_total",
            "Transactions decoded from the slot.",
            counter(&stats.transactions),
        ),
        (
            "sluice_batches_total",
            "Batches of changes dispatched.",
            counter(&stats.batches),
        ),
        (
            "sluice_deliveries_total",
            "postgres_changes messages handed to hubs (one per channel and change).",
            counter(&stats.deliveries),
        ),
        (
            "sluice_rls_queries_total",
            "Visibility queries run (one per batch, table and auth context).",
            counter(&stats.rls_queries),
        ),
        (
            "sluice_slot_resets_total",
            "Times the slot was recreated to protect the database's disk (changes lost, announced).",
            counter(&stats.slot_resets),
        ),
        (
            "sluice_push_errors_total",
            "Failed attempts to push a batch to a hub (each is retried).",
            counter(&stats.push_errors),
        ),
    ] {
        metric(name, help, "counter", value);
    }
    metric(
        "sluice_subscriptions",
        "Subscriptions held (one per binding and table).",
        "gauge",
        state.registry.len().to_string(),
    );
    metric(
        "sluice_replication_connected",
        "1 while the replication stream is up.",
        "gauge",
        u8::from(stats.connected.load(Ordering::Relaxed)).to_string(),
    );
    let slot = stats.slot();
    metric(
        "sluice_slot_retained_bytes",
        "WAL the slot keeps on the server's disk (NaN when unknown).",
        "gauge",
        slot.retained_bytes.map_or("NaN".into(), |b| b.to_string()),
    );
    metric(
        "sluice_slot_limit_bytes",
        "Retained WAL at which the slot is recreated (NaN: no limit of sluice's).",
        "gauge",
        slot.limit_bytes.map_or("NaN".into(), |b| b.to_string()),
    );
    metric(
        "sluice_slot_lag_seconds",
        "Age of the oldest change not yet delivered (0 when none waits).",
        "gauge",
        stats.unconfirmed_age_secs().unwrap_or(0).to_string(),
    );
    metric(
        "sluice_slot_lag_bytes",
        "WAL bytes the slot has not confirmed (NaN when unknown).",
        "gauge",
        lag.map_or("NaN".into(), |l| l.to_string()),
    );
    out
}
