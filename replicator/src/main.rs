//! sluice-replicator: runs beside the user's Postgres, streams its row changes from a persistent
//! logical slot, and delivers each to the sockets whose subscriptions (event, filters, RLS) it
//! matches, through the gateway's hubs.
//!
//! - [`config`]: environment variables, checked at start.
//! - [`db`]: the SQL connection, reopened after Postgres restarts.
//! - [`preflight`]: database checks and setup (publication, slot) at start.
//! - [`migrations`]: sluice's own schema (`sluice`) in the database.
//! - [`subscriptions`]: registering channels' `postgres_changes` bindings (checked, stored).
//! - [`registry`]: the subscriptions in memory, by table.
//! - [`stream`]: the replication stream, batched, confirmed after delivery.
//! - [`payload`]: decoded row changes and the payloads built from them.
//! - [`broadcasts`]: `realtime.messages` rows as broadcasts from the database.
//! - [`tables`]: catalog facts per table and role, and the batched RLS query.
//! - [`dispatch`]: matching, RLS and per-hub batches for each batch of changes.
//! - [`delivery`]: pushing batches to hubs, retrying until they answer.
//! - [`authorization`]: private channels, by the RLS policies on `realtime.messages`.
//! - [`http`]: `/healthz`, `/metrics` and the subscription API hubs call.

mod authorization;
mod broadcasts;
mod config;
mod db;
mod delivery;
mod dispatch;
mod http;
mod migrations;
mod payload;
mod preflight;
mod registry;
mod stream;
mod subscriptions;
mod tables;

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let config = config::Config::from_env().map_err(|e| e.to_string())?;
    let pg: tokio_postgres::Config = config.database_url.parse().map_err(|e| format!("{e}"))?;
    info!("connecting to Postgres at {}", describe(&pg));
    let db = db::Db::connect(pg.clone()).await.map_err(|e| {
        format!(
            "cannot connect to Postgres at {} ({e}): check SLUICE_DATABASE_URL and that the server is running and accepts connections",
            describe(&pg)
        )
    })?;
    let client = db.client().await.map_err(|e| format!("{e}"))?;
    preflight::check(&client, &config).await?;
    migrations::run(&mut db.dedicated().await.map_err(|e| format!("{e}"))?).await?;
    preflight::prepare_stream(&client, &config).await?;
    let db = Arc::new(db);
    let registry = Arc::new(registry::Registry::default());
    let loaded = subscriptions::load(&*db.client().await.map_err(|e| format!("{e}"))?, &registry)
        .await
        .map_err(|e| format!("loading the stored subscriptions failed: {e}"))?;
    info!("holding {loaded} stored subscriptions");
    let stats = Arc::new(stream::Stats::default());
    let (passed, passed_rx) = tokio::sync::watch::channel(0u64);
    let gateway = delivery::Gateway::new(&config.gateway_url, &config.internal_secret);
    let system_identifier: String = db
        .client()
        .await
        .map_err(|e| format!("{e}"))?
        .query_one("select system_identifier::text from pg_control_system()", &[])
        .await
        .map_err(|e| format!("reading the database's system identifier: {e}"))?
        .get(0);
    let stream = format!("{system_identifier}:{}", config.slot);
    let dispatcher = dispatch::Dispatcher::new(registry.clone(), db.clone(), gateway, stats.clone(), stream);
    info!("delivering changes to {}", config.gateway_url);
    tokio::spawn(stream::run(config.clone(), stats.clone(), dispatcher, passed));
    tokio::spawn(maintain_message_partitions(db.clone()));
    let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|e| {
        format!(
            "cannot listen on SLUICE_HTTP_ADDR={} ({e}): choose a free address",
            config.http_addr
        )
    })?;
    info!("serving http://{}/healthz and /metrics", config.http_addr);
    let state = http::AppState {
        db,
        registry,
        passed: passed_rx,
        stats,
        slot: config.slot.clone(),
        publication: config.publication.clone(),
        internal_secret: config.internal_secret.clone().into(),
    };
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            info!("shutting down");
        })
        .await
        .map_err(|e| format!("the HTTP server failed: {e}"))
}

/// Keeps `realtime.messages` partitioned a few days ahead and drops days older than 72 h, hourly.
async fn maintain_message_partitions(db: Arc<db::Db>) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let done = match db.client().await {
            Ok(client) => client
                .execute("select sluice.maintain_message_partitions()", &[])
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!("maintaining the partitions of realtime.messages failed: {e}; retrying in an hour");
        }
    }
}

/// `host:port/dbname` for log lines, without the password.
fn describe(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or("(default db)"))
}
