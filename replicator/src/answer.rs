//! How the internal API's endpoints answer: a status and a JSON body, and upstream's text when
//! the database cannot be reached.

use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use sluice_shared::texts;
use tracing::error;

/// An endpoint's answer: a status and a JSON body.
pub type Answer = (StatusCode, Json<Value>);

/// The database failed: logged, and the client sees upstream's text for an unreachable database.
pub fn database_error(e: tokio_postgres::Error) -> Answer {
    error!("ErrorRunningQuery: an internal API request failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": texts::DATABASE_UNREACHABLE})),
    )
}
