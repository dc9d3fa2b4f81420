//! The replicator's HTTP endpoints: `/healthz` (200 when the database answers, 503 with the
//! reason when not), `/metrics` (Prometheus text), and the internal API hubs call
//! (`/v1/subscriptions`: register, re-authorize, remove; bearer secret).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{error, warn};

use sluice_shared::internal::{
    bearer_matches, Authorize, Reauthorize, ReplayRequest, Replayed, Subscribe, Subscribed, Unsubscribe,
};

use crate::db::Db;
use crate::registry::{ChannelKey, Registry, Sub};
use crate::stream::{Stats, SYNC_PREFIX};
use crate::subscriptions::{self, Refused, Registration};
use crate::{authorization, broadcasts};

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub registry: Arc<Registry>,
    /// The highest WAL position the stream has handled.
    pub passed: watch::Receiver<u64>,
    pub stats: Arc<Stats>,
    pub slot: String,
    pub publication: String,
    pub internal_secret: Arc<str>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/subscriptions",
            post(register).patch(reauthorize).delete(unregister),
        )
        .route("/v1/authorize", post(authorize_channel))
        .route("/v1/replay", post(replay))
        .with_state(state)
}

/// What the client sees when the database cannot answer (upstream's text).
const UNREACHABLE: &str = "Realtime was unable to connect to the project database";

/// How long a registration waits for the stream to pass it before answering 503.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

type Answer = (StatusCode, Json<Value>);

/// `POST /v1/subscriptions`: 200 `{"ids": [...]}` in binding order once the subscription is live
/// (see [`live`]), or 422 `{"error": <the system message text>}`.
async fn register(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<Subscribe>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let channel = ChannelKey {
        hub: body.hub.clone(),
        socket: body.socket.clone(),
        topic: body.topic.clone(),
    };
    let registration = Registration {
        publication: &state.publication,
        hub: &body.hub,
        socket: &body.socket,
        topic: &body.topic,
        claims: &body.claims,
        bindings: &body.bindings,
    };
    let outcome = in_transaction(&state, async |tx| subscriptions::register(tx, &registration).await).await;
    match outcome {
        Ok(Ok(registered)) => live(&state, &channel, registered.subs, registered.ids).await,
        Ok(Err(Refused(text))) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": text}))),
        Err(e) => database_error(e),
    }
}

/// `PATCH /v1/subscriptions`: the channel's subscriptions take new claims (a refreshed token).
/// Answered like a registration.
async fn reauthorize(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<Reauthorize>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let channel = ChannelKey {
        hub: body.hub.clone(),
        socket: body.socket.clone(),
        topic: body.topic.clone(),
    };
    let outcome = in_transaction(&state, async |tx| {
        subscriptions::reauthorize(tx, &channel, &body.claims).await
    })
    .await;
    match outcome {
        Ok(Ok(subs)) => {
            let mut ids: Vec<u64> = subs.iter().map(|(_, s)| s.binding_id).collect();
            ids.sort_unstable();
            ids.dedup();
            live(&state, &channel, subs, ids).await
        }
        Ok(Err(Refused(text))) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": text}))),
        Err(e) => database_error(e),
    }
}

/// Runs `work` in a transaction, committed only when it does not refuse.
async fn in_transaction<T>(
    state: &AppState,
    work: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<Result<T, Refused>, tokio_postgres::Error>,
) -> Result<Result<T, Refused>, tokio_postgres::Error> {
    let mut client = state.db.dedicated().await?;
    let tx = client.transaction().await?;
    let outcome = work(&tx).await?;
    if outcome.is_ok() {
        tx.commit().await?;
    }
    Ok(outcome)
}

/// Puts a channel's stored subscriptions in the registry, then answers 200 `{"ids"}` once the
/// stream has passed a mark written to the WAL afterwards: from then on every commit is evaluated
/// with them, so every change committed after the client hears "Subscribed" is delivered.
async fn live(state: &AppState, channel: &ChannelKey, subs: Vec<(u32, Sub)>, ids: Vec<u64>) -> Answer {
    state.registry.replace_channel(channel, subs);
    let mark = async {
        let client = state.db.client().await?;
        let row = client
            .query_one("select pg_logical_emit_message(false, $1, '')::text", &[&SYNC_PREFIX])
            .await?;
        Ok::<_, tokio_postgres::Error>(parse_lsn(row.get(0)))
    }
    .await;
    let mark = match mark {
        Ok(mark) => mark,
        Err(e) => return database_error(e),
    };
    let mut passed = state.passed.clone();
    let reached = tokio::time::timeout(SYNC_TIMEOUT, passed.wait_for(|p| *p >= mark))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        (StatusCode::OK, Json(json!(Subscribed { ids })))
    } else {
        warn!("the replication stream did not reach a new subscription within {SYNC_TIMEOUT:?}");
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": UNREACHABLE})))
    }
}

/// `POST /v1/authorize`: which extensions of a private channel the claims may read and write.
async fn authorize_channel(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<Authorize>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let outcome = async {
        let mut client = state.db.dedicated().await?;
        authorization::check(&mut client, &body).await
    }
    .await;
    match outcome {
        Ok(answer) => (StatusCode::OK, Json(json!(answer))),
        Err(e) => database_error(e),
    }
}

/// `POST /v1/replay`: a private channel's stored broadcasts (the hub checked read access).
async fn replay(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<ReplayRequest>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let found = async { broadcasts::replay(&*state.db.client().await?, &body).await }.await;
    match found {
        Ok(messages) => (StatusCode::OK, Json(json!(Replayed { messages }))),
        Err(e) => database_error(e),
    }
}

/// `0/16B3748` as a number.
fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(high, 16).unwrap_or(0) << 32) | u64::from_str_radix(low, 16).unwrap_or(0)
}

/// `DELETE /v1/subscriptions`: drops a channel's subscriptions (or a whole socket's).
async fn unregister(State(state): State<AppState>, headers: HeaderMap, Json(body): Json<Unsubscribe>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    state.registry.remove(&body.hub, &body.socket, body.topic.as_deref());
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
    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": UNREACHABLE})))
}

/// Internal calls carry `Authorization: Bearer <SLUICE_INTERNAL_SECRET>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Answer> {
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer_matches(presented, &state.internal_secret) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))))
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let answer = match state.db.client().await {
        Ok(client) => client.simple_query("SELECT 1").await.map(|_| ()),
        Err(e) => Err(e),
    };
    let replication = match state.stats.connected.load(Ordering::Relaxed) {
        true => "connected",
        false => "disconnected",
    };
    match answer {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "database": "connected", "replication": replication})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "database": format!("unreachable: {e}"), "replication": replication})),
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
    metric(
        "sluice_slot_lag_bytes",
        "WAL bytes the slot has not confirmed (NaN when unknown).",
        "gauge",
        lag.map_or("NaN".into(), |l| l.to_string()),
    );
    out
}
