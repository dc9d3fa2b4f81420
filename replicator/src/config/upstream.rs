//! Upstream's environment variable names (a compose file written for the `supabase/realtime`
//! image), read as sluice's own where those are not set: the database (`DB_HOST`, `DB_PORT`,
//! `DB_NAME`, `DB_USER`, `DB_PASSWORD`, `DB_SSL`, `DB_SSL_CA_CERT`), `SLOT_NAME`,
//! `PUBLICATIONS`, the tenant (`SELF_HOST_TENANT_NAME` or `TENANT_ID`), `METRICS_JWT_SECRET`,
//! and the secrets a replicator needs to register its tenant with the gateway (`API_JWT_SECRET`,
//! `JWT_SECRET`, `API_JWT_JWKS`). What sluice does differently (`TEMPORARY_SLOT`, `SECURE_CHANNELS`,
//! `SECRET_KEY_BASE`, `REGION`, a second publication, `PORT`, `DB_IP_VERSION`,
//! `DB_AFTER_CONNECT_QUERY`) becomes a note the replicator logs at start. `DB_ENC_KEY` opens the database passwords the gateway's API stores sealed
//! ([`crate::tenants`]).

use std::collections::HashMap;

use sluice_shared::signature;

/// Sluice's variables derived from upstream's, and the notes to log.
#[derive(Debug, Default)]
pub struct Translated {
    pub vars: HashMap<&'static str, String>,
    pub notes: Vec<String>,
}

/// What upstream's names in `get` mean for sluice.
pub fn translate(get: &impl Fn(&str) -> Option<String>) -> Translated {
    let set = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let mut out = Translated::default();
    if let Some(host) = set("DB_HOST") {
        let mut conninfo = vec![
            ("host", host),
            ("port", set("DB_PORT").unwrap_or_else(|| "5432".into())),
            ("dbname", set("DB_NAME").unwrap_or_else(|| "postgres".into())),
            ("user", set("DB_USER").unwrap_or_else(|| "supabase_admin".into())),
        ];
        if let Some(password) = get("DB_PASSWORD").filter(|p| !p.is_empty()) {
            conninfo.push(("password", password));
        }
        // Upstream's DB_SSL=true encrypts; a CA file makes libpq's rules verify the chain.
        let ssl = set("DB_SSL").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        conninfo.push(("sslmode", if ssl { "require" } else { "prefer" }.into()));
        if let Some(ca) = set("DB_SSL_CA_CERT") {
            conninfo.push(("sslrootcert", ca));
        }
        let text: Vec<String> = conninfo.iter().map(|(k, v)| format!("{k}={}", quoted(v))).collect();
        out.vars.insert("SLUICE_DATABASE_URL", text.join(" "));
    }
    if let Some(secret) = set("METRICS_JWT_SECRET") {
        out.vars.insert("SLUICE_METRICS_JWT_SECRET", secret);
    }
    if let Some(slot) = set("SLOT_NAME") {
        out.vars.insert("SLUICE_SLOT", slot.to_ascii_lowercase());
    }
    if let Some(publications) = set("PUBLICATIONS") {
        // A JSON list (`["supabase_realtime"]`) or a comma-separated one.
        let names: Vec<String> = serde_json::from_str::<Vec<String>>(&publications)
            .unwrap_or_else(|_| publications.split(',').map(|p| p.trim().to_string()).collect());
        let mut names = names.into_iter().filter(|n| !n.is_empty());
        if let Some(first) = names.next() {
            let rest: Vec<String> = names.collect();
            if !rest.is_empty() {
                out.notes.push(format!(
                    "PUBLICATIONS names {} more than {first}: sluice streams one publication, {first}; add their tables to it",
                    rest.join(", ")
                ));
            }
            out.vars.insert("SLUICE_PUBLICATION", first);
        }
    }
    if let Some(tenant) = set("SELF_HOST_TENANT_NAME").or_else(|| set("TENANT_ID")) {
        out.vars.insert("SLUICE_TENANT", tenant);
    }
    if set("TEMPORARY_SLOT").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        out.notes.push(
            "TEMPORARY_SLOT=true: sluice keeps a permanent slot instead, so that changes made while it is down are delivered when it is back (its size is bounded: SLUICE_SLOT_MAX_SIZE)".into(),
        );
    }
    if set("SECURE_CHANNELS").is_some() {
        out.notes.push(
            "SECURE_CHANNELS: sluice always verifies tokens, at connect and at each join; the setting changes nothing"
                .into(),
        );
    }
    if set("SECRET_KEY_BASE").is_some() {
        out.notes.push(
            "SECRET_KEY_BASE: upstream's Phoenix signs its sessions with it; sluice has none to sign, and the setting changes nothing".into(),
        );
    }
    if let Some(region) = set("REGION") {
        out.notes.push(format!(
            "REGION={region}: sluice's gateway serves each client from the Cloudflare location nearest to it (self-hosted: where it runs); the setting changes nothing"
        ));
    }
    if let Some(port) = set("PORT") {
        out.notes.push(format!(
            "PORT={port}: clients connect to the gateway, not to the replicator, whose internal API listens on SLUICE_HTTP_ADDR"
        ));
    }
    if set("DB_IP_VERSION").is_some() {
        out.notes.push(
            "DB_IP_VERSION: sluice tries every address DB_HOST resolves to, in order; to pick a family, set DB_HOST to an address of it".into(),
        );
    }
    if set("DB_AFTER_CONNECT_QUERY").is_some() {
        out.notes.push(
            "DB_AFTER_CONNECT_QUERY: upstream runs it on its own metadata database, which sluice does not have; it is not run".into(),
        );
    }
    // Registering the tenant: its users' tokens are signed with JWT_SECRET, or, as upstream's
    // self-hosted seed does, with API_JWT_SECRET.
    if let Some(admin) = set("API_JWT_SECRET") {
        if let Some(jwt) = set("JWT_SECRET").or_else(|| Some(admin.clone())) {
            out.vars.insert("SLUICE_TENANT_JWT_SECRET", jwt);
        }
        if let Some(jwks) = set("API_JWT_JWKS") {
            out.vars.insert("SLUICE_TENANT_JWT_JWKS", jwks);
        }
        out.vars.insert("SLUICE_ADMIN_SECRET", admin.clone());
        // The secret this replicator and the gateway sign internal requests with, when none is
        // given: derived from the admin secret and the tenant, so it is the same at every start.
        if let Some(tenant) = out.vars.get("SLUICE_TENANT").cloned().or_else(|| set("SLUICE_TENANT")) {
            let derived = signature::derive(&admin, &format!("sluice replicator secret of tenant {tenant}"));
            out.vars.insert("SLUICE_INTERNAL_SECRET", derived);
        }
    }
    out
}

