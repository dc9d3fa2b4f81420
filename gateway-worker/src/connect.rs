//! `GET /realtime/v1/websocket` and `GET /socket/websocket`: authenticate the upgrade and hand the
//! socket to the tenant's SocketHub. The decision itself is `sluice_shared::connect::authorize`.

use std::time::Duration;

use serde_json::json;
use sluice_shared::connect::{self, ConnectRequest};
use worker::*;

use crate::{config, hub};

pub async fn websocket(req: Request, env: &Env) -> Result<Response> {
    if !req
        .headers()
        .get("Upgrade")?
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    {
        return json_error(426, "Expected a WebSocket upgrade");
    }
    let keys = match config::keys(env) {
        Ok(keys) => keys,
        Err(problem) => {
            console_error!("{problem}");
            return json_error(500, "Error connecting to Realtime");
        }
    };
    let url = req.url()?;
    let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let (query_key, vsn) = (param("apikey"), param("vsn"));
    let header_key = req.headers().get("x-api-key")?;
    let host = req
        .headers()
        .get("Host")?
        .unwrap_or_else(|| url.host_str().unwrap_or_default().to_string());
    let request = ConnectRequest {
        host: &host,
        header_key: header_key.as_deref(),
        query_key: query_key.as_deref(),
        vsn: vsn.as_deref(),
        headers: req.headers().entries().collect(),
    };
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    let accepted = match connect::authorize(&request, &keys, now_secs) {
        Ok(accepted) => accepted,
        Err(refused) => {
            if refused.delay {
                Delay::from(Duration::from_millis(config::connect_error_backoff_ms(env))).await;
            }
            return json_error(refused.status, &refused.message);
        }
    };
    hub::open_socket(env, &accepted, &region_of(&req)).await
}

/// The region part of the hub name: the client's continent where Cloudflare tells it.
fn region_of(req: &Request) -> String {
    req.cf()
        .and_then(|cf| cf.continent())
        .map(|c| c.to_ascii_lowercase())
        .unwrap_or_else(|| "default".into())
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&json!({"error": message}))?.with_status(status))
}
