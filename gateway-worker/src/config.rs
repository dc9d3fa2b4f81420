//! Settings from the Worker's environment (`[vars]` in wrangler.toml, secrets, `--var`).

use sluice_shared::jwt::Keys;
use sluice_shared::limits::Limits;
use sluice_shared::tenants::Hosts;
use worker::Env;

/// The bindings of the Durable Object namespaces.
pub const SOCKET_HUB: &str = "SOCKET_HUB";
pub const CHANNEL: &str = "CHANNEL";
pub const DIRECTORY: &str = "DIRECTORY";

/// How many SocketHubs share a tenant's sockets in one region (`HUB_SHARDS`, default 1).
pub fn hub_shards(env: &Env) -> u32 {
    read(env, "HUB_SHARDS")
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// The keys tenants' tokens are verified with: the HS256/384/512 secret `JWT_SECRET` and the
/// optional JWKS `JWT_JWKS` (RS*, PS*, ES256, EdDSA by `kid`). `Err` says what to fix.
pub fn keys(env: &Env) -> Result<Keys, String> {
    let secret = read(env, "JWT_SECRET").filter(|s| !s.is_empty());
    let jwks = read(env, "JWT_JWKS").filter(|s| !s.trim().is_empty());
    if secret.is_none() && jwks.is_none() {
        return Err("neither JWT_SECRET nor JWT_JWKS is configured: set at least one (a secret of the worker)".into());
    }
    let keys = Keys::new(secret.unwrap_or_default().into_bytes());
    match jwks {
        Some(jwks) => keys.with_jwks(&jwks).map_err(|e| format!("JWT_JWKS is invalid: {e}")),
        None => Ok(keys),
    }
}

/// The largest WebSocket frame a client may send (`MAX_FRAME_BYTES`, default 3 MiB: a little
/// above upstream's 3,000 KB payload limit). A larger frame is refused before it is parsed and
/// its socket closed with 1009.
pub fn max_frame_bytes(env: &Env) -> usize {
    read(env, "MAX_FRAME_BYTES")
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3 * 1024 * 1024)
}

/// How long a refused connection waits before its HTTP answer, as upstream
/// (`CONNECT_ERROR_BACKOFF_MS`, default 2000), so a client cannot probe tokens quickly.
pub fn connect_error_backoff_ms(env: &Env) -> u64 {
    read(env, "CONNECT_ERROR_BACKOFF_MS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// How long a refused join waits before its error reply, as upstream
/// (`CHANNEL_ERROR_BACKOFF_MS`, default 5000), so a client cannot retry refused joins quickly.
pub fn channel_error_backoff_ms(env: &Env) -> u64 {
    read(env, "CHANNEL_ERROR_BACKOFF_MS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

/// How long a join with `broadcast.replication_ready` waits for the database's replication
/// connection before the channel is shut down (`REPLICATION_READY_TIMEOUT_MS`, default a minute
/// as upstream's `replication_ready_timeout`).
pub fn replication_ready_timeout_ms(env: &Env) -> u64 {
    read(env, "REPLICATION_READY_TIMEOUT_MS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000)
}

/// The secret `/metrics` bearer tokens are signed with (`METRICS_JWT_SECRET`, as upstream);
/// without it `/metrics` refuses everyone.
pub fn metrics_secret(env: &Env) -> Option<String> {
    read(env, "METRICS_JWT_SECRET").filter(|s| !s.is_empty())
}

/// The secrets admin tokens of the management API may be signed with: `API_JWT_SECRET`, and
/// `API_JWT_SECRET_NEXT` while rotating to it (as upstream).
pub fn admin_secrets(env: &Env) -> Vec<String> {
    ["API_JWT_SECRET", "API_JWT_SECRET_NEXT"]
        .into_iter()
        .filter_map(|name| read(env, name).filter(|s| !s.is_empty()))
        .collect()
}

/// How hosts name tenants: `TENANT_HOSTS` (JSON, host name or `*.domain` to tenant id) and
/// `DEFAULT_TENANT`. `Err` says what to fix.
pub fn hosts(env: &Env) -> Result<Hosts, String> {
    Hosts::parse(
        read(env, "TENANT_HOSTS").as_deref(),
        read(env, "DEFAULT_TENANT").as_deref(),
    )
}

/// Where the replicator serves its API (`REPLICATOR_URL`): `https://...`, or `http://` on
/// loopback only (internal requests never cross a network in clear text); why not otherwise.
pub fn replicator_url(env: &Env) -> std::result::Result<String, String> {
    let url = read(env, "REPLICATOR_URL")
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .ok_or("REPLICATOR_URL is not set")?;
    if sluice_shared::signature::cleartext_off_loopback(&url) {
        return Err(format!(
            "REPLICATOR_URL={url} would carry internal requests in clear text: use https:// (the replicator's own TLS, or a tunnel such as cloudflared)"
        ));
    }
    Ok(url)
}

/// Whether `GET /inspector` serves the inspector page (`INSPECTOR=on`; off unless set, so a
/// deployment shows it only where its operator chose to; `scripts/dev` turns it on).
pub fn inspector_on(env: &Env) -> bool {
    read(env, "INSPECTOR").is_some_and(|v| v.eq_ignore_ascii_case("on"))
}

/// How long a socket may stay silent before the server closes it (`IDLE_TIMEOUT_MS`, default
/// 60 000, Phoenix's transport timeout). Clients heartbeat every 25 s.
pub fn idle_timeout_ms(env: &Env) -> u64 {
    read(env, "IDLE_TIMEOUT_MS")
        .and_then(|v| v.parse().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(60_000)
}

/// A tenant's limits from `TENANT_LIMITS` (JSON: `{"*": {...}, "<tenant>": {...}}`, upstream's
/// field names); upstream's defaults where unset.
pub fn limits(env: &Env, tenant: &str) -> Result<Limits, String> {
    Limits::for_tenant(read(env, "TENANT_LIMITS").as_deref(), tenant)
}

fn read(env: &Env, name: &str) -> Option<String> {
    // Vars and secrets are strings on `env`. A binding may be absent, or null (self-hosted
    // workerd: a `fromEnvironment` binding whose variable is unset), which `Env::var` cannot take.
    let value = worker::js_sys::Reflect::get(env.as_ref(), &name.into()).ok()?;
    value.as_string()
}

/// The secret shared with the replicator (`INTERNAL_SECRET`, the replicator's
/// `SLUICE_INTERNAL_SECRET`): it authenticates calls in both directions.
pub fn internal_secret(env: &Env) -> Option<String> {
    read(env, "INTERNAL_SECRET").filter(|s| !s.is_empty())
}

/// The public key database passwords given to the management API are sealed with
/// (`DB_ENC_PUBLIC_KEY`, printed by `sluice-replicator db-enc-public-key` from the replicators'
/// `DB_ENC_KEY`): unset, passwords are refused. `Err` says what to fix.
pub fn db_enc_public_key(env: &Env) -> Option<std::result::Result<sluice_shared::sealed::SealingKey, String>> {
    read(env, "DB_ENC_PUBLIC_KEY")
        .filter(|k| !k.trim().is_empty())
        .map(|k| sluice_shared::sealed::SealingKey::from_hex(&k))
}
