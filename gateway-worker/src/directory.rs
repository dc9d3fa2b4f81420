//! Directory: the Durable Object `directory`, one for the whole gateway. It keeps the tenants the
//! management API created, knows every SocketHub that ever took a socket (each registers once per
//! start; `/metrics` starts from them) and counts connections the Worker refused before any hub
//! saw them, per tenant and reason. None is on a hot path: tenants are read through a short cache
//! (`tenancy`), a hub registers once per start, a refusal already waited out its backoff.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_shared::tenants::Tenant;
use worker::*;

use crate::config::DIRECTORY;
use crate::rpc;

/// Where a tenant is stored: this prefix and its id.
const TENANT: &str = "tenant:";
/// The one Directory's name.
const NAME: &str = "directory";
/// Refusals of tenants no hub serves are counted under this tenant: a Host header is the
/// caller's to choose, and must not make up labels.
pub const UNKNOWN_TENANT: &str = "unknown";

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum DirectoryOp {
    Register { hub: String },
    Refused { tenant: String, reason: String },
    Snapshot,
    Tenants,
    PutTenant { tenant: Box<Tenant> },
    DeleteTenant { id: String },
    HubsOf { tenant: String },
}

/// What `/metrics` reads: the hubs, and refused connections per tenant and reason.
#[derive(Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub hubs: Vec<String>,
    pub refused: BTreeMap<String, BTreeMap<String, u64>>,
}

#[durable_object]
pub struct Directory {
    state: State,
}

impl DurableObject for Directory {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let storage = self.state.storage();
        match rpc::json_body::<DirectoryOp>(&mut req).await? {
            DirectoryOp::Register { hub } => storage.put(&format!("hub:{hub}"), true).await?,
            DirectoryOp::Refused { tenant, reason } => {
                let known = storage
                    .list_with_options(ListOptions::new().prefix(&format!("hub:hub:{tenant}:")).limit(1))
                    .await?
                    .size()
                    > 0;
                let tenant = if known { tenant } else { UNKNOWN_TENANT.to_string() };
                let key = format!("refused:{tenant}\n{reason}");
                let count: u64 = storage.get(&key).await.ok().flatten().unwrap_or(0);
                storage.put(&key, count + 1).await?;
            }
            DirectoryOp::Snapshot => {
                let mut snapshot = Snapshot::default();
                // One read: the listing holds the values too.
                let stored = storage.list().await?;
                for key in stored.keys() {
                    let key = key?;
                    let name = key.as_string().unwrap_or_default();
                    if let Some(hub) = name.strip_prefix("hub:") {
                        snapshot.hubs.push(hub.to_string());
                    } else if let Some((tenant, reason)) =
                        name.strip_prefix("refused:").and_then(|k| k.split_once('\n'))
                    {
                        let count = stored.get(&key).as_f64().unwrap_or(0.0) as u64;
                        snapshot
                            .refused
                            .entry(tenant.into())
                            .or_default()
                            .insert(reason.into(), count);
                    }
                }
                return Response::from_json(&snapshot);
            }
            DirectoryOp::Tenants => {
                let stored = storage.list_with_options(ListOptions::new().prefix(TENANT)).await?;
                let mut tenants: Vec<Tenant> = Vec::new();
                for value in stored.values() {
                    // Stored as JSON text: numbers and nesting kept exactly.
                    tenants.push(serde_json::from_str(&value?.as_string().unwrap_or_default())?);
                }
                return Response::from_json(&tenants);
            }
            DirectoryOp::PutTenant { tenant } => {
                let key = format!("{TENANT}{}", tenant.external_id);
                storage.put(&key, serde_json::to_string(&*tenant)?).await?;
            }
            DirectoryOp::HubsOf { tenant } => {
                let stored = storage
                    .list_with_options(ListOptions::new().prefix(&format!("hub:hub:{tenant}:")))
                    .await?;
                let mut hubs: Vec<String> = Vec::new();
                for key in stored.keys() {
                    let key = key?.as_string().unwrap_or_default();
                    hubs.extend(key.strip_prefix("hub:").map(str::to_string));
                }
                return Response::from_json(&hubs);
            }
            DirectoryOp::DeleteTenant { id } => {
                let existed = storage.delete(&format!("{TENANT}{id}")).await?;
                return Response::from_json(&existed);
            }
        }
        Response::ok("")
    }
}

fn stub(env: &Env) -> Result<Stub> {
    env.durable_object(DIRECTORY)?.get_by_name(NAME)
}

/// A hub took its first socket since it started.
pub async fn register(env: &Env, hub: &str) -> Result<()> {
    rpc::post_json(stub(env)?, "/", &DirectoryOp::Register { hub: hub.into() }).await?;
    Ok(())
}

/// The Worker refused a connection of `tenant` for `reason` (an error code).
pub async fn refused(env: &Env, tenant: &str, reason: &str) -> Result<()> {
    let request = DirectoryOp::Refused {
        tenant: tenant.into(),
        reason: reason.into(),
    };
    rpc::post_json(stub(env)?, "/", &request).await?;
    Ok(())
}

pub async fn snapshot(env: &Env) -> Result<Snapshot> {
    rpc::post_json(stub(env)?, "/", &DirectoryOp::Snapshot)
        .await?
        .json()
        .await
}

/// Every tenant the management API created.
pub async fn tenants(env: &Env) -> Result<Vec<Tenant>> {
    rpc::post_json(stub(env)?, "/", &DirectoryOp::Tenants)
        .await?
        .json()
        .await
}

/// Creates or replaces a tenant.
pub async fn put_tenant(env: &Env, tenant: Tenant) -> Result<()> {
    let op = DirectoryOp::PutTenant {
        tenant: Box::new(tenant),
    };
    rpc::post_json(stub(env)?, "/", &op).await?;
    Ok(())
}

/// Forgets a tenant; whether it existed.
pub async fn delete_tenant(env: &Env, id: &str) -> Result<bool> {
    let op = DirectoryOp::DeleteTenant { id: id.into() };
    rpc::post_json(stub(env)?, "/", &op).await?.json().await
}

/// The hubs of a tenant (every one that ever took a socket).
pub async fn hubs_of(env: &Env, tenant: &str) -> Result<Vec<String>> {
    let op = DirectoryOp::HubsOf { tenant: tenant.into() };
    rpc::post_json(stub(env)?, "/", &op).await?.json().await
}
