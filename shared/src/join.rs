//! Topics and the `phx_join` payload, parsed leniently as upstream does (docs/protocol.md 3.1).

use serde_json::{Map, Value};

/// What a message's topic addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `phoenix`: heartbeats.
    Phoenix,
    /// `realtime:<sub_topic>`; the sub-topic may be empty (a join error).
    Channel(&'a str),
    /// Anything else: answered with `unmatched topic`.
    Unmatched,
}

/// A full topic without its `realtime:` prefix (as `system` messages and policies name it).
pub fn sub_topic(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}

pub fn parse_topic(topic: &str) -> Topic<'_> {
    if topic == "phoenix" {
        Topic::Phoenix
    } else if let Some(sub) = topic.strip_prefix("realtime:") {
        Topic::Channel(sub)
    } else {
        Topic::Unmatched
    }
}

/// The parts of a join payload sluice acts on. Unknown keys are ignored; values of the wrong type
/// fall back to defaults instead of failing the join.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinConfig {
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub replay: Option<Value>,
    pub replication_ready: bool,
    pub presence_enabled: bool,
    /// Empty when the client left it to the server.
    pub presence_key: String,
    /// Each binding as the client sent it (nulls removed), to be echoed verbatim with an id.
    pub postgres_changes: Vec<Map<String, Value>>,
    pub private: bool,
    /// `access_token` (or legacy `user_token`) for this channel, if any.
    pub access_token: Option<String>,
}

pub fn parse_join(payload: &Value) -> JoinConfig {
    let config = payload.get("config");
    let at = |path: &[&str]| -> Option<&Value> {
        let mut v = config?;
        for key in path {
            v = v.get(key)?;
        }
        Some(v)
    };
    let flag = |path: &[&str]| at(path).and_then(lenient_bool).unwrap_or(false);
    JoinConfig {
        broadcast_self: flag(&["broadcast", "self"]),
        broadcast_ack: flag(&["broadcast", "ack"]),
        replay: at(&["broadcast", "replay"]).filter(|v| !v.is_null()).cloned(),
        replication_ready: flag(&["broadcast", "replication_ready"]),
        presence_enabled: flag(&["presence", "enabled"]),
        presence_key: at(&["presence", "key"])
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        postgres_changes: at(&["postgres_changes"])
            .and_then(Value::as_array)
            .map(|bindings| {
                bindings
                    .iter()
                    .filter_map(Value::as_object)
                    .map(|b| {
                        b.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        private: flag(&["private"]),
        access_token: ["access_token", "user_token"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(Value::as_str))
            .map(str::to_string),
    }
}

/// `true`/`false`, or the strings `"true"`/`"false"` in any case.
/// Replay asked for at join (`config.broadcast.replay`): messages since `since` (epoch ms), at
/// most `limit` (clamped to 1..=25 as upstream, default 25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    pub since: i64,
    pub limit: u32,
}

/// The replay parameters, or `None` when they are not valid (`since` must be an integer,
/// `limit` an integer when given).
pub fn parse_replay(value: &Value) -> Option<Replay> {
    let since = value.get("since").and_then(Value::as_i64)?;
    let limit = match value.get("limit") {
        None | Some(Value::Null) => 25,
        Some(v) => v.as_i64()?.clamp(1, 25) as u32,
    };
    Some(Replay { since, limit })
}

fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn topics() {
        assert_eq!(parse_topic("phoenix"), Topic::Phoenix);
        assert_eq!(parse_topic("realtime:room1"), Topic::Channel("room1"));
        assert_eq!(parse_topic("realtime:a:b"), Topic::Channel("a:b"));
        assert_eq!(parse_topic("realtime:"), Topic::Channel(""));
        assert_eq!(parse_topic("room1"), Topic::Unmatched);
        assert_eq!(parse_topic("Realtime:room1"), Topic::Unmatched);
    }

    #[test]
    fn full_config() {
        let c = parse_join(&json!({
            "config": {
                "broadcast": {"self": true, "ack": "TRUE", "replay": {"since": 1, "limit": 2}},
                "presence": {"enabled": "false", "key": "user-42"},
                "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "t", "filter": null, "select": ["id"]}],
                "private": "True"
            },
            "access_token": "tok"
        }));
        assert!(c.broadcast_self);
        assert!(c.broadcast_ack);
        assert_eq!(c.replay, Some(json!({"since": 1, "limit": 2})));
        assert!(!c.presence_enabled);
        assert_eq!(c.presence_key, "user-42");
        assert!(c.private);
        assert_eq!(c.access_token.as_deref(), Some("tok"));
        assert_eq!(
            Value::Object(c.postgres_changes[0].clone()),
            json!({"event": "INSERT", "schema": "public", "table": "t", "select": ["id"]})
        );
    }

    #[test]
    fn replay_params() {
        assert_eq!(parse_replay(&json!({"since": 5})), Some(Replay { since: 5, limit: 25 }));
        assert_eq!(
            parse_replay(&json!({"since": 5, "limit": 100})),
            Some(Replay { since: 5, limit: 25 })
        );
        assert_eq!(
            parse_replay(&json!({"since": 5, "limit": 0})),
            Some(Replay { since: 5, limit: 1 })
        );
        assert!(parse_replay(&json!({"since": "yesterday"})).is_none());
        assert!(parse_replay(&json!({"limit": 3})).is_none());
        assert!(parse_replay(&json!({"since": 1, "limit": "x"})).is_none());
    }

    #[test]
    fn lenient_defaults() {
        assert_eq!(parse_join(&json!({})), JoinConfig::default());
        assert_eq!(parse_join(&json!(null)), JoinConfig::default());
        let c = parse_join(
            &json!({"config": {"broadcast": {"self": "yes", "ack": 1}, "presence": {"key": 5},
                                              "postgres_changes": "x", "private": null}, "user_token": "legacy"}),
        );
        assert!(!c.broadcast_self && !c.broadcast_ack && !c.private);
        assert_eq!(c.presence_key, "");
        assert!(c.postgres_changes.is_empty());
        assert_eq!(c.access_token.as_deref(), Some("legacy"));
    }
}
