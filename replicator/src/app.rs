//! What the HTTP endpoints share: the handles into the rest of the replicator, and how they
//! answer.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sluice_shared::position::Lsn;
use sluice_shared::texts;
use tokio::sync::watch;
use tracing::error;

use crate::db::Db;
use crate::stats::Stats;
use crate::subscriptions::registry::Registry;

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub registry: Arc<Registry>,
    /// The highest WAL position the stream has fully handled (see `crate::pipeline`).
    pub passed: watch::Receiver<Lsn>,
    pub stats: Arc<Stats>,
    pub slot: String,
    pub publication: String,
    pub internal_secret: Arc<str>,
}

/// An endpoint's answer: a status and a JSON body.
pub type Answer = (StatusCode, Json<Value>);

/// The database failed: logged, and the client sees upstream's text for an unreachable database.
pub fn database_error(e: tokio_postgres::Error) -> Answer {
    error!("an internal API request failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": texts::DATABASE_UNREACHABLE})),
    )
}
