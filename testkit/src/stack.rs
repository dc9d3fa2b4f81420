//! Starting a stack and the running [`Stack`]: Postgres (a copy of the template, or the given
//! database), the replicator, and the gateway in workerd as self-hosted production runs it, each
//! on a port the OS chose; ready once the probe joined. Stopped in reverse order by
//! [`Stack::stop`] or by dropping it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::binaries::{self, Binaries};
use crate::process::{OnParentDeath, Process, Program, Watchdog};
use crate::{dirs, postgres, probe, random_hex, Error, Sluice};

/// A running sluice. Dropping it stops everything it started and deletes its folder;
/// [`Stack::stop`] does the same and reports what went wrong.
pub struct Stack {
    url: String,
    websocket_url: String,
    database_url: String,
    jwt_secret: String,
    tenant_id: String,
    anon_key: String,
    service_role_key: String,
    /// The slot to drop when stopping: the kit's own on an existing database.
    slot_to_drop: Option<String>,
    dir: PathBuf,
    running: Mutex<Running>,
    watchdog: Watchdog,
    stopped: bool,
}

/// The processes, in start order; emptied by stopping.
#[derive(Default)]
struct Running {
    postgres: Option<Process>,
    gateway: Option<Process>,
    replicator: Option<Process>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An API key as Supabase issues them: a role, valid for ten years.
fn api_key(role: &str, secret: &str) -> String {
    let claims =
        json!({ "iss": "sluice-testkit", "role": role, "iat": now_secs(), "exp": now_secs() + 10 * 365 * 24 * 3600 });
    sluice_shared::jwt::sign_hs256(claims.as_object().cloned().unwrap_or_default(), secret.as_bytes())
}

impl Sluice {
    /// Starts the stack and resolves once a client can join a channel with `postgres_changes`
    /// and be told it is subscribed. The first start in a process finds (and if needed builds
    /// or installs) the programs: see the crate's documentation.
    pub async fn start(self) -> Result<Stack, Error> {
        if self.jwt_secret.is_empty() {
            return Err(Error::Options(
                "with_jwt_secret(\"\"): the JWT secret must not be empty".into(),
            ));
        }
        let log_filter = self.replicator_log_filter()?;
        let binaries = binaries::find().await?;
        let started = Instant::now();
        let dir = dirs::new_stack_dir()?;
        let watchdog = Watchdog::start()?;
        watchdog.watch_dir(&dir);
        let existing = self.existing_database();
        static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);
        let own_slot = existing.is_some().then(|| {
            format!(
                "sluice_testkit_{}_{}",
                std::process::id(),
                NEXT_SLOT.fetch_add(1, Ordering::Relaxed)
            )
        });
        let mut stack = Stack {
            url: String::new(),
            websocket_url: String::new(),
            database_url: String::new(),
            jwt_secret: self.jwt_secret.clone(),
            tenant_id: self.tenant_id.clone(),
            anon_key: api_key("anon", &self.jwt_secret),
            service_role_key: api_key("service_role", &self.jwt_secret),
            slot_to_drop: if self.slot_name.is_none() {
                own_slot.clone()
            } else {
                None
            },
            dir: dir.clone(),
            running: Mutex::new(Running::default()),
            watchdog,
            stopped: false,
        };
        // From here on, an error drops `stack`, which stops what did start.
        let deadline = started + self.startup_timeout;
        let echo = true;
        let gateway_socket = dirs::listener_on(self.port.unwrap_or(0))?;
        let replicator_socket = dirs::listener()?;
        let gateway_addr = local_addr(&gateway_socket)?;
        let replicator_addr = local_addr(&replicator_socket)?;
        let internal_secret = random_hex(32);
        stack.url = format!("http://{gateway_addr}");
        stack.websocket_url = format!("ws://{gateway_addr}/realtime/v1/websocket");

