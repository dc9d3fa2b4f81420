//! Ready means what a test needs: a client can join a channel, with `postgres_changes`, and be
//! told `SUBSCRIBED` and "Subscribed to PostgreSQL". The probe does exactly that, over a real
//! WebSocket, after the replicator's `/healthz` answers 200.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The table the probe subscribes to (published in the template until the first probe passed).
pub const TABLE: (&str, &str) = ("sluice_testkit", "ready");

/// Whether `GET /healthz` of the replicator at `addr` answers 200.
pub async fn replicator_healthy(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// One probe: `Ok` once joined and subscribed, `Err` with what the server said otherwise.
/// `private` for tenants that take private channels only (the service role may read them).
pub async fn join(websocket_url: &str, token: &str, postgres_changes: bool, private: bool) -> Result<(), String> {
    let url = format!("{websocket_url}?apikey={token}&vsn=1.0.0");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("connecting to {websocket_url}: {e}"))?;
    let bindings = if postgres_changes {
        json!([{ "event": "*", "schema": TABLE.0, "table": TABLE.1 }])
    } else {
        json!([])
    };
    let join = json!({
        "topic": "realtime:sluice-testkit-ready",
        "event": "phx_join",
        "ref": "1",
        "join_ref": "1",
        "payload": {
            "config": { "broadcast": { "self": false }, "presence": { "key": "" }, "postgres_changes": bindings, "private": private },
            "access_token": token,
        },
    });
    socket
        .send(Message::text(join.to_string()))
        .await
        .map_err(|e| format!("sending the join: {e}"))?;
    let mut joined = false;
    let outcome = loop {
        let Some(frame) = socket.next().await else {
            break Err("the server closed the socket".to_string());
        };
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(close)) => break Err(format!("the server closed the socket: {close:?}")),
            Ok(_) => continue,
            Err(e) => break Err(format!("reading: {e}")),
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let payload = &message["payload"];
        match message["event"].as_str() {
            Some("phx_reply") if message["ref"] == "1" => {
                if payload["status"] != "ok" {
                    break Err(format!("the join was refused: {payload}"));
                }
                joined = true;
                if !postgres_changes {
                    break Ok(());
                }
            }
            Some("system") if payload["extension"] == "postgres_changes" => {
                if payload["status"] == "ok" && joined {
                    break Ok(());
                }
                break Err(format!("Postgres Changes: {}", payload["message"]));
            }
            _ => {}
        }
    };
    let _ = socket.close(None).await;
    outcome
}
