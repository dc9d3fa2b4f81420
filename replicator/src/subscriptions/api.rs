//! The internal endpoints for Postgres Changes, called by hubs (the HTTP server checks the
//! signature): `POST /v1/subscriptions` registers a channel's bindings, `PATCH` gives them
//! new claims (a refreshed token), `DELETE` removes a channel's or a socket's. And
//! `DELETE /v1/tenant`, called by the gateway when the tenant is deleted: every subscription is
//! forgotten and the replicator retires (stops streaming, drops its slot); `POST
//! /v1/tenant/reconnect` when it is reloaded or shut down: the database is served again on new
//! connections.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use sluice_shared::internal::{Reauthorize, Subscribe, Subscribed, Unsubscribe};
use sluice_shared::position::Lsn;
use sluice_shared::texts;
use tokio::sync::watch;
use tracing::warn;

use super::registry::{ChannelKey, Registry, Sub};
use super::store::{self, Refused, Registration};
use super::SYNC_PREFIX;
use crate::answer::{database_error, Answer};
use crate::db::Db;

/// What these endpoints work with.
#[derive(Clone)]
pub struct Api {
    pub db: Arc<Db>,
    pub registry: Arc<Registry>,
    /// The highest WAL position the stream has fully handled (`crate::pipeline` sends it).
    pub passed: watch::Receiver<Lsn>,
    pub publication: String,
    /// Ends this database's service when the gateway asks.
    pub ending: Arc<Ending>,
}

/// Why the gateway ended this database's service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The tenant was deleted: its subscriptions are forgotten, its slot goes.
    Retired,
    /// Reload or shutdown through the management API: its database connections are made again.
    Reconnect,
}

/// Ends this database's service, once. A deletion asked while a reconnect is on its way still
/// counts: the slot of a deleted tenant must go.
pub struct Ending(std::sync::Mutex<(Option<tokio::sync::oneshot::Sender<()>>, Option<Ended>)>);

impl Ending {
    /// `stop` ends the service (see [`crate::shutdown::Shutdown::child`]).
    pub fn new(stop: tokio::sync::oneshot::Sender<()>) -> Ending {
        Ending(std::sync::Mutex::new((Some(stop), None)))
    }

    fn end(&self, why: Ended) {
        let mut ending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ending.1.is_none() || why == Ended::Retired {
            ending.1 = Some(why);
        }
        if let Some(stop) = ending.0.take() {
            let _ = stop.send(());
        }
    }

    /// Why it ended, if the gateway asked.
    pub fn why(&self) -> Option<Ended> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// The routes, with their state.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route(
            "/v1/subscriptions",
            post(register).patch(reauthorize).delete(unregister),
        )
        .route("/v1/tenant", axum::routing::delete(retire))
        .route("/v1/tenant/reconnect", post(reconnect))
        .with_state(api)
}

/// How long a registration waits for the stream to pass it before answering 503: a join's reply
/// waits for this answer, and the gateway gives up after 5 s (realtime-js times a join out at 10).
const SYNC_TIMEOUT: Duration = Duration::from_secs(4);

/// `POST /v1/subscriptions`: 200 `{"ids": [...]}` in binding order once the subscription is live
/// (see [`live`]), or 422 `{"error": <the system message text>}`.
async fn register(State(state): State<Api>, Json(body): Json<Subscribe>) -> Answer {
    let channel = ChannelKey {
        hub: body.hub.clone(),
        socket: body.socket.clone(),
        topic: body.topic.clone(),
    };
    let registration = Registration {
        publication: &state.publication,
        channel: &channel,
        claims: &body.claims,
        bindings: &body.bindings,
    };
    let outcome = in_transaction(&state, async |tx| store::register(tx, &registration).await).await;
    match outcome {
        Ok(Ok(registered)) => live(&state, &channel, registered.subs, registered.ids).await,
        Ok(Err(Refused(text))) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": text}))),
        Err(e) => database_error(e),
    }
}

/// `PATCH /v1/subscriptions`: the channel's subscriptions take new claims (a refreshed token).
/// Answered like a registration.
async fn reauthorize(State(state): State<Api>, Json(body): Json<Reauthorize>) -> Answer {
    let channel = ChannelKey {
        hub: body.hub.clone(),
        socket: body.socket.clone(),
        topic: body.topic.clone(),
    };
    let outcome = in_transaction(&state, async |tx| store::reauthorize(tx, &channel, &body.claims).await).await;
    match outcome {
        Ok(Ok(subs)) => {
            let mut ids: Vec<u64> = subs.iter().map(|(_, s)| s.binding_id).collect();
            ids.sort_unstable();
            ids.dedup();
            live(&state, &channel, subs, ids).await
        }
        Ok(Err(Refused(text))) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": text}))),
        Err(e) => database_error(e),
    }
}

