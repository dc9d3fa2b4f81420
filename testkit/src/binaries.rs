//! The programs a stack runs, found once per test process: each from its environment variable
//! when set (prebuilt, e.g. cached by CI), else from the sluice checkout this crate was built
//! from (a `path` or `git` dependency has the whole repository), built or installed there when
//! missing or older than its sources. What takes minutes says so on stderr, with the build's own
//! progress; what cannot be had is an error that says how to get it.
//!
//! | program | variable | otherwise |
//! |---|---|---|
//! | the replicator | `SLUICE_REPLICATOR_BIN` | `cargo build -p sluice-replicator` (target folder `target/testkit`) |
//! | the gateway worker (folder with `index.js`, `index_bg.wasm`) | `SLUICE_GATEWAY_BUILD` | `gateway-worker/build`, rebuilt by `scripts/build-worker` when older than its sources |
//! | workerd | `SLUICE_WORKERD_BIN` | `node_modules/workerd/bin/workerd` (npm, through `scripts/bootstrap`) |
//! | Postgres (`initdb`, `postgres`) | `PG_BINDIR` | the newest `/usr/lib/postgresql/N/bin`, else `pg_config --bindir` |

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::OnceCell;

use crate::Error;

/// Where everything a stack runs is.
#[derive(Debug)]
pub struct Binaries {
    pub replicator: PathBuf,
    pub workerd: PathBuf,
    /// Folder of the built worker: `index.js` and `index_bg.wasm`.
    pub gateway_build: PathBuf,
    /// The self-hosted gateway's workerd configuration.
    pub gateway_config: PathBuf,
    /// Folder holding `initdb` and `postgres`.
    pub postgres: PathBuf,
}

/// The sluice checkout this crate belongs to.
pub fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the repository")
        .to_path_buf()
}

/// Every program, found (and built or installed if needed) once per process.
pub async fn find() -> Result<Arc<Binaries>, Error> {
    static FOUND: OnceCell<Arc<Binaries>> = OnceCell::const_new();
    FOUND
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(find_blocking)
                .await
                .map_err(|e| Error::Setup(format!("finding the programs failed: {e}")))?
                .map(Arc::new)
        })
        .await
        .cloned()
}

fn find_blocking() -> Result<Binaries, Error> {
    let root = source_root();
    let postgres = postgres_bindir()?;
    let gateway_build = match env_path("SLUICE_GATEWAY_BUILD") {
        Some(dir) => require(dir, &["index.js", "index_bg.wasm"], "SLUICE_GATEWAY_BUILD")?,
        None => gateway_build(&root)?,
    };
    let workerd = match env_path("SLUICE_WORKERD_BIN") {
        Some(path) => require_file(path, "SLUICE_WORKERD_BIN")?,
        None => workerd(&root)?,
    };
    let replicator = match env_path("SLUICE_REPLICATOR_BIN") {
        Some(path) => require_file(path, "SLUICE_REPLICATOR_BIN")?,
        None => replicator(&root)?,
    };
    let gateway_config = root.join("deploy/self-hosted/gateway.capnp");
    if !gateway_config.is_file() {
        return Err(Error::Setup(format!(
            "the gateway's configuration {} is missing: the sluice checkout at {} is incomplete",
            gateway_config.display(),
            root.display()
        )));
    }
    Ok(Binaries {
        replicator,
        workerd,
        gateway_build,
        gateway_config,
        postgres,
    })
}

/// The path in variable `name`, absolute (the stack's processes run in folders of their own).
fn env_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(name).filter(|v| !v.is_empty())?);
    Some(std::path::absolute(&path).unwrap_or(path))
}

fn require_file(path: PathBuf, variable: &str) -> Result<PathBuf, Error> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "{variable}={} is not a file: point it at the program, or unset it to have it built",
            path.display()
        )))
    }
}

fn require(dir: PathBuf, files: &[&str], variable: &str) -> Result<PathBuf, Error> {
    match files.iter().find(|f| !dir.join(f).is_file()) {
        None => Ok(dir),
        Some(missing) => Err(Error::Setup(format!(
            "{variable}={} has no {missing}: point it at the folder scripts/build-worker fills (gateway-worker/build), or unset it to have it built",
            dir.display()
        ))),
    }
}

