//! WAL safety: a persistent slot that is not confirmed keeps WAL on the user's disk. If the
//! gateway cannot take changes for a day, that disk fills. This module bounds it.
//!
//! - [`guard`] measures the slot every [`CHECK_EVERY`]: WAL it retains (`pg_current_wal_lsn() -
//!   restart_lsn`), the age of the oldest change not yet delivered, and `wal_status`. Past the
//!   warning size or age `/healthz` says degraded, with why. Past the limit (lowered to 80% of
//!   `max_slot_wal_keep_size` when the server sets one), or when Postgres invalidated the slot
//!   (`wal_status = lost`), it raises the [`Alarm`].
//! - The pipeline answers the alarm ([`recreate`]): it stops streaming, records the gap in
//!   `sluice.slot_resets`, drops the slot and creates it afresh at the current position. WAL is
//!   released; the changes in between are lost, and never silently: [`announce_gaps`] tells every
//!   channel subscribed at that moment ([`texts::CHANGES_LOST`]) before any later change reaches
//!   it, and a recorded gap survives a crash until announced.
//!
//! [`texts::CHANGES_LOST`]: sluice_shared::texts::CHANGES_LOST

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::internal::{ChangeBatch, ChannelOfSocket};
use tokio::sync::{watch, Mutex};
use tracing::{error, info, warn};

use crate::config::SlotLimits;
use crate::db::Db;
use crate::sink::Gateway;
use crate::stats::{SlotReport, Stats};

/// How often the slot is measured.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why the slot must be recreated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reset {
    /// It retains more WAL than the limit.
    OverLimit { retained: u64, limit: u64 },
    /// Postgres invalidated it (`max_slot_wal_keep_size`): it cannot be read any more.
    Invalidated,
}

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reset::OverLimit { retained, limit } => write!(
                f,
                "the slot retained {} of WAL, over the limit of {} (SLUICE_SLOT_MAX_SIZE)",
                human(*retained),
                human(*limit)
            ),
            Reset::Invalidated => f.write_str(
                "Postgres invalidated the slot (wal_status = lost: it held more WAL than max_slot_wal_keep_size)",
            ),
        }
    }
}

/// The guard raises it; the pipeline answers it and lowers it. Measuring and recreating take
/// turns (`busy`), so a measurement of the old slot cannot raise it again after the new one exists.
#[derive(Default)]
pub struct Alarm {
    raised: watch::Sender<Option<Reset>>,
    busy: Mutex<()>,
}

impl Alarm {
    pub fn raise(&self, reset: Reset) {
        self.raised.send_if_modified(|r| {
            let first = r.is_none();
            r.get_or_insert(reset);
            first
        });
    }

    pub fn raised(&self) -> Option<Reset> {
        self.raised.borrow().clone()
    }

    /// Resolves once the alarm is raised.
    pub async fn wait(&self) {
        let mut raised = self.raised.subscribe();
        let _ = raised.wait_for(Option::is_some).await;
    }
}

/// The slot as the server reports it.
#[derive(Debug)]
struct Measured {
    retained: u64,
    wal_status: String,
    /// `max_slot_wal_keep_size` in bytes, if set.
    keep_size: Option<u64>,
}

/// `max_slot_wal_keep_size` in bytes, NULL when unset (-1).
pub const KEEP_SIZE_BYTES: &str =
    "(select case when setting::bigint < 0 then null else setting::bigint * 1024 * 1024 end
     from pg_settings where name = 'max_slot_wal_keep_size')";

async fn measure(db: &Db, slot: &str) -> Result<Option<Measured>, tokio_postgres::Error> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!(
                "select coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0), coalesce(wal_status, 'lost'), {KEEP_SIZE_BYTES}
                 from pg_replication_slots where slot_name = $1"
            ),
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| Measured {
        retained: row.get::<_, i64>(0).max(0) as u64,
        wal_status: row.get(1),
        keep_size: row.get::<_, Option<i64>>(2).map(|k| k.max(0) as u64),
    }))
}

/// The limit in effect: the configured one, lowered to 80% of the server's own.
pub fn effective_limit(configured: Option<u64>, keep_size: Option<u64>) -> Option<u64> {
    let server = keep_size.map(|k| k / 5 * 4);
    match (configured, server) {
        (Some(c), Some(s)) => Some(c.min(s)),
        (c, None) => c,
        // Without a limit of ours the server's invalidation is the bound; it is handled the same.
        (None, Some(_)) => None,
    }
}

