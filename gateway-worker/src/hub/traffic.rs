//! What this hub's sockets send and receive, counted for the tenant's limits
//! (`max_bytes_per_second`, `max_events_per_second`) and for `/metrics`.

use sluice_shared::metrics::HubCounts;
use worker::Date;

use super::SocketHub;

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
        self.rates.borrow_mut().bytes.add(Date::now().as_millis(), bytes as u64);
        let mut counts = self.counts.borrow_mut();
        counts.messages_in += 1;
        counts.bytes_in += bytes as u64;
    }

    /// Frames went out to sockets; `delivery` says what kind of delivery they were, if any.
    pub(super) fn sent(&self, sent: Sent, delivery: Option<&str>) {
        if sent.frames == 0 {
            return;
        }
        self.rates.borrow_mut().bytes.add(Date::now().as_millis(), sent.bytes);
        let mut counts = self.counts.borrow_mut();
        counts.messages_out += sent.frames;
        counts.bytes_out += sent.bytes;
        if let Some(kind) = delivery {
            *counts.deliveries.entry(kind.to_string()).or_default() += sent.frames;
        }
    }

    /// This hub's counts, with the gauges of the moment.
    pub(super) fn counts(&self) -> HubCounts {
        let roster = self.roster();
        HubCounts {
            sockets: roster.sockets() as u64,
            channels: roster.memberships() as u64,
            ..self.counts.borrow().clone()
        }
    }
}
