//! REST broadcast (docs/protocol.md 5.2–5.3): `POST /api/broadcast` (batch) and
//! `POST /api/broadcast/:topic/events/:event` (single). Parsing and answers are
//! `sluice_shared::rest`; this module authenticates and hands messages to Channels.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures_util::future::join_all;
use serde_json::{json, Map, Value};
use sluice_shared::connect;
use sluice_shared::frame::Broadcast;
use sluice_shared::internal::{channel_name, Access, Authorize, ChannelOp, ChannelRequest, Extension};
use sluice_shared::rest::{self, Refusal};
use sluice_shared::tenants;
use sluice_shared::texts;
use worker::*;

use crate::config::CHANNEL;
use crate::replicator::Target;
use crate::tenancy::{self, Resolved};
use crate::{outbox, replicator};

/// `POST /api/broadcast`: many text broadcasts, each to its topic's channel.
pub async fn broadcast_batch(mut req: Request, env: &Env) -> Result<Response> {
    let caller = match authenticate(&req, env).await? {
        Ok(caller) => caller,
        Err(refusal) => return answer(refusal),
    };
    let Some(body) = super::body_up_to(&mut req, super::MAX_API_BODY_BYTES).await? else {
        return cors(super::too_large(super::MAX_API_BODY_BYTES)?);
    };
    let messages = match rest::parse_batch(&body) {
        Ok(messages) => messages,
        Err(refusal) => return answer(refusal),
    };
    let mut per_room: BTreeMap<(Access, String), Vec<Broadcast>> = BTreeMap::new();
    for m in messages {
        let access = if m.private { Access::Private } else { Access::Public };
        per_room.entry((access, m.topic)).or_default().push(m.broadcast);
    }
    // Private topics the caller may not write to are skipped, as upstream.
    let mut allowed = Vec::new();
    for ((access, topic), broadcasts) in per_room {
        if access == Access::Public || may_write(&topic, &caller).await {
            allowed.push(relay(env, &caller.tenant, access, topic, broadcasts));
        }
    }
    for result in join_all(allowed).await {
        result?;
    }
    accepted()
}

/// Whether the caller may broadcast to the private channel `topic` (the RLS policies on
/// `realtime.messages`, asked through the replicator).
async fn may_write(topic: &str, caller: &Caller) -> bool {
    let request = Authorize::writing(topic, &caller.claims, &caller.headers, Extension::Broadcast);
    replicator::authorize(&caller.replicator, &request)
        .await
        .is_some_and(|answer| answer.write.contains(&Extension::Broadcast))
}

/// `POST /api/broadcast/:topic/events/:event`: one user broadcast, JSON or binary.
pub async fn broadcast_single(mut req: Request, env: &Env, topic: String, event: String) -> Result<Response> {
    let caller = match authenticate(&req, env).await? {
        Ok(caller) => caller,
        Err(refusal) => return answer(refusal),
    };
    let private = req.url()?.query_pairs().any(|(k, v)| k == "private" && v == "true");
    if private && !may_write(&topic, &caller).await {
        return answer(Refusal {
            status: 403,
            body: json!({"message": texts::REST_UNAUTHORIZED}),
        });
    }
    let access = if private { Access::Private } else { Access::Public };
    let content_type = req.headers().get("content-type")?;
    let Some(body) = super::body_up_to(&mut req, super::MAX_API_BODY_BYTES).await? else {
        return cors(super::too_large(super::MAX_API_BODY_BYTES)?);
    };
    match rest::single_broadcast(&event, content_type.as_deref(), &body) {
        Ok(broadcast) => {
            relay(env, &caller.tenant, access, topic, vec![broadcast]).await?;
            accepted()
        }
        Err(refusal) => answer(refusal),
    }
}

/// CORS preflight: the API is open to browsers, as upstream's.
pub fn preflight() -> Result<Response> {
    let mut res = Response::empty()?.with_status(204);
    let headers = res.headers_mut();
    headers.set("access-control-allow-methods", "POST, OPTIONS")?;
    headers.set(
        "access-control-allow-headers",
        "authorization, apikey, content-type, x-client-info",
    )?;
    headers.set("access-control-max-age", "86400")?;
    cors(res)
}

/// Who called the API: the tenant (from the host), the verified claims and the `x-` headers.
struct Caller {
    tenant: String,
    replicator: Rc<Target>,
    claims: Map<String, Value>,
    headers: Map<String, Value>,
}

async fn authenticate(req: &Request, env: &Env) -> Result<std::result::Result<Caller, Refusal>> {
    let headers = req.headers();
    let (authorization, apikey) = (
        headers.get("authorization").ok().flatten(),
        headers.get("apikey").ok().flatten(),
    );
    let Some(token) = rest::caller_token(authorization.as_deref(), apikey.as_deref()) else {
        return Ok(Err(Refusal::unauthorized()));
    };
    let host = headers.get("host").ok().flatten().unwrap_or_default();
    let settings = match tenancy::for_host(env, &host).await? {
        Resolved::Found(settings) => settings,
        Resolved::NotFound(tenant) => {
            console_warn!("{}", tenants::not_found_log(&host, &tenant));
            return Ok(Err(Refusal::tenant_not_found()));
        }
        Resolved::Misconfigured(problem) => {
            console_error!("{problem}");
            return Ok(Err(Refusal::unauthorized()));
        }
    };
    let now_secs = (Date::now().as_millis() / 1000) as i64;
    let Ok(claims) = settings.keys.verify(token, now_secs) else {
        return Ok(Err(Refusal::unauthorized()));
    };
    let x_headers = match connect::x_headers(&headers.entries().collect::<Vec<_>>()) {
        Ok(x_headers) => x_headers,
        Err(refused) => {
            return Ok(Err(Refusal {
                status: refused.status,
                body: json!({"message": refused.message}),
            }))
        }
    };
    Ok(Ok(Caller {
        tenant: settings.tenant,
        replicator: settings.replicator,
        claims: claims.all,
        headers: x_headers,
    }))
}

/// Hands broadcasts to a public channel, which relays them to every hub with members.
async fn relay(env: &Env, tenant: &str, access: Access, sub_topic: String, broadcasts: Vec<Broadcast>) -> Result<()> {
    let name = channel_name(tenant, access, &sub_topic);
    let request = ChannelRequest {
        hub: "api".into(),
        topic: format!("realtime:{sub_topic}"),
        ops: broadcasts
            .into_iter()
            .map(|broadcast| ChannelOp::Broadcast { broadcast })
            .collect(),
    };
    outbox::post(&|| env.durable_object(CHANNEL)?.get_by_name(&name), &request).await?;
    Ok(())
}

fn accepted() -> Result<Response> {
    cors(Response::empty()?.with_status(202))
}

fn answer(refusal: Refusal) -> Result<Response> {
    cors(Response::from_json::<Value>(&refusal.body)?.with_status(refusal.status))
}

fn cors(mut res: Response) -> Result<Response> {
    res.headers_mut().set("access-control-allow-origin", "*")?;
    Ok(res)
}
