//! The stack's child processes: started so that none outlives the test process, their output
//! kept (and shown by the test harness when a test fails), their exit awaited without polling.
//!
//! Three things make sure nothing is left behind, whatever ends the test process:
//! - every child is asked for Linux's parent-death signal (`PR_SET_PDEATHSIG`), so the kernel
//!   signals it the moment the test process dies, SIGKILL included. The signal follows the
//!   *thread* that forked the child, so every child is forked by one thread that lives as long
//!   as the process ([`spawn`]);
//! - a [`Watchdog`] per stack (a shell reading a pipe from the test process) sees the pipe close
//!   when the process dies without stopping its stack, ends what is still running and deletes
//!   the stack's folder;
//! - each start removes the folders of stacks whose process is gone (`crate::dirs`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Error;

/// How many of a process's last output lines are kept for error messages.
const KEPT_LINES: usize = 400;

/// What the child gets when the test process dies.
#[derive(Clone, Copy)]
pub enum OnParentDeath {
    /// Ends at once.
    Kill,
    /// Postgres: SIGQUIT is its immediate shutdown, which also ends its backends and frees its
    /// shared memory.
    Quit,
}

/// The environment every child starts from: nothing of the test process's own (a `DB_HOST` or
/// `PORT` meant for something else must not reach the replicator), except what finding programs
/// and a temporary folder need.
fn base_environment(command: &mut Command) {
    command.env_clear();
    for name in ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks `command` from the one thread that lives as long as the process (see the module's
/// documentation).
fn spawn(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("sluice-testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("a thread can be started");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// A program to start as part of a stack.
pub struct Program {
    pub name: &'static str,
    pub path: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Run as this user and group (Postgres refuses to run as root).
    pub user: Option<(u32, u32)>,
    pub on_parent_death: OnParentDeath,
    /// Descriptors handed down: (descriptor in the parent, number in the child).
    pub fds: Vec<(i32, i32)>,
    /// Whether its output lines are shown with the test's output.
    pub echo: bool,
}

/// A running (or exited) child process.
pub struct Process {
    pub name: &'static str,
    pub pid: u32,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    exited_async: tokio::sync::Notify,
    lines: Mutex<VecDeque<String>>,
    /// Incremented with every line, so waiters can tell that something new arrived.
    line_count: Mutex<u64>,
    new_line: tokio::sync::Notify,
}

impl Program {
    pub fn start(self) -> Result<Process, Error> {
        let mut command = Command::new(&self.path);
        base_environment(&mut command);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let signal = match self.on_parent_death {
            OnParentDeath::Kill => libc::SIGKILL,
            OnParentDeath::Quit => libc::SIGQUIT,
        };
        let parent = std::process::id() as libc::pid_t;
        let fds = self.fds.clone();
        // SAFETY: only async-signal-safe calls between fork and exec (prctl, getppid, dup2, fcntl).
        unsafe {
            command.pre_exec(move || {
                // Runs after the uid/gid change, which would have cleared the setting.
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the call above.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the test process ended during the start"));
                }
                for &(from, to) in &fds {
                    if from == to {
                        let flags = libc::fcntl(from, libc::F_GETFD);
                        libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = spawn(command).map_err(|e| Error::Start {
            component: self.name,
            problem: format!("cannot run {}: {e}", self.path.display()),
            log: String::new(),
        })?;
        let state = Arc::new(State::default());
        let prefix = format!("[sluice {}]", self.name);
        for stream in [child.stdout.take().map(boxed), child.stderr.take().map(boxed)]
            .into_iter()
            .flatten()
        {
            let state = state.clone();
            let prefix = prefix.clone();
            let echo = self.echo;
            // Started from the caller's thread: the test harness shows what it prints (eprintln!)
            // with the output of the test that started the stack, when that test fails.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if echo {
                        eprintln!("{prefix} {line}");
                    }
                    state.push(line);
                }
            });
        }
        let pid = child.id();
        let waiter = state.clone();
        std::thread::spawn(move || {
            let status = child.wait();
            let mut exit = waiter.exit.lock().unwrap_or_else(|e| e.into_inner());
            // A wait that fails leaves nothing to wait for: count it as an exit.
            *exit = Some(status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0)));
            waiter.exited.notify_all();
            waiter.exited_async.notify_waiters();
        });
        Ok(Process {
            name: self.name,
            pid,
            state,
        })
    }
}

fn boxed(stream: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    Box::new(stream)
}

impl State {
    fn push(&self, line: String) {
        {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() == KEPT_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
        *self.line_count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.new_line.notify_waiters();
    }
}

impl Process {
    /// Its exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.state.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its last output lines, one per line.
    pub fn log_tail(&self, lines: usize) -> String {
        let kept = self.state.lines.lock().unwrap_or_else(|e| e.into_inner());
        let skip = kept.len().saturating_sub(lines);
        kept.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }

    /// Resolves when it has exited.
    pub async fn exited(&self) {
        loop {
            let notified = self.state.exited_async.notified();
            if self.exit_status().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves with the first output line (kept ones included) for which `wanted` holds.
    pub async fn line(&self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let notified = self.state.new_line.notified();
            if let Some(line) = self
                .state
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| wanted(l))
            {
                return line.clone();
            }
            notified.await;
        }
    }

    /// The error for a process that exited while it was being started.
    pub fn exited_error(&self, doing: &str) -> Error {
        let status = self
            .exit_status()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "still running".into());
        Error::Start {
            component: self.name,
            problem: format!("it exited ({status}) {doing}"),
            log: self.log_tail(40),
        }
    }

    /// Sends `signal` if it is still running.
    pub fn signal(&self, signal: libc::c_int) {
        // The waiter thread reaps it: while no exit is recorded the pid is still this child's.
        let exit = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            // SAFETY: kill(2) with a pid we own.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }

    /// Sends `signal`, waits up to `grace` for the exit, then kills. Blocking: for `Drop`.
    pub fn stop_blocking(&self, signal: libc::c_int, grace: Duration) {
        self.signal(signal);
        let deadline = Instant::now() + grace;
        let mut exit = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
        while exit.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(exit);
                self.signal(libc::SIGKILL);
                exit = self.state.exit.lock().unwrap_or_else(|e| e.into_inner());
                while exit.is_none() {
                    exit = self.state.exited.wait(exit).unwrap_or_else(|e| e.into_inner());
                }
                return;
            }
            exit = self
                .state
                .exited
                .wait_timeout(exit, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// As [`Process::stop_blocking`], awaiting instead of blocking. Returns whether it exited
    /// within `grace` (else it was killed).
    pub async fn stop(&self, signal: libc::c_int, grace: Duration) -> bool {
        self.signal(signal);
        if tokio::time::timeout(grace, self.exited()).await.is_ok() {
            return true;
        }
        self.signal(libc::SIGKILL);
        self.exited().await;
        false
    }
}

/// A shell that cleans up after a test process that died without stopping its stack: it reads
/// what to clean from a pipe, and when the pipe closes without the word `done`, it kills the
/// processes, ends Postgres, and deletes the folders.
pub struct Watchdog {
    pipe: Mutex<Option<ChildStdin>>,
}

const WATCHDOG: &str = r#"
trap '' INT HUP TERM PIPE
pids=""; postgres=""; dir=""
while read -r kind arg; do
  case "$kind" in
    pid) pids="$pids $arg" ;;
    postgres) postgres="$arg" ;;
    dir) dir="$arg" ;;
    done) exit 0 ;;
  esac
