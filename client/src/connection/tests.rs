//! The machine with a fake clock: each test feeds it what a server would say and checks what it
//! asks the driver to do.

use super::*;
use serde_json::json;
use sluice_shared::frame::UserBroadcast;

const SECOND: Duration = Duration::from_secs(1);

fn options() -> Options {
    Options {
        vsn: Vsn::V1,
        heartbeat_interval: 25 * SECOND,
        heartbeat_timeout: 10 * SECOND,
        timeout: 10 * SECOND,
        reconnect: Backoff { jitter: 0.0, ..Backoff::reconnect() },
        rejoin: Backoff { jitter: 0.0, ..Backoff::rejoin() },
        buffer_limit: 100,
        idle_disconnect: None,
    }
}

fn params(bindings: Vec<Binding>) -> JoinParams {
    let config = json!({ "postgres_changes": bindings.iter().map(Binding::to_json).collect::<Vec<_>>() });
    JoinParams { config, bindings }
}

/// Drains the outputs: the frames sent (decoded, V1 objects) and everything else.
fn drain(m: &mut Machine) -> (Vec<Value>, Vec<Output>) {
    let mut sent = vec![];
    let mut other = vec![];
    while let Some(out) = m.poll_output() {
        match out {
            Output::Send(WireFrame::Text(text)) => sent.push(serde_json::from_str(&text).unwrap()),
            out => other.push(out),
        }
    }
    (sent, other)
}

fn server(m: &mut Machine, now: Instant, msg: Value) {
    m.received(now, WireFrame::Text(msg.to_string()), 0);
}

fn reply(topic: &str, join_ref: &Value, ref_: &Value, status: &str, response: Value) -> Value {
    json!({"topic": topic, "event": "phx_reply", "ref": ref_, "join_ref": join_ref,
           "payload": {"status": status, "response": response}})
}

/// A machine with `room1` joined on an open socket; returns it and the join frame.
fn joined(t0: Instant) -> (Machine, Value) {
    let mut m = Machine::new(options(), Some("user-token".into()));
    m.join(t0, "realtime:room1", params(vec![]), 1);
    m.opened(t0);
    let (sent, _) = drain(&mut m);
    let join = sent[0].clone();
    server(&mut m, t0, reply("realtime:room1", &join["join_ref"], &join["ref"], "ok", json!({})));
    drain(&mut m);
    (m, join)
}

#[test]
fn the_first_join_carries_the_token_set_before_connecting() {
    let t0 = Instant::now();
    let mut m = Machine::new(options(), Some("user-token".into()));
    m.join(t0, "realtime:room1", params(vec![]), 1);
    let (sent, other) = drain(&mut m);
    assert!(sent.is_empty(), "nothing is sent before the socket opens");
    assert_eq!(other, vec![Output::Connect]);
    m.opened(t0);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["event"], "phx_join");
    assert_eq!(sent[0]["payload"]["access_token"], "user-token");
    assert_eq!(sent[0]["join_ref"], sent[0]["ref"]);
    server(&mut m, t0, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "ok", json!({})));
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 1, result: Ok(Value::Null) }), "{other:?}");
}

#[test]
fn a_refused_join_fails_with_the_servers_reason() {
    let t0 = Instant::now();
    let mut m = Machine::new(options(), None);
    m.connect();
    m.opened(t0);
    m.join(t0, "realtime:room1", params(vec![]), 7);
    let (sent, _) = drain(&mut m);
    let reason = "Unauthorized: You do not have permissions to read from this Channel topic: room1";
    server(&mut m, t0, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "error", json!({"reason": reason})));
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 7, result: Err(Error::JoinRefused(reason.into())) }), "{other:?}");
}

