//! Wire frames: decoding what clients send and encoding what they receive.
//!
//! Two serializers, chosen per socket by the `vsn` query parameter (docs/protocol.md 2):
//! - V1 (`1.0.0`): JSON objects `{topic, event, payload, ref, join_ref?}`, text frames only.
//! - V2 (`2.0.0`): JSON arrays `[join_ref, ref, topic, event, payload]`, plus binary frames for user
//!   broadcasts: kind 3 from the client, kind 4 to the client (docs/protocol.md 2.4).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The serializer a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vsn {
    #[serde(rename = "1.0.0")]
    V1,
    #[serde(rename = "2.0.0")]
    V2,
}

impl Vsn {
    /// Reads the `vsn` query parameter; a missing one means V1, as in Phoenix.
    pub fn from_param(vsn: Option<&str>) -> Option<Vsn> {
        match vsn {
            None | Some("1.0.0") => Some(Vsn::V1),
            Some("2.0.0") => Some(Vsn::V2),
            Some(_) => None,
        }
    }
}

/// How the bytes of a user broadcast are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    Binary = 0,
    Json = 1,
}

/// A broadcast as it travels from a sender to its receivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Broadcast {
    /// Sent as a JSON text push: receivers get the sender's payload map unchanged, as text.
    Json(Value),
    /// Sent as a V2 binary frame (or from the single REST endpoint or the database): V2 receivers
    /// get binary kind 4, V1 receivers get JSON when the bytes are JSON and nothing otherwise.
    User(UserBroadcast),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserBroadcast {
    pub event: String,
    pub encoding: Encoding,
    pub payload: Vec<u8>,
    /// A JSON object sent to receivers as `meta` (ids of database broadcasts, replay marks).
    pub meta: Option<Map<String, Value>>,
}

/// A message from a client, whichever serializer carried it.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: InboundPayload,
}

#[derive(Clone, Debug, PartialEq)]
pub enum InboundPayload {
    Json(Value),
    /// A binary kind-3 frame: always a `broadcast` event.
    UserBroadcast(UserBroadcast),
}

/// A message to a client, encoded per receiver with [`encode`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A frame ready to be written to a WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireFrame {
    Text(String),
    Binary(Vec<u8>),
}

/// Why an inbound frame was dropped. The socket stays open in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    NotJson,
    WrongShape(&'static str),
    BinaryOnV1,
    UnknownBinaryKind(u8),
    Truncated,
    NotUtf8,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotJson => write!(f, "text frame is not JSON"),
            DecodeError::WrongShape(what) => write!(f, "message has the wrong shape: {what}"),
            DecodeError::BinaryOnV1 => write!(f, "binary frame on a vsn 1.0.0 socket"),
            DecodeError::UnknownBinaryKind(k) => write!(f, "binary frame of unsupported kind {k}"),
            DecodeError::Truncated => write!(f, "binary frame shorter than its header says"),
            DecodeError::NotUtf8 => write!(f, "binary frame field is not UTF-8"),
        }
    }
}

const KIND_USER_BROADCAST_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;

/// Decodes a text frame.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|_| DecodeError::NotJson)?;
    match vsn {
        Vsn::V1 => decode_v1_object(value),
        Vsn::V2 => decode_v2_array(value),
    }
}

fn decode_v1_object(value: Value) -> Result<Inbound, DecodeError> {
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::WrongShape("V1 message must be an object"));
    };
    // Phoenix requires all four keys; `join_ref` is optional.
    for key in ["topic", "event", "payload", "ref"] {
        if !obj.contains_key(key) {
            return Err(DecodeError::WrongShape(
                "V1 message needs topic, event, payload and ref",
            ));
        }
    }
    Ok(Inbound {
        join_ref: optional_ref(obj.remove("join_ref").unwrap_or(Value::Null))?,
        ref_: optional_ref(obj.remove("ref").unwrap_or(Value::Null))?,
        topic: required_string(obj.remove("topic"), "topic must be a string")?,
        event: required_string(obj.remove("event"), "event must be a string")?,
        payload: InboundPayload::Json(obj.remove("payload").unwrap_or(Value::Null)),
    })
}

