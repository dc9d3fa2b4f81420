//! [`Sluice`]: what to start. The names are those of the testcontainers module for the
//! `supabase/realtime` image, so moving a test over is a rename; sluice's own settings follow.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sluice_shared::limits::Limits;

/// The JWT secret of Supabase's local development stack.
pub const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// The tenant of upstream's self-hosted set-up and of the testcontainers module.
pub const DEFAULT_TENANT_ID: &str = "realtime-dev";

/// The settings of a stack to start: `Sluice::default()`, options, then [`Sluice::start`].
///
/// ```no_run
/// # async fn example() -> Result<(), sluice_testkit::Error> {
/// let sluice = sluice_testkit::Sluice::default()
///     .with_jwt_secret("a-secret-of-at-least-32-characters-long")
///     .with_tenant_id("realtime-dev")
///     .start()
///     .await?;
/// println!("{} {}", sluice.url(), sluice.anon_key());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Sluice {
    pub(crate) postgres_connection: Option<String>,
    pub(crate) db: DbParts,
    pub(crate) jwt_secret: String,
    pub(crate) api_jwt_secret: Option<String>,
    pub(crate) jwks: Option<Value>,
    pub(crate) env: BTreeMap<String, String>,
    /// Upstream's settings that mean nothing to sluice, passed to the replicator, which logs why.
    pub(crate) upstream_notes: BTreeMap<&'static str, String>,
    pub(crate) slot_name: Option<String>,
    pub(crate) tenant_id: String,
    pub(crate) limits: Option<Limits>,
    pub(crate) private_only: Option<bool>,
    pub(crate) log_level: String,
    pub(crate) startup_timeout: Duration,
    pub(crate) port: Option<u16>,
}

/// Upstream's `DB_*` settings, an existing database named in parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct DbParts {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for Sluice {
    fn default() -> Sluice {
        Sluice {
            postgres_connection: None,
            db: DbParts::default(),
            jwt_secret: DEFAULT_JWT_SECRET.into(),
            api_jwt_secret: None,
            jwks: None,
            env: BTreeMap::new(),
            upstream_notes: BTreeMap::new(),
            slot_name: None,
            tenant_id: DEFAULT_TENANT_ID.into(),
            limits: None,
            private_only: None,
            log_level: "info".into(),
            startup_timeout: Duration::from_secs(60),
            port: None,
        }
    }
}

impl Sluice {
    /// Streams from this existing database (a libpq URL or `key=value` string) instead of a
    /// throwaway cluster. The database needs `wal_level = logical`; the kit creates nothing in it
    /// (the replicator installs its `sluice` schema, as in production). Unless
    /// [`Sluice::with_slot_name`] is given, the slot is named for this stack
    /// (`sluice_testkit_<pid>_<n>`) so parallel tests do not share one, and it is dropped when the
    /// stack stops. Takes precedence over the `with_db_*` parts.
    ///
    /// Default: a throwaway cluster (see the crate's documentation).
    pub fn with_postgres_connection(mut self, url: impl Into<String>) -> Self {
        self.postgres_connection = Some(url.into());
        self
    }

    /// The existing database's host (upstream's `DB_HOST`); setting any `with_db_*` part means an
    /// existing database, as [`Sluice::with_postgres_connection`] does. Default: none (a
    /// throwaway cluster).
    pub fn with_db_host(mut self, host: impl Into<String>) -> Self {
        self.db.host = Some(host.into());
        self
    }

    /// The existing database's port (`DB_PORT`). Default: 5432.
    pub fn with_db_port(mut self, port: u16) -> Self {
        self.db.port = Some(port);
        self
    }

    /// The existing database's name (`DB_NAME`). Default: `postgres`.
    pub fn with_db_name(mut self, name: impl Into<String>) -> Self {
        self.db.name = Some(name.into());
        self
    }

    /// The role to connect to the existing database as (`DB_USER`). Default: `supabase_admin`, as
    /// upstream.
    pub fn with_db_user(mut self, user: impl Into<String>) -> Self {
        self.db.user = Some(user.into());
        self
    }

    /// The existing database's password (`DB_PASSWORD`). Default: none.
    pub fn with_db_password(mut self, password: impl Into<String>) -> Self {
        self.db.password = Some(password.into());
        self
    }

