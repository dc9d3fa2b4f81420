//! Calls from a hub to the replicator that serves its tenant (a [`Target`]: the tenant's own, or
//! the deployment's `REPLICATOR_URL` and `INTERNAL_SECRET`): registering, re-authorizing and
//! removing a channel's Postgres Changes bindings, and authorizing private channels.

use serde::Serialize;
use sluice_shared::frame::Broadcast;
use sluice_shared::internal::{
    Authorize, Authorized, Reauthorize, ReplayRequest, Replayed, Subscribe, Subscribed, Unsubscribe,
};
use sluice_shared::signature;
use sluice_shared::texts;
use worker::*;

use crate::{config, random};

/// A replicator to call: where it serves its API, and the secret requests are signed with.
/// Either may be missing or wrong; a call then fails with what to fix.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: std::result::Result<String, String>,
    pub secret: Option<String>,
}

impl Target {
    /// The deployment's replicator: `REPLICATOR_URL`, `INTERNAL_SECRET`.
    pub fn from_env(env: &Env) -> Target {
        Target {
            url: config::replicator_url(env),
            secret: config::internal_secret(env),
        }
    }
}

/// How long a join's reply waits for its bindings to go live: well under realtime-js's 10 s join
/// timeout. The replicator gives up a little earlier (its `SYNC_TIMEOUT`) and says why.
const SUBSCRIBE_TIMEOUT_MS: u64 = 5_000;

/// Registers the bindings and answers once changes committed from now on will reach the channel;
/// `Err` holds the text the client sees as its `system` error.
pub async fn subscribe(target: &Target, request: &Subscribe) -> std::result::Result<Subscribed, String> {
    bounded(async { answer(call(target, Method::Post, "/v1/subscriptions", request).await).await }).await
}

/// Gives a channel's subscriptions new claims; answered as [`subscribe`].
pub async fn reauthorize(target: &Target, request: &Reauthorize) -> std::result::Result<Subscribed, String> {
    bounded(async { answer(call(target, Method::Patch, "/v1/subscriptions", request).await).await }).await
}

/// `registration`, or the unreachable-database text once [`SUBSCRIBE_TIMEOUT_MS`] passed.
async fn bounded(
    registration: impl std::future::Future<Output = std::result::Result<Subscribed, String>>,
) -> std::result::Result<Subscribed, String> {
    use futures_util::future::{select, Either};
    let timeout = Delay::from(std::time::Duration::from_millis(SUBSCRIBE_TIMEOUT_MS));
    match select(std::pin::pin!(registration), timeout).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(_) => {
            console_error!(
                "UnableToSubscribeToPostgres: the replicator did not confirm a subscription within {SUBSCRIBE_TIMEOUT_MS} ms"
            );
            Err(texts::DATABASE_UNREACHABLE.into())
        }
    }
}

async fn answer(response: std::result::Result<Response, String>) -> std::result::Result<Subscribed, String> {
    let mut res = match response {
        Ok(res) => res,
        Err(problem) => {
            console_error!("UnableToSubscribeToPostgres: registering postgres_changes with the replicator: {problem}");
            return Err(texts::DATABASE_UNREACHABLE.into());
        }
    };
    match res.status_code() {
        200 => res.json().await.map_err(|e| {
            console_error!("UnableToSubscribeToPostgres: the replicator answered a subscription with bad JSON: {e}");
            texts::DATABASE_UNREACHABLE.to_string()
        }),
        422 => {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            Err(body["error"]
                .as_str()
                .unwrap_or(texts::DATABASE_UNREACHABLE)
                .to_string())
        }
        status => {
            console_error!(
                "UnableToSubscribeToPostgres: the replicator answered a subscription with {status}: {}",
                res.text().await.unwrap_or_default()
            );
            Err(texts::DATABASE_UNREACHABLE.into())
        }
    }
}

/// What the replicator's `/healthz` says of the database: `None` when it cannot be reached or
/// the database does not answer.
pub async fn health(target: &Target) -> Option<Health> {
    let url = target.url.clone().ok()?;
    let mut res = Fetch::Url(Url::parse(&format!("{url}/healthz")).ok()?)
        .send()
        .await
        .ok()?;
    if res.status_code() != 200 {
        return None;
    }
    let body: serde_json::Value = res.json().await.ok()?;
    Some(Health {
        replication_connected: body["replication"] == "connected",
    })
}

