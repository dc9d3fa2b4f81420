//! The replicator's HTTP endpoints: `/healthz` (200 when the database answers, 503 with the
//! reason when not), `/metrics` (Prometheus text), and the internal API hubs call
//! (`/v1/subscriptions`, bearer secret).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::error;

use crate::db::Db;
use crate::stream::Stats;
use crate::subscriptions::{self, Refused, Registration};

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub stats: Arc<Stats>,
    pub slot: String,
    pub publication: String,
    pub internal_secret: Arc<str>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/subscriptions", post(register).delete(unregister))
        .with_state(state)
}

#[derive(Deserialize)]
struct RegisterBody {
    hub: String,
    socket: String,
    topic: String,
    claims: Map<String, Value>,
    bindings: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
struct UnregisterBody {
    hub: String,
    socket: String,
    topic: Option<String>,
}

type Answer = (StatusCode, Json<Value>);

/// `POST /v1/subscriptions`: 200 `{"ids": [...]}` in binding order, or 422 `{"error": <the
/// system message text>}`.
async fn register(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<RegisterBody>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let result = async {
        let mut client = state.db.dedicated().await?;
        let tx = client.transaction().await?;
        let registration = Registration {
            publication: &state.publication,
            hub: &body.hub,
            socket: &body.socket,
            topic: &body.topic,
            claims: &body.claims,
            bindings: &body.bindings,
        };
        let outcome = subscriptions::register(&tx, &registration).await?;
        if outcome.is_ok() {
            tx.commit().await?;
        }
        Ok::<_, tokio_postgres::Error>(outcome)
    }
    .await;
    match result {
        Ok(Ok(ids)) => (StatusCode::OK, Json(json!({"ids": ids}))),
        Ok(Err(Refused(text))) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": text}))),
        Err(e) => database_error(e),
    }
}

/// `DELETE /v1/subscriptions`: drops a channel's subscriptions (or a whole socket's).
async fn unregister(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<UnregisterBody>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let removed = async {
        let client = state.db.client().await?;
        subscriptions::remove(&*client, &body.hub, &body.socket, body.topic.as_deref()).await
    }
    .await;
    match removed {
        Ok(n) => (StatusCode::OK, Json(json!({"removed": n}))),
        Err(e) => database_error(e),
    }
}

fn database_error(e: tokio_postgres::Error) -> Answer {
    error!("subscription request failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "Realtime was unable to connect to the project database"})),
    )
}

/// Internal calls carry `Authorization: Bearer <SLUICE_INTERNAL_SECRET>`, compared in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Answer> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), state.internal_secret.as_bytes()) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