    /// The secret tokens are signed and verified with (HS256; the gateway's `JWT_SECRET`).
    /// Default: [`DEFAULT_JWT_SECRET`], Supabase's local development secret.
    pub fn with_jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = secret.into();
        self
    }

    /// The secret of admin tokens for the management API (`/api/tenants`; the gateway's
    /// `API_JWT_SECRET`). Default: none, and the API answers 403.
    pub fn with_api_jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.api_jwt_secret = Some(secret.into());
        self
    }

    /// A JWKS document (`{"keys": [...]}`) for asymmetric tokens, picked by `kid` (the gateway's
    /// `JWT_JWKS`), beside the secret. Default: none.
    pub fn with_jwks(mut self, jwks: Value) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// An environment variable for both sluice processes, the gateway and the replicator (each
    /// reads the names it knows: docs/deploy.md of the repository). Set after the kit's own, so
    /// it can override them, e.g. `CHANNEL_ERROR_BACKOFF_MS` for refused joins answered quickly.
    /// Default: none.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The replication slot's name (upstream's `SLOT_NAME`, lowercased). Default:
    /// `sluice_changes` on a throwaway cluster, `sluice_testkit_<pid>_<n>` on an existing database.
    pub fn with_slot_name(mut self, name: impl Into<String>) -> Self {
        self.slot_name = Some(name.into());
        self
    }

    /// Accepted for compatibility (upstream's `TEMPORARY_SLOT`); sluice keeps a permanent slot,
    /// so that nothing is lost across restarts, and the replicator logs that at start. The kit
    /// drops the slot of an existing database when the stack stops. Default: unset.
    pub fn with_temporary_slot(mut self, temporary: bool) -> Self {
        self.upstream_notes.insert("TEMPORARY_SLOT", temporary.to_string());
        self
    }

    /// Accepted for compatibility (upstream's `REGION`): the gateway serves every client where it
    /// runs; the replicator logs that the setting changes nothing. Default: unset.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.upstream_notes.insert("REGION", region.into());
        self
    }

    /// Accepted for compatibility (upstream's `SECURE_CHANNELS`): sluice always verifies tokens,
    /// at connect and at each join; the replicator logs that. Default: unset.
    pub fn with_secure_channels(mut self, secure: bool) -> Self {
        self.upstream_notes.insert("SECURE_CHANNELS", secure.to_string());
        self
    }

    /// Accepted for compatibility (upstream's `SECRET_KEY_BASE`, Phoenix's): sluice signs no
    /// sessions; the replicator logs that. Default: unset.
    pub fn with_secret_key_base(mut self, secret: impl Into<String>) -> Self {
        self.upstream_notes.insert("SECRET_KEY_BASE", secret.into());
        self
    }

    /// The tenant [`crate::Stack::url`] reaches, whatever the host (the gateway's
    /// `DEFAULT_TENANT`): its hubs, limits and metrics go by this id. Default:
    /// [`DEFAULT_TENANT_ID`].
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = tenant_id.into();
        self
    }

    /// The tenant's limits (upstream's names and defaults: [`Limits::default`]), e.g.
    /// `Limits { max_events_per_second: 10, ..Limits::default() }`. Default: upstream's.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Whether the tenant refuses joins of public channels (Realtime Authorization only).
    /// Default: false.
    pub fn with_private_only(mut self, private_only: bool) -> Self {
        self.private_only = Some(private_only);
        self
    }

    /// How much the stack logs: `error`, `warning`, `info` or `debug` (the replicator's level;
    /// `debug` also makes workerd verbose). Its lines are printed with the output of the test
    /// that started it, which the test harness shows when the test fails. Default: `info`.
    pub fn with_log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// The gateway's port on 127.0.0.1 (what [`crate::Stack::url`] names); the start fails if it
    /// is taken. Default: one the OS chooses, so stacks never collide.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// How long [`Sluice::start`] waits for the stack to be ready, not counting a first build.
    /// Default: 60 s.
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// The database to stream from when it is an existing one: the connection, else upstream's
    /// parts with upstream's defaults (as the replicator reads `DB_*`).
    pub(crate) fn existing_database(&self) -> Option<String> {
        if let Some(url) = &self.postgres_connection {
            return Some(url.clone());
        }
        let host = self.db.host.as_ref()?;
        let quoted = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut parts = vec![
            format!("host={}", quoted(host)),
            format!("port={}", self.db.port.unwrap_or(5432)),
            format!("dbname={}", quoted(self.db.name.as_deref().unwrap_or("postgres"))),
            format!("user={}", quoted(self.db.user.as_deref().unwrap_or("supabase_admin"))),
        ];
        if let Some(password) = &self.db.password {
            parts.push(format!("password={}", quoted(password)));
        }
        Some(parts.join(" "))
    }

    /// `RUST_LOG` for the replicator.
    pub(crate) fn replicator_log_filter(&self) -> Result<&'static str, crate::Error> {
        match self.log_level.to_ascii_lowercase().as_str() {
            "error" => Ok("error"),
            "warning" | "warn" => Ok("warn"),
            "info" => Ok("info"),
            "debug" => Ok("debug"),
            other => Err(crate::Error::Options(format!(
                "with_log_level({other:?}): use \"error\", \"warning\", \"info\" or \"debug\""
            ))),
        }
    }

    /// Whether the tenant takes private channels only (the readiness probe's join must be one).
    pub(crate) fn is_private_only(&self) -> bool {
        self.private_only
            .unwrap_or_else(|| self.limits.as_ref().is_some_and(|l| l.private_only))
    }

    /// `TENANT_LIMITS` for the gateway, if any limit or setting was given.
    pub(crate) fn tenant_limits(&self) -> Option<String> {
        if self.limits.is_none() && self.private_only.is_none() {
            return None;
        }
        let mut limits = self.limits.clone().unwrap_or_default();
        if let Some(private_only) = self.private_only {
            limits.private_only = private_only;
        }
        let mut doc = serde_json::Map::new();
        doc.insert(
            self.tenant_id.clone(),
            serde_json::to_value(limits).expect("limits serialize"),
        );
        Some(Value::Object(doc).to_string())
    }
}
