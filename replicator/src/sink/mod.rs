//! The sink: pushing to the gateway Worker (`SLUICE_GATEWAY_URL`, requests signed with the
//! internal secret). Change batches go to hubs (`/internal/v1/changes/{hub}`), database
//! broadcasts to channels (`/internal/v1/broadcasts`). A push is retried until the gateway takes it: the stream waits
//! (backpressure) rather than lose anything. An outage is retried soon (backoff to 5 s); a
//! refusal (wrong secret or URL) is reported in the log and `/healthz` and retried every 10 s,
//! so fixing the setting is enough to recover.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sluice_shared::internal::{Access, ChangeBatch, ChangeReceipt, DbBroadcasts, DbMessage, Unsubscribe, MAX_REQUEST_BYTES};
use sluice_shared::signature;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::{DeliveryError, Recovery};
use crate::messages::broadcasts::DbBroadcast;
use crate::stats::Stats;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A failed request, with its causes (reqwest says only "error sending request"; the cause says
/// a refused connection, or a certificate of an unknown issuer).
fn unavailable(e: reqwest::Error) -> DeliveryError {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    DeliveryError::Unavailable(text)
}

/// How often a refused push is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

pub struct Gateway {
    http: reqwest::Client,
    base: String,
    secret: String,
    /// `/{tenant}` when this replicator serves one tenant by its own secret (`SLUICE_TENANT`).
    tenant_path: String,
    stats: Arc<Stats>,
}

impl Gateway {
    /// A client of the configured gateway; fails when `SLUICE_GATEWAY_CA` cannot be read.
    pub fn new(config: &Config, stats: Arc<Stats>) -> Result<Gateway, String> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &config.gateway_ca {
            let pem = std::fs::read(path).map_err(|e| format!("SLUICE_GATEWAY_CA={path} cannot be read ({e})"))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("SLUICE_GATEWAY_CA={path} is not a PEM certificate file ({e})"))?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        Ok(Gateway {
            http: http.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            base: config.gateway_url.clone(),
            secret: config.internal_secret.clone(),
            tenant_path: config
                .tenant
                .as_ref()
                .map(|t| format!("/{}", utf8_percent_encode(t, NON_ALPHANUMERIC)))
                .unwrap_or_default(),
            stats,
        })
    }

    /// Delivers each hub its batch, all hubs at once; returns once every hub took its batch, with
    /// the channels the hubs said are gone.
    pub async fn deliver_all(&self, per_hub: &BTreeMap<String, ChangeBatch>) -> Vec<Unsubscribe> {
        let sends = per_hub.iter().map(|(hub, batch)| self.deliver(hub, batch));
        let receipts = join_all(sends).await;
        let deliveries: u64 = per_hub
            .values()
            .flat_map(|b| &b.changes)
            .flat_map(|c| &c.payloads)
            .map(|p| p.to.len() as u64)
            .sum();
        Stats::count(&self.stats.deliveries, deliveries);
        receipts.into_iter().flat_map(|r| r.gone).collect()
    }

    /// Delivers `batch` to `hub`, in order, in requests of at most `MAX_REQUEST_BYTES`; its
    /// receipt.
    async fn deliver(&self, hub: &str, batch: &ChangeBatch) -> ChangeReceipt {
        let path = format!("/internal/v1/changes/{}", utf8_percent_encode(hub, NON_ALPHANUMERIC));
        let mut receipt = ChangeReceipt::default();
        for (changes, body) in batch.requests(MAX_REQUEST_BYTES) {
            let what = format!("{changes} changes to {hub}");
            let answer = self.post_until_taken(&path, &body, &what).await;
            let taken: ChangeReceipt = serde_json::from_str(&answer).unwrap_or_else(|e| {
                warn!("{hub} answered with an unreadable receipt ({e}); assuming no channel is gone");
                ChangeReceipt::default()
            });
            receipt.gone.extend(taken.gone);
        }
        receipt
    }

    /// Hands database broadcasts to their channels, one request per channel (in order within
    /// each), all channels at once; returns once every one was taken.
    pub async fn relay_broadcasts(&self, stream: &str, broadcasts: Vec<DbBroadcast>) {
        let mut per_channel: BTreeMap<(String, Access), Vec<DbMessage>> = BTreeMap::new();
        for b in broadcasts {
            per_channel.entry((b.topic, b.access)).or_default().push(b.message);
        }
        let sends = per_channel.into_iter().map(|((topic, access), messages)| async move {
            let batch = DbBroadcasts {
                stream: stream.to_string(),
                topic,
                access,
                messages,
            };
            let path = format!("/internal/v1/broadcasts{}", self.tenant_path);
            for (messages, body) in batch.requests(MAX_REQUEST_BYTES) {
                let what = format!("{messages} database broadcasts to {}", batch.topic);
                self.post_until_taken(&path, &body, &what).await;
                Stats::count(&self.stats.db_broadcasts, messages as u64);
            }
        });
        join_all(sends).await;
    }

    /// POSTs `body` (JSON) until the gateway takes it; the answer's text.
    async fn post_until_taken(&self, path: &str, body: &[u8], what: &str) -> String {
        let mut wait = FIRST_RETRY;
        let mut attempts = 0u32;
        loop {
            let problem = match self.post(path, body).await {
                Ok(text) => {
                    if attempts > 0 {
                        info!("delivered {what} after {attempts} failed attempts");
                        self.stats.set_refused(None);
                    }
                    return text;
                }
                Err(problem) => problem,
            };
            Stats::count(&self.stats.push_errors, 1);
            attempts += 1;
            let pause = match problem.recovery() {
                Recovery::RetrySlowly => {
                    if attempts == 1 || attempts.is_multiple_of(6) {
                        error!("UnableToBroadcastChanges: cannot deliver {what}: {problem}; retrying every {REFUSED_RETRY:?}, the stream waits meanwhile");
                    }
                    self.stats.set_refused(Some(problem.to_string()));
                    REFUSED_RETRY
                }
                _ => {
                    if attempts == 1 || attempts.is_multiple_of(20) {
                        warn!("UnableToBroadcastChanges: cannot deliver {what}: {problem}; retrying (attempt {attempts}), the stream waits meanwhile");
                    }
                    let pause = wait;
                    wait = (wait * 2).min(MAX_RETRY);
                    pause
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Whether the gateway answers and takes the internal secret (`GET /internal/v1/ping`).
    pub async fn ping(&self) -> Result<(), DeliveryError> {
        let response = self
            .signed(
                reqwest::Method::GET,
                &format!("/internal/v1/ping{}", self.tenant_path),
                Vec::new(),
            )?
            .send()
            .await
            .map_err(unavailable)?;
        match response.status().as_u16() {
            204 => Ok(()),
            status => Err(DeliveryError::from_status(status, "")),
        }
    }

    /// The tenant databases the gateway wants the deployment's replicator to serve
    /// (`GET /internal/v1/databases`).
    pub async fn databases(&self) -> Result<serde_json::Value, DeliveryError> {
        let response = self
            .signed(reqwest::Method::GET, "/internal/v1/databases", Vec::new())?
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unavailable)?;
        match status {
            200 => serde_json::from_str(&text)
                .map_err(|e| DeliveryError::Unavailable(format!("the answer is not JSON: {e}"))),
            status => Err(DeliveryError::from_status(status, &text)),
        }
    }

    /// Creates or updates a tenant through the gateway's management API (an admin `token`); the
    /// answer's status and text.
    pub async fn put_tenant(
        &self,
        tenant: &str,
        body: &serde_json::Value,
        token: &str,
    ) -> Result<(u16, String), DeliveryError> {
        let url = format!(
            "{}/api/tenants/{}",
            self.base,
            utf8_percent_encode(tenant, NON_ALPHANUMERIC)
        );
        let response = self
            .http
            .put(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(unavailable)?))
    }

    /// A request to the gateway signed with the internal secret (`sluice_shared::signature`).
    fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, DeliveryError> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| DeliveryError::Unavailable(format!("{}{path} is not a URL: {e}", self.base)))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Varies per request (the gateway keeps no replay cache: what it receives is idempotent).
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = (now.as_nanos() as u64).wrapping_add(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let signed = signature::sign(&self.secret, now.as_secs(), nonce, method.as_str(), url.path(), &body);
        Ok(self
            .http
            .request(method, url)
            .header(signature::HEADER, signed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body))
    }

    /// One POST: the answer's text, or why the gateway did not take it.
    async fn post(&self, path: &str, body: &[u8]) -> Result<String, DeliveryError> {
        let response = self
            .signed(reqwest::Method::POST, path, body.to_vec())?
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let text = response.text().await.map_err(unavailable)?;
        match status.is_success() {
            true => Ok(text),
            false => Err(DeliveryError::from_status(status.as_u16(), &text)),
        }
    }
}
