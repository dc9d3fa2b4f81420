//! `GET /realtime/v1/websocket` and `GET /socket/websocket`: authenticate the upgrade and hand the
//! socket to one of the tenant's SocketHubs in the client's region. The decision itself is
//! `sluice_shared::connect::authorize`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use sluice_shared::connect::{self, hub_name, Accepted, ConnectRequest};
use sluice_shared::session::{LogLevel, Session};
use sluice_shared::{tenants, texts};
use worker::*;

use crate::config::{self, SOCKET_HUB};
use crate::directory;
use crate::hub::SESSION_HEADER;
use crate::tenancy::{self, Resolved};

pub async fn upgrade(req: Request, env: &Env) -> Result<Response> {
    if !req
        .headers()
        .get("Upgrade")?
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    {
        return json_error(426, texts::EXPECTED_UPGRADE);
    }
    let url = req.url()?;
    let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let (query_key, vsn) = (param("apikey"), param("vsn"));
    let header_key = req.headers().get("x-api-key")?;
    let host = req
        .headers()
        .get("Host")?
        .unwrap_or_else(|| url.host_str().unwrap_or_default().to_string());
    let settings = match tenancy::for_host(env, &host).await? {
        Resolved::Found(settings) => settings,
        Resolved::NotFound(tenant) => {
            console_warn!("{}", tenants::not_found_log(&host, &tenant));
            let answer = (404, texts::TENANT_NOT_FOUND);
            return refuse(env, directory::UNKNOWN_TENANT, answer, "TenantNotFound", true).await;
        }
        Resolved::Misconfigured(problem) => {
            console_error!("{problem}");
            return json_error(500, texts::CONNECT_FAILED);
        }
    };
    if settings.suspended {
        let answer = (403, texts::TENANT_SUSPENDED);
        return refuse(env, &settings.tenant, answer, "RealtimeDisabledForTenant", true).await;
    }
    let request = ConnectRequest {
        tenant: &settings.tenant,
        header_key: header_key.as_deref(),
        query_key: query_key.as_deref(),
        vsn: vsn.as_deref(),
        headers: req.headers().entries().collect(),
    };
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    let accepted = match connect::authorize(&request, &settings.keys, now_secs) {
        Ok(accepted) => accepted,
        Err(refused) => {
            console_warn!(
                "refused a connection to tenant {}: {}: {}",
                settings.tenant,
                refused.code,
                refused.message
            );
            let delay = refused.delay;
            return refuse(
                env,
                &settings.tenant,
                (refused.status, &refused.message),
                refused.code,
                delay,
            )
            .await;
        }
    };
    let log_level = LogLevel::parse(param("log_level").as_deref());
    open_socket(env, &accepted, log_level, &region_of(&req)).await
}

/// The region part of the hub name: the client's continent where Cloudflare tells it.
pub fn region_of(req: &Request) -> String {
    req.cf()
        .and_then(|cf| cf.continent())
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_else(|| "default".into())
}

/// Counts a refused connection, waits out the backoff if `delay` (so a client cannot probe tokens
/// or tenants quickly), and answers `(status, message)`.
async fn refuse(env: &Env, tenant: &str, (status, message): (u16, &str), code: &str, delay: bool) -> Result<Response> {
    if let Err(e) = directory::refused(env, tenant, code).await {
        console_error!("counting a refused connection: {e}");
    }
    if delay {
        Delay::from(Duration::from_millis(config::connect_error_backoff_ms(env))).await;
    }
    json_error(status, message)
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&json!({"error": message}))?.with_status(status))
}

/// Spreads sockets over the shards. Per isolate; in production isolates are many and this is
/// as good as random, locally it makes shard assignment predictable for tests.
static NEXT_SHARD: AtomicU32 = AtomicU32::new(0);

/// Hands an authenticated upgrade to the hub that will own the socket.
async fn open_socket(env: &Env, accepted: &Accepted, log_level: LogLevel, region: &str) -> Result<Response> {
    let namespace = env.durable_object(SOCKET_HUB)?;
    let shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % config::hub_shards(env);
    let name = hub_name(&accepted.tenant, region, shard);
    let stub = match location_hint(region) {
        Some(hint) => namespace.get_by_name_with_location_hint(&name, hint)?,
        None => namespace.get_by_name(&name)?,
    };
    let mut session = Session::new(String::new(), accepted.tenant.clone(), accepted.vsn, &accepted.claims);
    session.headers = accepted.headers.clone();
    session.log_level = log_level;
    let headers = Headers::new();
    headers.set("Upgrade", "websocket")?;
    headers.set(SESSION_HEADER, &serde_json::to_string(&session)?)?;
    let request = Request::new_with_init("https://hub/connect", RequestInit::new().with_headers(headers))?;
    stub.fetch_with_request(request).await
}

/// Durable Object location hints by Cloudflare continent code.
fn location_hint(region: &str) -> Option<&'static str> {
    match region {
        "na" => Some("enam"),
        "sa" => Some("sam"),
        "eu" => Some("weur"),
        "as" => Some("apac"),
        "oc" => Some("oc"),
        "af" => Some("afr"),
        _ => None,
    }
}
