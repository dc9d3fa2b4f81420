//! What the replicator has done and how it is doing: counters for `/metrics`, and the state
//! `/healthz` reports. Written by the pipeline and the sink, read by the HTTP server.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Stats {
    pub changes: AtomicU64,
    pub transactions: AtomicU64,
    pub batches: AtomicU64,
    /// Messages handed to hubs (one per channel per change).
    pub deliveries: AtomicU64,
    pub rls_queries: AtomicU64,
    /// (change, subscriber) pairs on an RLS table, by how they were decided: [`RlsPath`].
    pub rls_pairs: [AtomicU64; 3],
    /// Broadcasts from the database handed to channels.
    pub db_broadcasts: AtomicU64,
    /// Failed attempts to push to the gateway.
    pub push_errors: AtomicU64,
    /// The replication stream is up.
    pub connected: AtomicBool,
    /// Why the gateway refuses deliveries, while it does (a setting to fix).
    refused: Mutex<Option<String>>,
    /// Commit time (µs since 2000-01-01 UTC, as pgoutput) of the oldest change gathered and not
    /// yet confirmed; 0 when everything is.
    pub unconfirmed_since: AtomicI64,
    /// Times the slot was recreated to protect the disk (`crate::source::slot`).
    pub slot_resets: AtomicU64,
    slot: Mutex<SlotReport>,
}

/// The slot as the guard last measured it.
#[derive(Clone, Debug, Default)]
pub struct SlotReport {
    pub retained_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Why `/healthz` says degraded, while it does.
    pub warning: Option<String>,
}

impl Stats {
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The gateway refuses deliveries for `why`, or (`None`) accepts them again.
    pub fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn set_slot(&self, report: SlotReport) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    pub fn slot(&self) -> SlotReport {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Seconds since the oldest change not yet confirmed was committed.
    pub fn unconfirmed_age_secs(&self) -> Option<u64> {
        let since = self.unconfirmed_since.load(Ordering::Relaxed);
        (since != 0).then(|| {
            // pgoutput's epoch is 2000-01-01 UTC, 946,684,800 s after Unix's.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as i64
                - 946_684_800_000_000;
            (now - since).max(0) as u64 / 1_000_000
        })
    }

    pub fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How a (change, subscriber) pair on an RLS table was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RlsPath {
    /// Found through the policy's index, no query: the policy is exactly the index.
    Indexed = 0,
    /// Found through the index, confirmed by Postgres (membership, restrictive policies).
    Confirmed = 1,
    /// Not narrowed (a policy sluice does not index): checked by Postgres for every subscriber.
    Unindexed = 2,
}

impl RlsPath {
    pub const ALL: [RlsPath; 3] = [RlsPath::Indexed, RlsPath::Confirmed, RlsPath::Unindexed];

    /// Its label on `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            RlsPath::Indexed => "indexed",
            RlsPath::Confirmed => "confirmed",
            RlsPath::Unindexed => "unindexed",
        }
    }
}