done
for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
if [ -n "$postgres" ]; then
  kill -QUIT "$postgres" 2>/dev/null
  tries=0
  while kill -0 "$postgres" 2>/dev/null && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
  kill -KILL "$postgres" 2>/dev/null
fi
[ -n "$dir" ] && rm -rf "$dir"
"#;

impl Watchdog {
    pub fn start() -> Result<Watchdog, Error> {
        let mut command = Command::new("/bin/sh");
        base_environment(&mut command);
        command
            .args(["-c", WATCHDOG])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for the tests does not reach it.
            .process_group(0);
        let mut child = spawn(command).map_err(|e| Error::Start {
            component: "watchdog",
            problem: format!("cannot run /bin/sh: {e}"),
            log: String::new(),
        })?;
        let pipe = child.stdin.take();
        // Reaped when it exits; it is not waited for.
        std::thread::spawn(move || child.wait());
        Ok(Watchdog { pipe: Mutex::new(pipe) })
    }

    fn tell(&self, line: &str) {
        if let Some(pipe) = self.pipe.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = writeln!(pipe, "{line}");
        }
    }

    pub fn watch_process(&self, process: &Process) {
        self.tell(&format!("pid {}", process.pid));
    }

    pub fn watch_postgres(&self, process: &Process) {
        self.tell(&format!("postgres {}", process.pid));
    }

    pub fn watch_dir(&self, dir: &std::path::Path) {
        self.tell(&format!("dir {}", dir.display()));
    }

    /// Everything was stopped and removed: the watchdog exits without doing anything.
    pub fn dismiss(&self) {
        self.tell("done");
        self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
