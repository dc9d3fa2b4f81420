//! Broadcast from the database (docs/protocol.md 5.4): rows inserted into `realtime.messages` (by
//! `realtime.send`, `realtime.send_binary`, `realtime.broadcast_changes`) become user broadcasts
//! to their topic's public or private channel, with metadata `{"id": <row id>}`.

use serde_json::{json, Value};
use sluice_shared::bindings::Action;
use sluice_shared::filter::Cell;
use sluice_shared::frame::{Broadcast, Encoding, UserBroadcast};
use sluice_shared::internal::{Access, DbMessage, ReplayRequest};

use crate::source::change::RowChange;

/// A broadcast for one channel.
#[derive(Debug)]
pub struct DbBroadcast {
    pub topic: String,
    pub access: Access,
    pub message: DbMessage,
}

/// Whether a change is on `realtime.messages`.
pub fn is_messages_table(change: &RowChange) -> bool {
    change.relation.schema == "realtime" && change.relation.table == "messages"
}

/// The broadcast an insert into `realtime.messages` asks for; `None` for other rows (presence
/// rows, rows missing a topic or event, updates and deletes).
pub fn from_change(change: &RowChange) -> Option<DbBroadcast> {
    if change.action != Action::Insert {
        return None;
    }
    let text = |name: &str| match change.relation.column(name).map(|i| change.cell(i)) {
        Some(Cell::Text(t)) => Some(t),
        _ => None,
    };
    if text("extension") != Some("broadcast") {
        return None;
    }
    let (topic, event, id) = (text("topic")?, text("event")?, text("id")?);
    let (encoding, payload) = match (text("payload"), text("binary_payload")) {
        (Some(json), _) => (
            Encoding::Json,
            serde_json::from_str::<Value>(json).ok()?.to_string().into_bytes(),
        ),
        (None, Some(hex)) => (Encoding::Binary, decode_bytea(hex)?),
        (None, None) => return None,
    };
    let access = match text("private") {
        Some("t") => Access::Private,
        _ => Access::Public,
    };
    Some(DbBroadcast {
        topic: topic.to_string(),
        access,
        message: DbMessage {
            lsn: change.lsn,
            seq: change.seq,
            broadcast: Broadcast::User(UserBroadcast {
                event: event.to_string(),
                encoding,
                payload,
                meta: json!({ "id": id }).as_object().cloned(),
            }),
        },
    })
}

/// A private channel's stored broadcasts since `since` (epoch ms), the newest `limit`, oldest
/// first, marked `replayed` (docs/protocol.md 5.5).
pub async fn replay(
    db: &tokio_postgres::Client,
    request: &ReplayRequest,
) -> Result<Vec<Broadcast>, tokio_postgres::Error> {
    let rows = db
        .query(
            "select id::text, event, payload::text, binary_payload from (
                 select id, event, payload, binary_payload, inserted_at from realtime.messages
                 where topic = $1 and private and extension = 'broadcast'
                   and inserted_at >= (to_timestamp($2::bigint / 1000.0) at time zone 'UTC')
                 order by inserted_at desc limit $3) newest
             order by inserted_at",
            &[&request.topic, &request.since, &i64::from(request.limit)],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let id: String = row.get(0);
            let event: Option<String> = row.get(1);
            let (encoding, payload) = match (row.get::<_, Option<String>>(2), row.get::<_, Option<Vec<u8>>>(3)) {
                (Some(json), _) => (Encoding::Json, json.into_bytes()),
                (None, Some(bytes)) => (Encoding::Binary, bytes),
                (None, None) => return None,
            };
            Some(Broadcast::User(UserBroadcast {
                event: event?,
                encoding,
                payload,
                meta: json!({ "id": id, "replayed": true }).as_object().cloned(),
            }))
        })
        .collect())
}

/// `\x0102ff` (bytea's hex text form) as bytes.
fn decode_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::change::{Datum, RelColumn, Relation};
    use sluice_shared::pgvalue::oid;
    use sluice_shared::position::Lsn;
    use std::sync::Arc;

    fn insert(values: [Option<&str>; 6]) -> RowChange {
        let names = ["topic", "extension", "payload", "event", "private", "id"];
        let mut columns: Vec<RelColumn> = names
            .iter()
            .map(|n| RelColumn {
                name: n.to_string(),
                type_oid: oid::TEXT,
                identity: false,
            })
            .collect();
        columns.push(RelColumn {
            name: "binary_payload".into(),
            type_oid: oid::BYTEA,
            identity: false,
        });
        let mut row: Vec<Datum> = values
            .iter()
            .map(|v| v.map_or(Datum::Null, |t| Datum::Text(t.into())))
            .collect();
        row.push(Datum::Null);
        RowChange {
            lsn: Lsn(7),
            seq: 1,
            commit_micros: 0,
            relation: Arc::new(Relation {
                relid: 1,
                schema: "realtime".into(),
                table: "messages".into(),
                columns,
            }),
            action: Action::Insert,
            new: Some(row),
            old: None,
            old_is_key: false,
        }
    }

    #[test]
    fn json_rows_become_broadcasts_with_their_id() {
        let b = from_change(&insert([
            Some("room"),
            Some("broadcast"),
            Some(r#"{"a": 1}"#),
            Some("ev"),
            Some("f"),
            Some("u-1"),
        ]))
        .unwrap();
        assert_eq!((b.topic.as_str(), b.access), ("room", Access::Public));
        let Broadcast::User(u) = b.message.broadcast else {
            panic!()
        };
        assert_eq!((u.event.as_str(), u.encoding), ("ev", Encoding::Json));
        assert_eq!(u.payload, br#"{"a":1}"#);
        assert_eq!(u.meta.unwrap()["id"], "u-1");
        assert_eq!((b.message.lsn, b.message.seq), (Lsn(7), 1));
    }

    #[test]
    fn presence_rows_and_rows_without_payload_are_skipped() {
        let row = |ext, payload| insert([Some("r"), Some(ext), payload, Some("e"), Some("t"), Some("i")]);
        assert!(from_change(&row("presence", Some("{}"))).is_none());
        assert!(from_change(&row("broadcast", None)).is_none());
        assert_eq!(
            from_change(&row("broadcast", Some("{}"))).unwrap().access,
            Access::Private
        );
    }

    #[test]
    fn bytea() {
        assert_eq!(decode_bytea("\\x01ff"), Some(vec![1, 255]));
        assert_eq!(decode_bytea("\\x1"), None);
        assert_eq!(decode_bytea("01"), None);
    }
}