        let gateway = gateway_program(
            &self,
            &binaries,
            &dir,
            &gateway_socket,
            replicator_addr,
            &internal_secret,
            echo,
        )?
        .start()?;
        stack.watchdog.watch_process(&gateway);
        stack.lock().gateway = Some(gateway);
        drop(gateway_socket);

        let (replicator_database, throwaway) = match &existing {
            Some(url) => (url.clone(), false),
            None => {
                let cluster = postgres::start(&dir, &binaries.postgres, &binaries.replicator, echo).await?;
                stack.watchdog.watch_postgres(&cluster.process);
                stack.database_url = cluster.url.clone();
                stack.lock().postgres = Some(cluster.process);
                (cluster.replicator_url, true)
            }
        };
        if let Some(url) = &existing {
            stack.database_url = url.clone();
        }
        let mut env = vec![
            ("SLUICE_DATABASE_URL".to_string(), replicator_database),
            ("SLUICE_HTTP_ADDR".into(), replicator_addr.to_string()),
            ("SLUICE_HTTP_FD".into(), "3".into()),
            ("SLUICE_INTERNAL_SECRET".into(), internal_secret.clone()),
            ("SLUICE_GATEWAY_URL".into(), stack.url.clone()),
            ("RUST_LOG".into(), log_filter.into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        if let Some(slot) = self.slot_name.clone().or(own_slot) {
            env.push(("SLOT_NAME".into(), slot));
        }
        env.extend(self.upstream_notes.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let replicator = Program {
            name: "replicator",
            path: binaries.replicator.clone(),
            args: vec![],
            env,
            cwd: dir.clone(),
            user: None,
            on_parent_death: OnParentDeath::Kill,
            fds: vec![(replicator_socket.as_raw_fd(), 3)],
            echo,
        }
        .start()?;
        stack.watchdog.watch_process(&replicator);
        stack.lock().replicator = Some(replicator);
        drop(replicator_socket);

        stack.wait_ready(replicator_addr, throwaway, self.is_private_only(), deadline).await?;
        Ok(stack)
    }
}

fn local_addr(socket: &std::net::TcpListener) -> Result<SocketAddr, Error> {
    socket
        .local_addr()
        .map_err(|e| Error::Setup(format!("a listening socket has no address: {e}")))
}

/// The gateway as `scripts/serve gateway` runs it: workerd with the self-hosted configuration,
/// its Durable Objects stored in the stack's folder, listening on the socket handed down.
fn gateway_program(
    options: &Sluice,
    binaries: &Binaries,
    dir: &Path,
    socket: &std::net::TcpListener,
    replicator: SocketAddr,
    internal_secret: &str,
    echo: bool,
) -> Result<Program, Error> {
    let storage = dir.join("gateway");
    std::fs::create_dir_all(&storage).map_err(|e| Error::io(&storage, e))?;
    let mut env = vec![
        ("JWT_SECRET".to_string(), options.jwt_secret.clone()),
        ("INTERNAL_SECRET".into(), internal_secret.to_string()),
        ("REPLICATOR_URL".into(), format!("http://{replicator}")),
        ("DEFAULT_TENANT".into(), options.tenant_id.clone()),
    ];
    if let Some(secret) = &options.api_jwt_secret {
        env.push(("API_JWT_SECRET".into(), secret.clone()));
    }
    if let Some(jwks) = &options.jwks {
        env.push(("JWT_JWKS".into(), jwks.to_string()));
    }
    if let Some(limits) = options.tenant_limits() {
        env.push(("TENANT_LIMITS".into(), limits));
    }
    env.extend(options.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        binaries.gateway_config.clone().into(),
        "--experimental".into(),
    ];
    args.extend(["--import-path".into(), binaries.gateway_build.clone().into_os_string()]);
    args.extend(["--socket-fd".into(), "http=3".into()]);
    args.extend([
        "--directory-path".into(),
        format!("storage={}", storage.display()).into(),
    ]);
    if options.log_level.eq_ignore_ascii_case("debug") {
        args.push("--verbose".into());
    }
    Ok(Program {
        name: "gateway",
        path: binaries.workerd.clone(),
        args,
        env,
        cwd: dir.to_path_buf(),
        user: None,
        on_parent_death: OnParentDeath::Kill,
        fds: vec![(socket.as_raw_fd(), 3)],
        echo,
    })
}

impl Stack {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error if a process exited during the start.
    fn check_running(&self) -> Result<(), Error> {
        let running = self.lock();
        for process in [&running.postgres, &running.replicator, &running.gateway]
            .into_iter()
            .flatten()
        {
            if process.exit_status().is_some() {
                return Err(process.exited_error("while the stack was starting"));
            }
        }
        Ok(())
    }

    async fn wait_ready(&self, replicator: SocketAddr, throwaway: bool, private: bool, deadline: Instant) -> Result<(), Error> {
        let mut last = String::from("the replicator's /healthz did not answer 200");
        loop {
            self.check_running()?;
            if Instant::now() >= deadline {
                let log = {
                    let running = self.lock();
                    [&running.replicator, &running.gateway]
                        .into_iter()
                        .flatten()
                        .map(|p| format!("[{}]\n{}", p.name, p.log_tail(20)))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                return Err(Error::Start {
                    component: "stack",
                    problem: format!("not ready in time: {last}"),
                    log,
                });
            }
            if probe::replicator_healthy(replicator).await {
                match probe::join(&self.websocket_url, &self.service_role_key, throwaway, private).await {
                    Ok(()) => break,
                    Err(problem) => last = problem,
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if throwaway {
            // The publication is the test's: empty, as promised, once the probe is done.
            let (schema, table) = probe::TABLE;
            self.sql(&format!(
                "alter publication supabase_realtime drop table {schema}.{table}"
            ))
            .await?;
        }
        Ok(())
    }

    /// The URL `createClient` of supabase-js (or sluice-client) takes: `http://127.0.0.1:PORT`.
    /// It reaches the stack's tenant.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The WebSocket endpoint: `ws://127.0.0.1:PORT/realtime/v1/websocket` (add `?apikey=...&vsn=...`).
    pub fn websocket_url(&self) -> &str {
        &self.websocket_url
    }

    /// An `anon` API key signed with the stack's JWT secret (valid for ten years).
    pub fn anon_key(&self) -> &str {
        &self.anon_key
    }

    /// A `service_role` API key signed with the stack's JWT secret (valid for ten years).
    pub fn service_role_key(&self) -> &str {
        &self.service_role_key
    }

    /// A token of exactly these claims, HS256 with the stack's JWT secret. The gateway wants
    /// `role` and `exp` (seconds since the epoch); leave one out to test a refusal.
    ///
    /// ```no_run
    /// # fn f(sluice: &sluice_testkit::Stack) {
    /// let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    /// let user = sluice.sign(serde_json::json!({ "sub": "b5a5...", "role": "authenticated", "exp": exp }));
    /// # }
    /// ```
    pub fn sign(&self, claims: Value) -> String {
        let claims = match claims {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("claims".into(), other);
                map
            }
        };
        sluice_shared::jwt::sign_hs256(claims, self.jwt_secret.as_bytes())
    }

    /// The database the replicator streams from. On a throwaway cluster: its superuser over
    /// loopback (`postgres://postgres:<password>@127.0.0.1:PORT/postgres`), so a test can create
    /// and publish tables.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The secret tokens are signed with.
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// The tenant [`Stack::url`] reaches.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// A new connection to [`Stack::database_url`]; its connection task runs on the current
    /// tokio runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client, Error> {
        let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `sql` (one or more statements, no parameters) on the database, as
    /// [`Stack::database_url`]'s role.
    pub async fn sql(&self, sql: &str) -> Result<(), Error> {
        Ok(self.client().await?.batch_execute(sql).await?)
    }

    /// Adds a table (`"public.todos"`, or `"todos"` for `public`) to the publication
    /// `supabase_realtime`, whose changes sluice streams; nothing happens if it is there already.
    /// Changes committed once this returns reach channels that join afterwards.
    pub async fn publish(&self, table: &str) -> Result<(), Error> {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let client = self.client().await?;
        // Postgres quotes the names (format's %I): nothing of the caller's is spliced into SQL.
        let statement: Option<String> = client
            .query_one(
                "select case when exists (select from pg_publication_tables
                                          where pubname = 'supabase_realtime' and schemaname = $1 and tablename = $2)
                        then null
                        else format('alter publication supabase_realtime add table %I.%I', $1::text, $2::text) end",
                &[&schema, &name],
            )
            .await?
            .get(0);
        if let Some(statement) = statement {
            client.batch_execute(&statement).await?;
        }
        Ok(())
    }

    /// The stack's folder (Postgres's data, the gateway's storage); deleted when it stops.
    #[doc(hidden)]
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The ids of the processes it started (for checks that none is left).
    #[doc(hidden)]
    pub fn process_ids(&self) -> Vec<u32> {
        let running = self.lock();
        [&running.postgres, &running.replicator, &running.gateway]
            .into_iter()
            .flatten()
            .map(|p| p.pid)
            .collect()
    }

    /// Stops everything and deletes the stack's folder; an error says what was left behind.
    pub async fn stop(mut self) -> Result<(), Error> {
        let Running {
            postgres,
            gateway,
            replicator,
        } = std::mem::take(&mut *self.lock());
        let mut problems = vec![];
        // The replicator first: it stops its stream and answers the gateway's last calls.
        if let Some(replicator) = &replicator {
            if !replicator.stop(libc::SIGTERM, Duration::from_secs(2)).await {
                problems.push("the replicator did not stop within 2 s of SIGTERM and was killed".to_string());
            }
        }
        if let Some(slot) = self.slot_to_drop.take() {
            if let Err(e) = drop_slot(&self.database_url, &slot).await {
                problems.push(format!("dropping the replication slot {slot} failed: {e}"));
            }
        }
        if let Some(gateway) = &gateway {
            // workerd drains open sockets on SIGTERM; its storage is deleted next, so nothing
            // is lost by ending it at once.
            gateway.stop(libc::SIGKILL, Duration::from_secs(2)).await;
        }
        if let Some(postgres) = &postgres {
            // Immediate shutdown: the cluster is deleted next.
            if !postgres.stop(libc::SIGQUIT, Duration::from_secs(5)).await {
                problems.push("Postgres did not stop within 5 s of SIGQUIT and was killed".to_string());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            problems.push(format!("deleting {} failed: {e}", self.dir.display()));
        }
        self.watchdog.dismiss();
        self.stopped = true;
        match problems.is_empty() {
            true => Ok(()),
            false => Err(Error::Stop(problems.join("; "))),
        }
    }
}

/// Drops the kit's slot on an existing database, once its walsender let go of it.
async fn drop_slot(database_url: &str, slot: &str) -> Result<(), Error> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for _ in 0..50 {
        let dropped = client
            .query(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
                &[&slot],
            )
            .await?;
        let left = client
            .query("select 1 from pg_replication_slots where slot_name = $1", &[&slot])
            .await?;
        if !dropped.is_empty() || left.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Stop(format!(
        "the replication slot {slot} stayed active for 5 s"
    )))
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let Running {
            postgres,
            gateway,
            replicator,
        } = std::mem::take(&mut *self.lock());
        if let Some(replicator) = &replicator {
            replicator.stop_blocking(libc::SIGTERM, Duration::from_secs(2));
        }
        if let Some(slot) = self.slot_to_drop.take() {
            // Async SQL from a synchronous drop, possibly inside a runtime: on a thread of its own.
            let url = self.database_url.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(drop_slot(&url, &slot)).ok()
            })
            .join();
        }
        if let Some(gateway) = &gateway {
            gateway.stop_blocking(libc::SIGKILL, Duration::from_secs(2));
        }
        if let Some(postgres) = &postgres {
            postgres.stop_blocking(libc::SIGQUIT, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.watchdog.dismiss();
    }
}
