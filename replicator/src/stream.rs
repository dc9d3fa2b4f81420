//! The replication stream: a persistent logical slot read with `pgoutput` over the streaming
//! replication protocol (pgwire-replication), decoded with pg_walstream, reconnecting with backoff.
//!
//! Changes of committed transactions are gathered into a batch while more are immediately
//! available (up to [`MAX_BATCH`]), handed to the [`Dispatcher`], and the slot is confirmed up to
//! the batch's end only once every hub concerned answered. After a crash, the slot replays from
//! the last confirmed position and hubs drop what they already delivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{ColumnData, LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sluice_shared::subscription::Action;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broadcasts::{self, DbBroadcast};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::payload::{Datum, RelColumn, Relation, RowChange};

/// Most changes dispatched at once; a larger transaction is still dispatched whole.
const MAX_BATCH: usize = 5_000;

/// The publication of `realtime.messages` (created by the migrations).
pub const MESSAGES_PUBLICATION: &str = "sluice_messages";

/// The prefix of the logical messages registrations write to learn when the stream passed them.
pub const SYNC_PREFIX: &str = "sluice.sync";

/// Counters read by `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub changes: AtomicU64,
    pub transactions: AtomicU64,
    pub batches: AtomicU64,
    /// Messages handed to hubs (one per channel per change).
    pub deliveries: AtomicU64,
    pub rls_queries: AtomicU64,
    /// Broadcasts from the database handed to channels.
    pub db_broadcasts: AtomicU64,
    /// Failed attempts to push to a hub.
    pub push_errors: AtomicU64,
    pub connected: AtomicBool,
}

/// Streams forever, reconnecting with backoff (1 s doubling to 30 s) after errors. `passed`
/// carries the highest WAL position the stream has fully handled.
pub async fn run(config: Config, stats: Arc<Stats>, mut dispatcher: Dispatcher, passed: watch::Sender<u64>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match stream_once(&config, &stats, &mut dispatcher, &passed).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => warn!("replication stream ended: {e}; reconnecting in {} s", backoff.as_secs()),
        }
        stats.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Committed changes and database broadcasts waiting to be dispatched, and the position
/// confirming them.
#[derive(Default)]
struct Batch {
    changes: Vec<RowChange>,
    broadcasts: Vec<DbBroadcast>,
    end: Option<u64>,
}

/// The transaction being received: its commit time, its changes and broadcasts, and how many
/// messages it had (their `seq`).
#[derive(Default)]
struct Transaction {
    commit_micros: i64,
    changes: Vec<RowChange>,
    broadcasts: Vec<DbBroadcast>,
    count: u32,
}

async fn stream_once(
    config: &Config,
    stats: &Stats,
    dispatcher: &mut Dispatcher,
    passed: &watch::Sender<u64>,
) -> Result<(), String> {
    let mut client = ReplicationClient::connect(replication_config(config)?)
        .await
        .map_err(|e| format!("connecting for replication: {e}"))?;
    info!("streaming slot {} of publication {}", config.slot, config.publication);
    stats.connected.store(true, Ordering::Relaxed);
    let mut parser = LogicalReplicationParser::with_protocol_version(1);
    let mut relations: HashMap<u32, Arc<Relation>> = HashMap::new();
    let mut transaction: Option<Transaction> = None;
    let mut batch = Batch::default();
    let pass = |lsn: u64| passed.send_if_modified(|p| std::mem::replace(p, (*p).max(lsn)) < lsn);
    loop {
        // Gather while events are ready; dispatch when the stream pauses.
        let event = if batch.end.is_none() {
            client.recv().await
        } else {
            match tokio::time::timeout(Duration::ZERO, client.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    flush(&mut batch, dispatcher, &client, stats, &pass).await?;
                    continue;
                }
            }
        };
        let Some(event) = event.map_err(|e| format!("{e}"))? else {
            return Ok(());
        };
        match event {
            ReplicationEvent::Begin { commit_time_micros, .. } => {
                transaction = Some(Transaction {
                    commit_micros: commit_time_micros,
                    ..Transaction::default()
                })
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = parser
                    .parse_wal_message(&data)
                    .map_err(|e| format!("decoding pgoutput: {e}"))?
                    .message;
                if let Some(relation) = relation_from(&message) {
                    // A table (re)described: what was cached about it may be stale.
                    dispatcher.relation_changed(relation.relid);
                    relations.insert(relation.relid, Arc::new(relation));
                    continue;
                }
                let Some(tx) = transaction.as_mut() else {
                    continue;
                };
                if let Some(change) = row_change(message, &relations, tx.commit_micros, tx.count) {
                    tx.count += 1;
                    if broadcasts::is_messages_table(&change) {
                        tx.broadcasts.extend(broadcasts::from_change(&change));
                        continue;
                    }
                    stats.changes.fetch_add(1, Ordering::Relaxed);
                    // Only changes someone subscribed to are kept.
                    if dispatcher.registry.for_table(change.relation.relid).is_some() {
                        tx.changes.push(change);
                    }
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                let tx = transaction.take().unwrap_or_default();
                batch
                    .changes
                    .extend(tx.changes.into_iter().map(|c| RowChange { lsn: end_lsn.0, ..c }));
                batch.broadcasts.extend(tx.broadcasts.into_iter().map(|mut b| {
                    b.message.lsn = end_lsn.0;
                    b
                }));
                batch.end = Some(end_lsn.0);
                if batch.changes.len() + batch.broadcasts.len() >= MAX_BATCH {
                    flush(&mut batch, dispatcher, &client, stats, &pass).await?;
                }
            }
            ReplicationEvent::Message { prefix, lsn, .. } if prefix == SYNC_PREFIX => {
                pass(lsn.0);
            }
            // Between transactions, with nothing waiting, WAL up to the server's position holds
            // nothing for us (other tables, checkpoints): confirm it, or the slot would pin that
            // WAL and a shutting-down server would wait for us forever.
            ReplicationEvent::KeepAlive { wal_end, .. } if transaction.is_none() && batch.end.is_none() => {
                client.update_applied_lsn(wal_end);
                pass(wal_end.0);
            }
            _ => {}
        }
    }
}