fn decode_v2_array(value: Value) -> Result<Inbound, DecodeError> {
    let Value::Array(items) = value else {
        return Err(DecodeError::WrongShape("V2 text message must be an array"));
    };
    if items.len() < 5 {
        return Err(DecodeError::WrongShape("V2 message needs 5 elements"));
    }
    let mut items = items.into_iter();
    let mut next = || items.next().unwrap_or(Value::Null);
    Ok(Inbound {
        join_ref: optional_ref(next())?,
        ref_: optional_ref(next())?,
        topic: required_string(Some(next()), "topic must be a string")?,
        event: required_string(Some(next()), "event must be a string")?,
        payload: InboundPayload::Json(next()),
    })
}

fn optional_ref(value: Value) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        // Some clients send numeric refs; Phoenix echoes them as given.
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(DecodeError::WrongShape("refs must be strings or null")),
    }
}

fn required_string(value: Option<Value>, what: &'static str) -> Result<String, DecodeError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DecodeError::WrongShape(what)),
    }
}

/// Decodes a binary frame: only kind 3 (user broadcast push) on V2 sockets.
pub fn decode_binary(vsn: Vsn, bytes: &[u8]) -> Result<Inbound, DecodeError> {
    if vsn == Vsn::V1 {
        return Err(DecodeError::BinaryOnV1);
    }
    let kind = *bytes.first().ok_or(DecodeError::Truncated)?;
    if kind != KIND_USER_BROADCAST_PUSH {
        return Err(DecodeError::UnknownBinaryKind(kind));
    }
    let header = bytes.get(..7).ok_or(DecodeError::Truncated)?;
    let lens = [header[1], header[2], header[3], header[4], header[5]].map(usize::from);
    let encoding = match header[6] {
        0 => Encoding::Binary,
        _ => Encoding::Json,
    };
    let mut rest = &bytes[7..];
    let mut fields = Vec::with_capacity(5);
    for len in lens {
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (field, tail) = rest.split_at(len);
        fields.push(std::str::from_utf8(field).map_err(|_| DecodeError::NotUtf8)?);
        rest = tail;
    }
    // fields[4] is the client's metadata: validated as UTF-8 but not forwarded, as upstream.
    let [join_ref, ref_, topic, event] = [fields[0], fields[1], fields[2], fields[3]];
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Inbound {
        join_ref: non_empty(join_ref),
        ref_: non_empty(ref_),
        topic: topic.to_string(),
        event: "broadcast".to_string(),
        payload: InboundPayload::UserBroadcast(UserBroadcast {
            event: event.to_string(),
            encoding,
            payload: rest.to_vec(),
            meta: None,
        }),
    })
}

/// Encodes a message for a socket of the given serializer.
pub fn encode(vsn: Vsn, msg: &Outbound) -> String {
    let value = match vsn {
        // V1 replies carry no join_ref.
        Vsn::V1 => json!({
            "topic": msg.topic,
            "event": msg.event,
            "payload": msg.payload,
            "ref": msg.ref_,
        }),
        Vsn::V2 => json!([msg.join_ref, msg.ref_, msg.topic, msg.event, msg.payload]),
    };
    value.to_string()
}

/// Encodes a broadcast on `topic` for a receiver of the given serializer, following the fan-out
/// rules of docs/protocol.md 2.4. `None` means this receiver cannot be sent this broadcast (binary
/// payload to a V1 socket, or fields too long for a binary frame).
pub fn encode_broadcast(vsn: Vsn, topic: &str, broadcast: &Broadcast) -> Option<WireFrame> {
    match (broadcast, vsn) {
        (Broadcast::Json(payload), _) => Some(WireFrame::Text(encode(
            vsn,
            &fanout(topic, "broadcast", payload.clone()),
        ))),
        (Broadcast::User(user), Vsn::V2) => encode_user_broadcast(topic, user).map(WireFrame::Binary),
        (Broadcast::User(user), Vsn::V1) => {
            let payload = user_broadcast_as_json(user)?;
            Some(WireFrame::Text(encode(Vsn::V1, &fanout(topic, "broadcast", payload))))
        }
    }
}