/// A libpq key/value value, quoted.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate_vars(vars: &[(&str, &str)]) -> Translated {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        translate(&|name: &str| vars.get(name).cloned())
    }

    #[test]
    fn a_compose_file_for_the_realtime_image() {
        let t = translate_vars(&[
            ("DB_HOST", "db"),
            ("DB_PORT", "5433"),
            ("DB_USER", "supabase_admin"),
            ("DB_PASSWORD", "it's secret"),
            ("DB_SSL", "true"),
            ("SLOT_NAME", "Supabase_Realtime_Slot"),
            ("PUBLICATIONS", "[\"supabase_realtime\", \"other\"]"),
            ("TEMPORARY_SLOT", "true"),
            ("SECURE_CHANNELS", "true"),
            ("SELF_HOST_TENANT_NAME", "realtime-dev"),
            ("API_JWT_SECRET", "admin-secret"),
            ("PORT", "4000"),
            ("SECRET_KEY_BASE", "phoenix"),
            ("REGION", "local"),
            ("METRICS_JWT_SECRET", "metrics-secret"),
        ]);
        assert_eq!(
            t.vars["SLUICE_DATABASE_URL"],
            "host='db' port='5433' dbname='postgres' user='supabase_admin' password='it\\'s secret' sslmode='require'"
        );
        assert_eq!(t.vars["SLUICE_SLOT"], "supabase_realtime_slot");
        assert_eq!(t.vars["SLUICE_PUBLICATION"], "supabase_realtime");
        assert_eq!(t.vars["SLUICE_TENANT"], "realtime-dev");
        assert_eq!(t.vars["SLUICE_TENANT_JWT_SECRET"], "admin-secret", "as upstream's seed");
        assert_eq!(t.vars["SLUICE_INTERNAL_SECRET"].len(), 64);
        assert_eq!(t.vars["SLUICE_METRICS_JWT_SECRET"], "metrics-secret");
        assert_eq!(t.notes.len(), 6, "{:?}", t.notes);
        assert!(t
            .notes
            .iter()
            .any(|n| n.starts_with("TEMPORARY_SLOT=true: sluice keeps a permanent slot")));
    }

    #[test]
    fn nothing_of_upstreams_nothing_derived() {
        let t = translate_vars(&[("SLUICE_DATABASE_URL", "postgres://x")]);
        assert!(t.vars.is_empty() && t.notes.is_empty());
    }
}