/// The database answers; whether its replication stream is up too.
pub struct Health {
    pub replication_connected: bool,
}

/// What the policies of a private channel let the request's claims read and write (of what it
/// asks); `None` (logged) when the replicator could not say, which callers treat as no.
pub async fn authorize(target: &Target, request: &Authorize) -> Option<Authorized> {
    let mut res = match call(target, Method::Post, "/v1/authorize", request).await {
        Ok(res) if res.status_code() == 200 => res,
        Ok(res) => {
            console_error!(
                "UnableToSetPolicies: the replicator answered an authorization with {}",
                res.status_code()
            );
            return None;
        }
        Err(problem) => {
            console_error!("UnableToSetPolicies: authorizing a private channel: {problem}");
            return None;
        }
    };
    res.json().await.ok()
}

/// A private channel's stored messages to replay; none (logged) when the replicator cannot say.
pub async fn replay(target: &Target, request: &ReplayRequest) -> Vec<Broadcast> {
    match call(target, Method::Post, "/v1/replay", request).await {
        Ok(mut res) if res.status_code() == 200 => match res.json::<Replayed>().await {
            Ok(replayed) => replayed.messages,
            Err(e) => {
                console_error!("UnableToReplayMessages: the replicator answered a replay with bad JSON: {e}");
                Vec::new()
            }
        },
        Ok(res) => {
            console_error!(
                "UnableToReplayMessages: the replicator answered a replay with {}",
                res.status_code()
            );
            Vec::new()
        }
        Err(problem) => {
            console_error!("UnableToReplayMessages: replaying messages: {problem}");
            Vec::new()
        }
    }
}

/// Removes a channel's (or a socket's) bindings. Failures are logged: the replicator also drops
/// subscriptions whose channel a hub reports gone.
pub async fn unsubscribe(target: &Target, request: &Unsubscribe) {
    match call(target, Method::Delete, "/v1/subscriptions", request).await {
        Ok(res) if res.status_code() == 200 => {}
        Ok(res) => console_warn!(
            "SubscriptionDeletionFailed: the replicator answered an unsubscribe with {}",
            res.status_code()
        ),
        Err(problem) => console_warn!("SubscriptionDeletionFailed: unsubscribing postgres_changes: {problem}"),
    }
}

/// Tells the replicator that serves a tenant's database that the tenant was deleted: it forgets
/// the tenant's subscriptions, stops streaming and drops its slot.
pub async fn retire(target: &Target) -> std::result::Result<(), String> {
    tenant_call(target, Method::Delete, "/v1/tenant").await
}

/// Tells the replicator that serves a tenant's database to make its database connections again
/// (the tenant was reloaded or shut down); its subscriptions and slot stay.
pub async fn reconnect(target: &Target) -> std::result::Result<(), String> {
    tenant_call(target, Method::Post, "/v1/tenant/reconnect").await
}

async fn tenant_call(target: &Target, method: Method, path: &str) -> std::result::Result<(), String> {
    let res = call(target, method, path, &serde_json::json!({})).await?;
    match res.status_code() {
        200 => Ok(()),
        status => Err(format!("the replicator answered {status}")),
    }
}

async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: &impl Serialize,
) -> std::result::Result<Response, String> {
    let base = target.url.clone()?;
    let secret = target.secret.clone().ok_or("INTERNAL_SECRET is not set")?;
    let headers = Headers::new();
    let mut init = RequestInit::new();
    let build = || -> Result<Request> {
        let url = Url::parse(&format!("{base}{path}"))?;
        let body = serde_json::to_string(body)?;
        let now = Date::now().as_millis() / 1000;
        let nonce = u64::from_le_bytes(random::bytes());
        let signed = signature::sign(&secret, now, nonce, method.as_ref(), url.path(), body.as_bytes());
        headers.set("content-type", "application/json")?;
        headers.set(signature::HEADER, &signed)?;
        init.with_method(method)
            .with_headers(headers.clone())
            .with_body(Some(body.into()));
        Request::new_with_init(url.as_str(), &init)
    };
    let request = build().map_err(|e| e.to_string())?;
    Fetch::Request(request).send().await.map_err(|e| e.to_string())
}