/// The JSON form of a user broadcast, as V1 receivers get it; `None` for binary payloads.
pub fn user_broadcast_as_json(user: &UserBroadcast) -> Option<Value> {
    if user.encoding != Encoding::Json {
        return None;
    }
    let inner: Value = serde_json::from_slice(&user.payload).ok()?;
    let mut payload = json!({"type": "broadcast", "event": user.event, "payload": inner});
    if let Some(meta) = &user.meta {
        payload["meta"] = Value::Object(meta.clone());
    }
    Some(payload)
}

/// Binary kind 4. Fails (None) when a field is longer than 255 bytes.
pub fn encode_user_broadcast(topic: &str, user: &UserBroadcast) -> Option<Vec<u8>> {
    let meta = user
        .meta
        .as_ref()
        .map(|m| Value::Object(m.clone()).to_string())
        .unwrap_or_default();
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(user.event.len()).ok()?;
    let meta_len = u8::try_from(meta.len()).ok()?;
    let mut out = Vec::with_capacity(5 + topic.len() + user.event.len() + meta.len() + user.payload.len());
    out.extend_from_slice(&[KIND_USER_BROADCAST, topic_len, event_len, meta_len, user.encoding as u8]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(user.event.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(&user.payload);
    Some(out)
}

/// Builds the kind-3 frame a V2 client sends a user broadcast in.
pub fn encode_user_broadcast_push(join_ref: &str, ref_: &str, topic: &str, user: &UserBroadcast) -> Option<Vec<u8>> {
    let meta = user
        .meta
        .as_ref()
        .map(|m| Value::Object(m.clone()).to_string())
        .unwrap_or_default();
    let lens = [join_ref.len(), ref_.len(), topic.len(), user.event.len(), meta.len()];
    let mut out = vec![KIND_USER_BROADCAST_PUSH];
    for len in lens {
        out.push(u8::try_from(len).ok()?);
    }
    out.push(user.encoding as u8);
    for field in [join_ref, ref_, topic, &user.event, &meta] {
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&user.payload);
    Some(out)
}

// ---- Builders with the join_ref/ref conventions of docs/protocol.md 2.3 ----

/// A reply to a client request: `[join_ref, ref, topic, "phx_reply", {status, response}]`.
pub fn reply(join_ref: Option<&str>, ref_: Option<&str>, topic: &str, ok: bool, response: Value) -> Outbound {
    Outbound {
        join_ref: join_ref.map(str::to_string),
        ref_: ref_.map(str::to_string),
        topic: topic.to_string(),
        event: "phx_reply".to_string(),
        payload: json!({"status": if ok { "ok" } else { "error" }, "response": response}),
    }
}

/// A push from a channel to its own socket (`system`, `presence_state`): `[join_ref, null, ...]`.
pub fn push(join_ref: Option<&str>, topic: &str, event: &str, payload: Value) -> Outbound {
    Outbound {
        join_ref: join_ref.map(str::to_string),
        ref_: None,
        topic: topic.to_string(),
        event: event.to_string(),
        payload,
    }
}

/// A `system` message to a channel: `extension` is `system` or `postgres_changes`, the channel
/// is the topic without `realtime:` (`realtime_channel.ex` `push_system_message`).
pub fn system(join_ref: Option<&str>, topic: &str, extension: &str, ok: bool, message: &str) -> Outbound {
    let channel = topic.strip_prefix("realtime:").unwrap_or(topic);
    let status = if ok { "ok" } else { "error" };
    push(
        join_ref,
        topic,
        "system",
        json!({"extension": extension, "status": status, "message": message, "channel": channel}),
    )
}

/// A fan-out delivery (`broadcast`, `presence_diff`, `postgres_changes`): `[null, null, ...]`.
pub fn fanout(topic: &str, event: &str, payload: Value) -> Outbound {
    push(None, topic, event, payload)
}

/// The end of a channel incarnation: `[join_ref, join_ref, topic, "phx_close", {}]`.
pub fn close(join_ref: Option<&str>, topic: &str) -> Outbound {
    Outbound {
        join_ref: join_ref.map(str::to_string),
        ref_: join_ref.map(str::to_string),
        topic: topic.to_string(),
        event: "phx_close".to_string(),
        payload: json!({}),
    }
}

// ---- The client's side of the wire (sluice-client), the mirror image of the above ----

/// Why a client's message cannot be put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A binary payload on a vsn 1.0.0 socket, which has text frames only.
    BinaryOnV1,
    /// A binary frame's field is longer than its one-byte length (255 bytes).
    FieldTooLong,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::BinaryOnV1 => write!(f, "binary payloads need protocol vsn 2.0.0"),
            EncodeError::FieldTooLong => write!(f, "topic, event and refs of a binary frame are limited to 255 bytes"),
        }
    }
}

