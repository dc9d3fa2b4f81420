//! The replicator's HTTP endpoints: `/healthz` (200 when the database answers, 503 with the
//! reason when not) and `/metrics` (Prometheus text).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::db::Db;
use crate::stream::Stats;
use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub stats: Arc<Stats>,
    pub slot: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let answer = match state.db.client().await {
        Ok(client) => client.simple_query("SELECT 1").await.map(|_| ()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok", "database": "connected"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "database": format!("unreachable: {e}")})),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> String {
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
    metric(
        "sluice_changes_total",
        "Row changes decoded from the slot.",
        "counter",
        state.stats.changes.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "sluice_transactions_total",
        "Transactions decoded from the slot.",
        "counter",
        state.stats.transactions.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "sluice_replication_connected",
        "1 while the replication stream is up.",
        "gauge",
        u8::from(state.stats.connected.load(Ordering::Relaxed)).to_string(),
    );
    metric(
        "sluice_slot_lag_bytes",
        "WAL bytes the slot has not confirmed (NaN when unknown).",
        "gauge",
        lag.map_or("NaN".into(), |l| l.to_string()),
    );
    out
}
