//! Tenants: the projects one deployment serves. A tenant as the management API takes it and the
//! gateway stores it (upstream's field names), what `GET` shows of it (never a secret), and which
//! tenant a request's host names (a mapping, the first DNS label as upstream, a default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::jwt::Keys;
use crate::limits::Limits;

/// A tenant, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub external_id: String,
    pub name: String,
    /// HS256/384/512 secret its users' tokens are signed with.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Its JWKS (asymmetric keys by `kid`).
    #[serde(default)]
    pub jwt_jwks: Option<Value>,
    /// Its limits and flags (`private_only`, `presence_enabled`), upstream's defaults where unset.
    pub limits: Limits,
    /// Suspended: its sockets are closed and new ones refused.
    #[serde(default)]
    pub suspend: bool,
    /// The replicator that serves its database, where it serves its API (sluice's own field;
    /// unset: the deployment's `REPLICATOR_URL`). `https://`, or `http://` on loopback only.
    #[serde(default)]
    pub replicator_url: Option<String>,
    /// The secret that replicator and the gateway sign internal requests with (at least 32
    /// characters; never shown). A replicator with it can reach this tenant's hubs only.
    #[serde(default)]
    pub replicator_secret: Option<String>,
    /// Upstream's `extensions` (database settings), kept without passwords.
    #[serde(default)]
    pub extensions: Vec<Value>,
    /// When it was created (ISO 8601, UTC).
    pub inserted_at: String,
}

/// What is wrong with a tenant as given: the field and what to fix (answered with 422).
#[derive(Debug, PartialEq)]
pub struct Invalid(pub String);

