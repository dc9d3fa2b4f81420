//! Many tenant databases in one process, listed by one of two sources:
//!
//! - [`Source::Gateway`]: the tenants created through the gateway's management API with a
//!   database (upstream's `postgres_cdc_rls` extension settings: `db_host`, `db_port`,
//!   `db_name`, `db_user`, the password sealed for `DB_ENC_KEY`, `ssl_enforced`, `publication`,
//!   `slot_name`). The deployment's replicator serves them beside its own database, each under
//!   `/tenants/{id}` of its address and with a secret of the tenant's own.
//! - [`Source::File`] (`SLUICE_TENANTS_FILE`): JSON,
//!   `{"tenants": {"<id>": {"SLUICE_DATABASE_URL": "...", "SLUICE_HTTP_ADDR": "...", ...}}}`: each
//!   tenant's settings are the replicator's variables (sluice's or upstream's names), over the
//!   process's environment, with `SLUICE_TENANT` its id. Each tenant gets what a replicator of
//!   its own would have: its address and secret, its registration with the gateway.
//!
//! Either way each tenant has its slot (`sluice_changes_<id>` unless set) and pipeline, and they
//! share nothing but the process: a tenant whose database is down, misconfigured or slow holds up
//! no other, and one that fails is started again every 10 s. The list is read again every 2 s: a
//! tenant added starts within seconds, one removed stops (its in-flight batch delivered, as at
//! shutdown), one changed restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sluice_shared::sealed::OpeningKey;
use sluice_shared::tenants::{served_tenant_secret, SEALED_PASSWORD};
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::{Config, ConfigError};
use crate::http::Mounts;
use crate::shutdown::Shutdown;
use crate::{sink, stats, Listen};

/// How often the list is read again.
const REREAD: Duration = Duration::from_secs(2);
/// How long a tenant that failed waits before it is started again.
const RESTART: Duration = Duration::from_secs(10);

/// Where the tenants are listed.
pub enum Source {
    /// `SLUICE_TENANTS_FILE`.
    File(String),
    /// The gateway's management API, for the deployment's replicator.
    Gateway(Box<Deployment>),
}

/// The deployment's replicator, as the tenants it serves for the gateway see it.
pub struct Deployment {
    config: Config,
    mounts: Mounts,
    /// From `DB_ENC_KEY`: opens the tenants' database passwords.
    opening: Option<OpeningKey>,
    /// Asks the gateway which tenant databases to serve.
    gateway: sink::Gateway,
}

impl Deployment {
    /// `Err` says what to fix: a `DB_ENC_KEY` that cannot be a key, or an unreadable
    /// `SLUICE_GATEWAY_CA`.
    pub fn new(config: &Config, mounts: Mounts) -> Result<Deployment, String> {
        let opening = match std::env::var("DB_ENC_KEY").ok().filter(|k| !k.is_empty()) {
            Some(key) => Some(OpeningKey::from_enc_key(&key)?),
            None => None,
        };
        Ok(Deployment {
            config: config.clone(),
            mounts,
            opening,
            gateway: sink::Gateway::new(config, Arc::new(stats::Stats::default()))?,
        })
    }

    /// A tenant's configuration from its database settings: upstream's names, read as a
    /// replicator started with them would, the password opened with `DB_ENC_KEY`.
    fn config_of(&self, id: &str, settings: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        const UPSTREAM: [(&str, &str); 7] = [
            ("db_host", "DB_HOST"),
            ("db_port", "DB_PORT"),
            ("db_name", "DB_NAME"),
            ("db_user", "DB_USER"),
            ("ssl_enforced", "DB_SSL"),
            ("publication", "PUBLICATIONS"),
            ("slot_name", "SLOT_NAME"),
        ];
        let mut vars: HashMap<&str, String> = UPSTREAM
            .iter()
            .filter_map(|(setting, name)| Some((*name, settings.get(*setting)?.clone())))
            .collect();
        if let Some(sealed) = settings.get(SEALED_PASSWORD) {
            let key = match &self.opening {
                Some(key) => key,
                None => return Err(ConfigError(
                    "its database password is sealed, and DB_ENC_KEY is not set: set it to the key whose public half is the gateway's DB_ENC_PUBLIC_KEY".into(),
                )),
            };
            let password = key
                .open(sealed)
                .map_err(|e| ConfigError(format!("its database password cannot be opened: {e}")))?;
            vars.insert("DB_PASSWORD", password);
        }
        vars.insert("SLUICE_TENANT", id.to_string());
        vars.insert(
            "SLUICE_INTERNAL_SECRET",
            served_tenant_secret(&self.config.internal_secret, id),
        );
        vars.insert("SLUICE_GATEWAY_URL", self.config.gateway_url.clone());
        if !vars.contains_key("SLOT_NAME") {
            vars.insert("SLUICE_SLOT", slot_of(id));
        }
        // The deployment's settings that hold for every database it serves; nothing else of its
        // environment (its own database, address, tenant, admin secret) leaks in.
        const SHARED: [&str; 6] = [
            "SLUICE_GATEWAY_CA",
            "SLUICE_SLOT_WARN_SIZE",
            "SLUICE_SLOT_WARN_AGE",
            "SLUICE_SLOT_MAX_SIZE",
            "PGSSLROOTCERT",
            "PGSSLMODE",
        ];
        Config::from_lookup(|name| {
            vars.get(name)
                .cloned()
                .or_else(|| SHARED.contains(&name).then(|| std::env::var(name).ok()).flatten())
        })
    }
}