/// Measures the slot for ever, reporting in `stats` and raising `alarm` when it must go.
pub async fn guard(db: Arc<Db>, slot: String, limits: SlotLimits, stats: Arc<Stats>, alarm: Arc<Alarm>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<String> = None;
    loop {
        tick.tick().await;
        let _turn = alarm.busy.lock().await;
        let measured = match measure(&db, &slot).await {
            Ok(Some(m)) => m,
            // Not created yet, or being recreated.
            Ok(None) => continue,
            Err(e) => {
                warn!("measuring slot {slot} failed: {e}");
                continue;
            }
        };
        let limit = effective_limit(limits.max_bytes, measured.keep_size);
        let age = stats.unconfirmed_age_secs();
        let warning = if measured.wal_status == "lost" {
            alarm.raise(Reset::Invalidated);
            Some(Reset::Invalidated.to_string())
        } else if let Some(limit) = limit.filter(|l| measured.retained > *l) {
            alarm.raise(Reset::OverLimit {
                retained: measured.retained,
                limit,
            });
            Some(format!(
                "the slot retains {} of WAL, over its limit",
                human(measured.retained)
            ))
        } else if measured.retained > limits.warn_bytes {
            Some(format!(
                "the slot retains {} of WAL (warning at {}, SLUICE_SLOT_WARN_SIZE; the slot is recreated at {}): the gateway is not taking changes",
                human(measured.retained),
                human(limits.warn_bytes),
                limit.map_or("the server's max_slot_wal_keep_size".into(), human)
            ))
        } else if age.is_some_and(|a| a > limits.warn_age_secs) {
            Some(format!(
                "changes committed {} s ago are not delivered yet (warning at {} s, SLUICE_SLOT_WARN_AGE): the gateway is not taking them",
                age.unwrap_or_default(),
                limits.warn_age_secs
            ))
        } else {
            None
        };
        if warning != warned {
            match &warning {
                Some(w) => warn!("SlotLagWarning: {w}"),
                None => info!("slot {slot} is back under its warning thresholds"),
            }
            warned = warning.clone();
        }
        stats.set_slot(SlotReport {
            retained_bytes: Some(measured.retained),
            limit_bytes: limit,
            warning,
        });
    }
}

/// Records the gap, then drops the slot and creates it at the current position. The stream must
/// have stopped; its walsender, if the server still runs it, is ended first.
pub async fn recreate(
    db: &Db,
    slot: &str,
    reset: &Reset,
    alarm: &Alarm,
    stats: &Stats,
) -> Result<(), tokio_postgres::Error> {
    let _turn = alarm.busy.lock().await;
    info!("recreating the slot {slot}: {reset}");
    let client = db.client().await?;
    client
        .execute(
            "insert into sluice.slot_resets (reason, last_subscription)
             select $1, coalesce(max(id), 0) from sluice.subscriptions",
            &[&reset.to_string()],
        )
        .await?;
    for _ in 0..100 {
        let row = client
            .query_opt(
                "select active_pid, active_pid is not null and pg_terminate_backend(active_pid)
                 from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?;
        match row {
            None => break,
            Some(row) if row.get::<_, Option<i32>>(0).is_none() => {
                client.execute("select pg_drop_replication_slot($1)", &[&slot]).await?;
                break;
            }
            // The walsender was told to end; it lets go of the slot in a moment.
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    client
        .execute("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await?;
    Stats::count(&stats.slot_resets, 1);
    stats.set_slot(SlotReport::default());
    alarm.raised.send_replace(None);
    error!("SlotRecreated: {reset}; slot {slot} was dropped and created again to protect the database's disk. Changes committed until now were not delivered: subscribed channels are told so");
    Ok(())
}

/// Tells the channels of each recorded gap that changes were lost, oldest gap first; a gap is
/// forgotten once every hub took its notice. Waits for the gateway as deliveries do.
pub async fn announce_gaps(db: &Db, gateway: &Gateway, stream: &str) -> Result<(), tokio_postgres::Error> {
    let client = db.client().await?;
    let gaps = client
        .query("select id, last_subscription from sluice.slot_resets order by id", &[])
        .await?;
    for gap in gaps {
        let (id, last): (i64, i64) = (gap.get(0), gap.get(1));
        let channels = client
            .query(
                "select distinct hub, socket, topic from sluice.subscriptions where id <= $1",
                &[&last],
            )
            .await?;
        let mut per_hub: BTreeMap<String, ChangeBatch> = BTreeMap::new();
        for row in &channels {
            let batch = per_hub.entry(row.get(0)).or_insert_with(|| ChangeBatch {
                stream: stream.to_string(),
                ..ChangeBatch::default()
            });
            batch.lost.push(ChannelOfSocket {
                socket: row.get(1),
                topic: row.get(2),
            });
        }
        gateway.deliver_all(&per_hub).await;
        client
            .execute("delete from sluice.slot_resets where id = $1", &[&id])
            .await?;
        info!("told {} channels that changes were lost", channels.len());
    }
    Ok(())
}

/// Bytes as Postgres prints sizes.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{} GB", b >> 30),
        b if b >= 10 << 20 => format!("{} MB", b >> 20),
        b if b >= 10 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_limit_lowers_ours() {
        assert_eq!(effective_limit(Some(2 << 30), None), Some(2 << 30));
        assert_eq!(effective_limit(Some(2 << 30), Some(1 << 30)), Some((1 << 30) / 5 * 4));
        assert_eq!(effective_limit(Some(100), Some(1 << 30)), Some(100));
        assert_eq!(effective_limit(None, Some(1 << 30)), None);
        assert_eq!(human(3 << 30), "3072 MB");
        assert_eq!(human(12 << 30), "12 GB");
    }
}
