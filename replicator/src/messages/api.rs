//! The internal endpoints for private channels, called by hubs (the HTTP server checks the
//! bearer secret): `POST /v1/authorize` and `POST /v1/replay`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use sluice_shared::internal::{Authorize, ReplayRequest, Replayed};

use super::{authorization, broadcasts};
use crate::answer::{database_error, Answer};
use crate::db::Db;

/// The routes, with the database they ask.
pub fn routes(db: Arc<Db>) -> Router {
    Router::new()
        .route("/v1/authorize", post(authorize_channel))
        .route("/v1/replay", post(replay))
        .with_state(db)
}

/// `POST /v1/authorize`: which extensions of a private channel the claims may read and write.
async fn authorize_channel(State(db): State<Arc<Db>>, Json(body): Json<Authorize>) -> Answer {
    let outcome = async {
        let mut client = db.dedicated().await?;
        authorization::check(&mut client, &body).await
    }
    .await;
    match outcome {
        Ok(answer) => (StatusCode::OK, Json(json!(answer))),
        Err(e) => database_error(e),
    }
}

/// `POST /v1/replay`: a private channel's stored broadcasts (the hub checked read access).
async fn replay(State(db): State<Arc<Db>>, Json(body): Json<ReplayRequest>) -> Answer {
    let found = async { broadcasts::replay(&*db.client().await?, &body).await }.await;
    match found {
        Ok(messages) => (StatusCode::OK, Json(json!(Replayed { messages }))),
        Err(e) => database_error(e),
    }
}