/// The tenant named by `id` (or by the body's `external_id`) from upstream's request body
/// `{"tenant": {...}}`, over `existing` when it is an update: fields not given keep their value.
/// A database password given is stored sealed by `seal` (see [`crate::sealed`]); without one it
/// is refused.
pub fn from_params(
    id: Option<&str>,
    body: &Value,
    existing: Option<&Tenant>,
    now_iso: &str,
    seal: Option<&dyn Fn(&str) -> String>,
) -> Result<Tenant, Invalid> {
    let params = body
        .get("tenant")
        .and_then(Value::as_object)
        .ok_or_else(|| Invalid("the body must be {\"tenant\": {...}}".into()))?;
    let given = |key: &str| params.get(key).filter(|v| !v.is_null());
    let external_id = id
        .map(str::to_string)
        .or_else(|| given("external_id").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| Invalid("external_id is required".into()))?;
    if !valid_id(&external_id) {
        return Err(Invalid(format!(
            "external_id {external_id:?} must be 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    let text = |key: &str| -> Result<Option<String>, Invalid> {
        match given(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Invalid(format!("{key} must be a string"))),
        }
    };
    let mut tenant = existing.cloned().unwrap_or_else(|| Tenant {
        external_id: external_id.clone(),
        name: external_id.clone(),
        jwt_secret: None,
        jwt_jwks: None,
        limits: Limits::default(),
        suspend: false,
        replicator_url: None,
        replicator_secret: None,
        extensions: Vec::new(),
        inserted_at: now_iso.to_string(),
    });
    if let Some(name) = text("name")? {
        tenant.name = name;
    }
    if let Some(secret) = text("jwt_secret")? {
        tenant.jwt_secret = Some(secret).filter(|s| !s.is_empty());
    }
    if let Some(jwks) = given("jwt_jwks") {
        tenant.jwt_jwks = Some(jwks.clone());
    }
    if tenant.jwt_secret.is_none() && tenant.jwt_jwks.is_none() {
        return Err(Invalid("either jwt_secret or jwt_jwks must be provided".into()));
    }
    tenant.keys().map_err(Invalid)?;
    // Limits and flags: upstream's names, merged over what the tenant had.
    let mut limits = serde_json::to_value(&tenant.limits).expect("limits serialize");
    for (key, value) in params {
        if limits.get(key).is_some() && !value.is_null() {
            limits[key] = value.clone();
        }
    }
    tenant.limits = serde_json::from_value::<Limits>(limits)
        .map_err(|e| format!("a limit is not valid: {e}"))
        .and_then(Limits::checked)
        .map_err(Invalid)?;
    if let Some(url) = text("replicator_url")? {
        if crate::signature::cleartext_off_loopback(&url) || !url.starts_with("http") {
            return Err(Invalid(format!(
                "replicator_url {url:?}: use https://, or http:// on loopback only (internal requests never cross a network in clear text)"
            )));
        }
        tenant.replicator_url = Some(url.trim_end_matches('/').to_string()).filter(|u| !u.is_empty());
    }
    if let Some(secret) = text("replicator_secret")? {
        if secret.len() < 32 {
            return Err(Invalid("replicator_secret must be at least 32 characters".into()));
        }
        tenant.replicator_secret = Some(secret);
    }
    if tenant.replicator_url.is_some() != tenant.replicator_secret.is_some() {
        return Err(Invalid(
            "replicator_url and replicator_secret go together: the tenant's replicator signs with its own secret"
                .into(),
        ));
    }
    if let Some(suspend) = given("suspend") {
        tenant.suspend = suspend
            .as_bool()
            .ok_or_else(|| Invalid("suspend must be true or false".into()))?;
    }
    if let Some(extensions) = given("extensions") {
        tenant.extensions = extensions_sealed(extensions, seal)?;
    }
    Ok(tenant)
}

/// Upstream's `extensions`, each `settings.db_password` replaced by `db_password_sealed`: only a
/// replicator holding `DB_ENC_KEY` can read it. Without a sealing key a password is refused.
fn extensions_sealed(extensions: &Value, seal: Option<&dyn Fn(&str) -> String>) -> Result<Vec<Value>, Invalid> {
    let mut list = extensions
        .as_array()
        .cloned()
        .ok_or_else(|| Invalid("extensions must be a list".into()))?;
    for extension in &mut list {
        let Some(settings) = extension.get_mut("settings").and_then(Value::as_object_mut) else {
            continue;
        };
        settings.remove(SEALED_PASSWORD);
        let password = match settings.remove("db_password") {
            None | Some(Value::Null) => continue,
            Some(Value::String(password)) => password,
            Some(_) => return Err(Invalid("extensions[].settings.db_password must be a string".into())),
        };
        let seal = seal.ok_or_else(|| {
            Invalid("extensions[].settings.db_password: this gateway stores database passwords sealed for its replicators and has no key to seal with: set DB_ENC_PUBLIC_KEY (`sluice-replicator db-enc-public-key` prints it from the replicators' DB_ENC_KEY), or run a replicator beside the database with its own credentials (docs/deploy.md)".into())
        })?;
        settings.insert(SEALED_PASSWORD.into(), json!(seal(&password)));
    }
    Ok(list)
}

/// The secret the deployment's replicator signs a tenant's internal requests with when it serves
/// the tenant's database (see [`Tenant::database`]): derived from the deployment's internal
/// secret, so it reaches this tenant's hubs only.
pub fn served_tenant_secret(internal_secret: &str, tenant: &str) -> String {
    crate::signature::derive(
        internal_secret,
        &format!("sluice deployment replicator, tenant {tenant}"),
    )
}

/// Where a sealed database password is kept in an extension's settings.
pub const SEALED_PASSWORD: &str = "db_password_sealed";

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Tenant {
    /// The keys its users' tokens are verified with; `Err` says what is wrong with them.
    pub fn keys(&self) -> Result<Keys, String> {
        let keys = Keys::new(self.jwt_secret.clone().unwrap_or_default().into_bytes())
            .allowing_roles(&self.limits.allowed_roles);
        match &self.jwt_jwks {
            Some(jwks) => keys
                .with_jwks(&jwks.to_string())
                .map_err(|e| format!("jwt_jwks is not valid: {e}")),
            None => Ok(keys),
        }
    }

    /// Its database, when the deployment's replicator serves it: the settings of its
    /// `postgres_cdc_rls` extension (`db_host`, ..., the password sealed), unless the tenant names
    /// a replicator of its own.
    pub fn database(&self) -> Option<&Map<String, Value>> {
        if self.replicator_url.is_some() {
            return None;
        }
        self.extensions
            .iter()
            .filter(|e| {
                e.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "postgres_cdc_rls")
            })
            .filter_map(|e| e.get("settings").and_then(Value::as_object))
            .find(|settings| {
                settings
                    .get("db_host")
                    .is_some_and(|h| h.as_str().is_some_and(|h| !h.is_empty()))
            })
    }

    /// Whether a replicator serves this tenant's database for it alone (its own, or the
    /// deployment's under `/tenants/{id}`): the one to tell when the tenant is deleted, reloaded
    /// or shut down. Otherwise it shares the deployment's database.
    pub fn has_own_database(&self) -> bool {
        self.replicator_url.is_some() || self.database().is_some()
    }

    /// What `GET` shows (upstream's `tenant.json`): no JWT secret, no JWKS, no password.
    pub fn view(&self) -> Value {
        let mut view = Map::new();
        view.insert("id".into(), json!(self.external_id));
        view.insert("external_id".into(), json!(self.external_id));
        view.insert("name".into(), json!(self.name));
        if let Value::Object(limits) = serde_json::to_value(&self.limits).expect("limits serialize") {
            view.extend(limits);
        }
        view.insert("suspend".into(), json!(self.suspend));
        view.insert("replicator_url".into(), json!(self.replicator_url));
        view.insert("inserted_at".into(), json!(self.inserted_at));
        let mut extensions = self.extensions.clone();
        for settings in extensions
            .iter_mut()
            .filter_map(|e| e.get_mut("settings").and_then(Value::as_object_mut))
        {
            settings.remove(SEALED_PASSWORD);
        }
        view.insert("extensions".into(), json!(extensions));
        Value::Object(view)
    }
}

/// How hosts name tenants: `TENANT_HOSTS` (`{"127.0.0.1": "dev", "*.workers.dev": "dev"}`: exact
/// host names, or `*.` + a suffix), else the host's first DNS label (upstream's rule), and
/// `DEFAULT_TENANT` for a label that is no tenant.
#[derive(Debug, Default)]
pub struct Hosts {
    exact: BTreeMap<String, String>,
    /// (".suffix", tenant), longest suffix first.
    suffixes: Vec<(String, String)>,
    pub default: Option<String>,
}

/// The tenant a host names.
#[derive(Debug, PartialEq)]
pub enum Named {
    /// Mapped by `TENANT_HOSTS`.
    Mapped(String),
    /// Only the first DNS label: a tenant if one has that id, else `DEFAULT_TENANT` if set.
    Label(String),
}

impl Hosts {
    /// From `TENANT_HOSTS` and `DEFAULT_TENANT`; `Err` says what to fix.
    pub fn parse(mapping: Option<&str>, default: Option<&str>) -> Result<Hosts, String> {
        let mut hosts = Hosts {
            default: default.map(str::trim).filter(|d| !d.is_empty()).map(str::to_string),
            ..Hosts::default()
        };
        let Some(mapping) = mapping.filter(|m| !m.trim().is_empty()) else {
            return Ok(hosts);
        };
        let doc: BTreeMap<String, String> = serde_json::from_str(mapping)
            .map_err(|e| format!("TENANT_HOSTS must be a JSON object of host name to tenant id: {e}"))?;
        for (host, tenant) in doc {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => hosts.suffixes.push((suffix.to_string(), tenant)),
                Some(_) => return Err(format!("TENANT_HOSTS: {host:?}: a pattern is \"*.\" and a domain")),
                None => {
                    hosts.exact.insert(host, tenant);
                }
            }
        }
        hosts
            .suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(hosts)
    }

    /// The tenant `host` (a Host header, maybe with a port) names.
    pub fn name(&self, host: &str) -> Named {
        let bare = strip_port(host).to_ascii_lowercase();
        if let Some(tenant) = self.exact.get(&bare) {
            return Named::Mapped(tenant.clone());
        }
        if let Some((_, tenant)) = self.suffixes.iter().find(|(suffix, _)| bare.ends_with(suffix.as_str())) {
            return Named::Mapped(tenant.clone());
        }
        Named::Label(crate::connect::tenant_from_host(host))
    }
}