#[test]
fn postgres_bindings_subscribe_once_the_server_says_so() {
    let t0 = Instant::now();
    let binding = Binding { event: "INSERT".into(), schema: "public".into(), table: Some("todos".into()), filter: None };
    let mut m = Machine::new(options(), None);
    m.join(t0, "realtime:db", params(vec![binding.clone()]), 1);
    m.opened(t0);
    let (sent, _) = drain(&mut m);
    let join = &sent[0];
    assert_eq!(join["payload"]["config"]["postgres_changes"], json!([{"event": "INSERT", "schema": "public", "table": "todos"}]));
    let echoed = json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "todos", "id": 42}]});
    server(&mut m, t0, reply("realtime:db", &join["join_ref"], &join["ref"], "ok", echoed));
    let (_, other) = drain(&mut m);
    assert!(!other.iter().any(|o| matches!(o, Output::Done { .. })), "not yet: {other:?}");
    server(&mut m, t0, json!({"topic": "realtime:db", "event": "system", "ref": null, "join_ref": join["join_ref"],
        "payload": {"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL", "channel": "db"}}));
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 1, result: Ok(Value::Null) }), "{other:?}");
    // A change is delivered when it names one of the channel's ids, and only then.
    for (ids, delivered) in [(json!([42]), true), (json!([7]), false)] {
        server(&mut m, t0, json!({"topic": "realtime:db", "event": "postgres_changes", "ref": null,
            "payload": {"ids": ids, "data": {"type": "INSERT", "schema": "public", "table": "todos", "record": {"id": 1}}}}));
        let (_, other) = drain(&mut m);
        let got = other.iter().any(|o| matches!(o, Output::Event { event: ChannelEvent::PostgresChange(_), .. }));
        assert_eq!(got, delivered, "ids {ids}");
    }
}

#[test]
fn a_reply_with_other_bindings_is_a_mismatch() {
    let t0 = Instant::now();
    let binding = Binding { event: "*".into(), schema: "public".into(), table: None, filter: Some("id=eq.1".into()) };
    let mut m = Machine::new(options(), None);
    m.join(t0, "realtime:db", params(vec![binding]), 1);
    m.opened(t0);
    let (sent, _) = drain(&mut m);
    let echoed = json!({"postgres_changes": [{"event": "*", "schema": "public", "filter": "id=eq.2", "id": 1}]});
    server(&mut m, t0, reply("realtime:db", &sent[0]["join_ref"], &sent[0]["ref"], "ok", echoed));
    let (sent, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 1, result: Err(Error::BindingMismatch) }), "{other:?}");
    assert_eq!(sent[0]["event"], "phx_leave");
}

#[test]
fn a_silent_connection_is_noticed_by_the_heartbeat_and_made_again() {
    let t0 = Instant::now();
    let (mut m, first_join) = joined(t0);
    assert_eq!(m.poll_timeout(), Some(t0 + 25 * SECOND));
    m.handle_timeout(t0 + 25 * SECOND, 0);
    let (sent, other) = drain(&mut m);
    assert_eq!(sent[0]["topic"], "phoenix");
    assert_eq!(sent[0]["event"], "heartbeat");
    assert!(other.contains(&Output::Heartbeat { status: HeartbeatStatus::Sent, rtt: None }));
    // No reply: dead within one interval plus the timeout.
    assert_eq!(m.poll_timeout(), Some(t0 + 35 * SECOND));
    m.handle_timeout(t0 + 35 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Heartbeat { status: HeartbeatStatus::Timeout, rtt: None }));
    assert!(other.contains(&Output::Close));
    m.closed(t0 + 35 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Reconnecting { attempt: 1, delay: SECOND }), "{other:?}");
    m.handle_timeout(t0 + 36 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert_eq!(other, vec![Output::Connect]);
    // The second attempt fails too: 2 s.
    m.closed(t0 + 36 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Reconnecting { attempt: 2, delay: 2 * SECOND }), "{other:?}");
    m.handle_timeout(t0 + 38 * SECOND, 0);
    drain(&mut m);
    m.opened(t0 + 38 * SECOND);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent[0]["event"], "phx_join", "rejoined at once");
    assert_ne!(sent[0]["join_ref"], first_join["join_ref"]);
    assert_eq!(sent[0]["payload"]["access_token"], "user-token");
    // What the old join still says is dropped.
    server(&mut m, t0 + 38 * SECOND, json!({"topic": "realtime:room1", "event": "phx_close", "ref": first_join["join_ref"],
        "join_ref": first_join["join_ref"], "payload": {}}));
    let (_, other) = drain(&mut m);
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn a_heartbeat_reply_reports_its_round_trip() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    m.handle_timeout(t0 + 25 * SECOND, 0);
    let (sent, _) = drain(&mut m);
    let ok = json!({"topic": "phoenix", "event": "phx_reply", "ref": sent[0]["ref"], "payload": {"status": "ok", "response": {}}});
    server(&mut m, t0 + 25 * SECOND + Duration::from_millis(30), ok);
    let (_, other) = drain(&mut m);
    assert_eq!(other, vec![Output::Heartbeat { status: HeartbeatStatus::Ok, rtt: Some(Duration::from_millis(30)) }]);
    assert_eq!(m.poll_timeout(), Some(t0 + 50 * SECOND));
}