impl Source {
    /// The tenants listed: id → settings.
    async fn read(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
        match self {
            Source::File(path) => read_file(path),
            Source::Gateway(deployment) => {
                let listed = deployment
                    .gateway
                    .databases()
                    .await
                    .map_err(|e| format!("listing the tenant databases to serve failed: {e}"))?;
                let tenants = listed
                    .get("tenants")
                    .and_then(Value::as_object)
                    .ok_or("the gateway's list of tenant databases has no \"tenants\"")?;
                tenants
                    .iter()
                    .map(|(id, settings)| Ok((id.clone(), strings(id, settings)?)))
                    .collect()
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.clone(),
            Source::Gateway(d) => format!("the gateway at {}", d.config.gateway_url),
        }
    }

    /// How a tenant is configured and where its API is served.
    fn start(&self, id: &str, settings: &BTreeMap<String, String>) -> (Result<Config, ConfigError>, Listen) {
        match self {
            Source::File(_) => (
                Config::from_lookup(|name| settings.get(name).cloned().or_else(|| std::env::var(name).ok())),
                Listen::Own(Mounts::default(), None),
            ),
            Source::Gateway(deployment) => (
                deployment.config_of(id, settings),
                Listen::Mounted(deployment.mounts.clone()),
            ),
        }
    }

    /// What to do about a tenant that was deleted.
    fn after_deletion(&self) -> &'static str {
        match self {
            Source::File(_) => "remove it from the tenants file",
            Source::Gateway(_) => "it stops being served once the gateway no longer lists it",
        }
    }
}

/// A running tenant: its settings as last read, and the handle that stops it.
struct Running {
    settings: BTreeMap<String, String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves every tenant of `source` until `shutdown`.
pub async fn serve_all(source: Source, shutdown: Shutdown) {
    let from = source.describe();
    info!("serving the tenant databases listed by {from} (read again every {REREAD:?})");
    let source = Arc::new(source);
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut last_problem = None;
    while !shutdown.requested() {
        match source.read().await {
            Ok(wanted) => {
                last_problem = None;
                // Stopped: removed or changed.
                let stale: Vec<String> = running
                    .iter()
                    .filter(|(id, r)| wanted.get(*id) != Some(&r.settings))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in stale {
                    let gone = running.remove(&id).expect("listed");
                    info!(
                        "tenant {id}: {} by {from}: stopping it",
                        if wanted.contains_key(&id) {
                            "changed"
                        } else {
                            "no longer listed"
                        }
                    );
                    let _ = gone.stop.send(());
                    let _ = gone.task.await;
                }
                for (id, settings) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    let (child, stop) = shutdown.child();
                    let task = tokio::spawn(supervise(source.clone(), id.clone(), settings.clone(), child));
                    running.insert(id, Running { settings, stop, task });
                }
            }
            Err(problem) => {
                if last_problem.as_ref() != Some(&problem) {
                    error!("{from}: {problem}; the tenants already running keep running");
                }
                last_problem = Some(problem);
            }
        }
        tokio::select! {
            _ = shutdown.requested_now() => {}
            _ = tokio::time::sleep(REREAD) => {}
        }
    }
    for (_, tenant) in running {
        let _ = tenant.task.await;
    }
}

/// A tenant's settings as strings (numbers and booleans as JSON writes them).
fn strings(id: &str, settings: &Value) -> Result<BTreeMap<String, String>, String> {
    let settings: &Map<String, Value> = settings
        .as_object()
        .ok_or_else(|| format!("tenant {id}: its settings must be an object of names to values"))?;
    Ok(settings
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.clone(), value)
        })
        .collect())
}

