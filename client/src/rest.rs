//! Broadcasts over HTTP (`POST /api/broadcast`), for senders that have not joined.

use serde_json::{json, Value};

use crate::client::Rest;
use crate::event::Payload;
use crate::Error;

/// Sends one broadcast on `name` (the topic without `realtime:`). JSON goes to the batch endpoint
/// as realtime-js's fallback sends it; bytes to `/api/broadcast/<name>/events/<event>` as
/// `application/octet-stream`, as `httpSend` does. `Ok` on 202.
pub(crate) async fn send(rest: &Rest, name: &str, private: bool, event: &str, payload: Payload) -> Result<(), Error> {
    let token = rest.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let request = match payload {
        Payload::Json(payload) => rest.http.post(rest.broadcast_url.clone()).json(&json!({
            "messages": [{ "topic": name, "event": event, "payload": payload, "private": private }]
        })),
        Payload::Binary(bytes) => {
            let mut url = rest.broadcast_url.clone();
            url.path_segments_mut()
                .map_err(|()| Error::BadUrl(rest.broadcast_url.to_string()))?
                .extend([name, "events", event]);
            if private {
                url.query_pairs_mut().append_pair("private", "true");
            }
            rest.http
                .post(url)
                .header("Content-Type", "application/octet-stream")
                .body(bytes)
        }
    };
    let mut request = request.header("apikey", &rest.api_key).timeout(rest.timeout);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| match e.is_timeout() {
        true => Error::TimedOut,
        false => Error::Transport(e.to_string()),
    })?;
    let status = response.status();
    if status.as_u16() == 202 || status.is_success() {
        return Ok(());
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let reason = ["error", "message"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    Err(Error::Refused(reason))
}
