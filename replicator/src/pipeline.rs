//! The pipeline: the one loop that moves changes from the source to the sink.
//!
//! ```text
//!   source (slot, pgoutput) ──events──▶ gather committed transactions into a batch
//!        ▲                                   │ the stream pauses, or the batch is full or old
//!        │ confirm(end of batch)             ▼
//!        └────────────── sink (hubs, channels) ◀── dispatch (match, RLS, per-hub batches)
//! ```
//!
//! Discipline: a batch's end position is confirmed only after every hub and channel took its
//! share, so a crash replays it and hubs drop what they already delivered. While the gateway
//! does not take a batch, nothing more is read (backpressure, not loss).
//!
//! The loop's priorities, highest first (a `biased` `select!`):
//! 1. shutdown: stop reading, deliver what was gathered (bounded), confirm, close the stream;
//! 2. the slot's alarm (it holds too much WAL, or Postgres invalidated it): stop streaming, even
//!    in the middle of a delivery; the slot is recreated and the gap announced before streaming
//!    again (`source::slot`);
//! 3. the stream's next event;
//! 4. a batch is waiting and the stream has nothing ready: flush it now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::position::Lsn;
use tokio::sync::watch;
use tracing::{error, warn};

use crate::config::Config;
use crate::db::Db;
use crate::dispatch::Dispatcher;
use crate::error::{Recovery, StreamError};
use crate::messages::broadcasts::{self, DbBroadcast};
use crate::setup::MESSAGES_PUBLICATION;
use crate::shutdown::{Shutdown, GRACE};
use crate::sink::Gateway;
use crate::source::change::RowChange;
use crate::source::slot::{self, Alarm};
use crate::source::{Event, Source};
use crate::stats::Stats;
use crate::subscriptions::{self, registry::Registry};

/// Most changes gathered into one batch; a larger transaction is still dispatched whole.
const MAX_BATCH: usize = 5_000;
/// A batch waits at most this long for more while the stream keeps sending.
const MAX_BATCH_AGE: Duration = Duration::from_millis(100);
/// How long closing the stream may take at shutdown.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

pub struct Pipeline {
    pub config: Config,
    pub dispatcher: Dispatcher,
    pub gateway: Gateway,
    pub registry: Arc<Registry>,
    pub db: Arc<Db>,
    pub stats: Arc<Stats>,
    /// The highest position the stream has fully handled: registrations wait for it to pass
    /// their mark.
    pub passed: watch::Sender<Lsn>,
    pub shutdown: Shutdown,
    /// Raised by the slot's guard when the slot must be recreated.
    pub alarm: Arc<Alarm>,
}

/// Committed changes and database broadcasts waiting to be dispatched, and the position
/// confirming them.
#[derive(Default)]
struct Batch {
    changes: Vec<RowChange>,
    broadcasts: Vec<DbBroadcast>,
    end: Option<Lsn>,
    since: Option<Instant>,
}

impl Batch {
    fn is_pending(&self) -> bool {
        self.end.is_some()
    }

    fn is_due(&self) -> bool {
        self.changes.len() + self.broadcasts.len() >= MAX_BATCH
            || self.since.is_some_and(|since| since.elapsed() >= MAX_BATCH_AGE)
    }
}

/// The transaction being received: its commit time, changes and broadcasts.
#[derive(Default)]
struct Transaction {
    commit_micros: i64,
    changes: Vec<RowChange>,
    broadcasts: Vec<DbBroadcast>,
}

