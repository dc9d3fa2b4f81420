//! `GET /metrics`: Prometheus text of every tenant's sockets, channels and traffic, summed over
//! its hubs (`sluice_shared::metrics`). Like upstream's, it needs `Authorization: Bearer <JWT>`
//! signed with `METRICS_JWT_SECRET`; anything else gets 403 and an empty body.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use sluice_shared::metrics::{self, HubCounts};
use worker::*;

use super::signed_by;
use crate::config::{self, SOCKET_HUB};
use crate::{directory, rpc};

pub async fn metrics(req: Request, env: &Env) -> Result<Response> {
    if !signed_by(&req, &Vec::from_iter(config::metrics_secret(env)))? {
        return Ok(Response::empty()?.with_status(403));
    }
    let snapshot = directory::snapshot(env).await?;
    let namespace = env.durable_object(SOCKET_HUB)?;
    let counts = join_all(snapshot.hubs.iter().map(|hub| {
        let namespace = &namespace;
        async move {
            let stub = namespace.get_by_name(hub).ok()?;
            let mut res = rpc::post_json(stub, "/internal/v1/metrics", &()).await.ok()?;
            let counts: HubCounts = res.json().await.ok()?;
            Some((hub, counts))
        }
    }))
    .await;
    let mut tenants: BTreeMap<String, HubCounts> = BTreeMap::new();
    for (hub, counts) in counts.into_iter().flatten() {
        let tenant = hub.split(':').nth(1).unwrap_or_default();
        tenants.entry(tenant.to_string()).or_default().add(&counts);
    }
    for (tenant, refused) in snapshot.refused {
        let counts = tenants.entry(tenant).or_default();
        for (reason, n) in refused {
            *counts.refused_connections.entry(reason).or_default() += n;
        }
    }
    let headers = Headers::new();
    headers.set("content-type", "text/plain; version=0.0.4")?;
    Ok(Response::ok(metrics::render(&tenants))?.with_headers(headers))
}