/// Dispatches the batch and confirms its end position.
async fn flush(
    batch: &mut Batch,
    dispatcher: &mut Dispatcher,
    client: &ReplicationClient,
    stats: &Stats,
    pass: &impl Fn(u64) -> bool,
) -> Result<(), String> {
    if !batch.changes.is_empty() {
        stats.batches.fetch_add(1, Ordering::Relaxed);
        dispatcher
            .dispatch(&batch.changes)
            .await
            .map_err(|e| format!("evaluating changes against the database: {e}"))?;
    }
    if !batch.broadcasts.is_empty() {
        dispatcher.relay_broadcasts(std::mem::take(&mut batch.broadcasts)).await;
    }
    if let Some(end) = batch.end.take() {
        client.update_applied_lsn(Lsn(end));
        pass(end);
    }
    batch.changes.clear();
    Ok(())
}

fn replication_config(config: &Config) -> Result<ReplicationConfig, String> {
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
    Ok(ReplicationConfig::new(
        host,
        pg.get_user().unwrap_or("postgres"),
        password,
        pg.get_dbname().unwrap_or("postgres"),
        config.slot.clone(),
        // The tables' changes, and the messages of Broadcast from the database.
        [config.publication.clone(), MESSAGES_PUBLICATION.to_string()],
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    // Value texts in the forms `sluice_shared::pgvalue` renders and filters compare.
    .with_options(crate::db::SESSION_OPTIONS)
    // Confirm progress every second: keeps slot lag small and lets a shutting-down server's
    // walsender, which waits for the client to confirm, finish promptly.
    .with_status_interval(Duration::from_secs(1)))
}

fn relation_from(message: &LogicalReplicationMessage) -> Option<Relation> {
    let LogicalReplicationMessage::Relation {
        relation_id,
        namespace,
        relation_name,
        columns,
        ..
    } = message
    else {
        return None;
    };
    Some(Relation {
        relid: *relation_id,
        schema: namespace.to_string(),
        table: relation_name.to_string(),
        columns: columns
            .iter()
            .map(|c| RelColumn {
                name: c.name.to_string(),
                type_oid: c.type_id,
                identity: c.flags & 1 == 1,
            })
            .collect(),
    })
}

/// An INSERT, UPDATE or DELETE as a [`RowChange`] (its `lsn` set at commit). TRUNCATE is not a
/// Postgres Changes event upstream either.
fn row_change(
    message: LogicalReplicationMessage,
    relations: &HashMap<u32, Arc<Relation>>,
    commit_micros: i64,
    seq: u32,
) -> Option<RowChange> {
    let (relid, action, new, old, old_is_key) = match message {
        LogicalReplicationMessage::Insert { relation_id, tuple } => {
            (relation_id, Action::Insert, Some(tuple), None, false)
        }
        LogicalReplicationMessage::Update {
            relation_id,
            old_tuple,
            new_tuple,
            key_type,
        } => (
            relation_id,
            Action::Update,
            Some(new_tuple),
            old_tuple,
            key_type == Some('K'),
        ),
        LogicalReplicationMessage::Delete {
            relation_id,
            old_tuple,
            key_type,
        } => (relation_id, Action::Delete, None, Some(old_tuple), key_type == 'K'),
        _ => return None,
    };
    let Some(relation) = relations.get(&relid) else {
        warn!("a change on relation {relid} arrived before its description; skipped");
        return None;
    };
    Some(RowChange {
        lsn: 0,
        seq,
        commit_micros,
        relation: relation.clone(),
        action,
        new: new.map(datums),
        old: old.map(datums),
        old_is_key,
    })
}

fn datums(tuple: TupleData) -> Vec<Datum> {
    tuple.columns.iter().map(datum).collect()
}

fn datum(column: &ColumnData) -> Datum {
    match column.data_type {
        b'u' => Datum::Unchanged,
        b't' => Datum::Text(String::from_utf8_lossy(column.as_bytes()).into_owned()),
        _ => Datum::Null,
    }
}