impl Pipeline {
    /// Streams until shutdown, reconnecting after errors: soon (1 s doubling to 30 s, from 1 s
    /// again once a connection streamed) when the database or network failed, every 30 s when a
    /// setting is wrong.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_secs(1);
        while !self.shutdown.requested() {
            let outcome = match self.protect_disk().await {
                Ok(()) => self.stream_once().await,
                Err(e) => Err(e),
            };
            // A new outage starts its retries at 1 s, not where the last outage's left off.
            if self.stats.connected.swap(false, std::sync::atomic::Ordering::Relaxed) {
                backoff = Duration::from_secs(1);
            }
            self.stats
                .unconfirmed_since
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let pause = match outcome {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    backoff
                }
                Err(e) => match e.recovery() {
                    Recovery::Stop => break,
                    Recovery::RecreateSlot => {
                        if let StreamError::Slot(reset) = e {
                            self.alarm.raise(reset);
                        }
                        Duration::ZERO
                    }
                    Recovery::RetrySoon => {
                        warn!(
                            "ReplicationConnectionDown: replication stream ended: {e}; reconnecting in {} s",
                            backoff.as_secs()
                        );
                        let pause = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        pause
                    }
                    Recovery::RetrySlowly => {
                        error!("ReplicationConnectionDown: replication stream ended: {e}; retrying in 30 s");
                        Duration::from_secs(30)
                    }
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.requested_now() => {}
            }
        }
    }

    /// Before streaming: the slot is recreated if the alarm is raised, then every recorded gap
    /// is announced (waiting for the gateway if need be, but not past shutdown or a new alarm).
    async fn protect_disk(&mut self) -> Result<(), StreamError> {
        if let Some(reset) = self.alarm.raised() {
            slot::recreate(&self.db, &self.config.slot, &reset, &self.alarm, &self.stats)
                .await
                .map_err(StreamError::Database)?;
        }
        let (shutdown, alarm) = (self.shutdown.clone(), self.alarm.clone());
        tokio::select! {
            announced = slot::announce_gaps(&self.db, &self.gateway, self.dispatcher.stream()) => {
                announced.map_err(StreamError::Database)
            }
            _ = shutdown.requested_now() => Ok(()),
            _ = alarm.wait() => Ok(()),
        }
    }

    /// Whether `realtime.messages` is published for the stream. Where another role owns it (a
    /// Supabase database), its owner must create the publication; until then database broadcasts
    /// are not streamed, and the log says what to run.
    async fn messages_published(&self) -> Result<bool, StreamError> {
        let client = self.db.client().await.map_err(StreamError::Database)?;
        let exists: bool = client
            .query_one(
                "select exists (select from pg_publication where pubname = $1)",
                &[&MESSAGES_PUBLICATION],
            )
            .await
            .map_err(StreamError::Database)?
            .get(0);
        if !exists {
            warn!(
                "Broadcast from the database is off: publication {MESSAGES_PUBLICATION} does not exist. The owner of realtime.messages creates it with: CREATE PUBLICATION {MESSAGES_PUBLICATION} FOR TABLE realtime.messages WITH (publish_via_partition_root = true)"
            );
        }
        Ok(exists)
    }

    /// The alarm as an error, once raised.
    async fn slot_alarm(alarm: Arc<Alarm>) -> StreamError {
        alarm.wait().await;
        StreamError::Slot(alarm.raised().unwrap_or(slot::Reset::Invalidated))
    }

    /// One replication connection, from connecting until it ends or shutdown closes it.
    async fn stream_once(&mut self) -> Result<(), StreamError> {
        let alarm = self.alarm.clone();
        let with_messages = self.messages_published().await?;
        let mut source = tokio::select! {
            source = Source::connect(&self.config, with_messages) => source?,
            _ = self.shutdown.requested_now() => return Ok(()),
            e = Self::slot_alarm(alarm.clone()) => return Err(e),
        };
        self.stats.connected.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut transaction: Option<Transaction> = None;
        let mut batch = Batch::default();
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested_now() => {
                    // An open transaction is dropped: it was not committed as far as we saw.
                    self.flush(&mut batch, &mut source).await?;
                    source.close(CLOSE_WITHIN).await;
                    return Ok(());
                }
                e = Self::slot_alarm(alarm.clone()) => return Err(e),
                event = source.next() => {
                    let Some(event) = event? else {
                        return Ok(());
                    };
                    self.apply(event, &mut transaction, &mut batch, &mut source);
                    if batch.is_due() {
                        self.flush(&mut batch, &mut source).await?;
                    }
                }
                _ = std::future::ready(()), if batch.is_pending() => {
                    self.flush(&mut batch, &mut source).await?;
                }
            }
        }
    }

    /// Takes one event into the transaction and batch being gathered.
    fn apply(&mut self, event: Event, transaction: &mut Option<Transaction>, batch: &mut Batch, source: &mut Source) {
        match event {
            Event::Begin { commit_micros } => {
                *transaction = Some(Transaction {
                    commit_micros,
                    ..Transaction::default()
                })
            }
            Event::Relation(relation) => self.dispatcher.relation_changed(relation.relid),
            Event::Change(mut change) => {
                let Some(tx) = transaction.as_mut() else {
                    return;
                };
                change.commit_micros = tx.commit_micros;
                if broadcasts::is_messages_table(&change) {
                    tx.broadcasts.extend(broadcasts::from_change(&change));
                    return;
                }
                Stats::count(&self.stats.changes, 1);
                // Only changes someone subscribed to are kept.
                if self.dispatcher.wants(change.relation.relid) {
                    tx.changes.push(change);
                }
            }
            Event::Commit { end_lsn } => {
                Stats::count(&self.stats.transactions, 1);
                let tx = transaction.take().unwrap_or_default();
                batch
                    .changes
                    .extend(tx.changes.into_iter().map(|c| RowChange { lsn: end_lsn, ..c }));
                batch.broadcasts.extend(tx.broadcasts.into_iter().map(|mut b| {
                    b.message.lsn = end_lsn;
                    b
                }));
                batch.end = Some(end_lsn);
                batch.since.get_or_insert_with(Instant::now);
                let _ = self.stats.unconfirmed_since.compare_exchange(
                    0,
                    tx.commit_micros,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            Event::Mark { lsn } => self.pass(lsn),
            // Between transactions, with nothing waiting, WAL up to the server's position holds
            // nothing for us (other tables, checkpoints): confirm it, or the slot would pin that
            // WAL and a shutting-down server would wait for us forever.
            Event::Idle { wal_end } if transaction.is_none() && !batch.is_pending() => {
                self.confirm(source, wal_end);
            }
            Event::Idle { .. } => {}
        }
    }

    /// Dispatches the batch, hands it to the sink, and confirms its end once everything was
    /// taken. After shutdown was asked for this gets [`GRACE`]; past it the batch stays
    /// unconfirmed (`Interrupted`).
    async fn flush(&mut self, batch: &mut Batch, source: &mut Source) -> Result<(), StreamError> {
        let Some(end) = batch.end else {
            return Ok(());
        };
        let (shutdown, alarm) = (self.shutdown.clone(), self.alarm.clone());
        tokio::select! {
            delivered = self.deliver(batch) => delivered?,
            _ = shutdown.grace_over() => {
                warn!("the batch ending at {end} was not delivered within {GRACE:?} of shutdown; it will be delivered after the next start");
                return Err(StreamError::Interrupted);
            }
            e = Self::slot_alarm(alarm) => return Err(e),
        }
        self.confirm(source, end);
        self.stats
            .unconfirmed_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
        *batch = Batch::default();
        Ok(())
    }

    /// Dispatch and sink for one batch.
    async fn deliver(&mut self, batch: &mut Batch) -> Result<(), StreamError> {
        if !batch.changes.is_empty() {
            Stats::count(&self.stats.batches, 1);
            let per_hub = self.dispatcher.dispatch(&batch.changes).await?;
            let gone = self.gateway.deliver_all(&per_hub).await;
            subscriptions::forget_gone(&self.registry, &self.db, gone);
            batch.changes.clear();
        }
        if !batch.broadcasts.is_empty() {
            let broadcasts = std::mem::take(&mut batch.broadcasts);
            self.gateway
                .relay_broadcasts(self.dispatcher.stream(), broadcasts)
                .await;
        }
        Ok(())
    }

    /// Everything up to `lsn` is delivered: the slot may release it, and registrations waiting
    /// for a mark at or below it may answer.
    fn confirm(&self, source: &mut Source, lsn: Lsn) {
        source.confirm(lsn);
        self.pass(lsn);
    }

    fn pass(&self, lsn: Lsn) {
        self.passed
            .send_if_modified(|p| std::mem::replace(p, (*p).max(lsn)) < lsn);
    }
}