#[test]
fn pushes_made_while_disconnected_are_sent_once_after_the_rejoin() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    m.closed(t0, 0);
    drain(&mut m);
    let broadcast = json!({"type": "broadcast", "event": "e", "payload": {"n": 1}});
    m.push(t0, "realtime:room1", "broadcast", InboundPayload::Json(broadcast.clone()), false, 9);
    let (sent, other) = drain(&mut m);
    assert!(sent.is_empty() && other.is_empty(), "kept: {sent:?} {other:?}");
    m.handle_timeout(t0 + SECOND, 0);
    m.opened(t0 + SECOND);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent.len(), 1, "only the join until it is answered");
    server(&mut m, t0 + SECOND, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "ok", json!({})));
    let (sent, other) = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["payload"], broadcast);
    assert!(other.contains(&Output::Done { op: 9, result: Ok(Value::Null) }));
    // A second reconnect does not send it again.
    m.closed(t0 + 2 * SECOND, 0);
    m.handle_timeout(t0 + 3 * SECOND, 0);
    m.opened(t0 + 3 * SECOND);
    let (sent, _) = drain(&mut m);
    assert!(sent.iter().all(|m| m["event"] == "phx_join"), "{sent:?}");
}

#[test]
fn a_buffered_push_past_its_deadline_fails_and_is_never_sent() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    m.closed(t0, 0);
    m.push(t0, "realtime:room1", "broadcast", InboundPayload::Json(json!({"event": "e"})), true, 5);
    drain(&mut m);
    m.handle_timeout(t0 + 10 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 5, result: Err(Error::TimedOut) }), "{other:?}");
}

#[test]
fn acknowledged_pushes_complete_with_their_reply() {
    let t0 = Instant::now();
    let (mut m, join) = joined(t0);
    m.push(t0, "realtime:room1", "presence", InboundPayload::Json(json!({"type": "presence", "event": "track"})), true, 3);
    let (sent, other) = drain(&mut m);
    assert!(other.is_empty());
    server(&mut m, t0, reply("realtime:room1", &join["join_ref"], &sent[0]["ref"], "error", json!({"reason": "Track message size exceeded"})));
    let (_, other) = drain(&mut m);
    assert_eq!(other, vec![Output::Done { op: 3, result: Err(Error::Refused("Track message size exceeded".into())) }]);
}

#[test]
fn a_new_token_reaches_every_joined_channel() {
    let t0 = Instant::now();
    let (mut m, join) = joined(t0);
    m.set_token(t0, Some("next".into()), None);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["event"], "access_token");
    assert_eq!(sent[0]["join_ref"], join["join_ref"]);
    assert_eq!(sent[0]["payload"], json!({"access_token": "next"}));
    m.set_token(t0, Some("next".into()), None);
    assert!(drain(&mut m).0.is_empty(), "the same token is not sent twice");
}

#[test]
fn a_provider_is_asked_before_the_token_expires() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    m.set_token(t0, Some("short".into()), Some(100 * SECOND));
    assert_eq!(m.poll_timeout(), Some(t0 + 25 * SECOND), "the heartbeat comes first");
    m.handle_timeout(t0 + 70 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::RefreshToken));
}

#[test]
fn a_server_close_after_an_expired_token_is_surfaced_with_its_reason() {
    let t0 = Instant::now();
    let (mut m, join) = joined(t0);
    let message = "Token has expired 3 seconds ago";
    server(&mut m, t0, json!({"topic": "realtime:room1", "event": "system", "ref": null, "join_ref": join["join_ref"],
        "payload": {"extension": "system", "status": "error", "message": message, "channel": "room1"}}));
    server(&mut m, t0, json!({"topic": "realtime:room1", "event": "phx_close", "ref": join["ref"], "join_ref": join["join_ref"], "payload": {}}));
    let (sent, other) = drain(&mut m);
    assert!(sent.is_empty(), "no rejoin: {sent:?}");
    assert!(other.contains(&Output::Event {
        topic: "realtime:room1".into(),
        event: ChannelEvent::Closed(CloseReason::ByServer(Some(message.into())))
    }), "{other:?}");
    m.closed(t0, 0);
    m.handle_timeout(t0 + SECOND, 0);
    m.opened(t0 + SECOND);
    assert!(drain(&mut m).0.is_empty(), "the closed channel is not rejoined");
}

