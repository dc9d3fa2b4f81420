//! Typed configuration from environment variables. Every problem is reported at start with the
//! variable's name and what a valid value looks like.

use std::net::SocketAddr;

pub mod upstream;

use crate::conninfo::ConnInfo;

#[derive(Clone, Debug)]
pub struct Config {
    /// `SLUICE_DATABASE_URL`: the Postgres the replicator serves, as a libpq connection string or
    /// URL, TLS options included (`sslmode`, `sslrootcert`, ...; see [`crate::conninfo`]).
    pub database: ConnInfo,
    /// `SLUICE_HTTP_ADDR`: where `/healthz`, `/metrics` and the internal API are served (default
    /// 127.0.0.1:9187). Off loopback only with TLS.
    pub http_addr: SocketAddr,
    /// `SLUICE_METRICS_JWT_SECRET` (upstream's `METRICS_JWT_SECRET`): `/metrics` answers a
    /// bearer JWT signed with it. Unset, `/metrics` is open on loopback and refused elsewhere.
    pub metrics_secret: Option<String>,
    /// `SLUICE_TLS_CERT` and `SLUICE_TLS_KEY`: PEM files; when set, the server speaks HTTPS.
    pub tls: Option<(String, String)>,
    /// `SLUICE_GATEWAY_CA`: a PEM file of CA certificates the gateway's certificate is verified
    /// against, besides the public roots (a self-hosted gateway with a private CA).
    pub gateway_ca: Option<String>,
    /// `SLUICE_PUBLICATION`: the publication whose tables are streamed (default
    /// `supabase_realtime`, as Supabase); created empty if missing.
    pub publication: String,
    /// `SLUICE_SLOT`: the persistent logical replication slot (default `sluice_changes`).
    pub slot: String,
    /// `SLUICE_INTERNAL_SECRET`: the bearer token hubs call the replicator with (required, at least
    /// 32 characters; the gateway has the same value).
    pub internal_secret: String,
    /// `SLUICE_GATEWAY_URL`: the gateway Worker that changes are pushed to (required), e.g.
    /// `https://realtime.example.com` or `http://127.0.0.1:8787`.
    pub gateway_url: String,
    /// `SLUICE_TENANT`: the tenant this replicator serves when the gateway knows it by its own
    /// `replicator_secret` (the management API); database broadcasts and the doctor's ping name
    /// it. Unset: the deployment's replicator (the gateway's `INTERNAL_SECRET`, tenant by Host).
    pub tenant: Option<String>,
    /// Registering the tenant with the gateway's management API at start (see
    /// [`crate::setup::tenant`]); set when an admin secret (`API_JWT_SECRET`) and a tenant are.
    pub registration: Option<Registration>,
    /// What sluice does differently from upstream's settings given, logged at start.
    pub notes: Vec<String>,
    /// How much WAL the slot may hold back (see [`crate::source::slot`]).
    pub slot_limits: SlotLimits,
}

/// How this replicator registers its tenant: PUT `/api/tenants/{tenant}` with an admin token.
#[derive(Clone, Debug)]
pub struct Registration {
    /// `API_JWT_SECRET`: signs the admin token (the gateway's `API_JWT_SECRET`).
    pub admin_secret: String,
    /// The tenant's users' token keys: `JWT_SECRET` (else `API_JWT_SECRET`, as upstream's seed),
    /// `API_JWT_JWKS`.
    pub jwt_secret: Option<String>,
    pub jwt_jwks: Option<String>,
    /// `SLUICE_PUBLIC_URL`: where the gateway reaches this replicator (default its
    /// `SLUICE_HTTP_ADDR`, which is loopback unless it serves HTTPS).
    pub public_url: String,
}

