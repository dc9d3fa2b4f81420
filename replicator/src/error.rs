//! The replicator's errors, typed where a caller acts on them. What an error means for the
//! pipeline is [`Recovery`]: retry soon (the database or the network hiccuped), retry slowly
//! (someone must fix a setting; the replicator keeps trying so the fix needs no restart), or stop.
//! Startup errors are [`StartError`]: a sentence for the operator naming the fix.

use std::fmt;

/// What to do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Transient: retry with a short backoff.
    RetrySoon,
    /// Permanent until an operator changes something: report it (log, `/healthz`) and retry
    /// slowly, so a fixed configuration recovers without a restart.
    RetrySlowly,
    /// The slot must be dropped and created afresh (over its WAL limit, or invalidated by
    /// Postgres): changes are lost, and announced so (`crate::source::slot`).
    RecreateSlot,
    /// The replicator is shutting down: do not retry.
    Stop,
}

/// The replicator cannot start; the text says what to fix.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the stream (reading, evaluating and delivering a batch) stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The replication connection failed or ended (Postgres restarted, network).
    Replication(pgwire_replication::PgWireError),
    /// A message did not decode as pgoutput.
    Decode(String),
    /// The database failed while a batch was evaluated (catalog, RLS queries).
    Database(tokio_postgres::Error),
    /// The slot must be recreated (`crate::source::slot::Reset`).
    Slot(crate::source::slot::Reset),
    /// Shutdown came while a batch was still being delivered: its position is not confirmed
    /// (the slot replays it at the next start; hubs drop what they already delivered).
    Interrupted,
}

impl StreamError {
    pub fn recovery(&self) -> Recovery {
        match self {
            StreamError::Replication(_) | StreamError::Database(_) => Recovery::RetrySoon,
            StreamError::Slot(_) => Recovery::RecreateSlot,
            StreamError::Decode(_) => Recovery::RetrySlowly,
            StreamError::Interrupted => Recovery::Stop,
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Replication(e) => write!(f, "the replication connection failed: {e}"),
            StreamError::Slot(reset) => write!(f, "{reset}"),
            StreamError::Decode(e) => write!(f, "a pgoutput message did not decode ({e}); please report this"),
            StreamError::Database(e) => write!(f, "evaluating changes against the database failed: {e}"),
            StreamError::Interrupted => f.write_str("shutting down before the batch was delivered"),
        }
    }
}

impl From<tokio_postgres::Error> for StreamError {
    fn from(e: tokio_postgres::Error) -> StreamError {
        StreamError::Database(e)
    }
}

/// Why the gateway did not take a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// Unreachable, timed out, or failed (5xx, 429): it may work on the next attempt.
    Unavailable(String),
    /// Refused (401, 403, 404): a setting is wrong; `fix` says which.
    Refused { status: u16, fix: &'static str },
}

impl DeliveryError {
    /// Classifies a gateway's answer by its status.
    pub fn from_status(status: u16, body: &str) -> DeliveryError {
        let fix = match status {
            401 | 403 => {
                "the gateway refused the internal secret: SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET"
            }
            404 => "the gateway has no such endpoint: SLUICE_GATEWAY_URL must be the sluice gateway's base URL",
            _ => return DeliveryError::Unavailable(format!("status {status}: {}", body.trim())),
        };
        DeliveryError::Refused { status, fix }
    }

    pub fn recovery(&self) -> Recovery {
        match self {
            DeliveryError::Unavailable(_) => Recovery::RetrySoon,
            DeliveryError::Refused { .. } => Recovery::RetrySlowly,
        }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Unavailable(problem) => write!(f, "the gateway is unavailable ({problem})"),
            DeliveryError::Refused { status, fix } => write!(f, "{fix} (status {status})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_name_the_fix() {
        let e = DeliveryError::from_status(401, "Unauthorized");
        assert_eq!(e.recovery(), Recovery::RetrySlowly);
        assert!(e
            .to_string()
            .contains("SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET"));
        assert_eq!(DeliveryError::from_status(404, "").recovery(), Recovery::RetrySlowly);
    }

    #[test]
    fn outages_are_transient() {
        for status in [500, 502, 503, 429] {
            assert_eq!(DeliveryError::from_status(status, "x").recovery(), Recovery::RetrySoon);
        }
    }
}
