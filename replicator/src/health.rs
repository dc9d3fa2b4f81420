//! `GET /healthz`: 200 when the database answers, 503 with the reason when it does not.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};
use tokio_postgres::Client;

pub fn router(db: Arc<Client>) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(db)
}

async fn healthz(State(db): State<Arc<Client>>) -> (StatusCode, Json<Value>) {
    match db.simple_query("SELECT 1").await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ok", "database": "connected"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "database": format!("unreachable: {e}")})),
        ),
    }
}