/// Runs `work` in a transaction, committed only when it does not refuse.
async fn in_transaction<T>(
    state: &Api,
    work: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<Result<T, Refused>, tokio_postgres::Error>,
) -> Result<Result<T, Refused>, tokio_postgres::Error> {
    let mut client = state.db.dedicated().await?;
    let tx = client.transaction().await?;
    let outcome = work(&tx).await?;
    if outcome.is_ok() {
        tx.commit().await?;
    }
    Ok(outcome)
}

/// Puts a channel's stored subscriptions in the registry, then answers 200 `{"ids"}` once the
/// stream has passed a mark written to the WAL afterwards: from then on every commit is evaluated
/// with them, so every change committed after the client hears "Subscribed" is delivered.
async fn live(state: &Api, channel: &ChannelKey, subs: Vec<(u32, Sub)>, ids: Vec<u64>) -> Answer {
    state.registry.replace_channel(channel, subs);
    let mark = async {
        let client = state.db.client().await?;
        // Transactional, so that its commit flushes the WAL and the server streams it at once (a
        // non-transactional message waits for the WAL writer, 200 ms by default); committed
        // synchronously whatever the database's default.
        let row = client
            .query_one(
                "select pg_logical_emit_message(true, $1, '')::text, set_config('synchronous_commit', 'on', true)",
                &[&SYNC_PREFIX],
            )
            .await?;
        let text: &str = row.get(0);
        Ok::<_, tokio_postgres::Error>(text.parse::<Lsn>().unwrap_or_default())
    }
    .await;
    let mark = match mark {
        Ok(mark) => mark,
        Err(e) => return database_error(e),
    };
    let mut passed = state.passed.clone();
    let reached = tokio::time::timeout(SYNC_TIMEOUT, passed.wait_for(|p| *p >= mark))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        (StatusCode::OK, Json(json!(Subscribed { ids })))
    } else {
        warn!("UnableToSubscribeToPostgres: the replication stream did not reach a new subscription within {SYNC_TIMEOUT:?}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": texts::DATABASE_UNREACHABLE})),
        )
    }
}

/// `DELETE /v1/subscriptions`: drops a channel's subscriptions (or a whole socket's).
/// The tenant was deleted: forgets every subscription, then retires (the pipeline stops, the
/// slot is dropped once it is released).
async fn retire(State(state): State<Api>) -> Answer {
    state.registry.clear();
    let removed = async {
        let client = state.db.client().await?;
        store::remove_all(&*client).await
    }
    .await;
    match removed {
        Ok(n) => {
            warn!("the tenant was deleted: forgot {n} subscriptions; stopping and dropping the slot");
            state.ending.end(Ended::Retired);
            (StatusCode::OK, Json(json!({"removed": n})))
        }
        Err(e) => database_error(e),
    }
}

/// `POST /v1/tenant/reconnect`: the tenant was reloaded or shut down through the management API
/// (upstream then closes its database connections): the pipeline stops after delivering what it
/// holds, and starts again on new connections, its subscriptions and slot kept.
async fn reconnect(State(state): State<Api>) -> Answer {
    tracing::info!("the gateway asked for new database connections (tenant reloaded or shut down): reconnecting");
    state.ending.end(Ended::Reconnect);
    (StatusCode::OK, Json(json!({})))
}

async fn unregister(State(state): State<Api>, Json(body): Json<Unsubscribe>) -> Answer {
    state.registry.remove(&body.hub, &body.socket, body.topic.as_deref());
    let removed = async {
        let client = state.db.client().await?;
        store::remove(&*client, &body.hub, &body.socket, body.topic.as_deref()).await
    }
    .await;
    match removed {
        Ok(n) => (StatusCode::OK, Json(json!({"removed": n}))),
        Err(e) => database_error(e),
    }
}

#[cfg(test)]
mod ending_tests {
    use super::*;

    #[test]
    fn a_deletion_counts_even_behind_a_reconnect() {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let ending = Ending::new(stop);
        assert_eq!(ending.why(), None);
        ending.end(Ended::Reconnect);
        assert!(stopped.try_recv().is_ok(), "the service is told to stop");
        ending.end(Ended::Retired);
        assert_eq!(ending.why(), Some(Ended::Retired));
        ending.end(Ended::Reconnect);
        assert_eq!(
            ending.why(),
            Some(Ended::Retired),
            "a reconnect does not undo a deletion"
        );
    }
}
