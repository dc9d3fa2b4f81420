//! Settings from the Worker's environment (`[vars]` in wrangler.toml, secrets, `--var`).

use worker::Env;

/// The bindings of the Durable Object namespaces.
pub const SOCKET_HUB: &str = "SOCKET_HUB";
pub const CHANNEL: &str = "CHANNEL";

/// How many SocketHubs share a tenant's sockets in one region (`HUB_SHARDS`, default 1).
pub fn hub_shards(env: &Env) -> u32 {
    read(env, "HUB_SHARDS").and_then(|v| v.parse().ok()).filter(|n| *n >= 1).unwrap_or(1)
}

/// The HS256/384/512 secret tenants' tokens are signed with (`JWT_SECRET`).
pub fn jwt_secret(env: &Env) -> Option<String> {
    read(env, "JWT_SECRET").filter(|s| !s.is_empty())
}

/// How long a refused connection waits before its HTTP answer, as upstream
/// (`CONNECT_ERROR_BACKOFF_MS`, default 2000), so a client cannot probe tokens quickly.
pub fn connect_error_backoff_ms(env: &Env) -> u64 {
    read(env, "CONNECT_ERROR_BACKOFF_MS").and_then(|v| v.parse().ok()).unwrap_or(2000)
}

fn read(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
}
