//! Presence: the same sequence of tracks, updates and untracks gives the Rust client and
//! realtime-js the same state.

mod common;

use common::{next, Peer};
use serde_json::{json, Value};
use sluice_client::{ChannelEvent, Client, Presences};

/// The payload fields of each key's presences (refs differ per presence but are the same on both
/// sides, so the whole state is compared too).
fn summary(state: &Value) -> Value {
    let map = state.as_object().cloned().unwrap_or_default();
    map.into_iter()
        .map(|(k, metas)| {
            let ns: Vec<Value> = metas.as_array().unwrap().iter().map(|m| m["n"].clone()).collect();
            (k, Value::Array(ns))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test]
async fn the_rust_client_and_realtime_js_agree_on_presence() {
    let stack = common::stack().await;
    let client = Client::builder(stack.url(), stack.anon_key()).connect().await.unwrap();
    let channel = client.channel("lobby").presence_key("rust").subscribe().await.unwrap();
    let mut events = channel.events();
    let mut js = Peer::start(&stack, "2.0.0", None).await;
    js.join("lobby", json!({"presence": {"key": "js"}})).await;

    let steps: Vec<(&str, Value)> = vec![
        ("rust tracks", json!({"rust": [1]})),
        ("js tracks", json!({"js": [2], "rust": [1]})),
        ("rust updates", json!({"js": [2], "rust": [3]})),
        ("js untracks", json!({"rust": [3]})),
        ("rust untracks", json!({})),
    ];
    for (step, expected) in steps {
        match step {
            "rust tracks" => channel.track(json!({"n": 1})).await.unwrap(),
            "js tracks" => {
                js.command(json!({"op": "track", "topic": "lobby", "payload": {"n": 2}})).await;
                assert_eq!(js.expect(|e| e["kind"] == "tracked").await["result"], "ok");
            }
            "rust updates" => channel.track(json!({"n": 3})).await.unwrap(),
            "js untracks" => {
                js.command(json!({"op": "untrack", "topic": "lobby"})).await;
                js.expect(|e| e["kind"] == "untracked").await;
            }
            _ => channel.untrack().await.unwrap(),
        }
        let rust_state: Presences = next(&mut events, |e| match e {
            ChannelEvent::PresenceSync { state } if summary(&json!(state)) == expected => Some(state),
            _ => None,
        })
        .await;
        let js_state = js.expect(|e| e["kind"] == "presence" && summary(&e["state"]) == expected).await["state"].clone();
        assert_eq!(json!(rust_state), js_state, "after '{step}' both see the same presences, refs included");
        assert_eq!(json!(channel.presence_state().await), js_state, "presence_state() is the synced state");
    }
}
