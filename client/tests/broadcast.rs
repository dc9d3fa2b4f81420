//! Broadcast between the Rust client, itself and supabase-js, both protocol versions, JSON and
//! binary payloads, with ack, and over REST.

mod common;

use common::{next_broadcast, Peer};
use serde_json::json;
use sluice_client::{Client, Payload};

async fn client(stack: &sluice_testkit::Stack, vsn1: bool) -> Client {
    let builder = Client::builder(stack.url(), stack.anon_key());
    let builder = if vsn1 { builder.protocol_v1() } else { builder };
    builder.connect().await.expect("the client connects")
}

#[tokio::test]
async fn rust_clients_of_both_versions_broadcast_to_each_other() {
    let stack = common::stack().await;
    let v2 = client(&stack, false).await;
    let v1 = client(&stack, true).await;
    let a = v2.channel("room1").broadcast_self(true).broadcast_ack(true).subscribe().await.unwrap();
    let b = v1.channel("room1").subscribe().await.unwrap();
    let (mut a_events, mut b_events) = (a.events(), b.events());

    a.send_broadcast("move", json!({"x": 1})).await.expect("acknowledged");
    assert_eq!(next_broadcast(&mut b_events).await, ("move".into(), Payload::Json(json!({"x": 1}))));
    assert_eq!(next_broadcast(&mut a_events).await, ("move".into(), Payload::Json(json!({"x": 1}))), "self");

    b.send_broadcast("chat", json!({"text": "hi"})).await.unwrap();
    assert_eq!(next_broadcast(&mut a_events).await, ("chat".into(), Payload::Json(json!({"text": "hi"}))));

    // Binary goes from V2 to V2 only; V1 cannot send it and says so.
    let c = client(&stack, false).await;
    let c_channel = c.channel("room1").subscribe().await.unwrap();
    let mut c_events = c_channel.events();
    a.send_broadcast("bytes", vec![0u8, 1, 255]).await.unwrap();
    assert_eq!(next_broadcast(&mut c_events).await, ("bytes".into(), Payload::Binary(vec![0, 1, 255])));
    assert!(matches!(b.send_broadcast("bytes", vec![1u8]).await, Err(sluice_client::Error::BadPayload(_))));
    // The V1 client got no binary message: the next thing it gets is this marker.
    a.send_broadcast("marker", json!({})).await.unwrap();
    assert_eq!(next_broadcast(&mut b_events).await.0, "marker");
}

#[tokio::test]
async fn the_rust_client_and_supabase_js_broadcast_both_ways_on_both_versions() {
    let stack = common::stack().await;
    for vsn in ["2.0.0", "1.0.0"] {
        let name = format!("mixed-{vsn}");
        let rust = client(&stack, vsn == "1.0.0").await;
        let channel = rust.channel(&name).subscribe().await.unwrap();
        let mut events = channel.events();
        let mut js = Peer::start(&stack, vsn, None).await;
        js.join(&name, json!({"broadcast": {"self": false, "ack": true}})).await;

        channel.send_broadcast("from-rust", json!({"n": 1, "s": "é"})).await.unwrap();
        let got = js.expect(|e| e["kind"] == "broadcast").await;
        assert_eq!((got["event"].clone(), got["payload"].clone()), (json!("from-rust"), json!({"n": 1, "s": "é"})), "{vsn}");

        js.command(json!({"op": "send", "topic": name, "event": "from-js", "payload": {"list": [1, 2]}})).await;
        assert_eq!(js.expect(|e| e["kind"] == "sent").await["result"], "ok");
        assert_eq!(next_broadcast(&mut events).await, ("from-js".into(), Payload::Json(json!({"list": [1, 2]}))), "{vsn}");

        if vsn == "2.0.0" {
            js.command(json!({"op": "send", "topic": name, "event": "bin", "payload": [9, 8, 7], "binary": true})).await;
            assert_eq!(next_broadcast(&mut events).await, ("bin".into(), Payload::Binary(vec![9, 8, 7])));
            channel.send_broadcast("bin-rust", vec![1u8, 2, 3]).await.unwrap();
            let got = js.expect(|e| e["kind"] == "broadcast").await;
            assert_eq!((got["binary"].clone(), got["payload"].clone()), (json!(true), json!([1, 2, 3])));
        }
        js.command(json!({"op": "quit"})).await;
        rust.disconnect().await;
    }
}

#[tokio::test]
async fn rest_sends_reach_joined_clients_without_joining() {
    let stack = common::stack().await;
    let listener = client(&stack, false).await;
    let channel = listener.channel("rest-room").subscribe().await.unwrap();
    let mut events = channel.events();
    let sender = client(&stack, false).await;
    sender.channel("rest-room").http_send("news", json!({"a": 1})).await.expect("202");
    assert_eq!(next_broadcast(&mut events).await, ("news".into(), Payload::Json(json!({"a": 1}))));
    sender.channel("rest-room").http_send("raw", vec![5u8, 6]).await.expect("202");
    assert_eq!(next_broadcast(&mut events).await, ("raw".into(), Payload::Binary(vec![5, 6])));
}

#[tokio::test]
async fn asking_twice_for_a_channel_gives_the_same_one() {
    let stack = common::stack().await;
    let client = client(&stack, false).await;
    let first = client.channel("same").broadcast_self(true).subscribe().await.unwrap();
    let second = client.channel("same").subscribe().await.unwrap();
    let mut events = first.events();
    second.send_broadcast("e", json!({})).await.unwrap();
    assert_eq!(next_broadcast(&mut events).await.0, "e", "the second handle is the first channel (self is on)");
    assert_eq!(client.channels().await.len(), 1);
    first.unsubscribe().await.unwrap();
    assert!(client.channels().await.is_empty());
}

#[tokio::test]
async fn broadcasts_far_larger_than_the_socket_read_buffer_arrive_whole() {
    // The client reads the socket 8 KiB at a time; frames of several times that come through
    // intact. (Sized to stay under the default limit of 100 kB per second that the tenant's
    // sockets send and receive.)
    let stack = common::stack().await;
    let (sender, receiver) = (client(&stack, false).await, client(&stack, false).await);
    let a = sender.channel("big").broadcast_ack(true).subscribe().await.unwrap();
    let b = receiver.channel("big").subscribe().await.unwrap();
    let mut events = b.events();

    let bytes: Vec<u8> = (0..24_000u32).map(|i| (i % 251) as u8).collect();
    a.send_broadcast("bytes", bytes.clone()).await.expect("acknowledged");
    assert_eq!(next_broadcast(&mut events).await, ("bytes".into(), Payload::Binary(bytes)));

    let text = "é".repeat(6_000);
    a.send_broadcast("text", json!({ "text": text })).await.expect("acknowledged");
    assert_eq!(next_broadcast(&mut events).await, ("text".into(), Payload::Json(json!({ "text": text }))));
}
