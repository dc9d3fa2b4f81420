//! What the tests share: a raw WebSocket client speaking the Realtime protocol (vsn 1.0.0), and
//! running supabase-js from the repository's npm packages.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for a message before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Client {
    socket: Socket,
    next_ref: u64,
}

impl Client {
    pub async fn connect(stack: &sluice_testkit::Stack, token: &str) -> Client {
        let url = format!("{}?apikey={token}&vsn=1.0.0", stack.websocket_url());
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the gateway accepts the socket");
        Client { socket, next_ref: 1 }
    }

    pub async fn send(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let frame = json!({ "topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": "1" });
        self.socket.send(Message::text(frame.to_string())).await.expect("sent");
        r
    }

    /// The next message for which `wanted` holds (others are skipped).
    pub async fn next(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self
                    .socket
                    .next()
                    .await
                    .expect("the socket stays open")
                    .expect("a frame")
                {
                    Message::Text(text) => {
                        let message: Value = serde_json::from_str(&text).expect("JSON");
                        if wanted(&message) {
                            return message;
                        }
                    }
                    Message::Close(close) => panic!("the server closed the socket: {close:?}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the message arrives in time")
    }

    /// Joins `topic` with `config` and `token`; returns the reply's payload.
    pub async fn join(&mut self, topic: &str, config: Value, token: &str) -> Value {
        let r = self
            .send(topic, "phx_join", json!({ "config": config, "access_token": token }))
            .await;
        self.next(|m| m["event"] == "phx_reply" && m["ref"] == r.as_str()).await["payload"].clone()
    }

    /// Joins with `postgres_changes` bindings and waits for "Subscribed to PostgreSQL".
    pub async fn join_changes(&mut self, topic: &str, bindings: Value, token: &str) {
        let config = json!({ "broadcast": { "self": false }, "presence": { "key": "" }, "postgres_changes": bindings });
        let reply = self.join(topic, config, token).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let system = self
            .next(|m| m["event"] == "system" && m["payload"]["extension"] == "postgres_changes")
            .await;
        assert_eq!(system["payload"]["status"], "ok", "{system}");
    }
}

/// The repository's root (the npm packages are there).
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a Node.js module (ES syntax) with supabase-js importable; returns its stdout.
pub async fn node(script: &str, env: &[(&str, &str)]) -> String {
    let root = repository();
    let dir = root.join("node_modules/.sluice-testkit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("script-{}-{}.mjs", std::process::id(), rand_suffix()));
    std::fs::write(&path, script).unwrap();
    let node = [root.join("node_modules/.bin/node"), PathBuf::from("node")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or("node".into());
    let out = tokio::process::Command::new(node)
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node runs (scripts/bootstrap installs it with the npm packages)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Seconds since the epoch, an hour ahead: a token's `exp`.
pub fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}
