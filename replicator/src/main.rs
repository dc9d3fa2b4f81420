//! sluice-replicator: runs beside the user's Postgres, streams its row changes from a persistent
//! logical slot, and delivers each to the sockets whose subscriptions (event, filters, RLS) it
//! matches, through the gateway's hubs. Folders follow the pipeline:
//!
//! - [`setup`]: checks and prepares the database at start (preflight, migrations, slot).
//! - [`source`]: the replication stream, decoded into row changes.
//! - [`pipeline`]: the loop: gather batches, dispatch, sink, confirm; graceful shutdown.
//! - [`dispatch`]: matching, RLS and payloads: what each hub must deliver.
//! - [`sink`]: pushing batches to the gateway, retrying until it takes them.
//! - [`subscriptions`]: channels' `postgres_changes` bindings: registry, storage, API.
//! - [`messages`]: `realtime.messages`: private-channel policies, database broadcasts, replay.
//! - [`http`]: `/healthz`, `/metrics`, and the internal API's routes.
//!
//! And around them: [`config`] (environment), [`db`] (the SQL connection), [`error`] (what each
//! error means for retries), [`stats`] (counters and health), [`answer`] (how the internal API
//! answers), [`shutdown`] (SIGTERM and Ctrl-C).

mod answer;
mod config;
mod db;
mod dispatch;
mod error;
mod http;
mod messages;
mod pipeline;
mod setup;
mod shutdown;
mod sink;
mod source;
mod stats;
mod subscriptions;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::position::Lsn;
use tracing::{error, info, warn};

use error::StartError;

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

async fn run() -> Result<(), StartError> {
    let shutdown = shutdown::on_signal();
    let config = config::Config::from_env().map_err(|e| StartError(e.to_string()))?;
    let pg: tokio_postgres::Config = config.database_url.parse().map_err(|e| StartError(format!("{e}")))?;
    info!("connecting to Postgres at {}", describe(&pg));
    let db = db::Db::connect(pg.clone()).await.map_err(|e| {
        StartError(format!(
            "cannot connect to Postgres at {} ({e}): check SLUICE_DATABASE_URL and that the server is running and accepts connections",
            describe(&pg)
        ))
    })?;
    setup::prepare(&db, &config).await?;
    let db = Arc::new(db);
    let registry = Arc::new(subscriptions::registry::Registry::default());
    let client = db.client().await.map_err(|e| StartError(e.to_string()))?;
    let loaded = subscriptions::store::load(&*client, &registry)
        .await
        .map_err(|e| StartError(format!("loading the stored subscriptions failed: {e}")))?;
    info!("holding {loaded} stored subscriptions");
    let system_identifier: String = client
        .query_one("select system_identifier::text from pg_control_system()", &[])
        .await
        .map_err(|e| StartError(format!("reading the database's system identifier: {e}")))?
        .get(0);
    let stats = Arc::new(stats::Stats::default());
    let (passed, passed_rx) = tokio::sync::watch::channel(Lsn::default());
    let stream = format!("{system_identifier}:{}", config.slot);
    let pipeline = pipeline::Pipeline {
        config: config.clone(),
        dispatcher: dispatch::Dispatcher::new(registry.clone(), db.clone(), stats.clone(), stream),
        gateway: sink::Gateway::new(&config.gateway_url, &config.internal_secret, stats.clone()),
        registry: registry.clone(),
        db: db.clone(),
        stats: stats.clone(),
        passed,
        shutdown: shutdown.clone(),
    };
    info!("delivering changes to {}", config.gateway_url);
    let pipeline = tokio::spawn(pipeline.run());
    tokio::spawn(maintain_message_partitions(db.clone()));
    tokio::spawn(subscriptions::publication::watch(
        db.clone(),
        registry.clone(),
        config.publication.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|e| {
        StartError(format!(
            "cannot listen on SLUICE_HTTP_ADDR={} ({e}): choose a free address",
            config.http_addr
        ))
    })?;
    info!("serving http://{}/healthz and /metrics", config.http_addr);
    let health = http::Health {
        db: db.clone(),
        stats,
        registry: registry.clone(),
        slot: config.slot.clone(),
    };
    let subscriptions_api = subscriptions::api::Api {
        db,
        registry,
        passed: passed_rx,
        publication: config.publication.clone(),
    };
    let router = http::router(health, subscriptions_api, config.internal_secret.clone().into());
    let stopping = shutdown.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        stopping.requested_now().await;
    });
    let server = tokio::spawn(async move { server.await });
    // Both end after a shutdown request: the pipeline within its grace period and the stream's
    // close; the server once its requests are answered (a registration waits for the stream at
    // most 15 s).
    match pipeline.await {
        Ok(()) => info!("the pipeline stopped"),
        Err(e) => error!("the pipeline failed: {e}"),
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(StartError(format!("the HTTP server failed: {e}"))),
        Ok(Err(e)) => error!("the HTTP server failed: {e}"),
        Err(_) => warn!("HTTP requests were still open 5 s after shutdown; leaving them"),
    }
    info!("stopped");
    Ok(())
}

/// Keeps `realtime.messages` partitioned a few days ahead and drops days older than 72 h, hourly.
async fn maintain_message_partitions(db: Arc<db::Db>) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
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
            warn!("PartitionCreationFailed: maintaining the partitions of realtime.messages failed: {e}; retrying in an hour");
        }
    }
}

/// `host:port/dbname` for log lines, without the password.
fn describe(pg: &tokio_postgres::Config) -> String {
    let host = db::host(pg);
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or("(default db)"))
}
