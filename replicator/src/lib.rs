//! sluice-replicator: runs beside the user's Postgres, streams its row changes from a persistent
//! logical slot, and delivers each to the sockets whose subscriptions (event, filters, RLS) it
//! matches, through the gateway's hubs. Folders follow the pipeline:
//!
//! - [`setup`]: checks and prepares the database at start (preflight, migrations, slot), and the
//!   SQL that prepares a least-privilege role (`setup-sql`).
//! - [`source`]: the replication stream, decoded into row changes; WAL safety (`source::slot`).
//! - [`pipeline`]: the loop: gather batches, dispatch, sink, confirm; graceful shutdown.
//! - [`dispatch`]: matching, RLS and payloads: what each hub must deliver.
//! - [`sink`]: pushing batches to the gateway, retrying until it takes them.
//! - [`subscriptions`]: channels' `postgres_changes` bindings: registry, storage, API.
//! - [`messages`]: `realtime.messages`: private-channel policies, database broadcasts, replay.
//! - [`http`]: `/healthz`, `/metrics`, and the internal API's signed routes, over HTTPS if asked.
//!
//! Commands: `run` (the default), [`doctor`] (every check, one line each), `setup-sql`,
//! `db-enc-public-key`. The deployment's replicator also serves the tenant databases created
//! through the gateway's API; with `SLUICE_TENANTS_FILE`, `run` serves the file's tenant
//! databases instead ([`tenants`]).
//!
//! And around them: [`config`] (environment), [`conninfo`] (the connection string and its TLS),
//! [`db`] (the SQL connection), [`error`] (what each error means for retries), [`stats`]
//! (counters and health), [`answer`] (how the internal API answers), [`shutdown`] (SIGTERM and
//! Ctrl-C).

mod answer;
mod config;
mod conninfo;
mod db;
mod dispatch;
mod doctor;
mod error;
pub mod fuzzing;
mod http;
mod messages;
mod pipeline;
mod setup;
mod shutdown;
mod sink;
mod source;
mod stats;
mod subscriptions;
mod tenants;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::position::Lsn;
use tracing::{error, info, warn, Instrument};

use error::StartError;

