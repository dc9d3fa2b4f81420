//! Pushing change batches to hubs through the gateway Worker
//! (`POST {SLUICE_GATEWAY_URL}/internal/v1/changes/{hub}`, bearer secret). A hub that cannot be
//! reached is retried with backoff until it answers: the stream waits (backpressure) rather than
//! lose a change.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sluice_shared::internal::{ChangeBatch, ChangeReceipt};
use tracing::{info, warn};

pub struct Gateway {
    http: reqwest::Client,
    base: String,
    secret: String,
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

impl Gateway {
    pub fn new(base: &str, secret: &str) -> Gateway {
        Gateway {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client with default TLS settings"),
            base: base.to_string(),
            secret: secret.to_string(),
        }
    }

    /// Delivers `batch` to `hub`, retrying until a 2xx answer. `failed` counts failed attempts.
    pub async fn deliver(&self, hub: &str, batch: &ChangeBatch, mut failed: impl FnMut()) -> ChangeReceipt {
        let url = format!(
            "{}/internal/v1/changes/{}",
            self.base,
            utf8_percent_encode(hub, NON_ALPHANUMERIC)
        );
        let mut wait = FIRST_RETRY;
        let mut attempts = 0u32;
        loop {
            let outcome = self
                .http
                .post(&url)
                .bearer_auth(&self.secret)
                .json(batch)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let problem = match outcome {
                Ok(response) => match response.json::<ChangeReceipt>().await {
                    Ok(receipt) => {
                        if attempts > 0 {
                            info!("delivered to {hub} after {attempts} failed attempts");
                        }
                        return receipt;
                    }
                    Err(e) => format!("unreadable answer: {e}"),
                },
                Err(e) => e.to_string(),
            };
            failed();
            attempts += 1;
            if attempts == 1 || attempts.is_multiple_of(20) {
                warn!(
                    "cannot deliver {} changes to {hub} ({problem}); retrying (attempt {attempts}), the stream waits meanwhile",
                    batch.changes.len()
                );
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}
