//! Reconnects: after the socket is cut (channels rejoined, nothing delivered twice, pushes made
//! during the outage delivered once), and after a silent dead connection that only the missed
//! heartbeat reveals.

mod common;

use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::{next, next_broadcast};
use serde_json::json;
use sluice_client::{ChannelEvent, Client, HeartbeatStatus, Metric, Payload, SubscribeStatus};
use tokio::sync::mpsc;

fn subscribed(e: ChannelEvent) -> Option<()> {
    matches!(e, ChannelEvent::Status(SubscribeStatus::Subscribed)).then_some(())
}

#[tokio::test]
async fn a_cut_socket_is_made_again_and_channels_rejoined_with_nothing_lost_or_doubled() {
    let stack = common::stack().await;
    let proxy = Proxy::start(stack.url()).await;
    let (reconnects, mut reconnecting) = mpsc::unbounded_channel();
    let behind_proxy = Client::builder(&proxy.url, stack.anon_key())
        .metrics(move |m| {
            if let Metric::Reconnect { attempt } = m {
                let _ = reconnects.send(attempt);
            }
        })
        .connect()
        .await
        .unwrap();
    let channel = behind_proxy.channel("outage").subscribe().await.unwrap();
    let mut events = channel.events();
    next(&mut events, subscribed).await;
    let direct = Client::builder(stack.url(), stack.anon_key()).connect().await.unwrap();
    let other = direct.channel("outage").subscribe().await.unwrap();
    let mut other_events = other.events();

    proxy.set(Mode::Down);
    tokio::time::timeout(common::PATIENCE, reconnecting.recv()).await.expect("the client notices").unwrap();
    // Made while disconnected: kept, and sent once the channel has joined again.
    let sender = channel.clone();
    let buffered = tokio::spawn(async move { sender.send_broadcast("during-outage", json!({"n": 1})).await });
    proxy.set(Mode::Forward);
    next(&mut events, subscribed).await;
    buffered.await.unwrap().expect("sent after the rejoin");

    other.send_broadcast("after", json!({})).await.unwrap();
    assert_eq!(next_broadcast(&mut events).await.0, "after", "the rejoined channel receives");
    channel.send_broadcast("marker", json!({})).await.unwrap();
    let mut seen = vec![];
    loop {
        let (event, _) = next_broadcast(&mut other_events).await;
        if event == "marker" {
            break;
        }
        seen.push(event);
    }
    assert_eq!(seen, vec!["during-outage".to_string()], "the buffered push arrived once, before the marker");
}

#[tokio::test]
async fn a_silent_dead_connection_is_found_by_the_heartbeat_and_recovered() {
    let stack = common::stack().await;
    let proxy = Proxy::start(stack.url()).await;
    let (beats, mut heartbeat) = mpsc::unbounded_channel();
    let client = Client::builder(&proxy.url, stack.anon_key())
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_timeout(Duration::from_millis(500))
        .on_heartbeat(move |status, _| {
            let _ = beats.send(status);
        })
        .connect()
        .await
        .unwrap();
    let channel = client.channel("silent").subscribe().await.unwrap();
    let mut events = channel.events();
    next(&mut events, subscribed).await;
    wait_for(&mut heartbeat, HeartbeatStatus::Ok).await;

    proxy.set(Mode::Blackhole);
    wait_for(&mut heartbeat, HeartbeatStatus::Timeout).await;
    // The new connection goes through (the blackhole holds only the old one).
    proxy.set(Mode::Forward);
    next(&mut events, subscribed).await;
    let direct = Client::builder(stack.url(), stack.anon_key()).connect().await.unwrap();
    let other = direct.channel("silent").subscribe().await.unwrap();
    other.send_broadcast("alive", json!({"ok": true})).await.unwrap();
    assert_eq!(next_broadcast(&mut events).await, ("alive".into(), Payload::Json(json!({"ok": true}))));
}

async fn wait_for(heartbeat: &mut mpsc::UnboundedReceiver<HeartbeatStatus>, wanted: HeartbeatStatus) {
    tokio::time::timeout(common::PATIENCE, async {
        while heartbeat.recv().await != Some(wanted) {}
    })
    .await
    .unwrap_or_else(|_| panic!("heartbeat {wanted:?} in time"))
}
