//! Failures surfaced as typed errors: a refused join, a bad URL, and a channel the server closes
//! because its token expired.

mod common;

use common::next;
use serde_json::json;
use sluice_client::{ChannelEvent, Client, CloseReason, Error};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_refused_join_is_its_typed_error_with_the_servers_reason() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let stack = sluice_testkit::Sluice::default().with_private_only(true).start().await.unwrap();
    let client = Client::builder(stack.url(), stack.anon_key()).connect().await.unwrap();
    let refused = client.channel("public-room").subscribe().await.err();
    assert_eq!(
        refused,
        Some(Error::JoinRefused("PrivateOnly: This project only allows private channels".into()))
    );
    assert!(client.channels().await.is_empty(), "a refused channel is not kept");
}

#[tokio::test]
async fn a_bad_url_is_refused_before_connecting() {
    let refused = Client::builder("ftp://example.com", "key").connect().await.err();
    assert!(matches!(refused, Some(Error::BadUrl(_))), "{refused:?}");
    let nobody = Client::builder("http://127.0.0.1:9", "key").connect().await.err();
    assert!(matches!(nobody, Some(Error::Transport(_))), "{nobody:?}");
}

#[tokio::test]
async fn a_channel_closed_for_an_expired_token_says_so_and_is_not_rejoined() {
    let stack = common::stack().await;
    let short = stack.sign(json!({"role": "authenticated", "sub": "u", "exp": now() + 2}));
    let client = Client::builder(stack.url(), stack.anon_key()).access_token(short).connect().await.unwrap();
    let channel = client.channel("expiring").subscribe().await.unwrap();
    let mut events = channel.events();
    let reason = next(&mut events, |e| match e {
        ChannelEvent::Closed(reason) => Some(reason),
        _ => None,
    })
    .await;
    let CloseReason::ByServer(Some(message)) = &reason else { panic!("{reason:?}") };
    assert!(message.starts_with("Token has expired"), "{message}");
    assert!(client.channels().await.is_empty() || channel.send_broadcast("e", json!({})).await.is_err());
}
