//! The gateway's internal API, called by the replicator. Requests are signed
//! (`sluice_shared::signature`) with the secret of the tenant they are for: its own
//! `replicator_secret`, or the deployment's `INTERNAL_SECRET`; so a replicator can reach only
//! the hubs and channels of the tenants it serves.
//! - `POST /internal/v1/changes/{hub}`: a batch of row changes for the sockets of one hub (the
//!   tenant is the hub's);
//! - `POST /internal/v1/broadcasts[/{tenant}]`: broadcasts from the database for one channel
//!   (without a tenant: the one the Host names);
//! - `GET /internal/v1/ping[/{tenant}]`: 204 when the secret is right (`sluice-replicator doctor`);
//! - `GET /internal/v1/databases`: the tenant databases the deployment's replicator serves.
//!
//! They only check the signature and hand the body to the Durable Object that delivers it.

use percent_encoding::percent_decode_str;
use sluice_shared::internal::{channel_name, ChangeBatch, ChangeReceipt, DbBroadcasts};
use sluice_shared::signature;
use worker::*;

use crate::config::{CHANNEL, SOCKET_HUB};
use crate::rpc;
use crate::tenancy::{self, Resolved};

/// The tenant a request is for: named in its path after `prefix`, else by its Host.
async fn tenant_of(req: &Request, env: &Env, prefix: &str) -> Result<Resolved> {
    let path = req.path();
    match path
        .strip_prefix(prefix)
        .map(|t| t.trim_start_matches('/'))
        .filter(|t| !t.is_empty())
    {
        Some(tenant) => tenancy::for_tenant(env, &percent_decode_str(tenant).decode_utf8_lossy()).await,
        None => tenancy::for_host(env, &req.headers().get("host")?.unwrap_or_default()).await,
    }
}

/// The request's body, if it is signed recently by the replicator of `tenant` (with its secret);
/// otherwise the 401 to answer, saying what to check.
async fn from_replicator(req: &mut Request, tenant: Resolved) -> Result<std::result::Result<Vec<u8>, Response>> {
    let secret = match tenant {
        Resolved::Found(settings) => settings.replicator.secret.clone().unwrap_or_default(),
        Resolved::NotFound(tenant) => {
            console_warn!("internal request {} refused: no tenant {tenant}", req.path());
            return Ok(Err(Response::error(format!("Unauthorized: no tenant {tenant}"), 401)?));
        }
        Resolved::Misconfigured(problem) => {
            console_error!("{problem}");
            return Ok(Err(Response::error("Unauthorized: the gateway is misconfigured", 401)?));
        }
    };
    signed_with(req, &secret).await
}

/// The most an internal request body may hold: well above a replicator's batch (rows are cut to
/// 1 MiB), and read only once the signature header is well formed and fresh.
const MAX_INTERNAL_BODY_BYTES: usize = 64 << 20;

/// The body if `req` is signed recently with `secret`; otherwise the answer (401 saying what to
/// check, 413 over [`MAX_INTERNAL_BODY_BYTES`]). The body is not read unless the header passes.
async fn signed_with(req: &mut Request, secret: &str) -> Result<std::result::Result<Vec<u8>, Response>> {
    let header = req.headers().get(signature::HEADER)?;
    let now = Date::now().as_millis() / 1000;
    let refused = |req: &Request, e: signature::SignatureError| {
        console_warn!("internal request {} refused: {}", req.path(), e.explain());
        Response::error(format!("Unauthorized: {}", e.explain()), 401)
    };
    let signed = match signature::read(header.as_deref(), secret, now) {
        Ok(signed) => signed,
        Err(e) => return Ok(Err(refused(req, e)?)),
    };
    let Some(body) = super::body_up_to(req, MAX_INTERNAL_BODY_BYTES).await? else {
        console_warn!("internal request {} refused: its body is over {MAX_INTERNAL_BODY_BYTES} bytes", req.path());
        return Ok(Err(super::too_large(MAX_INTERNAL_BODY_BYTES)?));
    };
    match signed.verify(secret, &req.method().to_string(), &req.path(), &body) {
        Ok(()) => Ok(Ok(body)),
        Err(e) => Ok(Err(refused(req, e)?)),
    }
}

/// `GET /internal/v1/databases`, from the deployment's replicator (signed with `INTERNAL_SECRET`):
/// the tenants whose databases it serves, `{"tenants": {"<id>": {<settings>}}}`, passwords sealed.
pub async fn databases(mut req: Request, env: &Env) -> Result<Response> {
    let secret = crate::config::internal_secret(env).unwrap_or_default();
    if let Err(refused) = signed_with(&mut req, &secret).await? {
        return Ok(refused);
    }
    let tenants = crate::directory::tenants(env).await?;
    let served: serde_json::Map<String, serde_json::Value> = tenants
        .iter()
        .filter_map(|t| Some((t.external_id.clone(), serde_json::Value::Object(t.database()?.clone()))))
        .collect();
    Response::from_json(&serde_json::json!({ "tenants": served }))
}

/// `GET /internal/v1/ping`: whether the replicator reaches this gateway with the right secret.
pub async fn ping(mut req: Request, env: &Env) -> Result<Response> {
    let tenant = tenant_of(&req, env, "/internal/v1/ping").await?;
    match from_replicator(&mut req, tenant).await? {
        Ok(_) => Ok(Response::empty()?.with_status(204)),
        Err(refused) => Ok(refused),
    }
}

/// `POST /internal/v1/changes/{hub}` from the replicator: hands the batch to that hub.
pub async fn changes(mut req: Request, env: &Env) -> Result<Response> {
    let path = req.path();
    let encoded = path.trim_start_matches("/internal/v1/changes/");
    let name = percent_decode_str(encoded).decode_utf8_lossy().into_owned();
    let Some(tenant) = name.strip_prefix("hub:").and_then(|rest| rest.split(':').next()) else {
        return Response::error("Not Found", 404);
    };
    let tenant = tenancy::for_tenant(env, tenant).await?;
    if let Resolved::NotFound(deleted) = &tenant {
        return changes_for_deleted_tenant(req, env, deleted, &name).await;
    }
    let body = match from_replicator(&mut req, tenant).await? {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
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

/// Changes for a hub of a tenant that is gone. The deployment's replicator may still hold its
/// channels' subscriptions (a tenant of the deployment's database has no replicator to retire):
/// told that every socket of the batch is gone, it forgets them, and its stream goes on rather
/// than retrying a refused delivery forever.
async fn changes_for_deleted_tenant(mut req: Request, env: &Env, tenant: &str, hub: &str) -> Result<Response> {
    let secret = crate::config::internal_secret(env).unwrap_or_default();
    let Ok(body) = signed_with(&mut req, &secret).await? else {
        return Response::error(format!("Unauthorized: no tenant {tenant}"), 401);
    };
    let batch: ChangeBatch = serde_json::from_slice(&body)?;
    console_log!("tenant {tenant} is gone: the replicator forgets the subscriptions of {hub}");
    Response::from_json(&ChangeReceipt::all_gone(hub, &batch))
}

/// `POST /internal/v1/broadcasts[/{tenant}]` from the replicator: broadcasts from the database for
/// one channel of the tenant, handed to that channel's Channel object.
pub async fn database_broadcasts(mut req: Request, env: &Env) -> Result<Response> {
    let resolved = tenant_of(&req, env, "/internal/v1/broadcasts").await?;
    let tenant = match &resolved {
        Resolved::Found(settings) => settings.tenant.clone(),
        _ => String::new(),
    };
    let body = match from_replicator(&mut req, resolved).await? {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
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
