//! The REST broadcast API (docs/protocol.md 5.2–5.3): request parsing and upstream's answers.

use serde_json::{json, Map, Value};

use crate::frame::{Broadcast, Encoding, UserBroadcast};
use crate::texts;

/// A refused request: HTTP status and JSON body.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

impl Refusal {
    fn new(status: u16, body: Value) -> Refusal {
        Refusal { status, body }
    }

    pub fn unauthorized() -> Refusal {
        Refusal::new(401, json!({"message": texts::REST_UNAUTHORIZED}))
    }

    /// The host names no tenant (upstream's `AssignTenant`).
    pub fn tenant_not_found() -> Refusal {
        Refusal::new(401, json!({"message": texts::REST_TENANT_NOT_FOUND}))
    }
}

/// The caller's token: `Authorization: Bearer <jwt>`, else the `apikey` header.
pub fn caller_token<'a>(authorization: Option<&'a str>, apikey: Option<&'a str>) -> Option<&'a str> {
    authorization
        .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or(apikey)
}

/// One message of a batch, ready to relay to `realtime:<topic>`.
#[derive(Debug, PartialEq)]
pub struct BatchMessage {
    pub topic: String,
    pub private: bool,
    pub broadcast: Broadcast,
}

/// Parses `{"messages": [{topic, event, payload, private?, id?}, ...]}`. Invalid input is a 422
/// with per-message errors in the shape of upstream's changeset errors.
pub fn parse_batch(body: &[u8]) -> Result<Vec<BatchMessage>, Refusal> {
    let invalid = |errors: Value| Refusal::new(422, json!({"errors": errors}));
    let value: Value = serde_json::from_slice(body).map_err(|_| invalid(json!({"body": ["is not valid JSON"]})))?;
    let Some(messages) = value.get("messages") else {
        return Err(invalid(json!({"messages": ["can't be blank"]})));
    };
    let Some(messages) = messages.as_array() else {
        return Err(invalid(json!({"messages": ["is invalid"]})));
    };
    let mut parsed = Vec::with_capacity(messages.len());
    let mut errors = Vec::with_capacity(messages.len());
    for message in messages {
        let mut problems = Map::new();
        let field = |name: &str| message.get(name).filter(|v| !v.is_null());
        let mut problem = |name: &str, text: &str| {
            problems.insert(name.into(), json!([text]));
        };
        let topic = match field("topic") {
            None => {
                problem("topic", "can't be blank");
                None
            }
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            Some(_) => {
                problem("topic", "is invalid");
                None
            }
        };
        let event = match field("event") {
            None => {
                problem("event", "can't be blank");
                None
            }
            Some(Value::String(e)) => Some(e.clone()),
            Some(_) => {
                problem("event", "is invalid");
                None
            }
        };
        let payload = match field("payload") {
            None => {
                problem("payload", "can't be blank");
                None
            }
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => {
                problem("payload", "is invalid");
                None
            }
        };
        let private = match field("private") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                problem("private", "is invalid");
                false
            }
        };
        let id = field("id").and_then(|v| v.as_str().map(str::to_string));
        errors.push(Value::Object(problems.clone()));
        if let (Some(topic), Some(event), Some(payload), true) = (topic, event, payload, problems.is_empty()) {
            let mut broadcast = json!({"event": event, "payload": payload, "type": "broadcast"});
            if let Some(id) = id {
                broadcast["meta"] = json!({"id": id});
            }
            parsed.push(BatchMessage {
                topic,
                private,
                broadcast: Broadcast::Json(broadcast),
            });
        }
    }
    if parsed.len() != messages.len() {
        return Err(invalid(json!({"messages": errors})));
    }
    Ok(parsed)
}

/// The `(topic, event)` of `/api/broadcast/:topic/events/:event`, percent-decoded.
pub fn single_route(path: &str) -> Option<(String, String)> {
    let rest = path
        .strip_prefix("/realtime/v1")
        .unwrap_or(path)
        .strip_prefix("/api/broadcast/")?;
    let mut parts = rest.split('/');
    let (topic, events, event) = (parts.next()?, parts.next()?, parts.next()?);
    if events != "events" || parts.next().is_some() || topic.is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((decode(topic)?, decode(event)?))
}