fn strip_port(host: &str) -> &str {
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// The log line for a host whose tenant is not found: what was derived, and the two fixes.
pub fn not_found_log(host: &str, tenant: &str) -> String {
    format!(
        "TenantNotFound: the host {host:?} names tenant {tenant:?} (its first DNS label, as upstream derives it), and no tenant has that id: create it (POST /api/tenants), or map the host to a tenant (TENANT_HOSTS, e.g. {{\"{}\": \"<tenant>\"}}, or DEFAULT_TENANT)",
        strip_port(host)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: &str = "2026-11-30T12:00:00Z";

    #[test]
    fn created_with_upstreams_fields_and_shown_without_secrets() {
        let body = json!({"tenant": {
            "external_id": "acme", "name": "Acme", "jwt_secret": "s3cret", "max_concurrent_users": 500,
            "replicator_url": "https://replicator.acme.example/", "replicator_secret": "r".repeat(40),
            "private_only": true, "unknown_field": 1,
            "extensions": [{"type": "postgres_cdc_rls", "settings": {"db_host": "db", "region": "us-east-1"}}]
        }});
        let tenant = from_params(None, &body, None, NOW, None).unwrap();
        assert_eq!(tenant.limits.max_concurrent_users, 500);
        assert!(tenant.limits.private_only);
        assert_eq!(
            tenant.limits.max_events_per_second,
            Limits::default().max_events_per_second
        );
        let view = tenant.view();
        assert_eq!(view["external_id"], "acme");
        assert_eq!(view["max_concurrent_users"], 500);
        assert_eq!(view["extensions"][0]["settings"]["db_host"], "db");
        let shown = view.to_string();
        assert!(!shown.contains("s3cret") && !shown.contains("jwt_secret"), "{shown}");
        assert!(
            !shown.contains("rrrr") && !shown.contains("replicator_secret"),
            "{shown}"
        );
        assert_eq!(view["replicator_url"], "https://replicator.acme.example");
    }

    #[test]
    fn an_update_keeps_what_it_does_not_give() {
        let created = from_params(
            Some("acme"),
            &json!({"tenant": {"jwt_secret": "a", "max_events_per_second": 7}}),
            None,
            NOW,
            None,
        )
        .unwrap();
        let updated = from_params(
            Some("acme"),
            &json!({"tenant": {"suspend": true}}),
            Some(&created),
            "later",
            None,
        )
        .unwrap();
        assert!(updated.suspend);
        assert_eq!(updated.jwt_secret.as_deref(), Some("a"));
        assert_eq!(updated.limits.max_events_per_second, 7);
        assert_eq!(updated.inserted_at, NOW);
    }

    #[test]
    fn what_is_refused() {
        let refused = |id: Option<&str>, body: Value| from_params(id, &body, None, NOW, None).unwrap_err().0;
        assert!(refused(None, json!({"tenant": {"jwt_secret": "a"}})).contains("external_id is required"));
        assert!(refused(Some("a:b"), json!({"tenant": {"jwt_secret": "a"}})).contains("letters, digits"));
        assert!(refused(Some("a"), json!({"tenant": {}})).contains("either jwt_secret or jwt_jwks"));
        assert!(refused(Some("a"), json!({"tenant": {"jwt_jwks": {"keys": "no"}}})).contains("jwt_jwks"));
        assert!(refused(
            Some("a"),
            json!({"tenant": {"jwt_secret": "a", "max_concurrent_users": "many"}})
        )
        .contains("limit"));
        assert!(
            refused(Some("a"), json!({"tenant": {"jwt_secret": "a", "allowed_roles": []}}))
                .contains("allowed_roles must list at least one role")
        );
        let reader = from_params(
            Some("a"),
            &json!({"tenant": {"jwt_secret": "a", "allowed_roles": ["reader"]}}),
            None,
            NOW,
            None,
        )
        .unwrap();
        assert_eq!(reader.limits.allowed_roles, ["reader"]);
        let anon = crate::jwt::sign_hs256(
            json!({"role": "anon", "exp": 9_999_999_999_i64})
                .as_object()
                .unwrap()
                .clone(),
            b"a",
        );
        assert!(reader.keys().unwrap().verify(&anon, 0).is_err());
        assert!(refused(
            Some("a"),
            json!({"tenant": {"jwt_secret": "a", "extensions": [{"settings": {"db_password": "pw"}}]}})
        )
        .contains("db_password"));
        assert!(refused(Some("a"), json!({"jwt_secret": "a"})).contains("{\"tenant\""));
        let secret = "s".repeat(32);
        assert!(refused(Some("a"), json!({"tenant": {"jwt_secret": "a", "replicator_url": "http://10.0.0.5:9187", "replicator_secret": secret}})).contains("loopback"));
        assert!(refused(
            Some("a"),
            json!({"tenant": {"jwt_secret": "a", "replicator_url": "https://r.example.com"}})
        )
        .contains("go together"));
        assert!(refused(Some("a"), json!({"tenant": {"jwt_secret": "a", "replicator_url": "https://r.example.com", "replicator_secret": "short"}})).contains("32"));
    }

    #[test]
    fn database_passwords_are_stored_sealed_and_never_shown() {
        let body = json!({"tenant": {"external_id": "acme", "jwt_secret": "a", "extensions": [
            {"type": "postgres_cdc_rls", "settings": {"db_host": "db.acme", "db_user": "sluice", "db_password": "pw-123"}}
        ]}});
        let seal = |text: &str| format!("sealed({})", text.len());
        let tenant = from_params(None, &body, None, NOW, Some(&seal)).unwrap();
        let database = tenant.database().expect("served by the deployment's replicator");
        assert_eq!(database["db_host"], "db.acme");
        assert_eq!(database[SEALED_PASSWORD], "sealed(6)");
        assert!(database.get("db_password").is_none());
        let shown = tenant.view().to_string();
        assert!(!shown.contains("sealed(") && !shown.contains("pw-123"), "{shown}");
        assert!(shown.contains("db.acme"), "{shown}");
        // Refused where the gateway has no key to seal with.
        let refused = from_params(None, &body, None, NOW, None).unwrap_err().0;
        assert!(refused.contains("DB_ENC_PUBLIC_KEY"), "{refused}");
        // A tenant with its own replicator has no database the deployment serves.
        let own = json!({"tenant": {"external_id": "b", "jwt_secret": "a",
            "replicator_url": "https://r.example.com", "replicator_secret": "s".repeat(32),
            "extensions": [{"settings": {"db_host": "db.b"}}]}});
        let own = from_params(None, &own, None, NOW, None).unwrap();
        assert!(own.database().is_none() && own.has_own_database());
        assert!(tenant.has_own_database());
        let shared = from_params(
            None,
            &json!({"tenant": {"external_id": "c", "jwt_secret": "a"}}),
            None,
            NOW,
            None,
        )
        .unwrap();
        assert!(!shared.has_own_database(), "it shares the deployment's database");
        assert_ne!(served_tenant_secret("x", "a"), served_tenant_secret("x", "b"));
    }

    #[test]
    fn hosts_name_tenants() {
        let hosts = Hosts::parse(
            Some(r#"{"127.0.0.1": "dev", "*.workers.dev": "prod", "*.eu.workers.dev": "eu"}"#),
            Some("dev"),
        )
        .unwrap();
        assert_eq!(hosts.name("127.0.0.1:8787"), Named::Mapped("dev".into()));
        assert_eq!(hosts.name("sluice.me.workers.dev"), Named::Mapped("prod".into()));
        assert_eq!(hosts.name("x.eu.workers.dev"), Named::Mapped("eu".into()));
        assert_eq!(hosts.name("abc.supabase.co"), Named::Label("abc".into()));
        assert_eq!(hosts.default.as_deref(), Some("dev"));
        assert!(Hosts::parse(Some("[1]"), None).is_err());
        assert!(Hosts::parse(Some(r#"{"*workers.dev": "x"}"#), None).is_err());
        assert_eq!(Hosts::parse(None, Some(" ")).unwrap().default, None);
    }

    #[test]
    fn the_not_found_line_names_the_host_the_label_and_the_fixes() {
        let line = not_found_log("127.0.0.1:4000", "127");
        assert!(line.contains("\"127.0.0.1:4000\"") && line.contains("\"127\""));
        assert!(line.contains("POST /api/tenants") && line.contains("TENANT_HOSTS") && line.contains("DEFAULT_TENANT"));
    }
}