#[test]
fn a_rejoin_refused_for_its_token_is_not_retried() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    m.closed(t0, 0);
    m.handle_timeout(t0 + SECOND, 0);
    m.opened(t0 + SECOND);
    let (sent, _) = drain(&mut m);
    let reason = "InvalidJWTToken: Token has expired 5 seconds ago";
    server(&mut m, t0 + SECOND, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "error", json!({"reason": reason})));
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Event {
        topic: "realtime:room1".into(),
        event: ChannelEvent::Closed(CloseReason::RejoinRefused(reason.into()))
    }), "{other:?}");
    assert_eq!(m.poll_timeout(), Some(t0 + SECOND + 25 * SECOND), "only the heartbeat is left");
}

#[test]
fn a_rejoin_refused_for_a_passing_reason_is_retried_with_backoff() {
    let t0 = Instant::now();
    let (mut m, join) = joined(t0);
    server(&mut m, t0, json!({"topic": "realtime:room1", "event": "phx_error", "ref": join["ref"], "join_ref": join["join_ref"], "payload": {}}));
    drain(&mut m);
    m.handle_timeout(t0 + SECOND, 0);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent[0]["event"], "phx_join");
    server(&mut m, t0 + SECOND, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "error",
        json!({"reason": "InitializingProjectConnection: Realtime is initializing the project connection"})));
    let (_, other) = drain(&mut m);
    assert!(other.iter().any(|o| matches!(o, Output::Event { event: ChannelEvent::Status(SubscribeStatus::ChannelError(_)), .. })));
    assert_eq!(m.poll_timeout(), Some(t0 + 3 * SECOND), "the second failure waits 2 s");
}

#[test]
fn binary_broadcasts_need_protocol_2() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    let user = UserBroadcast { event: "e".into(), encoding: Encoding::Binary, payload: vec![1, 2], meta: None };
    m.push(t0, "realtime:room1", "broadcast", InboundPayload::UserBroadcast(user), false, 4);
    let (sent, other) = drain(&mut m);
    assert!(sent.is_empty());
    assert!(matches!(&other[..], [Output::Done { op: 4, result: Err(Error::BadPayload(_)) }]), "{other:?}");
}

#[test]
fn malformed_frames_are_skipped() {
    let t0 = Instant::now();
    let (mut m, _) = joined(t0);
    for text in ["", "[", "{\"topic\": 1}", "[1,2,3]", "null"] {
        m.received(t0, WireFrame::Text(text.into()), 0);
    }
    m.received(t0, WireFrame::Binary(vec![4, 200]), 0);
    assert_eq!(drain(&mut m), (vec![], vec![]));
}

#[test]
fn leaving_completes_on_the_reply_and_closes_the_channel() {
    let t0 = Instant::now();
    let mut options = options();
    options.idle_disconnect = Some(50 * SECOND);
    let mut m = Machine::new(options, None);
    m.join(t0, "realtime:room1", params(vec![]), 1);
    m.opened(t0);
    let (sent, _) = drain(&mut m);
    server(&mut m, t0, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "ok", json!({})));
    drain(&mut m);
    m.leave(t0, "realtime:room1", 2);
    let (sent, _) = drain(&mut m);
    assert_eq!(sent[0]["event"], "phx_leave");
    server(&mut m, t0, reply("realtime:room1", &sent[0]["join_ref"], &sent[0]["ref"], "ok", json!({})));
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Done { op: 2, result: Ok(Value::Null) }));
    assert!(other.contains(&Output::Event { topic: "realtime:room1".into(), event: ChannelEvent::Closed(CloseReason::Unsubscribed) }));
    // The socket closes after the last channel left (realtime-js: 2 heartbeat intervals).
    m.handle_timeout(t0 + 50 * SECOND, 0);
    let (_, other) = drain(&mut m);
    assert!(other.contains(&Output::Close), "{other:?}");
}
