//! Pushing to the gateway Worker (`SLUICE_GATEWAY_URL`, bearer secret): change batches to hubs
//! (`/internal/v1/changes/{hub}`) and database broadcasts to channels (`/internal/v1/broadcasts`).
//! A call that fails is retried with backoff until it succeeds: the stream waits (backpressure)
//! rather than lose anything.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Serialize;
use sluice_shared::internal::{ChangeBatch, ChangeReceipt, DbBroadcasts};
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

    /// Delivers `batch` to `hub`; its receipt. `failed` counts failed attempts.
    pub async fn deliver(&self, hub: &str, batch: &ChangeBatch, failed: impl FnMut()) -> ChangeReceipt {
        let path = format!("/internal/v1/changes/{}", utf8_percent_encode(hub, NON_ALPHANUMERIC));
        let what = format!("{} changes to {hub}", batch.changes.len());
        let answer = self.post_until_ok(&path, batch, &what, failed).await;
        serde_json::from_str(&answer).unwrap_or_else(|e| {
            warn!("{hub} answered with an unreadable receipt ({e}); assuming no channel is gone");
            ChangeReceipt::default()
        })
    }

    /// Hands one channel's database broadcasts to its Channel object.
    pub async fn relay(&self, batch: &DbBroadcasts, failed: impl FnMut()) {
        let what = format!("{} database broadcasts to {}", batch.messages.len(), batch.topic);
        self.post_until_ok("/internal/v1/broadcasts", batch, &what, failed)
            .await;
    }

    /// POSTs `body` as JSON until a 2xx answer; the answer's text.
    async fn post_until_ok(&self, path: &str, body: &impl Serialize, what: &str, mut failed: impl FnMut()) -> String {
        let url = format!("{}{path}", self.base);
        let mut wait = FIRST_RETRY;
        let mut attempts = 0u32;
        loop {
            let outcome = self
                .http
                .post(&url)
                .bearer_auth(&self.secret)
                .json(body)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let problem = match outcome {
                Ok(response) => match response.text().await {
                    Ok(text) => {
                        if attempts > 0 {
                            info!("delivered {what} after {attempts} failed attempts");
                        }
                        return text;
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            failed();
            attempts += 1;
            if attempts == 1 || attempts.is_multiple_of(20) {
                warn!("cannot deliver {what} ({problem}); retrying (attempt {attempts}), the stream waits meanwhile");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}