/// Encodes a message as a client sends it. Text: V1 `{topic, event, payload, ref, join_ref}`, V2
/// `[join_ref, ref, topic, event, payload]`. A user broadcast goes as a V2 binary kind-3 frame, as
/// realtime-js sends every broadcast on 2.0.0; on V1 a JSON one goes as its `broadcast` push.
pub fn encode_from_client(vsn: Vsn, msg: &Inbound) -> Result<WireFrame, EncodeError> {
    let payload = match (&msg.payload, vsn) {
        (InboundPayload::Json(payload), _) => payload.clone(),
        (InboundPayload::UserBroadcast(user), Vsn::V2) => {
            let frame = encode_user_broadcast_push(
                msg.join_ref.as_deref().unwrap_or(""),
                msg.ref_.as_deref().unwrap_or(""),
                &msg.topic,
                user,
            );
            return frame.map(WireFrame::Binary).ok_or(EncodeError::FieldTooLong);
        }
        (InboundPayload::UserBroadcast(user), Vsn::V1) => {
            user_broadcast_as_json(user).ok_or(EncodeError::BinaryOnV1)?
        }
    };
    let text = match vsn {
        Vsn::V1 => json!({
            "topic": msg.topic,
            "event": msg.event,
            "payload": payload,
            "ref": msg.ref_,
            "join_ref": msg.join_ref,
        }),
        Vsn::V2 => json!([msg.join_ref, msg.ref_, msg.topic, msg.event, payload]),
    };
    Ok(WireFrame::Text(text.to_string()))
}