/// The user broadcast of a single-message request: a JSON body (non-objects wrapped as
/// `{"_json": ...}`, as Plug does) or raw bytes.
pub fn single_broadcast(event: &str, content_type: Option<&str>, body: &[u8]) -> Result<Broadcast, Refusal> {
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let user = |encoding, payload| {
        Broadcast::User(UserBroadcast {
            event: event.to_string(),
            encoding,
            payload,
            meta: None,
        })
    };
    match media.as_deref() {
        Some("application/octet-stream") => Ok(user(Encoding::Binary, body.to_vec())),
        None | Some("application/json") => {
            let value: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(body).map_err(|_| Refusal::new(400, json!({"error": texts::MALFORMED_JSON})))?
            };
            let value = if value.is_object() {
                value
            } else {
                json!({"_json": value})
            };
            Ok(user(Encoding::Json, value.to_string().into_bytes()))
        }
        Some(_) => Err(Refusal::new(415, json!({"error": texts::UNSUPPORTED_MEDIA_TYPE}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn token_from_bearer_or_apikey() {
        assert_eq!(caller_token(Some("Bearer abc"), Some("key")), Some("abc"));
        assert_eq!(caller_token(None, Some("key")), Some("key"));
        assert_eq!(caller_token(Some("Basic x"), Some("key")), Some("key"));
        assert_eq!(caller_token(None, None), None);
    }

    #[test]
    fn batch_messages_become_text_broadcasts() {
        let body = br#"{"messages":[{"topic":"room1","event":"move","payload":{"x":1}},
                                    {"topic":"room2","event":"chat","payload":{},"private":true,"id":"4f6c"}]}"#;
        let msgs = parse_batch(body).unwrap();
        assert_eq!(
            msgs[0],
            BatchMessage {
                topic: "room1".into(),
                private: false,
                broadcast: Broadcast::Json(json!({"event": "move", "payload": {"x": 1}, "type": "broadcast"})),
            }
        );
        assert!(msgs[1].private);
        assert_eq!(
            msgs[1].broadcast,
            Broadcast::Json(json!({"event": "chat", "payload": {}, "type": "broadcast", "meta": {"id": "4f6c"}}))
        );
    }

    #[test]
    fn batch_validation_errors_are_422_per_message() {
        let r = parse_batch(br#"{"messages":[{"topic":"a","event":"e","payload":{}},{"event":5,"payload":[1]}]}"#)
            .unwrap_err();
        assert_eq!(r.status, 422);
        assert_eq!(
            r.body,
            json!({"errors": {"messages": [{}, {"topic": ["can't be blank"], "event": ["is invalid"], "payload": ["is invalid"]}]}})
        );
        assert_eq!(
            parse_batch(b"{}").unwrap_err().body,
            json!({"errors": {"messages": ["can't be blank"]}})
        );
        assert_eq!(parse_batch(b"nope").unwrap_err().status, 422);
    }

    #[test]
    fn single_routes() {
        assert_eq!(
            single_route("/api/broadcast/room%201/events/a%2Fb"),
            Some(("room 1".into(), "a/b".into()))
        );
        assert_eq!(
            single_route("/realtime/v1/api/broadcast/r/events/e"),
            Some(("r".into(), "e".into()))
        );
        assert_eq!(single_route("/api/broadcast/r/event/e"), None);
        assert_eq!(single_route("/api/broadcast/r/events/e/x"), None);
        assert_eq!(single_route("/api/broadcast"), None);
    }

    #[test]
    fn single_bodies() {
        let json_body = single_broadcast("e", Some("application/json; charset=utf-8"), br#"{"a":1}"#).unwrap();
        assert_eq!(
            json_body,
            Broadcast::User(UserBroadcast {
                event: "e".into(),
                encoding: Encoding::Json,
                payload: br#"{"a":1}"#.to_vec(),
                meta: None
            })
        );
        let wrapped = single_broadcast("e", None, b"[1,2]").unwrap();
        assert!(matches!(wrapped, Broadcast::User(u) if u.payload == br#"{"_json":[1,2]}"#.to_vec()));
        let bin = single_broadcast("e", Some("application/octet-stream"), &[0, 255]).unwrap();
        assert!(matches!(bin, Broadcast::User(u) if u.encoding == Encoding::Binary && u.payload == vec![0, 255]));
        assert_eq!(single_broadcast("e", Some("text/plain"), b"x").unwrap_err().status, 415);
    }
}
