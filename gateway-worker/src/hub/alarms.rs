//! The hub's one alarm: it closes channels whose token expired and sockets silent for
//! `IDLE_TIMEOUT_MS`, tries again the Postgres Changes registrations that are due, then sets
//! itself for the next of these.

use sluice_shared::session::Session;
use sluice_shared::texts;
use worker::*;

use super::SocketHub;
use crate::config;

impl SocketHub {
    /// The alarm went off: expire and close what is due, and wake again for what is next.
    pub(super) async fn run_alarm(&self) -> Result<()> {
        let now_ms = Date::now().as_millis();
        self.retry_postgres_due(now_ms).await?;
        let idle_timeout = config::idle_timeout_ms(&self.env);
        let mut next: Option<u64> = self.next_postgres_retry();
        for ws in self.state.get_websockets() {
            let Ok(Some(mut session)) = self.load_session(&ws).await else {
                continue;
            };
            // Activity is known since this instance started; before that, count from now.
            let last = *self.last_seen.borrow_mut().entry(session.id.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(last) >= idle_timeout {
                console_log!(
                    "{}: closing socket {}, silent for {} ms",
                    self.name(),
                    session.id,
                    now_ms - last
                );
                self.socket_gone(&ws, Some((1000, texts::CLOSE_IDLE))).await?;
                continue;
            }
            self.change_session(&ws, &mut session, |s| s.expire((now_ms / 1000) as i64))
                .await?;
            let expiry = session.next_expiry().map(alarm_time);
            next = [next, Some(last + idle_timeout), expiry].into_iter().flatten().min();
        }
        if let Some(at) = next {
            self.state.storage().set_alarm(at_epoch_ms(at)).await?;
        }
        Ok(())
    }

    /// Moves the hub's alarm earlier if one of this session's channels expires before it.
    pub(super) async fn schedule_expiry(&self, session: &Session) -> Result<()> {
        match session.next_expiry() {
            Some(exp) => self.wake_by(alarm_time(exp)).await,
            None => Ok(()),
        }
    }

    /// Moves the alarm to `at_ms` (epoch ms) unless it is already due earlier.
    pub(super) async fn wake_by(&self, at_ms: u64) -> Result<()> {
        let storage = self.state.storage();
        if storage
            .get_alarm()
            .await?
            .is_none_or(|current| (at_ms as i64) < current)
        {
            storage.set_alarm(at_epoch_ms(at_ms)).await?;
        }
        Ok(())
    }
}

/// When to wake for a token expiring at `exp` (epoch seconds): the second after, in epoch ms, so
/// the token is surely past.
fn alarm_time(exp: i64) -> u64 {
    (exp.max(0) as u64 + 1) * 1000
}

/// An absolute alarm time (a bare i64 would be an offset from now).
fn at_epoch_ms(ms: u64) -> ScheduledTime {
    ScheduledTime::new(js_sys::Date::new(&(ms as f64).into()))
}
