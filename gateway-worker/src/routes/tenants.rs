//! The management API, with upstream's paths and shapes, for admins (a JWT signed with
//! `API_JWT_SECRET`, or `API_JWT_SECRET_NEXT` while rotating; anything else gets upstream's 403
//! with an empty body): `GET/POST /api/tenants`, `GET/PUT/DELETE /api/tenants/:id`,
//! `POST /api/tenants/:id/reload` and `/shutdown`, `GET /api/tenants/:id/health`. Tenants are
//! kept by the Directory; what `GET` shows never holds a secret.

use serde_json::{json, Value};
use sluice_shared::tenants::{self, Invalid, Tenant};
use worker::*;

use super::signed_by;
use super::websocket::region_of;
use crate::{config, directory, replicator, tenancy};

/// Routes `/api/tenants...` (the caller matched the prefix).
pub async fn route(mut req: Request, env: &Env, path: &str) -> Result<Response> {
    if !signed_by(&req, &config::admin_secrets(env))? {
        // Upstream answers failed admin auth with 403 and an empty body.
        return Ok(Response::empty()?.with_status(403));
    }
    let rest = path.trim_start_matches("/api/tenants").trim_matches('/');
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (req.method(), parts.as_slice()) {
        (Method::Get, []) => {
            let tenants = directory::tenants(env).await?;
            Response::from_json(&json!({"data": tenants.iter().map(Tenant::view).collect::<Vec<_>>()}))
        }
        (Method::Post, []) => {
            let Some(body) = body_of(&mut req).await? else {
                return super::too_large(super::MAX_API_BODY_BYTES);
            };
            upsert(env, None, &body).await
        }
        (Method::Get, [id]) => match find(env, id).await? {
            Some(tenant) => Response::from_json(&json!({"data": tenant.view()})),
            None => not_found(),
        },
        (Method::Put | Method::Patch, [id]) => {
            let Some(body) = body_of(&mut req).await? else {
                return super::too_large(super::MAX_API_BODY_BYTES);
            };
            upsert(env, Some(id), &body).await
        }
        (Method::Delete, [id]) => {
            // The replicator that serves its database forgets its subscriptions and drops its
            // slot, as upstream tears down the slot. One that cannot be reached is logged; the
            // tenant goes anyway (its replicator's deliveries are refused from now on).
            if let Some(tenant) = find(env, id).await?.filter(Tenant::has_own_database) {
                if let Err(problem) = replicator::retire(&tenancy::replicator_of(env, &tenant)).await {
                    console_warn!("UnableToDeleteTenant: tenant {id}'s replicator was not told ({problem}): its slot stays until it is dropped by hand");
                }
            }
            // Upstream answers 204 whether or not it existed.
            directory::delete_tenant(env, id).await?;
            tenancy::forget();
            tenancy::disconnect(env, id).await?;
            Ok(Response::empty()?.with_status(204))
        }
        // As upstream: reload makes the tenant's database connections again and closes its
        // sockets; shutdown only the connections (clients stay, their changes resume).
        (Method::Post, [id, action @ ("reload" | "shutdown")]) => match find(env, id).await? {
            Some(tenant) => {
                reconnect(env, &tenant).await;
                if *action == "reload" {
                    tenancy::disconnect(env, id).await?;
                }
                Ok(Response::empty()?.with_status(204))
            }
            None => not_found(),
        },
        (Method::Get, [id, "health"]) => health(&req, env, id).await,
        _ => Response::error("Not Found", 404),
    }
}

/// Asks the replicator that serves the tenant's database to connect again. A tenant of the
/// deployment's own database shares its connections with every such tenant: they are left alone.
async fn reconnect(env: &Env, tenant: &Tenant) {
    if !tenant.has_own_database() {
        console_log!(
            "tenant {}: it shares the deployment's database, whose connections stay",
            tenant.external_id
        );
        return;
    }
    if let Err(problem) = replicator::reconnect(&tenancy::replicator_of(env, tenant)).await {
        console_warn!(
            "tenant {}: its replicator was not told to reconnect ({problem})",
            tenant.external_id
        );
    }
}

/// The body as JSON (`Null` when it is not: refused as not a tenant); `None` when over the limit.
async fn body_of(req: &mut Request) -> Result<Option<Value>> {
    let body = super::body_up_to(req, super::MAX_API_BODY_BYTES).await?;
    Ok(body.map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null)))
}

async fn find(env: &Env, id: &str) -> Result<Option<Tenant>> {
    Ok(directory::tenants(env).await?.into_iter().find(|t| t.external_id == id))
}

fn not_found() -> Result<Response> {
    Ok(Response::from_json(&json!({"message": "not found"}))?.with_status(404))
}

/// Creates (201, with `location`) or updates (200) the tenant named by `id` or the body.
async fn upsert(env: &Env, id: Option<&str>, body: &Value) -> Result<Response> {
    let named = id.map(str::to_string).or_else(|| {
        body.pointer("/tenant/external_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let existing = match &named {
        Some(id) => find(env, id).await?,
        None => None,
    };
    let now: String = js_sys::Date::new_0().to_iso_string().into();
    let sealing = match config::db_enc_public_key(env).transpose() {
        Ok(key) => key,
        Err(problem) => {
            console_error!("{problem}");
            return Ok(Response::from_json(&json!({"errors": {"detail": problem}}))?.with_status(500));
        }
    };
    let seal = sealing
        .as_ref()
        .map(|key| move |password: &str| key.seal(password, &mut sluice_shared::sealed::OsRng));
    let seal: Option<&dyn Fn(&str) -> String> = seal.as_ref().map(|f| f as &dyn Fn(&str) -> String);
    let tenant = match tenants::from_params(named.as_deref(), body, existing.as_ref(), &now, seal) {
        Ok(tenant) => tenant,
        Err(Invalid(problem)) => {
            return Ok(Response::from_json(&json!({"errors": {"detail": problem}}))?.with_status(422));
        }
    };
    let view = tenant.view();
    let location = format!("/api/tenants/{}", tenant.external_id);
    // As upstream: sockets reconnect when what admitted them changed.
    let disconnect = existing.as_ref().is_some_and(|old| {
        fn admitted(t: &Tenant) -> impl PartialEq + '_ {
            (&t.jwt_secret, &t.jwt_jwks, &t.limits.allowed_roles, t.limits.private_only, t.suspend)
        }
        admitted(old) != admitted(&tenant)
    });
    let id = tenant.external_id.clone();
    directory::put_tenant(env, tenant).await?;
    tenancy::forget();
    if disconnect {
        tenancy::disconnect(env, &id).await?;
    }
    let status = if existing.is_some() { 200 } else { 201 };
    let mut res = Response::from_json(&json!({"data": view}))?.with_status(status);
    res.headers_mut().set("location", &location)?;
    Ok(res)
}

/// Upstream's health shape, with the database state from the replicator's `/healthz`
/// (`REPLICATOR_URL`).
async fn health(req: &Request, env: &Env, id: &str) -> Result<Response> {
    let target = match tenancy::for_tenant(env, id).await? {
        tenancy::Resolved::Found(settings) => settings.replicator,
        _ => return not_found(),
    };
    let health = replicator::health(&target).await;
    let db_connected = health.is_some();
    let replication_connected = health.is_some_and(|h| h.replication_connected);
    Response::from_json(&json!({"data": {
        "healthy": db_connected,
        "db_connected": db_connected,
        "replication_connected": replication_connected,
        "connected_cluster": 1,
        "region": region_of(req),
        "node": "sluice-gateway",
    }}))
}
