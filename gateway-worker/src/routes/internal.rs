//! The gateway's internal API, called by the replicator (bearer `INTERNAL_SECRET`):
//! - `POST /internal/v1/changes/{hub}`: a batch of row changes for the sockets of one hub;
//! - `POST /internal/v1/broadcasts`: broadcasts from the database for one channel;
//! - `GET /internal/v1/ping`: 204 when the secret is right (`sluice-replicator doctor` asks).
//!
//! They only check the secret and hand the body to the Durable Object that delivers it.

use percent_encoding::percent_decode_str;
use sluice_shared::connect::tenant_from_host;
use sluice_shared::internal::{bearer_matches, channel_name, DbBroadcasts};
use worker::*;

use crate::config::{self, CHANNEL, SOCKET_HUB};
use crate::rpc;

/// Whether the request carries the internal secret.
fn from_replicator(req: &Request, env: &Env) -> Result<bool> {
    let authorization = req.headers().get("authorization")?;
    let secret = config::internal_secret(env).unwrap_or_default();
    Ok(bearer_matches(authorization.as_deref(), &secret))
}

/// `GET /internal/v1/ping`: whether the replicator reaches this gateway with the right secret.
pub fn ping(req: &Request, env: &Env) -> Result<Response> {
    match from_replicator(req, env)? {
        true => Ok(Response::empty()?.with_status(204)),
        false => Response::error("Unauthorized", 401),
    }
}

/// `POST /internal/v1/changes/{hub}` from the replicator: hands the batch to that hub.
pub async fn changes(req: Request, env: &Env) -> Result<Response> {
    if !from_replicator(&req, env)? {
        return Response::error("Unauthorized", 401);
    }
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
        .with_body(req.inner().body().map(Into::into));
    stub.fetch_with_request(Request::new_with_init("https://hub/internal/v1/changes", &init)?)
        .await
}

/// `POST /internal/v1/broadcasts` from the replicator: broadcasts from the database for one
/// channel of the tenant this host names, handed to that channel's Channel object.
pub async fn database_broadcasts(mut req: Request, env: &Env) -> Result<Response> {
    if !from_replicator(&req, env)? {
        return Response::error("Unauthorized", 401);
    }
    let host = req.headers().get("host")?.unwrap_or_default();
    let tenant = tenant_from_host(&host);
    let batch: DbBroadcasts = rpc::json_body(&mut req).await?;
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