/// A progress line on the process's stderr itself: the test harness does not hold it back, so
/// a first start that builds for minutes says what it is doing.
pub fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "sluice-testkit: {line}");
}

/// Runs a build step. Its output is shown (prefixed) once it shows work being done, so a step
/// that has nothing to do stays silent.
fn run_step(what: &str, mut command: Command, busy: impl Fn(&str) -> bool) -> Result<(), Error> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| Error::Setup(format!("{what}: cannot run {:?}: {e}", command.get_program())))?;
    let stdout = child.stdout.take().expect("piped");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let relay = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        })
    };
    let mut announced = false;
    for line in BufReader::new(child.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        if !announced && busy(&line) {
            announced = true;
            progress(&format!(
                "{what} (first time, or after its sources changed: this can take minutes)"
            ));
        }
        if announced {
            progress(&format!("  {line}"));
        }
        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    let status = child.wait().map_err(|e| Error::Setup(format!("{what}: {e}")))?;
    let _ = relay.join();
    if !status.success() {
        let output = lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        return Err(Error::Setup(format!("{what} failed ({status}):\n{output}")));
    }
    if announced {
        progress(&format!("{what}: done"));
    }
    Ok(())
}

/// The replicator built from the checkout (a no-op when it is up to date). Its own target folder:
/// the `cargo test` that runs us may hold the lock of the workspace's.
fn replicator(root: &Path) -> Result<PathBuf, Error> {
    let target = root.join("target/testkit");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "-p", "sluice-replicator", "--target-dir"])
        .arg(&target);
    run_step("building the replicator", command, |line| {
        line.trim_start().starts_with("Compiling")
    })?;
    Ok(target.join("debug/sluice-replicator"))
}

/// The newest modification time under `paths` (files, or folders walked).
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(Some(modified));
        }
    }
    newest
}

/// The tools `scripts/build-worker` needs, and workerd, installed by `scripts/bootstrap` (which
/// skips what is there; `SLUICE_BUILD_ONLY`: no system packages).
fn bootstrap(root: &Path) -> Result<(), Error> {
    let mut command = Command::new(root.join("scripts/bootstrap"));
    command.current_dir(root).env("SLUICE_BUILD_ONLY", "1");
    run_step("installing the build tools (scripts/bootstrap)", command, |line| {
        line.starts_with("==> installing") || line.starts_with("==> adding")
    })
}

fn gateway_build(root: &Path) -> Result<PathBuf, Error> {
    let build = root.join("gateway-worker/build");
    let wasm = build.join("index_bg.wasm");
    let built = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let sources = newest(&[
        root.join("gateway-worker/src"),
        root.join("gateway-worker/inspector"),
        root.join("gateway-worker/Cargo.toml"),
        root.join("shared/src"),
        root.join("shared/Cargo.toml"),
        root.join("Cargo.lock"),
    ]);
    if built.is_some() && built >= sources {
        return Ok(build);
    }
    bootstrap(root)?;
    let command = Command::new(root.join("scripts/build-worker"));
    run_step("building the gateway worker (scripts/build-worker)", command, |_| true)?;
    require(build, &["index.js", "index_bg.wasm"], "the worker build")
}

fn workerd(root: &Path) -> Result<PathBuf, Error> {
    let path = root.join("node_modules/workerd/bin/workerd");
    if !path.is_file() {
        bootstrap(root)?;
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Setup(format!(
            "workerd is missing at {} after scripts/bootstrap: run `npm install` in {} (it needs Node.js and npm), or set SLUICE_WORKERD_BIN",
            path.display(),
            root.display()
        )))
    }
}

/// `PG_BINDIR`, else the newest Debian/Ubuntu server package, else what `pg_config` says.
pub fn postgres_bindir() -> Result<PathBuf, Error> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = env_path("PG_BINDIR") {
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(Error::Setup(format!(
                "PG_BINDIR={} holds no initdb and postgres",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.into_iter().rev().find(|(_, dir)| has_server(dir)) {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    Err(Error::Setup(
        "Postgres's server programs (initdb, postgres; version 14 or later) were not found: install them \
         (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16) or set PG_BINDIR to the folder that holds them"
            .into(),
    ))
}
