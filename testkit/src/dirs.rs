//! Where stacks live: one folder per machine user under the system's temporary folder (Postgres,
//! run as the `postgres` user when the tests run as root, must reach it), holding the Postgres
//! template and one folder per stack, named by the test process's id so that folders of
//! processes that are gone can be told and removed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// The kit's folder, made if missing.
pub fn base() -> Result<PathBuf, Error> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let base = std::env::temp_dir().join(format!("sluice-testkit-{uid}"));
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    // Readable and traversable by the `postgres` user; only its owner writes.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
    Ok(base)
}

/// A new, empty folder for one stack.
pub fn new_stack_dir() -> Result<PathBuf, Error> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let base = base()?;
    remove_orphans(&base);
    let dir = base.join(format!(
        "stack-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Removes the folders of stacks whose test process is gone (a watchdog that could not finish,
/// say, because it was killed with the process group).
fn remove_orphans(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("stack-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A port the OS says is free on 127.0.0.1 (for Postgres, which binds its own).
pub fn free_port() -> Result<u16, Error> {
    Ok(listener()?
        .local_addr()
        .map_err(|e| Error::Setup(format!("a free port: {e}")))?
        .port())
}

/// A socket listening on a port the OS chose on 127.0.0.1, handed to a child as it is, so no
/// other process can take the port in between.
pub fn listener() -> Result<TcpListener, Error> {
    listener_on(0)
}

/// A socket listening on 127.0.0.1:`port` (0: one the OS chooses).
pub fn listener_on(port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| Error::Setup(format!("cannot listen on 127.0.0.1:{port}: {e}")))
}