/// The default slot of a tenant: slot names are the server's, and tenants' databases often share
/// a server.
fn slot_of(id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        })
        .collect();
    format!("sluice_changes_{id}")
}

/// The tenants of the file: id → settings (variable → value).
fn read_file(path: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("is not JSON ({e})"))?;
    file_tenants(&doc)
}

/// The tenants of a tenants file's document: id → settings (variable → value).
pub(crate) fn file_tenants(doc: &Value) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let tenants = doc
        .get("tenants")
        .and_then(Value::as_object)
        .ok_or("must be {\"tenants\": {\"<id>\": {\"SLUICE_DATABASE_URL\": ...}}}")?;
    let mut out = BTreeMap::new();
    for (id, settings) in tenants {
        let mut vars = strings(id, settings)?;
        vars.entry("SLUICE_TENANT".into()).or_insert_with(|| id.clone());
        vars.entry("SLUICE_SLOT".into()).or_insert_with(|| slot_of(id));
        out.insert(id.clone(), vars);
    }
    Ok(out)
}

/// Runs one tenant until `shutdown`, starting it again when it fails.
async fn supervise(source: Arc<Source>, id: String, settings: BTreeMap<String, String>, shutdown: Shutdown) {
    let span = info_span!("tenant", id = %id);
    async move {
        while !shutdown.requested() {
            let (config, listen) = source.start(&id, &settings);
            let outcome = match config {
                Ok(config) => crate::serve(config, shutdown.clone(), listen).await,
                Err(problem) => Err(crate::error::StartError(problem.to_string())),
            };
            match outcome {
                Ok(crate::Served::Stopped) => return,
                Ok(crate::Served::Reconnect) => continue,
                Ok(crate::Served::Retired) => {
                    warn!(
                        "the tenant was deleted: its subscriptions and slot are gone; {}",
                        source.after_deletion()
                    );
                    // Not started again until its entry changes.
                    shutdown.requested_now().await;
                    return;
                }
                Err(problem) => warn!("{problem}; starting it again in {RESTART:?}"),
            }
            tokio::select! {
                _ = shutdown.requested_now() => {}
                _ = tokio::time::sleep(RESTART) => {}
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::sealed::{OsRng, SealingKey};

    #[test]
    fn a_gateway_tenant_is_configured_from_upstreams_settings_alone() {
        let deployment_config = Config::from_lookup(|name| {
            match name {
                "SLUICE_DATABASE_URL" => Some("postgres://deployment@own-db/postgres"),
                "SLUICE_INTERNAL_SECRET" => Some("0123456789abcdef0123456789abcdef"),
                "SLUICE_GATEWAY_URL" => Some("http://127.0.0.1:8787"),
                "SLUICE_SLOT" => Some("own_slot"),
                "API_JWT_SECRET" => Some("admin secret of the deployment"),
                _ => None,
            }
            .map(str::to_string)
        })
        .unwrap();
        let key = OpeningKey::from_enc_key("0123456789abcdef-enc").unwrap();
        let sealed = SealingKey::from_hex(&key.public_hex())
            .unwrap()
            .seal("pw 'x'", &mut OsRng);
        let deployment = Deployment {
            gateway: sink::Gateway::new(&deployment_config, Arc::default()).unwrap(),
            config: deployment_config,
            mounts: Mounts::default(),
            opening: Some(key),
        };
        let settings = strings(
            "acme",
            &serde_json::json!({"db_host": "db.acme", "db_port": 6543, "db_user": "sluice", "ssl_enforced": true, SEALED_PASSWORD: sealed, "region": "eu"}),
        )
        .unwrap();
        let config = deployment.config_of("acme", &settings).unwrap();
        let described = config.database.describe();
        assert!(
            described.contains("db.acme") && described.contains("6543"),
            "{described}"
        );
        assert_eq!(config.database.pg.get_password(), Some(&b"pw 'x'"[..]));
        assert_eq!(config.slot, "sluice_changes_acme");
        assert_eq!(config.tenant.as_deref(), Some("acme"));
        assert!(
            config.registration.is_none(),
            "the deployment's admin secret does not register it"
        );
        assert_eq!(
            config.internal_secret,
            served_tenant_secret("0123456789abcdef0123456789abcdef", "acme")
        );
        // Without DB_ENC_KEY the sealed password is a problem that names the fix.
        let without = Deployment {
            opening: None,
            ..deployment
        };
        assert!(without
            .config_of("acme", &settings)
            .unwrap_err()
            .0
            .contains("DB_ENC_KEY"));
    }
}
