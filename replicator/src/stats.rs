//! What the replicator has done and how it is doing: counters for `/metrics`, and the state
//! `/healthz` reports. Written by the pipeline and the sink, read by the HTTP server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// Failed attempts to push to the gateway.
    pub push_errors: AtomicU64,
    /// The replication stream is up.
    pub connected: AtomicBool,
    /// Why the gateway refuses deliveries, while it does (a setting to fix).
    refused: Mutex<Option<String>>,
}

impl Stats {
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The gateway refuses deliveries for `why`, or (`None`) accepts them again.
    pub fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
