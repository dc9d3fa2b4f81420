//! Registering the tenant this replicator serves with the gateway, as upstream's self-hosted image
//! seeds its tenant: PUT `/api/tenants/{tenant}` with an admin token (`API_JWT_SECRET`), the
//! tenant's token keys, and where and with which secret the gateway reaches this replicator.
//! Creating and updating are the same request, so every start leaves the tenant as configured.
//! Retried while the gateway cannot be reached; a refusal stops the start with the fix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::config::{Config, Registration};
use crate::error::StartError;
use crate::shutdown::Shutdown;
use crate::sink::Gateway;

/// The request body: upstream's tenant fields, and sluice's replicator ones.
pub fn body(config: &Config, registration: &Registration, tenant: &str) -> Result<Value, StartError> {
    let mut fields = Map::new();
    fields.insert("external_id".into(), json!(tenant));
    fields.insert("name".into(), json!(tenant));
    if let Some(secret) = &registration.jwt_secret {
        fields.insert("jwt_secret".into(), json!(secret));
    }
    if let Some(jwks) = &registration.jwt_jwks {
        let jwks: Value = serde_json::from_str(jwks).map_err(|e| {
            StartError(format!(
                "API_JWT_JWKS is not JSON ({e}): give the JWKS document, {{\"keys\": [...]}}"
            ))
        })?;
        fields.insert("jwt_jwks".into(), jwks);
    }
    fields.insert("replicator_url".into(), json!(registration.public_url));
    fields.insert("replicator_secret".into(), json!(config.internal_secret));
    Ok(json!({ "tenant": fields }))
}

/// Registers the tenant; returns once the gateway took it, or the shutdown was requested.
pub async fn register(config: &Config, gateway: &Gateway, shutdown: &Shutdown) -> Result<(), StartError> {
    let (Some(registration), Some(tenant)) = (&config.registration, &config.tenant) else {
        return Ok(());
    };
    let body = body(config, registration, tenant)?;
    let mut wait = Duration::from_millis(200);
    let mut attempts = 0u32;
    while !shutdown.requested() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = json!({"role": "supabase_admin", "iat": now, "exp": now + 300});
        let token = sluice_shared::jwt::sign_hs256(
            claims.as_object().cloned().unwrap_or_default(),
            registration.admin_secret.as_bytes(),
        );
        match gateway.put_tenant(tenant, &body, &token).await {
            Ok((200 | 201, _)) => {
                info!(
                    "registered tenant {tenant} with the gateway at {} (the gateway reaches this replicator at {})",
                    config.gateway_url, registration.public_url
                );
                return Ok(());
            }
            Ok((403, _)) => {
                return Err(StartError(format!(
                    "the gateway at {} refused the admin token registering tenant {tenant}: API_JWT_SECRET must be the gateway's API_JWT_SECRET",
                    config.gateway_url
                )))
            }
            Ok((422, text)) => {
                return Err(StartError(format!(
                    "the gateway refused tenant {tenant}'s settings: {text}"
                )))
            }
            Ok((status, text)) => warn_retry(attempts, &format!("the gateway answered {status}: {text}")),
            Err(problem) => warn_retry(attempts, &problem.to_string()),
        }
        attempts += 1;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

fn warn_retry(attempts: u32, problem: &str) {
    if attempts.is_multiple_of(10) {
        warn!("registering the tenant with the gateway: {problem}; retrying");
    }
}
