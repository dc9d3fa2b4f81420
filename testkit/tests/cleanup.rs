//! Nothing of a stack survives its test: not when the test panics, not when the test process is
//! killed with SIGKILL. Checked from outside: this file's `child` test runs in a process of its
//! own (this test binary, started again), tells its stack's folder and processes on stdout, then
//! panics or waits to be killed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Not a test of its own: what the child process runs (`SLUICE_TESTKIT_CHILD` = `panic` or `wait`).
#[tokio::test]
#[ignore = "run by the other tests of this file, in a process of its own"]
async fn child() {
    let mode = std::env::var("SLUICE_TESTKIT_CHILD").expect("run by the other tests");
    let sluice = sluice_testkit::Sluice::default()
        .start()
        .await
        .expect("the stack starts");
    let pids: Vec<String> = sluice.process_ids().iter().map(u32::to_string).collect();
    // Straight to stdout: the test harness holds back println! of a failing test until its end.
    let mut out = std::io::stdout();
    writeln!(out, "STACK {} {}", sluice.directory().display(), pids.join(",")).unwrap();
    out.flush().unwrap();
    match mode.as_str() {
        "panic" => panic!("a test that fails while its stack runs"),
        _ => tokio::time::sleep(Duration::from_secs(600)).await,
    }
}

/// Starts the child test; returns it and what its stack is.
fn start_child(mode: &str) -> (std::process::Child, PathBuf, Vec<u32>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env("SLUICE_TESTKIT_CHILD", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("STACK ") {
            let (dir, pids) = rest.rsplit_once(' ').unwrap();
            let pids = pids.split(',').map(|p| p.parse().unwrap()).collect();
            return (child, PathBuf::from(dir), pids);
        }
    }
    panic!("the child test ended before its stack was up: {:?}", child.wait());
}

/// Processes still running whose id is one of `pids`, or whose working folder is under `dir`
/// (Postgres's backends, which are not our children, work in its data folder).
fn left_behind(dir: &Path, pids: &[u32]) -> Vec<String> {
    let mut left = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if status.contains(") Z ") {
            continue; // exited, waiting to be reaped
        }
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if pids.contains(&pid) || cwd.starts_with(dir) {
            left.push(format!("{pid} in {}", cwd.display()));
        }
    }
    left
}

/// Waits up to `limit` for nothing to be left; fails with what is.
fn assert_nothing_left(dir: &Path, pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let processes = left_behind(dir, pids);
        if processes.is_empty() && !dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after {limit:?}: processes {processes:?}, folder exists: {}",
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_test_that_panics_leaves_nothing() {
    let (mut child, dir, pids) = start_child("panic");
    assert_eq!(pids.len(), 3, "postgres, replicator, gateway");
    assert!(dir.exists());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child test panicked");
    // Dropped during the unwinding: gone by the time the process has exited.
    assert_nothing_left(&dir, &pids, Duration::from_millis(500));
}

#[test]
fn a_test_process_killed_with_sigkill_leaves_nothing_within_5_seconds() {
    let (mut child, dir, pids) = start_child("wait");
    assert!(left_behind(&dir, &pids).len() >= 3, "the stack runs");
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert_nothing_left(&dir, &pids, Duration::from_secs(5));
}
