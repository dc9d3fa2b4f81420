//! Throwaway Postgres clusters, set up as Supabase's database is where policies depend on it: the
//! roles `anon`, `authenticated` and `service_role`, the `auth` schema with `auth.uid()`,
//! `auth.role()`, `auth.jwt()` and `auth.email()`, tables of `public` granted to the API roles as
//! Supabase grants them, and the empty publication `supabase_realtime`. The replicator connects
//! as a role of its own made by `sluice-replicator setup-sql`, as on a managed database.
//!
//! `initdb` and that set-up cost seconds, so they run once per machine into a template (made
//! again when Postgres, the set-up or the replicator's `setup-sql` change); each cluster is a
//! copy of it, started on a port of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{OnParentDeath, Process, Program};
use crate::{dirs, random_hex, Error};

/// What the template holds beyond `initdb` and the replicator's role.
const SUPABASE_SQL: &str = r#"
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- As Supabase defines them: the request's claims, as PostgREST (and sluice's checks) set them.
create or replace function auth.uid() returns uuid language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;
create or replace function auth.role() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;
create or replace function auth.email() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;
create or replace function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

-- What the tests make in public is the API roles' to use (RLS decides the rows), as on Supabase.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

-- The readiness probe's table: published only while the probe joins.
create schema sluice_testkit;
create table sluice_testkit.ready (id int primary key);
grant usage on schema sluice_testkit to anon, authenticated, service_role;
grant select on sluice_testkit.ready to anon, authenticated, service_role;
alter publication supabase_realtime add table sluice_testkit.ready;
"#;

/// Server settings of every cluster: logical decoding, and durability traded for speed (the
/// cluster lives as long as a test).
const SETTINGS: &str = "
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 40
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
listen_addresses = '127.0.0.1'
log_connections = off
";

const PG_HBA: &str = "local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

/// The replicator's role in every cluster.
pub const REPLICATOR_ROLE: &str = "sluice";

/// A template's passwords (made at random when it is made).
struct Template {
    data: PathBuf,
    superuser_password: String,
    replicator_password: String,
}

/// Postgres refuses to run as root: then it runs as the `postgres` system user.
pub fn server_user() -> Result<Option<(u32, u32)>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, Error> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| Error::Setup(format!("running id: {e}")))?;
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| {
            Error::Setup("running as root, and there is no `postgres` user to run Postgres as (Postgres refuses root): create one (useradd --system postgres) or run the tests as another user".into())
        })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn run(program: &Path, args: &[&str], user: Option<(u32, u32)>, cwd: &Path) -> Result<(), Error> {
    let mut command = Command::new(program);
    command.args(args).current_dir(cwd);
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, gid);
    }
    let out = command
        .output()
        .map_err(|e| Error::Setup(format!("cannot run {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A cheap fingerprint of what makes a template (FNV-1a): a change makes a new one.
fn fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash = (hash ^ byte as u64).wrapping_mul(0x100000001b3);
        }
    }
    format!("{hash:016x}")
}

/// The template for these programs, made if missing. Several test processes may ask at once: a
/// file lock lets one make it while the others wait.
async fn template(bindir: &Path, replicator: &Path) -> Result<Template, Error> {
    let bindir = bindir.to_path_buf();
    let replicator = replicator.to_path_buf();
    tokio::task::spawn_blocking(move || template_blocking(&bindir, &replicator))
        .await
        .map_err(|e| Error::Setup(format!("making the Postgres template failed: {e}")))?
}

fn template_blocking(bindir: &Path, replicator: &Path) -> Result<Template, Error> {
    let base = dirs::base()?;
    let setup_sql = |password: &str| -> Result<String, Error> {
        let url = format!("postgres://{REPLICATOR_ROLE}:{password}@127.0.0.1/postgres");
        let out = Command::new(replicator)
            .arg("setup-sql")
            .env("SLUICE_DATABASE_URL", url)
            .env_remove("SLUICE_PUBLICATION")
            .output()
            .map_err(|e| Error::Setup(format!("cannot run {} setup-sql: {e}", replicator.display())))?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "sluice-replicator setup-sql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let key = fingerprint(&[
        &bindir.display().to_string(),
        &version,
        SUPABASE_SQL,
        SETTINGS,
        PG_HBA,
        &setup_sql("PASSWORD")?,
    ]);
    let dir = base.join(format!("template-{key}"));
    let lock_path = base.join(format!("template-{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string());
    if let (Ok(superuser_password), Ok(replicator_password)) = (read("superuser-password"), read("replicator-password"))
    {
        return Ok(Template {
            data: dir.join("data"),
            superuser_password,
            replicator_password,
        });
    }
    crate::binaries::progress(&format!(
        "making the Postgres template in {} (once per machine)",
        dir.display()
    ));
    let user = server_user()?;
    let making = base.join(format!("template-{key}.making"));
    let _ = std::fs::remove_dir_all(&making);
    std::fs::create_dir_all(&making).map_err(|e| Error::io(&making, e))?;
    chown(&making, user)?;
    let data = making.join("data");
    let superuser_password = random_hex(16);
    let replicator_password = random_hex(16);
    let pwfile = making.join("pwfile");
    std::fs::write(&pwfile, &superuser_password).map_err(|e| Error::io(&pwfile, e))?;
    chown(&pwfile, user)?;
    run(
        &bindir.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap_or_default(),
            "-U",
            "postgres",
            "--pwfile",
            pwfile.to_str().unwrap_or_default(),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--wal-segsize=1",
        ],
        user,
        &making,
    )?;
    let _ = std::fs::remove_file(&pwfile);
    append(&data.join("postgresql.conf"), SETTINGS)?;
    std::fs::write(data.join("pg_hba.conf"), PG_HBA).map_err(|e| Error::io(&data, e))?;
    // Set up through the Unix socket, as the superuser, with a server of the template's own.
    let socket_dir = making.clone();
    let mut server = Command::new(bindir.join("postgres"));
    server
        .args([
            "-D",
            data.to_str().unwrap_or_default(),
            "-k",
            socket_dir.to_str().unwrap_or_default(),
            "-c",
            "listen_addresses=",
        ])
        .current_dir(&making)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(&mut server, uid);
        std::os::unix::process::CommandExt::gid(&mut server, gid);
    }
    let mut server = server
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot start Postgres: {e}")))?;
    let sql = format!("{}\n{SUPABASE_SQL}", setup_sql(&replicator_password)?);
    let result = set_up_blocking(&socket_dir, &sql);
    // SAFETY: kill(2) on our own child. SIGINT: a fast shutdown, which writes a clean checkpoint.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGINT) };
    let _ = server.wait();
    result?;
    for (name, value) in [
        ("superuser-password", &superuser_password),
        ("replicator-password", &replicator_password),
    ] {
        let path = making.join(name);
        std::fs::write(&path, value).map_err(|e| Error::io(&path, e))?;
    }
    std::fs::rename(&making, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok(Template {
        data: dir.join("data"),
        superuser_password,
        replicator_password,
    })
}

