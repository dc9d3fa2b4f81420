//! sluice-replicator: runs beside the user's Postgres. Today it checks the database, holds a
//! persistent logical slot and decodes its pgoutput stream; delivering Postgres Changes to the
//! gateway builds on this.
//!
//! - [`config`]: environment variables, checked at start.
//! - [`db`]: the SQL connection, reopened after Postgres restarts.
//! - [`preflight`]: database checks and setup (publication, slot) at start.
//! - [`migrations`]: sluice's own schema (`sluice`) in the database.
//! - [`subscriptions`]: registering channels' `postgres_changes` bindings.
//! - [`stream`]: the replication stream.
//! - [`http`]: `/healthz` and `/metrics`.

mod config;
mod db;
mod http;
mod migrations;
mod preflight;
mod stream;
mod subscriptions;

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
    preflight::run(&client, &config).await?;
    migrations::run(&mut db.dedicated().await.map_err(|e| format!("{e}"))?).await?;
    let stats = Arc::new(stream::Stats::default());
    tokio::spawn(stream::run(config.clone(), stats.clone()));
    let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|e| {
        format!(
            "cannot listen on SLUICE_HTTP_ADDR={} ({e}): choose a free address",
            config.http_addr
        )
    })?;
    info!("serving http://{}/healthz and /metrics", config.http_addr);
    let state = http::AppState {
        db: Arc::new(db),
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
