//! The gateway's internal API, called by the replicator (requests signed with `INTERNAL_SECRET`,
//! `sluice_shared::signature`):
//! - `POST /internal/v1/changes/{hub}`: a batch of row changes for the sockets of one hub;
//! - `POST /internal/v1/broadcasts`: broadcasts from the database for one channel;
//! - `GET /internal/v1/ping`: 204 when the secret is right (`sluice-replicator doctor` asks).
//!
//! They only check the signature and hand the body to the Durable Object that delivers it.

use percent_encoding::percent_decode_str;
use sluice_shared::connect::tenant_from_host;
use sluice_shared::internal::{channel_name, DbBroadcasts};
use sluice_shared::signature;
use worker::*;

use crate::config::{self, CHANNEL, SOCKET_HUB};
use crate::rpc;

/// The request's body, if it is signed by the replicator (with the internal secret, recently);
/// otherwise the 401 to answer, saying what to check.
async fn from_replicator(req: &mut Request, env: &Env) -> Result<std::result::Result<Vec<u8>, Response>> {
    let body = req.bytes().await.unwrap_or_default();
    let secret = config::internal_secret(env).unwrap_or_default();
    let header = req.headers().get(signature::HEADER)?;
    let now = Date::now().as_millis() / 1000;
    let method = req.method().to_string();
    match signature::verify(header.as_deref(), &secret, now, &method, &req.path(), &body) {
        Ok(()) => Ok(Ok(body)),
        Err(e) => {
            console_warn!("internal request {} refused: {}", req.path(), e.explain());
            Ok(Err(Response::error(format!("Unauthorized: {}", e.explain()), 401)?))
        }
    }
}

/// `GET /internal/v1/ping`: whether the replicator reaches this gateway with the right secret.
pub async fn ping(mut req: Request, env: &Env) -> Result<Response> {
    match from_replicator(&mut req, env).await? {
        Ok(_) => Ok(Response::empty()?.with_status(204)),
        Err(refused) => Ok(refused),
    }
}

/// `POST /internal/v1/changes/{hub}` from the replicator: hands the batch to that hub.
pub async fn changes(mut req: Request, env: &Env) -> Result<Response> {
    let body = match from_replicator(&mut req, env).await? {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
    let path = req.path();
    let encoded = path.trim_start_matches("/internal/v1/changes/");
    let name = percent_decode_str(encoded).decode_utf8_lossy().into_owned();
    if !name.starts_with("hub:") {
        return Response::error("Not Found", 404);
    }
    let stub = env.durable_object(SOCKET_HUB)?.get_by_name(&name)?;
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    stub.fetch_with_request(Request::new_with_init("https://hub/internal/v1/changes", &init)?)
        .await
}

/// `POST /internal/v1/broadcasts` from the replicator: broadcasts from the database for one
/// channel of the tenant this host names, handed to that channel's Channel object.
pub async fn database_broadcasts(mut req: Request, env: &Env) -> Result<Response> {
    let body = match from_replicator(&mut req, env).await? {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
    let host = req.headers().get("host")?.unwrap_or_default();
    let tenant = tenant_from_host(&host);
    let batch: DbBroadcasts = serde_json::from_slice(&body)?;
    let name = channel_name(&tenant, batch.access, &batch.topic);
    let stub = env.durable_object(CHANNEL)?.get_by_name(&name)?;
    match rpc::post_json(stub, "/internal/v1/db-broadcasts", &batch).await {
        Ok(_) => Response::ok(""),
        Err(e) => {
            console_error!("{name}: {e}");
            Response::error("the channel could not relay the broadcasts", 503)
        }
    }
}