/// Runs `sql` as the superuser through the Unix socket in `socket_dir`, once the server there
/// accepts connections (it was just started).
fn set_up_blocking(socket_dir: &Path, sql: &str) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(format!("cannot make a runtime: {e}")))?;
    runtime.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config.host_path(socket_dir).user("postgres").dbname("postgres");
        let mut tries = 0;
        let client = loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    break client;
                }
                Err(_) if tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(Error::Setup(format!(
                        "the template's Postgres did not accept connections within 10 s: {e}"
                    )))
                }
            }
        };
        client.batch_execute(sql).await.map_err(|e| {
            Error::Setup(format!(
                "setting up the template failed: {}",
                crate::error::postgres_text(&e)
            ))
        })
    })
}

fn append(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// A running throwaway cluster.
pub struct Cluster {
    pub process: Process,
    /// The superuser over loopback TCP.
    pub url: String,
    /// The replicator's own role over loopback TCP.
    pub replicator_url: String,
}

/// A throwaway Postgres alone, set up as a stack's is (the crate's documentation says how), for
/// a test that wants a database of its own, e.g. to hand to
/// [`crate::Sluice::with_postgres_connection`]. Dropping it stops it and deletes its folder.
pub struct Database {
    cluster: Option<Cluster>,
    dir: PathBuf,
    watchdog: crate::process::Watchdog,
}

impl Database {
    /// Starts one (the first start in a process finds Postgres and the replicator, whose
    /// `setup-sql` prepares the template).
    pub async fn start() -> Result<Database, Error> {
        let binaries = crate::binaries::find().await?;
        let dir = dirs::new_stack_dir()?;
        let watchdog = crate::process::Watchdog::start()?;
        watchdog.watch_dir(&dir);
        let mut database = Database {
            cluster: None,
            dir,
            watchdog,
        };
        let cluster = start(&database.dir, &binaries.postgres, &binaries.replicator, true).await?;
        database.watchdog.watch_postgres(&cluster.process);
        database.cluster = Some(cluster);
        Ok(database)
    }

    /// Its superuser over loopback: `postgres://postgres:<password>@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> &str {
        self.cluster.as_ref().map(|c| c.url.as_str()).unwrap_or_default()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.process.stop_blocking(libc::SIGQUIT, Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.watchdog.dismiss();
    }
}

/// Copies the template into `dir` and starts it on a free port.
pub async fn start(dir: &Path, bindir: &Path, replicator: &Path, echo: bool) -> Result<Cluster, Error> {
    let template = template(bindir, replicator).await?;
    let user = server_user()?;
    let data = dir.join("pgdata");
    let copy = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&template.data)
        .arg(&data)
        .output()
        .map_err(|e| Error::Setup(format!("cannot run cp: {e}")))?;
    if !copy.status.success() {
        return Err(Error::Setup(format!(
            "copying the Postgres template failed: {}",
            String::from_utf8_lossy(&copy.stderr)
        )));
    }
    // A port taken between its choice and Postgres's bind makes Postgres exit: choose again.
    let mut last = None;
    for _ in 0..5 {
        let port = dirs::free_port()?;
        let process = Program {
            name: "postgres",
            path: bindir.join("postgres"),
            args: [
                "-D",
                data.to_str().unwrap_or_default(),
                "-p",
                &port.to_string(),
                "-k",
                data.to_str().unwrap_or_default(),
            ]
            .iter()
            .map(Into::into)
            .collect(),
            env: vec![],
            cwd: data.clone(),
            user,
            on_parent_death: OnParentDeath::Quit,
            fds: vec![],
            echo,
        }
        .start()?;
        let ready = tokio::select! {
            _ = process.line(|l| l.contains("ready to accept connections")) => true,
            _ = process.exited() => false,
        };
        if ready {
            return Ok(Cluster {
                url: format!(
                    "postgres://postgres:{}@127.0.0.1:{port}/postgres",
                    template.superuser_password
                ),
                replicator_url: format!(
                    "postgres://{REPLICATOR_ROLE}:{}@127.0.0.1:{port}/postgres",
                    template.replicator_password
                ),
                process,
            });
        }
        let log = process.log_tail(20);
        if !log.contains("Address already in use") {
            return Err(process.exited_error("before it accepted connections"));
        }
        last = Some(process.exited_error("before it accepted connections"));
    }
    Err(last.expect("tried at least once"))
}
