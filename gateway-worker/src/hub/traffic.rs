//! What this hub's sockets send and receive, counted for the tenant's limits
//! (`max_bytes_per_second`, `max_events_per_second`) and for `/metrics`. The counts are saved
//! (SQLite storage, synchronously) at most every [`SAVE_EVERY_MS`], so an evicted hub resumes
//! from them and loses at most those seconds.

use serde::Deserialize;
use sluice_shared::metrics::HubCounts;
use worker::{console_warn, Date, State};

use super::SocketHub;

const SAVE_EVERY_MS: u64 = 5_000;

/// The counts this hub saved last, if any.
pub(super) fn saved_counts(state: &State) -> HubCounts {
    #[derive(Deserialize)]
    struct Row {
        counts: String,
    }
    let sql = state.storage().sql();
    let loaded = sql
        .exec(
            "create table if not exists hub_counts (id integer primary key, counts text not null)",
            None,
        )
        .and_then(|_| sql.exec("select counts from hub_counts where id = 1", None))
        .and_then(|cursor| cursor.to_array::<Row>());
    match loaded {
        Ok(rows) => rows
            .first()
            .and_then(|row| serde_json::from_str(&row.counts).ok())
            .unwrap_or_default(),
        Err(e) => {
            console_warn!("reading the hub's saved counts: {e}");
            HubCounts::default()
        }
    }
}

/// Frames sent by one delivery, and their bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sent {
    pub frames: u64,
    pub bytes: u64,
}

impl Sent {
    pub fn add(&mut self, other: Sent) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

/// Kinds of deliveries, as `/metrics` labels them.
pub(super) const BROADCAST: &str = "broadcast";
pub(super) const PRESENCE: &str = "presence";
pub(super) const POSTGRES_CHANGES: &str = "postgres_changes";

impl SocketHub {
    /// A frame of `bytes` arrived from a socket.
    pub(super) fn received(&self, bytes: usize) {
        let now = Date::now().as_millis();
        self.rates.borrow_mut().bytes.add(now, bytes as u64);
        {
            let mut counts = self.counts.borrow_mut();
            counts.messages_in += 1;
            counts.bytes_in += bytes as u64;
        }
        self.save_counts_now_and_then(now);
    }

    /// Frames went out to sockets; `delivery` says what kind of delivery they were, if any.
    pub(super) fn sent(&self, sent: Sent, delivery: Option<&str>) {
        if sent.frames == 0 {
            return;
        }
        let now = Date::now().as_millis();
        self.rates.borrow_mut().bytes.add(now, sent.bytes);
        {
            let mut counts = self.counts.borrow_mut();
            counts.messages_out += sent.frames;
            counts.bytes_out += sent.bytes;
            if let Some(kind) = delivery {
                *counts.deliveries.entry(kind.to_string()).or_default() += sent.frames;
            }
        }
        self.save_counts_now_and_then(now);
    }

    /// Saves the counts when the last save is [`SAVE_EVERY_MS`] old.
    fn save_counts_now_and_then(&self, now: u64) {
        if now.saturating_sub(self.counts_saved_at.get()) >= SAVE_EVERY_MS {
            self.save_counts(now);
        }
    }

    fn save_counts(&self, now: u64) {
        self.counts_saved_at.set(now);
        let Ok(counts) = serde_json::to_string(&*self.counts.borrow()) else {
            return;
        };
        let saved = self.state.storage().sql().exec(
            "insert or replace into hub_counts (id, counts) values (1, ?)",
            vec![counts.into()],
        );
        if let Err(e) = saved {
            console_warn!("saving the hub's counts: {e}");
        }
    }

    /// This hub's counts, with the gauges of the moment. A scrape saves them: what was reported
    /// is never reported lower after an eviction.
    pub(super) fn counts(&self) -> HubCounts {
        self.save_counts(Date::now().as_millis());
        let roster = self.roster();
        HubCounts {
            sockets: roster.sockets() as u64,
            channels: roster.memberships() as u64,
            ..self.counts.borrow().clone()
        }
    }
}