/// The `sluice-replicator` command (`src/main.rs`): reads its command from the arguments.
#[tokio::main]
pub async fn main() -> ExitCode {
    // One crypto provider for every TLS connection (rustls is built with two).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        // Logs go to stderr; stdout is for what a command prints (doctor, setup-sql).
        .with_writer(std::io::stderr)
        .init();
    let outcome = match std::env::args().nth(1).as_deref() {
        None | Some("run") => run().await,
        Some("setup-sql") => print_setup_sql(),
        Some("doctor") => doctor().await,
        Some("db-enc-public-key") => print_db_enc_public_key(),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(StartError(format!("unknown command {other:?}\n{USAGE}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: sluice-replicator [run | doctor | setup-sql | db-enc-public-key | help]
  run        stream changes to the gateway (the default); configured by SLUICE_* variables
  doctor     check the database and the gateway with the same settings, one line per check
  setup-sql  print the SQL an administrator runs once to prepare the database for the role in
             SLUICE_DATABASE_URL (a non-superuser: see docs/deploy.md)
  db-enc-public-key
             print the gateway's DB_ENC_PUBLIC_KEY for this DB_ENC_KEY: the gateway seals tenants'
             database passwords with it, and only replicators with DB_ENC_KEY open them";

/// Prints the public half of `DB_ENC_KEY`, for the gateway's `DB_ENC_PUBLIC_KEY`.
fn print_db_enc_public_key() -> Result<(), StartError> {
    let key = std::env::var("DB_ENC_KEY").unwrap_or_default();
    let key = sluice_shared::sealed::OpeningKey::from_enc_key(&key).map_err(StartError)?;
    println!("{}", key.public_hex());
    Ok(())
}

/// Checks everything the replicator needs; fails when something blocks.
async fn doctor() -> Result<(), StartError> {
    let config = config::Config::from_env().map_err(|e| StartError(e.to_string()))?;
    match doctor::run(&config).await {
        true => Ok(()),
        false => Err(StartError(
            "something blocks the replicator: fix the FAIL lines above".into(),
        )),
    }
}

/// Prints the one-time set-up for the role and database of `SLUICE_DATABASE_URL`.
fn print_setup_sql() -> Result<(), StartError> {
    let get = |name: &str| std::env::var(name).ok();
    let url = get("SLUICE_DATABASE_URL").unwrap_or_else(|| "postgres://sluice@localhost/postgres".into());
    let database = conninfo::ConnInfo::parse(&url, get)
        .map_err(|e| StartError(format!("SLUICE_DATABASE_URL is not a valid connection string ({e})")))?;
    let publication = config::Config::publication_from_lookup(&get).map_err(|e| StartError(e.to_string()))?;
    let password = database.pg.get_password().map(String::from_utf8_lossy);
    print!(
        "{}",
        setup::role::setup_sql(
            database.pg.get_user().unwrap_or("sluice"),
            password.as_deref(),
            database.pg.get_dbname().unwrap_or("postgres"),
            &publication,
        )
    );
    Ok(())
}

async fn run() -> Result<(), StartError> {
    let shutdown = shutdown::on_signal();
    if let Some(path) = std::env::var("SLUICE_TENANTS_FILE").ok().filter(|p| !p.is_empty()) {
        tenants::serve_all(tenants::Source::File(path), shutdown).await;
        return Ok(());
    }
    let config = config::Config::from_env().map_err(|e| StartError(e.to_string()))?;
    // The deployment's replicator (no tenant of its own) also serves the tenant databases created
    // through the gateway's API, beside its own database.
    let mounts = http::Mounts::default();
    let inherited = http::inherited_listener(&config).map_err(StartError)?;
    let _served_tenants = match config.tenant {
        Some(_) => None,
        None => {
            let deployment = tenants::Deployment::new(&config, mounts.clone()).map_err(StartError)?;
            let source = tenants::Source::Gateway(Box::new(deployment));
            Some(owned(tenants::serve_all(source, shutdown.clone())))
        }
    };
    loop {
        let listen = Listen::Own(mounts.clone(), inherited.clone());
        match serve(config.clone(), shutdown.clone(), listen).await? {
            Served::Stopped => return Ok(()),
            Served::Reconnect => continue,
            Served::Retired => {
                warn!(
                    "the tenant was deleted: its subscriptions and slot are gone; exiting (a restart would register it again)"
                );
                return Ok(());
            }
        }
    }
}

/// How serving a database ended.
#[derive(Debug, PartialEq)]
pub enum Served {
    /// Shutdown was asked for.
    Stopped,
    /// The tenant was deleted (the gateway said so): subscriptions forgotten, slot dropped.
    Retired,
    /// The gateway asked for new database connections: serve it again.
    Reconnect,
}

/// Where a served database's internal API is served.
pub enum Listen {
    /// On its own address (`SLUICE_HTTP_ADDR`, or the socket `SLUICE_HTTP_FD` handed down), with
    /// these tenants' mounted beside it.
    Own(http::Mounts, Option<Arc<std::net::TcpListener>>),
    /// Under `/tenants/{id}` of the deployment's replicator's address.
    Mounted(http::Mounts),
}

/// Serves one database: checks and prepares it, streams its changes to the gateway, serves the
/// internal API, until `asked` (shutdown) or until its tenant is deleted.
async fn serve(config: config::Config, asked: shutdown::Shutdown, listen: Listen) -> Result<Served, StartError> {
    // Flips with `asked`, or when the gateway ends this database's service (`/v1/tenant`).
    let (shutdown, stop) = asked.child();
    let ending = Arc::new(subscriptions::api::Ending::new(stop));
    for note in &config.notes {
        warn!("{note}");
    }
    info!("connecting to Postgres at {}", config.database.describe());
    let db = db::Db::connect(&config.database).await.map_err(|e| {
        let e = e.to_string();
        let fix = config.database.explain(&e).unwrap_or_else(|| {
            "check SLUICE_DATABASE_URL and that the server is running and accepts connections".into()
        });
        StartError(format!(
            "cannot connect to Postgres at {} ({e}): {fix}",
            config.database.describe()
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
    let alarm = Arc::new(source::slot::Alarm::default());
    let mut background = Background::default();
    background.0.push(owned(source::slot::guard(
        db.clone(),
        config.slot.clone(),
        config.slot_limits.clone(),
        stats.clone(),
        alarm.clone(),
    )));
    let pipeline = pipeline::Pipeline {
        config: config.clone(),
        dispatcher: dispatch::Dispatcher::new(registry.clone(), db.clone(), stats.clone(), stream),
        gateway: sink::Gateway::new(&config, stats.clone()).map_err(StartError)?,
        registry: registry.clone(),
        db: db.clone(),
        stats: stats.clone(),
        passed,
        shutdown: shutdown.clone(),
        alarm,
    };
    info!("delivering changes to {}", config.gateway_url);
    let mut pipeline = owned(pipeline.run());
    background.0.push(owned(maintain_message_partitions(db.clone())));
    background.0.push(owned(subscriptions::publication::watch(
        db.clone(),
        registry.clone(),
        config.publication.clone(),
    )));
    let health = http::Health {
        db: db.clone(),
        stats,
        registry: registry.clone(),
        slot: config.slot.clone(),
        exposure: http::Exposure::of(&config),
    };
    let subscriptions_api = subscriptions::api::Api {
        db: db.clone(),
        registry,
        passed: passed_rx,
        publication: config.publication.clone(),
        ending: ending.clone(),
    };
    let router = http::router(health, subscriptions_api, config.internal_secret.clone().into());
    let (mut server, _mounted) = match listen {
        Listen::Own(mounts, inherited) => (
            listen_on(&config, inherited.as_deref(), mounts.around(router), &shutdown).await?,
            None,
        ),
        Listen::Mounted(mounts) => {
            let tenant = config.tenant.clone().unwrap_or_default();
            let stopped = shutdown.clone();
            let waits = owned(async move {
                stopped.requested_now().await;
                Ok(())
            });
            (waits, Some(mounts.mount(&tenant, router)))
        }
    };
    let registering = sink::Gateway::new(&config, Arc::new(stats::Stats::default())).map_err(StartError)?;
    setup::tenant::register(&config, &registering, &shutdown).await?;
    // Both end after a shutdown request: the pipeline within its grace period and the stream's
    // close; the server once its requests are answered (a registration waits for the stream at
    // most 15 s).
    match (&mut pipeline.0).await {
        Ok(()) => info!("the pipeline stopped"),
        Err(e) => error!("the pipeline failed: {e}"),
    }
    match tokio::time::timeout(Duration::from_secs(5), &mut server.0).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(StartError(format!("the HTTP server failed: {e}"))),
        Ok(Err(e)) => error!("the HTTP server failed: {e}"),
        Err(_) => warn!("HTTP requests were still open 5 s after shutdown; leaving them"),
    }
    // A deletion holds even if a shutdown came meanwhile (the tenant stopped being listed).
    match ending.why() {
        Some(subscriptions::api::Ended::Retired) => {
            drop_slot(&db, &config.slot).await;
            Ok(Served::Retired)
        }
        Some(subscriptions::api::Ended::Reconnect) if !asked.requested() => Ok(Served::Reconnect),
        _ => {
            info!("stopped");
            Ok(Served::Stopped)
        }
    }
}

/// Serves `router` on `SLUICE_HTTP_ADDR` (HTTPS with `SLUICE_TLS_*`) until shutdown: on the
/// `inherited` socket if one was handed down, else on a socket bound here.
async fn listen_on(
    config: &config::Config,
    inherited: Option<&std::net::TcpListener>,
    router: axum::Router,
    shutdown: &shutdown::Shutdown,
) -> Result<Owned<std::io::Result<()>>, StartError> {
    let listener = match inherited {
        Some(socket) => socket
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| StartError(format!("cannot listen on the socket of SLUICE_HTTP_FD ({e})")))?,
        None => tokio::net::TcpListener::bind(config.http_addr).await.map_err(|e| {
            StartError(format!(
                "cannot listen on SLUICE_HTTP_ADDR={} ({e}): choose a free address",
                config.http_addr
            ))
        })?,
    };
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    StartError(format!(
                        "SLUICE_TLS_CERT={cert} and SLUICE_TLS_KEY={key} cannot be used ({e}): give a PEM certificate chain and its private key"
                    ))
                })?,
        ),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(
        "serving {scheme}://{}/healthz, /metrics and the internal API",
        config.http_addr
    );
    Ok(owned(http::serve(listener, router, tls, shutdown.clone())))
}

/// Drops the slot once its walsender let go of it (a few seconds at most); logged either way.
async fn drop_slot(db: &db::Db, slot: &str) {
    for _ in 0..50 {
        let dropped = match db.client().await {
            Ok(client) => client
                .query_opt(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
                    &[&slot],
                )
                .await
                .map(|row| row.is_some()),
            Err(e) => Err(e),
        };
        match dropped {
            Ok(true) => {
                info!("dropped the replication slot {slot}: the tenant is retired");
                return;
            }
            Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                warn!("dropping the replication slot {slot} failed ({e}): drop it by hand");
                return;
            }
        }
    }
    warn!("the replication slot {slot} is still in use: drop it by hand (pg_drop_replication_slot)");
}

/// A task of a served database, aborted if it still runs when the database stops being served
/// (a tenant stopped, or a start that failed half-way, while the process runs on).
struct Owned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns `task` as part of the database served here (its log lines name the tenant, if any).
fn owned<T: Send + 'static>(task: impl std::future::Future<Output = T> + Send + 'static) -> Owned<T> {
    Owned(tokio::spawn(task.in_current_span()))
}

/// The tasks that loop for as long as the database is served.
#[derive(Default)]
struct Background(Vec<Owned<()>>);

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