/// Decodes a frame as a client receives it: text of either serializer (the shapes
/// [`decode_text`] reads), or a V2 binary kind-4 user broadcast, returned as a `broadcast` whose
/// payload is the [`UserBroadcast`].
pub fn decode_at_client(vsn: Vsn, frame: &WireFrame) -> Result<Inbound, DecodeError> {
    let bytes = match frame {
        WireFrame::Text(text) => return decode_text(vsn, text),
        WireFrame::Binary(bytes) => bytes,
    };
    if vsn == Vsn::V1 {
        return Err(DecodeError::BinaryOnV1);
    }
    let kind = *bytes.first().ok_or(DecodeError::Truncated)?;
    if kind != KIND_USER_BROADCAST {
        return Err(DecodeError::UnknownBinaryKind(kind));
    }
    let header = bytes.get(..5).ok_or(DecodeError::Truncated)?;
    let encoding = match header[4] {
        0 => Encoding::Binary,
        _ => Encoding::Json,
    };
    let mut rest = &bytes[5..];
    let mut fields = Vec::with_capacity(3);
    for len in [header[1], header[2], header[3]].map(usize::from) {
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (field, tail) = rest.split_at(len);
        fields.push(std::str::from_utf8(field).map_err(|_| DecodeError::NotUtf8)?);
        rest = tail;
    }
    let meta = match fields[2] {
        "" => None,
        text => match serde_json::from_str(text) {
            Ok(Value::Object(meta)) => Some(meta),
            _ => return Err(DecodeError::WrongShape("binary broadcast meta must be a JSON object")),
        },
    };
    Ok(Inbound {
        join_ref: None,
        ref_: None,
        topic: fields[0].to_string(),
        event: "broadcast".to_string(),
        payload: InboundPayload::UserBroadcast(UserBroadcast {
            event: fields[1].to_string(),
            encoding,
            payload: rest.to_vec(),
            meta,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn user(event: &str, encoding: Encoding, payload: &[u8]) -> UserBroadcast {
        UserBroadcast {
            event: event.into(),
            encoding,
            payload: payload.to_vec(),
            meta: None,
        }
    }

    #[test]
    fn vsn_defaults_to_v1_and_rejects_unknown() {
        assert_eq!(Vsn::from_param(None), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::from_param(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::from_param(Some("3.0.0")), None);
    }

    #[test]
    fn decodes_v1_object() {
        let msg = decode_text(
            Vsn::V1,
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(msg.topic, "realtime:room1");
        assert_eq!(msg.event, "phx_join");
        assert_eq!(msg.ref_.as_deref(), Some("1"));
        assert_eq!(msg.join_ref.as_deref(), Some("1"));
        assert_eq!(msg.payload, InboundPayload::Json(json!({"config": {}})));
    }

    #[test]
    fn v1_needs_all_four_keys_but_not_join_ref() {
        assert!(decode_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#
        )
        .is_ok());
        assert_eq!(
            decode_text(Vsn::V1, r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#),
            Err(DecodeError::WrongShape(
                "V1 message needs topic, event, payload and ref"
            ))
        );
        assert!(matches!(
            decode_text(Vsn::V1, r#"["1","1","t","e",{}]"#),
            Err(DecodeError::WrongShape(_))
        ));
        assert!(matches!(
            decode_text(Vsn::V1, r#"{"topic":1,"event":"e","payload":{},"ref":null}"#),
            Err(DecodeError::WrongShape(_))
        ));
    }

    #[test]
    fn decodes_v2_array_and_ignores_extra_elements() {
        let msg = decode_text(Vsn::V2, r#"[null,"7","phoenix","heartbeat",{},"extra"]"#).unwrap();
        assert_eq!(msg.join_ref, None);
        assert_eq!(msg.ref_.as_deref(), Some("7"));
        assert_eq!(msg.topic, "phoenix");
        assert_eq!(msg.event, "heartbeat");
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(decode_text(Vsn::V2, "not json"), Err(DecodeError::NotJson));
        assert!(matches!(
            decode_text(Vsn::V2, r#"["1","1","t","e"]"#),
            Err(DecodeError::WrongShape(_))
        ));
        assert!(matches!(
            decode_text(Vsn::V2, r#"{"topic":"t"}"#),
            Err(DecodeError::WrongShape(_))
        ));
        assert!(matches!(
            decode_text(Vsn::V2, r#"["1","1",5,"e",{}]"#),
            Err(DecodeError::WrongShape(_))
        ));
        assert!(matches!(
            decode_text(Vsn::V2, r#"[{},"1","t","e",{}]"#),
            Err(DecodeError::WrongShape(_))
        ));
    }

    #[test]
    fn decodes_kind_3_exact_layout() {
        // 0x03 | join_ref "1" | ref "3" | topic "realtime:room1" | event "move" | no metadata | JSON
        let mut frame = vec![3, 1, 1, 14, 4, 0, 1];
        frame.extend_from_slice(b"13realtime:room1move{\"x\":1}");
        let msg = decode_binary(Vsn::V2, &frame).unwrap();
        assert_eq!(msg.join_ref.as_deref(), Some("1"));
        assert_eq!(msg.ref_.as_deref(), Some("3"));
        assert_eq!(msg.topic, "realtime:room1");
        assert_eq!(msg.event, "broadcast");
        assert_eq!(
            msg.payload,
            InboundPayload::UserBroadcast(user("move", Encoding::Json, b"{\"x\":1}"))
        );
    }

    #[test]
    fn rejects_bad_binary() {
        assert_eq!(
            decode_binary(Vsn::V1, &[3, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::BinaryOnV1)
        );
        assert_eq!(decode_binary(Vsn::V2, &[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode_binary(Vsn::V2, &[0, 1, 2]),
            Err(DecodeError::UnknownBinaryKind(0))
        );
        assert_eq!(decode_binary(Vsn::V2, &[3, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(
            decode_binary(Vsn::V2, &[3, 5, 0, 0, 0, 0, 1, b'a']),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_binary(Vsn::V2, &[3, 1, 0, 0, 0, 0, 1, 0xff]),
            Err(DecodeError::NotUtf8)
        );
    }

    #[test]
    fn encodes_kind_4_exact_layout() {
        let frame = encode_user_broadcast("realtime:room1", &user("move", Encoding::Json, b"{\"x\":1}")).unwrap();
        let mut expected = vec![4, 14, 4, 0, 1];
        expected.extend_from_slice(b"realtime:room1move{\"x\":1}");
        assert_eq!(frame, expected);
    }

    #[test]
    fn kind_4_carries_metadata() {
        let mut u = user("e", Encoding::Binary, &[1, 2, 3]);
        u.meta = Some(json!({"id": "abc"}).as_object().unwrap().clone());
        let frame = encode_user_broadcast("t", &u).unwrap();
        let meta = br#"{"id":"abc"}"#;
        assert_eq!(&frame[..5], &[4, 1, 1, meta.len() as u8, 0]);
        assert_eq!(&frame[5..7], b"te");
        assert_eq!(&frame[7..7 + meta.len()], meta);
        assert_eq!(&frame[7 + meta.len()..], &[1, 2, 3]);
    }

    #[test]
    fn kind_4_refuses_fields_over_255_bytes() {
        assert_eq!(
            encode_user_broadcast(&"t".repeat(256), &user("e", Encoding::Json, b"{}")),
            None
        );
        assert!(encode_user_broadcast(&"t".repeat(255), &user("e", Encoding::Json, b"{}")).is_some());
    }

    #[test]
    fn encodes_v1_without_join_ref_and_v2_as_array() {
        let r = reply(Some("1"), Some("2"), "realtime:a", true, json!({}));
        let v1: Value = serde_json::from_str(&encode(Vsn::V1, &r)).unwrap();
        assert_eq!(
            v1,
            json!({"topic":"realtime:a","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"})
        );
        let v2: Value = serde_json::from_str(&encode(Vsn::V2, &r)).unwrap();
        assert_eq!(
            v2,
            json!(["1", "2", "realtime:a", "phx_reply", {"status":"ok","response":{}}])
        );
    }

    #[test]
    fn builders_follow_ref_conventions() {
        let p = push(Some("3"), "realtime:a", "system", json!({}));
        assert_eq!((p.join_ref.as_deref(), p.ref_.as_deref()), (Some("3"), None));
        let f = fanout("realtime:a", "broadcast", json!({}));
        assert_eq!((f.join_ref.as_deref(), f.ref_.as_deref()), (None, None));
        let c = close(Some("3"), "realtime:a");
        assert_eq!(
            (c.join_ref.as_deref(), c.ref_.as_deref(), c.event.as_str()),
            (Some("3"), Some("3"), "phx_close")
        );
        let e = reply(Some("1"), Some("2"), "t", false, json!({"reason": "unmatched topic"}));
        assert_eq!(
            e.payload,
            json!({"status":"error","response":{"reason":"unmatched topic"}})
        );
    }

    #[test]
    fn json_broadcast_goes_out_as_text_to_both() {
        let b = Broadcast::Json(json!({"type":"broadcast","event":"move","payload":{"x":1},"extra":true}));
        let Some(WireFrame::Text(v1)) = encode_broadcast(Vsn::V1, "realtime:r", &b) else {
            panic!()
        };
        let v1: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(v1["payload"]["extra"], json!(true));
        assert_eq!(v1["ref"], Value::Null);
        let Some(WireFrame::Text(v2)) = encode_broadcast(Vsn::V2, "realtime:r", &b) else {
            panic!()
        };
        let v2: Value = serde_json::from_str(&v2).unwrap();
        assert_eq!(
            v2,
            json!([null, null, "realtime:r", "broadcast", {"type":"broadcast","event":"move","payload":{"x":1},"extra":true}])
        );
    }

    #[test]
    fn user_broadcast_is_binary_for_v2_json_for_v1_and_skipped_when_opaque() {
        let b = Broadcast::User(user("move", Encoding::Json, b"{\"x\":1}"));
        assert!(matches!(
            encode_broadcast(Vsn::V2, "realtime:r", &b),
            Some(WireFrame::Binary(_))
        ));
        let Some(WireFrame::Text(v1)) = encode_broadcast(Vsn::V1, "realtime:r", &b) else {
            panic!()
        };
        let v1: Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(
            v1["payload"],
            json!({"type":"broadcast","event":"move","payload":{"x":1}})
        );
        let opaque = Broadcast::User(user("bin", Encoding::Binary, &[0, 159, 255]));
        assert_eq!(encode_broadcast(Vsn::V1, "realtime:r", &opaque), None);
        assert!(matches!(
            encode_broadcast(Vsn::V2, "realtime:r", &opaque),
            Some(WireFrame::Binary(_))
        ));
    }

    #[test]
    fn v1_receives_meta_of_user_broadcast() {
        let mut u = user("e", Encoding::Json, b"[1]");
        u.meta = Some(json!({"id": "x"}).as_object().unwrap().clone());
        assert_eq!(
            user_broadcast_as_json(&u),
            Some(json!({"type":"broadcast","event":"e","payload":[1],"meta":{"id":"x"}}))
        );
    }

    #[test]
    fn push_frame_round_trips_through_decoder() {
        let u = user("move", Encoding::Binary, &[9, 8, 7]);
        let frame = encode_user_broadcast_push("1", "2", "realtime:r", &u).unwrap();
        let msg = decode_binary(Vsn::V2, &frame).unwrap();
        assert_eq!(msg.payload, InboundPayload::UserBroadcast(u));
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9:_\\-é]{0,60}"
        }

        proptest! {
            #[test]
            fn kind_3_round_trips(join_ref in "[0-9]{1,5}", ref_ in "[0-9]{1,5}", topic in field(), event in field(),
                                  binary in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
                let u = UserBroadcast { event, encoding: if binary { Encoding::Binary } else { Encoding::Json }, payload, meta: None };
                let frame = encode_user_broadcast_push(&join_ref, &ref_, &topic, &u).unwrap();
                let msg = decode_binary(Vsn::V2, &frame).unwrap();
                prop_assert_eq!(msg.join_ref, Some(join_ref));
                prop_assert_eq!(msg.ref_, Some(ref_));
                prop_assert_eq!(msg.topic, topic);
                prop_assert_eq!(msg.payload, InboundPayload::UserBroadcast(u));
            }

            #[test]
            fn kind_4_layout_holds(topic in field(), event in field(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
                let u = UserBroadcast { event: event.clone(), encoding: Encoding::Binary, payload: payload.clone(), meta: None };
                let frame = encode_user_broadcast(&topic, &u).unwrap();
                prop_assert_eq!(frame[0], 4);
                prop_assert_eq!(frame[1] as usize, topic.len());
                prop_assert_eq!(frame[2] as usize, event.len());
                prop_assert_eq!(&frame[5..5 + topic.len()], topic.as_bytes());
                prop_assert_eq!(&frame[5 + topic.len() + event.len()..], &payload[..]);
            }

            #[test]
            fn text_frames_round_trip(v2 in any::<bool>(), join_ref in proptest::option::of("[0-9]{1,4}"),
                                      ref_ in proptest::option::of("[0-9]{1,4}"), topic in field(), event in field(), n in any::<i64>()) {
                let vsn = if v2 { Vsn::V2 } else { Vsn::V1 };
                let out = Outbound { join_ref: join_ref.clone(), ref_: ref_.clone(), topic: topic.clone(), event: event.clone(), payload: json!({"n": n}) };
                let msg = decode_text(vsn, &encode(vsn, &out)).unwrap();
                // V1 frames do not carry join_ref outbound.
                prop_assert_eq!(msg.join_ref, if v2 { join_ref } else { None });
                prop_assert_eq!(msg.ref_, ref_);
                prop_assert_eq!(msg.topic, topic);
                prop_assert_eq!(msg.event, event);
                prop_assert_eq!(msg.payload, InboundPayload::Json(json!({"n": n})));
            }

            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), text in ".{0,64}") {
                let _ = decode_binary(Vsn::V2, &bytes);
                let _ = decode_text(Vsn::V1, &text);
                let _ = decode_text(Vsn::V2, &text);
            }
        }
    }

    fn client_message(vsn_payload: InboundPayload) -> Inbound {
        Inbound {
            join_ref: Some("1".into()),
            ref_: Some("2".into()),
            topic: "realtime:room1".into(),
            event: "broadcast".into(),
            payload: vsn_payload,
        }
    }

    #[test]
    fn what_a_client_encodes_the_server_decodes_unchanged() {
        let json_msg = client_message(InboundPayload::Json(json!({"type": "broadcast", "event": "e", "payload": {"a": 1}})));
        for vsn in [Vsn::V1, Vsn::V2] {
            let WireFrame::Text(text) = encode_from_client(vsn, &json_msg).unwrap() else {
                panic!("a JSON message is text")
            };
            assert_eq!(decode_text(vsn, &text).unwrap(), json_msg);
        }
        let binary = client_message(InboundPayload::UserBroadcast(user("e", Encoding::Binary, &[0, 255, 7])));
        let WireFrame::Binary(bytes) = encode_from_client(Vsn::V2, &binary).unwrap() else {
            panic!("a user broadcast on V2 is binary")
        };
        assert_eq!(decode_binary(Vsn::V2, &bytes).unwrap(), binary);
        assert_eq!(encode_from_client(Vsn::V1, &binary), Err(EncodeError::BinaryOnV1));
    }

    #[test]
    fn a_json_user_broadcast_on_v1_goes_as_its_json_push() {
        let msg = client_message(InboundPayload::UserBroadcast(user("e", Encoding::Json, br#"{"a":1}"#)));
        let WireFrame::Text(text) = encode_from_client(Vsn::V1, &msg).unwrap() else {
            panic!("V1 is text")
        };
        let decoded = decode_text(Vsn::V1, &text).unwrap();
        assert_eq!(
            decoded.payload,
            InboundPayload::Json(json!({"type": "broadcast", "event": "e", "payload": {"a": 1}}))
        );
        assert_eq!(decoded.join_ref.as_deref(), Some("1"));
    }

    #[test]
    fn a_client_decodes_what_the_server_fans_out() {
        let mut u = user("cursor", Encoding::Json, br#"{"x":1}"#);
        u.meta = Some(json!({"id": "abc"}).as_object().unwrap().clone());
        let frame = encode_broadcast(Vsn::V2, "realtime:r", &Broadcast::User(u.clone())).unwrap();
        let got = decode_at_client(Vsn::V2, &frame).unwrap();
        assert_eq!(got.topic, "realtime:r");
        assert_eq!(got.event, "broadcast");
        assert_eq!(got.payload, InboundPayload::UserBroadcast(u.clone()));
        let text = encode_broadcast(Vsn::V1, "realtime:r", &Broadcast::User(u)).unwrap();
        let got = decode_at_client(Vsn::V1, &text).unwrap();
        assert_eq!(got.payload, InboundPayload::Json(json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}, "meta": {"id": "abc"}})));
        let reply = WireFrame::Text(encode(Vsn::V2, &reply(Some("1"), Some("2"), "realtime:r", true, json!({}))));
        assert_eq!(decode_at_client(Vsn::V2, &reply).unwrap().event, "phx_reply");
    }

    #[test]
    fn a_client_drops_broken_binary_frames() {
        let good = encode_user_broadcast("realtime:r", &user("e", Encoding::Binary, b"xyz")).unwrap();
        for cut in 0..8 {
            assert!(decode_at_client(Vsn::V2, &WireFrame::Binary(good[..cut].to_vec())).is_err(), "cut at {cut}");
        }
        assert_eq!(
            decode_at_client(Vsn::V2, &WireFrame::Binary(vec![9, 0, 0, 0, 0])),
            Err(DecodeError::UnknownBinaryKind(9))
        );
        assert_eq!(decode_at_client(Vsn::V1, &WireFrame::Binary(good)), Err(DecodeError::BinaryOnV1));
    }
}