/// Bounds on the WAL the slot retains, in bytes of WAL (`pg_current_wal_lsn() - restart_lsn`) and
/// in time (since the oldest change not yet confirmed was committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    /// `SLUICE_SLOT_WARN_SIZE` (default 512MB): past it `/healthz` says degraded.
    pub warn_bytes: u64,
    /// `SLUICE_SLOT_WARN_AGE` in seconds (default 300): changes older than this not yet delivered
    /// also make `/healthz` say degraded.
    pub warn_age_secs: u64,
    /// `SLUICE_SLOT_MAX_SIZE` (default 2GB; `off` leaves it to the server's
    /// `max_slot_wal_keep_size`): past it the slot is recreated and subscribers told changes were
    /// lost. Lowered to 80% of `max_slot_wal_keep_size` when the server sets one.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(given: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // Sluice's own names first, then what upstream's names translate to.
        let translated = upstream::translate(&given);
        let get = |name: &str| {
            given(name)
                .filter(|v| !v.is_empty())
                .or_else(|| translated.vars.get(name).cloned())
        };
        let database_url = get("SLUICE_DATABASE_URL")
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                ConfigError(
                    "SLUICE_DATABASE_URL is not set: set it to the database to replicate, \
                 e.g. postgres://postgres@127.0.0.1:5432/postgres"
                        .into(),
                )
            })?;
        let database = ConnInfo::parse(&database_url, get).map_err(|e| {
            ConfigError(format!(
                "SLUICE_DATABASE_URL is not a valid connection string ({e}): \
                 use postgres://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=/path/ca.pem or 'host=... port=... user=... dbname=... sslmode=...'"
            ))
        })?;
        let http_addr = match get("SLUICE_HTTP_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], 9187)),
            Some(v) => v.parse().map_err(|_| {
                ConfigError(format!(
                    "SLUICE_HTTP_ADDR={v:?} is not an address: use host:port, e.g. 127.0.0.1:9187"
                ))
            })?,
        };
        let tls = match (get("SLUICE_TLS_CERT").filter(|v| !v.is_empty()), get("SLUICE_TLS_KEY").filter(|v| !v.is_empty())) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "SLUICE_TLS_CERT and SLUICE_TLS_KEY go together: set both (the certificate chain and its key, PEM) or neither".into(),
                ))
            }
        };
        if tls.is_none() && !http_addr.ip().is_loopback() {
            return Err(ConfigError(format!(
                "SLUICE_HTTP_ADDR={http_addr} is not loopback, and without TLS the internal API would travel in clear text: set SLUICE_TLS_CERT and SLUICE_TLS_KEY to serve HTTPS, or keep 127.0.0.1 and expose it through a tunnel (cloudflared; docs/deploy.md)"
            )));
        }
        let metrics_secret = get("SLUICE_METRICS_JWT_SECRET").filter(|v| !v.is_empty());
        let gateway_ca = get("SLUICE_GATEWAY_CA").filter(|v| !v.is_empty());
        let publication = Config::publication_from_lookup(&get)?;
        let slot = identifier(&get, "SLUICE_SLOT", "sluice_changes")?;
        let internal_secret = get("SLUICE_INTERNAL_SECRET").unwrap_or_default();
        if internal_secret.len() < 32 {
            return Err(ConfigError(
                "SLUICE_INTERNAL_SECRET is missing or shorter than 32 characters: set it to a long random string, the same as the gateway's INTERNAL_SECRET".into(),
            ));
        }
        let gateway_url = get("SLUICE_GATEWAY_URL")
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .filter(|v| v.starts_with("http://") || v.starts_with("https://"))
            .ok_or_else(|| {
                ConfigError(
                    "SLUICE_GATEWAY_URL is missing or not an http(s) URL: set it to the gateway Worker changes are delivered to, e.g. http://127.0.0.1:8787".into(),
                )
            })?;
        if sluice_shared::signature::cleartext_off_loopback(&gateway_url) {
            return Err(ConfigError(format!(
                "SLUICE_GATEWAY_URL={gateway_url} would carry changes in clear text: use https:// (http:// is for a gateway on this machine)"
            )));
        }
        let tenant = get("SLUICE_TENANT")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(tenant) = &tenant {
            if !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError(format!(
                    "SLUICE_TENANT={tenant:?} is not a tenant id: letters, digits, '-' and '_' only"
                )));
            }
        }
        let mut notes = translated.notes.clone();
        let registration = match (get("SLUICE_ADMIN_SECRET"), &tenant) {
            (Some(admin_secret), Some(_)) => Some(Registration {
                admin_secret,
                jwt_secret: get("SLUICE_TENANT_JWT_SECRET"),
                jwt_jwks: get("SLUICE_TENANT_JWT_JWKS"),
                public_url: get("SLUICE_PUBLIC_URL")
                    .map(|u| u.trim_end_matches('/').to_string())
                    .unwrap_or_else(|| format!("{}://{http_addr}", if tls.is_some() { "https" } else { "http" })),
            }),
            (Some(_), None) => {
                notes.push("API_JWT_SECRET is set but no tenant is named (SLUICE_TENANT, SELF_HOST_TENANT_NAME or TENANT_ID): the tenant is not registered with the gateway".into());
                None
            }
            _ => None,
        };
        let slot_limits = SlotLimits {
            warn_bytes: size(&get, "SLUICE_SLOT_WARN_SIZE", "512MB")?
                .ok_or_else(|| ConfigError("SLUICE_SLOT_WARN_SIZE cannot be off: give a size such as 512MB".into()))?,
            warn_age_secs: match get("SLUICE_SLOT_WARN_AGE").filter(|v| !v.is_empty()) {
                None => 300,
                Some(v) => v.trim_end_matches('s').parse().map_err(|_| {
                    ConfigError(format!(
                        "SLUICE_SLOT_WARN_AGE={v:?} is not a number of seconds, e.g. 300"
                    ))
                })?,
            },
            max_bytes: size(&get, "SLUICE_SLOT_MAX_SIZE", "2GB")?,
        };
        Ok(Config {
            database,
            slot_limits,
            http_addr,
            metrics_secret,
            tls,
            gateway_ca,
            publication,
            slot,
            internal_secret,
            gateway_url,
            tenant,
            registration,
            notes,
        })
    }
}

