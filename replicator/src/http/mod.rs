//! The replicator's HTTP server: `/healthz` (200 when the database answers, with the stream's
//! state; 503 with the reason when not), `/metrics` (Prometheus text; both as [`Exposure`]
//! allows), and the internal API hubs
//! call, every route of it behind a signature made with the internal secret
//! (`sluice_shared::signature`: recent, and each accepted once):
//!
//! - `/v1/subscriptions` (POST, PATCH, DELETE): `crate::subscriptions::api`;
//! - `/v1/authorize`, `/v1/replay`: `crate::messages::api`.
//!
//! The deployment's replicator also serves the tenant databases it holds for the gateway under
//! `/tenants/{id}/...`, each with its own routes and secret ([`Mounts`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_shared::signature::{self, SignatureError};

use crate::db::Db;
use crate::messages;
use crate::stats::{RlsPath, Stats};
use crate::subscriptions;
use crate::subscriptions::registry::Registry;

/// What `/healthz` and `/metrics` read.
#[derive(Clone)]
pub struct Health {
    pub db: Arc<Db>,
    pub stats: Arc<Stats>,
    pub registry: Arc<Registry>,
    pub slot: String,
    pub exposure: Exposure,
}

/// Who may read `/healthz` and `/metrics`: anyone who reaches a loopback listener; off loopback
/// (`SLUICE_HTTP_ADDR` on a network) `/healthz` says only up or down and `/metrics` needs a
/// bearer JWT signed with the metrics secret. With a metrics secret `/metrics` always needs one.
#[derive(Clone)]
pub struct Exposure {
    pub off_loopback: bool,
    pub metrics_secret: Option<Arc<str>>,
}

impl Exposure {
    pub fn of(config: &crate::config::Config) -> Exposure {
        Exposure {
            off_loopback: !config.http_addr.ip().is_loopback(),
            metrics_secret: config.metrics_secret.as_deref().map(Arc::from),
        }
    }

    /// `Err` with the answer when `/metrics` may not be read with these request headers.
    fn metrics_refusal(&self, headers: &axum::http::HeaderMap) -> Result<(), Response> {
        let Some(secret) = &self.metrics_secret else {
            return match self.off_loopback {
                false => Ok(()),
                true => Err((
                    StatusCode::FORBIDDEN,
                    Json(json!({"error": "/metrics is not served off loopback without a token: set SLUICE_METRICS_JWT_SECRET and scrape with a bearer JWT signed with it"})),
                )
                    .into_response()),
            };
        };
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        match sluice_shared::jwt::bearer_signed_by(authorization, &[secret], now_secs) {
            true => Ok(()),
            false => Err((
                StatusCode::FORBIDDEN,
                Json(json!({"error": "/metrics needs Authorization: Bearer <JWT signed with SLUICE_METRICS_JWT_SECRET>"})),
            )
                .into_response()),
        }
    }
}

/// Every route: health and metrics as [`Exposure`] allows, the internal API behind signatures
/// made with `secret`.
pub fn router(health: Health, subscriptions: subscriptions::api::Api, secret: Arc<str>) -> Router {
    let signed = Signed {
        secret,
        seen: Arc::default(),
    };
    let internal = subscriptions::api::routes(subscriptions)
        .merge(messages::api::routes(health.db.clone()))
        .route_layer(middleware::from_fn_with_state(signed, require_signature));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(health)
        .merge(internal)
}

/// The routers of the tenant databases served under `/tenants/{id}` of this server: added when a
/// tenant starts, gone when it stops.
#[derive(Clone, Default)]
pub struct Mounts(Arc<Mutex<HashMap<String, Router>>>);

/// A tenant's router, in [`Mounts`] for as long as this lives.
pub struct Mounted {
    mounts: Mounts,
    tenant: String,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.mounts.lock().remove(&self.tenant);
    }
}

