//! What the client's tests share: a stack per test (the test kit), a supabase-js peer driven
//! over stdin, and patience.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sluice_client::{ChannelEvent, Events};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub mod proxy;

/// How long a test waits for something before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub async fn stack() -> sluice_testkit::Stack {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("sluice_client=debug").try_init();
    sluice_testkit::Sluice::default().start().await.expect("the stack starts")
}

/// The next event for which `wanted` gives `Some`, others skipped.
pub async fn next<T>(events: &mut Events, mut wanted: impl FnMut(ChannelEvent) -> Option<T>) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let event = events.next().await.expect("the channel stays open");
            if let Some(found) = wanted(event) {
                return found;
            }
        }
    })
    .await
    .expect("the event arrives in time")
}

/// The next broadcast: its event name and payload.
pub async fn next_broadcast(events: &mut Events) -> (String, sluice_client::Payload) {
    next(events, |e| match e {
        ChannelEvent::Broadcast { event, payload } => Some((event, payload)),
        _ => None,
    })
    .await
}

/// A supabase-js client in Node, driven line by line (tests/common/peer.mjs).
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    pub async fn start(stack: &sluice_testkit::Stack, vsn: &str, token: Option<&str>) -> Peer {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let node = root.join("node_modules/.bin/node");
        let node = if node.is_file() { node } else { PathBuf::from("node") };
        // Node resolves packages from the script's folder: run it from the repository's root.
        let script = root.join("node_modules/.sluice-client-peer.mjs");
        std::fs::write(&script, include_str!("peer.mjs")).unwrap();
        let mut child = tokio::process::Command::new(node)
            .arg(&script)
            .env("SLUICE_URL", stack.url())
            .env("SLUICE_KEY", stack.anon_key())
            .env("SLUICE_VSN", vsn)
            .env("SLUICE_TOKEN", token.unwrap_or(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/bootstrap installs it with the npm packages)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = Peer { child, stdin, lines };
        peer.expect(|e| e["kind"] == "ready").await;
        peer
    }

    pub async fn command(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.expect("the peer reads its commands");
    }

    /// The next event of the peer for which `wanted` holds, others skipped.
    pub async fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("the peer is running");
                let event: Value = serde_json::from_str(&line).expect("the peer writes JSON lines");
                if wanted(&event) {
                    return event;
                }
            }
        })
        .await
        .expect("the peer sees it in time")
    }

    /// Joins `name` with a realtime-js channel config; returns once SUBSCRIBED.
    pub async fn join(&mut self, name: &str, config: Value) {
        self.command(json!({"op": "join", "topic": name, "config": config})).await;
        let status = self.expect(|e| e["kind"] == "status" && e["topic"] == name).await;
        assert_eq!(status["status"], "SUBSCRIBED", "{status}");
    }
}
