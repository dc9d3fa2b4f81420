//! The replication stream: a persistent logical slot read with `pgoutput` over the streaming
//! replication protocol (pgwire-replication), decoded with pg_walstream. Reconnects with backoff.
//!
//! Today every change is decoded and counted; nothing subscribes yet, so the slot is confirmed at
//! each commit. Delivery to hubs will hold confirmation until every hub has answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tracing::{debug, info, warn};

use crate::config::Config;

/// Counters read by `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub changes: AtomicU64,
    pub transactions: AtomicU64,
    pub connected: AtomicBool,
}

/// Streams forever, reconnecting with backoff (1 s doubling to 30 s) after errors.
pub async fn run(config: Config, stats: Arc<Stats>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match stream_once(&config, &stats).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => warn!("replication stream ended: {e}; reconnecting in {} s", backoff.as_secs()),
        }
        stats.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn stream_once(config: &Config, stats: &Stats) -> Result<(), String> {
    let pg: tokio_postgres::Config = config.database_url.parse().map_err(|e| format!("{e}"))?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let repl = ReplicationConfig::new(
        host,
        pg.get_user().unwrap_or("postgres"),
        password,
        pg.get_dbname().unwrap_or("postgres"),
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    // Value texts in the forms `sluice_shared::pgvalue` renders.
    .with_options("-c DateStyle=ISO -c TimeZone=UTC")
    // Confirm progress every second: keeps slot lag small and lets a shutting-down server's
    // walsender, which waits for the client to confirm, finish promptly.
    .with_status_interval(Duration::from_secs(1));
    let mut client = ReplicationClient::connect(repl)
        .await
        .map_err(|e| format!("connecting for replication: {e}"))?;
    info!("streaming slot {} of publication {}", config.slot, config.publication);
    stats.connected.store(true, Ordering::Relaxed);
    let mut parser = LogicalReplicationParser::with_protocol_version(1);
    let mut relations: HashMap<u32, (String, String)> = HashMap::new();
    let mut in_transaction = false;
    while let Some(event) = client.recv().await.map_err(|e| format!("{e}"))? {
        match event {
            ReplicationEvent::XLogData { data, .. } => {
                let message = parser
                    .parse_wal_message(&data)
                    .map_err(|e| format!("decoding pgoutput: {e}"))?
                    .message;
                match message {
                    LogicalReplicationMessage::Relation {
                        relation_id,
                        namespace,
                        relation_name,
                        ..
                    } => {
                        relations.insert(relation_id, (namespace.to_string(), relation_name.to_string()));
                    }
                    LogicalReplicationMessage::Insert { relation_id, .. }
                    | LogicalReplicationMessage::Update { relation_id, .. }
                    | LogicalReplicationMessage::Delete { relation_id, .. } => {
                        stats.changes.fetch_add(1, Ordering::Relaxed);
                        if let Some((schema, table)) = relations.get(&relation_id) {
                            debug!("change on {schema}.{table}");
                        }
                    }
                    // TRUNCATE is not a Postgres Changes event upstream either.
                    _ => {}
                }
            }
            ReplicationEvent::Begin { .. } => in_transaction = true,
            ReplicationEvent::Commit { end_lsn, .. } => {
                in_transaction = false;
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                client.update_applied_lsn(end_lsn);
            }
            // Between transactions, WAL up to the server's position holds nothing for us (other
            // tables, checkpoints): confirm it, or the slot would pin that WAL and a shutting-down
            // server would wait for us forever.
            ReplicationEvent::KeepAlive { wal_end, .. } if !in_transaction => client.update_applied_lsn(wal_end),
            _ => {}
        }
    }
    Ok(())
}