impl Config {
    /// `SLUICE_PUBLICATION` alone (what `setup-sql` needs).
    pub fn publication_from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
        identifier(get, "SLUICE_PUBLICATION", "supabase_realtime")
    }
}

/// A size in bytes: a number with an optional unit (kB, MB, GB, TB as Postgres, powers of 1024),
/// or `off` (`None`).
fn size(get: &impl Fn(&str) -> Option<String>, name: &str, default: &str) -> Result<Option<u64>, ConfigError> {
    let value = get(name)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let text = value.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let unit: u64 = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => 0,
    };
    match text[..digits].parse::<u64>() {
        Ok(n) if unit > 0 && n > 0 => Ok(Some(n.saturating_mul(unit))),
        _ => Err(ConfigError(format!(
            "{name}={value:?} is not a size: use a number with kB, MB, GB or TB, e.g. {default}, or off"
        ))),
    }
}

/// A publication or slot name: lower-case letters, digits and underscores (what slot names allow),
/// at most 63 bytes.
fn identifier(get: &impl Fn(&str) -> Option<String>, name: &str, default: &str) -> Result<String, ConfigError> {
    let value = get(name)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string());
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(ConfigError(format!(
            "{name}={value:?} is not a valid name: use lower-case letters, digits and _ (at most 63)"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[
            ("SLUICE_DATABASE_URL", "postgres://u@localhost/db"),
            ("SLUICE_INTERNAL_SECRET", SECRET),
            ("SLUICE_GATEWAY_URL", "http://127.0.0.1:8787/"),
        ])
        .unwrap();
        assert_eq!(c.gateway_url, "http://127.0.0.1:8787");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9187");
        assert_eq!(
            (c.publication.as_str(), c.slot.as_str()),
            ("supabase_realtime", "sluice_changes")
        );
        assert_eq!(
            c.slot_limits,
            SlotLimits {
                warn_bytes: 512 << 20,
                warn_age_secs: 300,
                max_bytes: Some(2 << 30)
            }
        );
    }

    #[test]
    fn slot_sizes() {
        let get = |v: &'static str| move |_: &str| Some(v.to_string());
        assert_eq!(size(&get("16MB"), "X", "1GB"), Ok(Some(16 << 20)));
        assert_eq!(size(&get("4 kB"), "X", "1GB"), Ok(Some(4096)));
        assert_eq!(size(&get("OFF"), "X", "1GB"), Ok(None));
        assert_eq!(size(&get("1000"), "X", "1GB"), Ok(Some(1000)));
        let e = size(&get("2 GiB"), "SLUICE_SLOT_MAX_SIZE", "2GB").unwrap_err();
        assert!(e.0.starts_with("SLUICE_SLOT_MAX_SIZE=\"2 GiB\" is not a size"), "{e}");
        assert!(size(&get("0MB"), "X", "1GB").is_err());
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        assert!(config(&[]).unwrap_err().0.starts_with("SLUICE_DATABASE_URL is not set"));
        assert!(config(&[("SLUICE_DATABASE_URL", "postgres://u@h/db")])
            .unwrap_err()
            .0
            .starts_with("SLUICE_INTERNAL_SECRET is missing"));
        assert!(config(&[("SLUICE_DATABASE_URL", "postgres://u@h:notaport/db")])
            .unwrap_err()
            .0
            .contains("not a valid connection string"));
        let e = config(&[
            ("SLUICE_DATABASE_URL", "postgres://u@h/db"),
            ("SLUICE_HTTP_ADDR", "nope"),
        ])
        .unwrap_err();
        assert!(e.0.contains("SLUICE_HTTP_ADDR=\"nope\""), "{e}");
        let e = config(&[
            ("SLUICE_DATABASE_URL", "postgres://u@h/db"),
            ("SLUICE_INTERNAL_SECRET", SECRET),
            ("SLUICE_SLOT", "My-Slot"),
        ])
        .unwrap_err();
        assert!(e.0.starts_with("SLUICE_SLOT=\"My-Slot\" is not a valid name"), "{e}");
        let e = config(&[
            ("SLUICE_DATABASE_URL", "postgres://u@h/db"),
            ("SLUICE_INTERNAL_SECRET", SECRET),
            ("SLUICE_GATEWAY_URL", "127.0.0.1:8787"),
        ])
        .unwrap_err();
        assert!(
            e.0.starts_with("SLUICE_GATEWAY_URL is missing or not an http(s) URL"),
            "{e}"
        );
        let base = [
            ("SLUICE_DATABASE_URL", "postgres://u@h/db"),
            ("SLUICE_INTERNAL_SECRET", SECRET),
            ("SLUICE_GATEWAY_URL", "https://realtime.example.com"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| config(&[&base[..], extra].concat());
        let e = with(&[("SLUICE_GATEWAY_URL", "http://realtime.example.com")]).unwrap_err();
        assert!(e.0.contains("would carry changes in clear text"), "{e}");
        let e = with(&[("SLUICE_HTTP_ADDR", "0.0.0.0:9187")]).unwrap_err();
        assert!(e.0.contains("is not loopback, and without TLS"), "{e}");
        let ok = with(&[
            ("SLUICE_HTTP_ADDR", "0.0.0.0:9187"),
            ("SLUICE_TLS_CERT", "/c.pem"),
            ("SLUICE_TLS_KEY", "/k.pem"),
        ])
        .unwrap();
        assert_eq!(ok.tls, Some(("/c.pem".into(), "/k.pem".into())));
        let e = with(&[("SLUICE_TLS_CERT", "/c.pem")]).unwrap_err();
        assert!(e.0.contains("go together"), "{e}");
    }
}