impl Mounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Router>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `router` under `/tenants/{tenant}` until the guard is dropped.
    pub fn mount(&self, tenant: &str, router: Router) -> Mounted {
        self.lock().insert(tenant.to_string(), router);
        Mounted {
            mounts: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// `own` with the mounted tenants beside it.
    pub fn around(&self, own: Router) -> Router {
        own.merge(
            Router::new()
                .route("/tenants/{tenant}/{*rest}", axum::routing::any(forward))
                .with_state(self.clone()),
        )
    }
}

/// A request for a mounted tenant, handed to its router with the prefix taken off (signatures
/// cover the path as sent: the original URI goes along).
async fn forward(
    State(mounts): State<Mounts>,
    axum::extract::Path((tenant, rest)): axum::extract::Path<(String, String)>,
    mut request: Request,
) -> Response {
    use tower::ServiceExt;
    let Some(router) = mounts.lock().get(&tenant).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("this replicator does not serve tenant {tenant} (yet): it serves a tenant within seconds of its creation through the gateway's API")})),
        )
            .into_response();
    };
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    match format!("/{rest}{query}").parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The listening socket a parent process handed down as file descriptor `SLUICE_HTTP_FD` (a test
/// kit, or a supervisor that opens sockets itself), so that no other process can take the port
/// between its choice and the bind; `None` when the variable is unset. It must be bound to
/// `SLUICE_HTTP_ADDR`, whose rules (loopback unless TLS) it thereby follows.
pub fn inherited_listener(config: &crate::config::Config) -> Result<Option<Arc<std::net::TcpListener>>, String> {
    use std::os::fd::{BorrowedFd, RawFd};
    let Some(value) = std::env::var("SLUICE_HTTP_FD").ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("SLUICE_HTTP_FD={value:?} is not a file descriptor number (3 or more)"))?;
    // SAFETY: the descriptor is only borrowed for the duplicate; an invalid one fails `fcntl`.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| format!("SLUICE_HTTP_FD={fd} is not an open descriptor ({e})"))?;
    let listener = std::net::TcpListener::from(owned);
    let bound = listener
        .local_addr()
        .map_err(|e| format!("SLUICE_HTTP_FD={fd} is not a listening TCP socket ({e})"))?;
    if bound != config.http_addr {
        return Err(format!(
            "SLUICE_HTTP_FD={fd} is a socket on {bound}, not on SLUICE_HTTP_ADDR={}: set SLUICE_HTTP_ADDR={bound}",
            config.http_addr
        ));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("SLUICE_HTTP_FD={fd}: {e}"))?;
    Ok(Some(Arc::new(listener)))
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until shutdown is asked, then
/// lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.requested_now().await })
            .await;
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.requested_now().await;
        stopping.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

/// The internal secret, and the signatures accepted within the window (a captured request
/// replayed inside it is refused too).
#[derive(Clone)]
struct Signed {
    secret: Arc<str>,
    seen: Arc<Mutex<HashMap<String, u64>>>,
}

/// Largest internal request body read for its signature.
const MAX_BODY: usize = 16 << 20;

/// Internal calls carry a signature of their method, path and body (`x-sluice-signature`).
async fn require_signature(State(signed): State<Signed>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // As sent: a mounted tenant's requests arrive with `/tenants/{id}` taken off.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| parts.uri.path().to_string(), |o| o.path().to_string());
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"error": "body too large"}))).into_response();
    };
    let header = parts.headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let checked = signature::verify(header, &signed.secret, now, parts.method.as_str(), &path, &body);
    let checked = checked.and_then(|()| {
        let mut seen = signed.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now.abs_diff(*at) <= 2 * signature::WINDOW_SECS);
        match seen.insert(header.unwrap_or_default().to_string(), now) {
            None => Ok(()),
            Some(_) => Err(SignatureError::OutsideWindow),
        }
    });
    match checked {
        Ok(()) => next.run(Request::from_parts(parts, body.into())).await,
        Err(e) => {
            tracing::warn!("refused an internal request to {}: {}", parts.uri.path(), e.explain());
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "unauthorized", "why": e.explain()})),
            )
                .into_response()
        }
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
    if state.exposure.off_loopback {
        // Whoever reaches a listener on a network learns up or down, not why.
        return match answer {
            Ok(()) => (StatusCode::OK, Json(json!({"status": "ok"}))),
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error"}))),
        };
    }
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

async fn metrics(State(state): State<Health>, headers: axum::http::HeaderMap) -> Response {
    if let Err(refusal) = state.exposure.metrics_refusal(&headers) {
        return refusal;
    }
    metrics_text(&state).await.into_response()
}

async fn metrics_text(state: &Health) -> String {
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
    out.push_str(
        "# HELP sluice_rls_pairs_total (change, subscriber) pairs on tables with RLS, by path: indexed (no query), confirmed (index, then Postgres), unindexed (Postgres for every subscriber).\n# TYPE sluice_rls_pairs_total counter\n",
    );
    for path in RlsPath::ALL {
        let value = counter(&stats.rls_pairs[path as usize]);
        out.push_str(&format!("sluice_rls_pairs_total{{path=\"{}\"}} {value}\n", path.label()));
    }
    let mut metric = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
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
