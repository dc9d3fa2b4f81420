//! Which tenant a request is for, and its settings: a tenant the management API created (kept by
//! the Directory, read through a per-isolate cache of a few seconds), or the environment's
//! configuration (`JWT_SECRET`, `JWT_JWKS`, `TENANT_LIMITS`): the default tenant, and with no
//! tenant created, every tenant of a single-project deployment.
//!
//! A host names a tenant through `TENANT_HOSTS`, else by its first DNS label (upstream's rule);
//! a label that is no tenant falls back to `DEFAULT_TENANT`. Once tenants exist, a name that is
//! none of them (nor the default) is not found, and the log line says how to fix it.

use std::cell::RefCell;
use std::rc::Rc;

use sluice_shared::jwt::Keys;
use sluice_shared::limits::Limits;
use sluice_shared::tenants::{self, Named, Tenant};
use worker::{Date, Env, Result};

use crate::config::SOCKET_HUB;
use crate::replicator::Target;
use crate::{config, directory, rpc};

/// A tenant's settings.
pub struct Settings {
    pub tenant: String,
    pub keys: Rc<Keys>,
    pub limits: Rc<Limits>,
    pub suspended: bool,
    /// The replicator that serves its database.
    pub replicator: Rc<Target>,
}

/// What a host or tenant id resolves to.
pub enum Resolved {
    Found(Settings),
    /// No such tenant (the id it named).
    NotFound(String),
    /// The configuration is wrong: what to fix.
    Misconfigured(String),
}

/// How long tenants read from the Directory are trusted: a change made through the API reaches
/// every isolate within this.
pub const CACHE_MS: f64 = 3_000.0;

thread_local! {
    static CACHE: RefCell<Option<(f64, Rc<Vec<Tenant>>)>> = const { RefCell::new(None) };
}

/// Every tenant, at most [`CACHE_MS`] old.
async fn tenants(env: &Env) -> Result<Rc<Vec<Tenant>>> {
    let now = Date::now().as_millis() as f64;
    let cached = CACHE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(at, _)| now - at < CACHE_MS)
            .map(|(_, tenants)| tenants.clone())
    });
    if let Some(tenants) = cached {
        return Ok(tenants);
    }
    let tenants = Rc::new(directory::tenants(env).await?);
    CACHE.with(|c| *c.borrow_mut() = Some((now, tenants.clone())));
    Ok(tenants)
}

/// Forgets what was read: this isolate just changed a tenant.
pub fn forget() {
    CACHE.with(|c| *c.borrow_mut() = None);
}

/// The tenant a request's Host names, and its settings.
pub async fn for_host(env: &Env, host: &str) -> Result<Resolved> {
    let hosts = match config::hosts(env) {
        Ok(hosts) => hosts,
        Err(problem) => return Ok(Resolved::Misconfigured(problem)),
    };
    let tenants = tenants(env).await?;
    let known = |id: &str| tenants.iter().find(|t| t.external_id == id);
    let id = match hosts.name(host) {
        Named::Mapped(id) => id,
        Named::Label(label) if known(&label).is_some() => label,
        Named::Label(label) => hosts.default.clone().unwrap_or(label),
    };
    Ok(resolve(env, &tenants, hosts.default.as_deref(), id))
}

/// A tenant's settings by id (a hub's or a Channel's tenant).
pub async fn for_tenant(env: &Env, id: &str) -> Result<Resolved> {
    let default = config::hosts(env).ok().and_then(|h| h.default);
    let tenants = tenants(env).await?;
    Ok(resolve(env, &tenants, default.as_deref(), id.to_string()))
}

/// A created tenant's own settings; else the environment's, for the default tenant or when no
/// tenant was created (a single-project deployment).
fn resolve(env: &Env, tenants: &[Tenant], default: Option<&str>, id: String) -> Resolved {
    if let Some(tenant) = tenants.iter().find(|t| t.external_id == id) {
        return match tenant.keys() {
            Ok(keys) => Resolved::Found(Settings {
                tenant: id,
                keys: Rc::new(keys),
                limits: Rc::new(tenant.limits.clone()),
                suspended: tenant.suspend,
                replicator: Rc::new(replicator_of(env, tenant)),
            }),
            Err(problem) => Resolved::Misconfigured(format!("tenant {id}: {problem}")),
        };
    }
    if !tenants.is_empty() && default != Some(id.as_str()) {
        return Resolved::NotFound(id);
    }
    let keys = match config::keys(env) {
        Ok(keys) => keys,
        Err(problem) => return Resolved::Misconfigured(problem),
    };
    match config::limits(env, &id) {
        Ok(limits) => Resolved::Found(Settings {
            tenant: id,
            keys: Rc::new(keys.allowing_roles(&limits.allowed_roles)),
            limits: Rc::new(limits),
            suspended: false,
            replicator: Rc::new(Target::from_env(env)),
        }),
        Err(problem) => Resolved::Misconfigured(problem),
    }
}

/// The replicator that serves `tenant`: its own; else the deployment's, which serves the
/// tenant's database (if it has one) under `/tenants/{id}` with a secret of the tenant's own.
pub fn replicator_of(env: &Env, tenant: &Tenant) -> Target {
    let deployment = Target::from_env(env);
    match (&tenant.replicator_url, &tenant.replicator_secret) {
        (Some(url), secret) => Target {
            url: Ok(url.clone()),
            secret: secret.clone(),
        },
        _ if tenant.database().is_some() => Target {
            url: deployment
                .url
                .map(|url| format!("{url}/tenants/{}", tenant.external_id)),
            secret: deployment
                .secret
                .map(|secret| tenants::served_tenant_secret(&secret, &tenant.external_id)),
        },
        _ => deployment,
    }
}

/// Closes every socket of `tenant`, each channel told first that the server requested it
/// (upstream's `UserSocket.disconnect`): after a reload, a delete, a suspension, or a change of
/// its keys or `private_only`. Clients that reconnect meet the new settings.
pub async fn disconnect(env: &Env, tenant: &str) -> Result<()> {
    let namespace = env.durable_object(SOCKET_HUB)?;
    for hub in directory::hubs_of(env, tenant).await? {
        rpc::post_json(namespace.get_by_name(&hub)?, "/internal/v1/disconnect", &()).await?;
    }
    Ok(())
}
