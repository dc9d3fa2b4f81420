//! Many tenant databases in one process (`SLUICE_TENANTS_FILE`). The file is JSON,
//! `{"tenants": {"<id>": {"SLUICE_DATABASE_URL": "...", "SLUICE_HTTP_ADDR": "...", ...}}}`: each
//! tenant's settings are the replicator's variables (sluice's or upstream's names), over the
//! process's environment, with `SLUICE_TENANT` its id. Each tenant gets what a replicator of its
//! own would have: its slot (`sluice_changes_<id>` unless set), pipeline, API address and secret,
//! its registration with the gateway.
//! They share nothing but the process: a tenant whose database is down, misconfigured or slow
//! holds up no other, and one that fails is started again every 10 s. The file is read again
//! every 2 s: a tenant added starts within seconds, one removed stops (its in-flight batch
//! delivered, as at shutdown), one changed restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::shutdown::Shutdown;

/// How often the file is read again.
const REREAD: Duration = Duration::from_secs(2);
/// How long a tenant that failed waits before it is started again.
const RESTART: Duration = Duration::from_secs(10);

/// A running tenant: its settings as last read, and the handle that stops it.
struct Running {
    settings: BTreeMap<String, String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves every tenant of the file until `shutdown`.
pub async fn serve_all(path: String, shutdown: Shutdown) {
    info!("serving the tenants listed in {path} (read again every {REREAD:?})");
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut last_problem = None;
    while !shutdown.requested() {
        match read(&path) {
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
                        "tenant {id}: {} in {path}: stopping it",
                        if wanted.contains_key(&id) { "changed" } else { "removed" }
                    );
                    let _ = gone.stop.send(());
                    let _ = gone.task.await;
                }
                for (id, settings) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    let (child, stop) = shutdown.child();
                    let task = tokio::spawn(supervise(id.clone(), settings.clone(), child));
                    running.insert(id, Running { settings, stop, task });
                }
            }
            Err(problem) => {
                if last_problem.as_ref() != Some(&problem) {
                    error!("{path}: {problem}; the tenants already running keep running");
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

/// The tenants of the file: id → settings (variable → value).
fn read(path: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("is not JSON ({e})"))?;
    let tenants = doc
        .get("tenants")
        .and_then(Value::as_object)
        .ok_or("must be {\"tenants\": {\"<id>\": {\"SLUICE_DATABASE_URL\": ...}}}")?;
    let mut out = BTreeMap::new();
    for (id, settings) in tenants {
        let settings = settings
            .as_object()
            .ok_or_else(|| format!("tenant {id}: its settings must be an object of variable names to values"))?;
        let mut vars = BTreeMap::new();
        for (name, value) in settings {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vars.insert(name.clone(), value);
        }
        vars.entry("SLUICE_TENANT".into()).or_insert_with(|| id.clone());
        // Slot names are the server's, and tenants' databases often share a server.
        let slot: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        vars.entry("SLUICE_SLOT".into())
            .or_insert_with(|| format!("sluice_changes_{slot}"));
        out.insert(id.clone(), vars);
    }
    Ok(out)
}

/// Runs one tenant until `shutdown`, starting it again when it fails.
async fn supervise(id: String, settings: BTreeMap<String, String>, shutdown: Shutdown) {
    let span = info_span!("tenant", id = %id);
    async move {
        while !shutdown.requested() {
            let config = Config::from_lookup(|name| settings.get(name).cloned().or_else(|| std::env::var(name).ok()));
            let outcome = match config {
                Ok(config) => crate::serve(config, shutdown.clone()).await,
                Err(problem) => Err(crate::error::StartError(problem.to_string())),
            };
            match outcome {
                Ok(crate::Served::Stopped) => return,
                Ok(crate::Served::Retired) => {
                    warn!(
                        "the tenant was deleted: its subscriptions and slot are gone; remove it from the tenants file"
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
