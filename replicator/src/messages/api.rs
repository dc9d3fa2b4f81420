//! The internal endpoints for private channels, called by hubs (bearer secret checked by
//! `crate::http`): `POST /v1/authorize` and `POST /v1/replay`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;
use sluice_shared::internal::{Authorize, ReplayRequest, Replayed};

use super::{authorization, broadcasts};
use crate::app::{database_error, Answer, AppState};

/// `POST /v1/authorize`: which extensions of a private channel the claims may read and write.
pub async fn authorize_channel(State(state): State<AppState>, Json(body): Json<Authorize>) -> Answer {
    let outcome = async {
        let mut client = state.db.dedicated().await?;
        authorization::check(&mut client, &body).await
    }
    .await;
    match outcome {
        Ok(answer) => (StatusCode::OK, Json(json!(answer))),
        Err(e) => database_error(e),
    }
}

/// `POST /v1/replay`: a private channel's stored broadcasts (the hub checked read access).
pub async fn replay(State(state): State<AppState>, Json(body): Json<ReplayRequest>) -> Answer {
    let found = async { broadcasts::replay(&*state.db.client().await?, &body).await }.await;
    match found {
        Ok(messages) => (StatusCode::OK, Json(json!(Replayed { messages }))),
        Err(e) => database_error(e),
    }
}
