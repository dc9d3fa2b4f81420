//! The gateway's tenant settings: the management API's tenant bodies (created, then updated
//! with the same body over the result), `TENANT_HOSTS`-style host mappings with a request's host,
//! `TENANT_LIMITS` documents, and a connect's `x-` headers. Input: one byte (which), then for 0
//! the body (JSON); for 1 the mapping, the default tenant and the host on three lines; for 2 the
//! limits document and a tenant id on two lines; else headers as `name: value` lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_shared::connect::{tenant_from_host, x_headers, MAX_X_HEADER_BYTES};
use sluice_shared::limits::Limits;
use sluice_shared::tenants::{from_params, Hosts, SEALED_PASSWORD};

const NOW: &str = "2026-12-07T00:00:00Z";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut lines = text.splitn(3, '\n');
    let mut line = || lines.next();
    match which % 4 {
        0 => {
            let Ok(body) = serde_json::from_str::<Value>(text) else { return };
            let seal = |password: &str| format!("sealed:{}", password.len());
            let Ok(tenant) = from_params(Some("fuzzed"), &body, None, NOW, Some(&seal)) else { return };
            // No extension's settings in the view hold a password, sealed or not. (Checked by key:
            // the body's own texts may contain anything, "sealed:" included.)
            let view = tenant.view();
            for extension in view["extensions"].as_array().into_iter().flatten() {
                if let Some(settings) = extension.get("settings").and_then(Value::as_object) {
                    assert!(
                        !settings.contains_key(SEALED_PASSWORD) && !settings.contains_key("db_password"),
                        "a tenant's view never shows its database password: {view}"
                    );
                }
            }
            let _ = (tenant.keys(), tenant.database(), tenant.has_own_database());
            let _ = from_params(Some("fuzzed"), &body, Some(&tenant), NOW, Some(&seal));
        }
        1 => {
            let (mapping, default, host) = (line(), line(), line().unwrap_or(""));
            if let Ok(hosts) = Hosts::parse(mapping, default.filter(|d| !d.is_empty())) {
                let _ = hosts.name(host);
            }
            let _ = tenant_from_host(host);
        }
        2 => {
            let (doc, tenant) = (line(), line().unwrap_or("t"));
            let _ = Limits::for_tenant(doc, tenant);
        }
        _ => {
            let headers: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Ok(kept) = x_headers(&headers) {
                assert!(Value::Object(kept).to_string().len() <= MAX_X_HEADER_BYTES, "kept headers fit the bound as stored");
            }
        }
    }
});
