//! The `data` of the `postgres_changes` messages built from decoded row changes
//! (docs/protocol.md 3.2, 4.4–4.6). Pure: the catalog facts a payload needs (which columns are the
//! primary key, their `typname`s, what the subscriber's role may select, whether RLS is on) are
//! passed in as a [`View`].

use serde_json::{json, Map, Value};
use sluice_shared::bindings::Action;
use sluice_shared::pgvalue;

use crate::source::change::{Datum, Relation, RowChange};

/// Rows larger than this are sent with their small fields only (upstream's `max_record_bytes`).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// In an oversized row, fields whose value text is longer than this are dropped.
const MAX_FIELD_BYTES_WHEN_OVERSIZED: usize = 64;

/// What one subscriber may see of a table.
pub struct View<'a> {
    /// Per relation column: its `pg_type.typname`.
    pub typnames: &'a [String],
    /// Per relation column: part of the primary key.
    pub pk: &'a [bool],
    /// Per relation column: the subscriber's role may select it.
    pub selectable: &'a [bool],
    /// The binding's `select`, if any (primary-key columns are always included).
    pub select: Option<&'a [String]>,
    pub rls: bool,
}

impl View<'_> {
    fn shows(&self, relation: &Relation, index: usize) -> bool {
        self.selectable.get(index).copied().unwrap_or(false)
            && (self.pk.get(index).copied().unwrap_or(false)
                || self
                    .select
                    .is_none_or(|cols| cols.iter().any(|c| *c == relation.columns[index].name)))
    }
}

/// The `data` of the `postgres_changes` message a subscriber with this view receives.
pub fn data(change: &RowChange, view: &View) -> Value {
    let relation = &change.relation;
    let shown: Vec<usize> = (0..relation.columns.len())
        .filter(|&i| view.shows(relation, i))
        .collect();
    let columns: Vec<Value> = shown
        .iter()
        .map(|&i| json!({"name": relation.columns[i].name, "type": view.typnames.get(i).map(String::as_str).unwrap_or("")}))
        .collect();
    let render = |datum: &Datum, i: usize| match datum {
        Datum::Null => Some(Value::Null),
        Datum::Text(text) => Some(pgvalue::render(relation.columns[i].type_oid, text)),
        Datum::Unchanged => None,
    };
    let record = change.new.as_ref().map(|new| {
        let mut record = Map::new();
        for &i in &shown {
            // An unchanged TOAST value is taken from the old row when it carries it.
            let datum = match &new[i] {
                Datum::Unchanged => change.old_value(i).unwrap_or(&Datum::Unchanged),
                datum => datum,
            };
            if let Some(value) = render(datum, i) {
                record.insert(relation.columns[i].name.clone(), value);
            }
        }
        record
    });
    let old_record = match change.action {
        Action::Insert | Action::All => None,
        Action::Update | Action::Delete => {
            let mut old = Map::new();
            // Deletes on RLS tables are not checked against policies: only the key is shown.
            let key_only = change.action == Action::Delete && view.rls;
            for &i in &shown {
                if key_only && !view.pk.get(i).copied().unwrap_or(false) {
                    continue;
                }
                let datum = match (&change.old, &change.new) {
                    (Some(_), _) => change.old_value(i),
                    // UPDATE without an old row: the identity did not change; show it from the new row.
                    (None, Some(new)) if relation.columns[i].identity => new.get(i),
                    _ => None,
                };
                if let Some(value) = datum.and_then(|d| render(d, i)) {
                    old.insert(relation.columns[i].name.clone(), value);
                }
            }
            Some(old)
        }
    };
    let (record, old_record, errors) = limit_size(record, old_record);
    let mut data = json!({
        "schema": relation.schema,
        "table": relation.table,
        "commit_timestamp": commit_timestamp(change.commit_micros),
        "type": type_name(change.action),
        "columns": columns,
        "errors": errors,
    });
    if let Some(record) = record {
        data["record"] = Value::Object(record);
    }
    if let Some(old) = old_record {
        data["old_record"] = Value::Object(old);
    }
    data
}

/// The `data` of an error row (`Error 400`/`Error 401`): no columns, empty records, no timestamp.
pub fn error_data(change: &RowChange, error: &str) -> Value {
    let mut data = json!({
        "schema": change.relation.schema,
        "table": change.relation.table,
        "commit_timestamp": null,
        "type": type_name(change.action),
        "columns": [],
        "errors": [error],
    });
    if change.action != Action::Delete {
        data["record"] = json!({});
    }
    if change.action != Action::Insert {
        data["old_record"] = json!({});
    }
    data
}

pub const NO_PRIMARY_KEY: &str = "Error 400: Bad Request, no primary key";
pub const UNAUTHORIZED: &str = "Error 401: Unauthorized";
const PAYLOAD_TOO_LARGE: &str = "Error 413: Payload Too Large";

type Record = Option<Map<String, Value>>;

/// Oversized rows keep only their small fields, with the 413 error.
fn limit_size(record: Record, old: Record) -> (Record, Record, Value) {
    let size = |r: &Record| r.as_ref().map_or(0, |r| Value::Object(r.clone()).to_string().len());
    if size(&record) + size(&old) <= MAX_RECORD_BYTES {
        return (record, old, Value::Null);
    }
    let small = |r: Record| {
        r.map(|r| {
            r.into_iter()
                .filter(|(_, v)| match v {
                    Value::String(s) => s.len() <= MAX_FIELD_BYTES_WHEN_OVERSIZED,
                    other => other.to_string().len() <= MAX_FIELD_BYTES_WHEN_OVERSIZED,
                })
                .collect()
        })
    };
    (small(record), small(old), json!([PAYLOAD_TOO_LARGE]))
}

fn type_name(action: Action) -> &'static str {
    match action {
        Action::Insert | Action::All => "INSERT",
        Action::Update => "UPDATE",
        Action::Delete => "DELETE",
    }
}

/// `2026-01-02T03:04:05.678Z`: the commit time in UTC, milliseconds (upstream's format).
pub fn commit_timestamp(micros_since_2000: i64) -> String {
    const UNIX_TO_2000_MICROS: i64 = 946_684_800_000_000;
    chrono::DateTime::from_timestamp_micros(micros_since_2000 + UNIX_TO_2000_MICROS)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::source::change::RelColumn;
    use sluice_shared::filter::Cell;
    use sluice_shared::pgvalue::oid;
    use sluice_shared::position::Lsn;

    fn relation() -> Arc<Relation> {
        let col = |name: &str, type_oid, identity| RelColumn {
            name: name.into(),
            type_oid,
            identity,
        };
        Arc::new(Relation {
            relid: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                col("id", oid::INT8, true),
                col("body", oid::TEXT, false),
                col("meta", oid::JSONB, false),
            ],
        })
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn change(action: Action, new: Option<Vec<Datum>>, old: Option<Vec<Datum>>, old_is_key: bool) -> RowChange {
        RowChange {
            lsn: Lsn(1),
            seq: 0,
            commit_micros: 0,
            relation: relation(),
            action,
            new,
            old,
            old_is_key,
        }
    }

    const TYPES: [&str; 3] = ["int8", "text", "jsonb"];
    const PK: [bool; 3] = [true, false, false];
    const ALL: [bool; 3] = [true, true, true];

    fn view<'a>(typnames: &'a [String], selectable: &'a [bool], select: Option<&'a [String]>, rls: bool) -> View<'a> {
        View {
            typnames,
            pk: &PK,
            selectable,
            select,
            rls,
        }
    }

    fn typnames() -> Vec<String> {
        TYPES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn insert() {
        let types = typnames();
        let c = change(
            Action::Insert,
            Some(vec![t("5"), t("hi"), t(r#"{"a": 1}"#)]),
            None,
            false,
        );
        assert_eq!(
            data(&c, &view(&types, &ALL, None, false)),
            json!({"schema": "public", "table": "t", "commit_timestamp": "2000-01-01T00:00:00.000Z", "type": "INSERT",
                   "columns": [{"name": "id", "type": "int8"}, {"name": "body", "type": "text"}, {"name": "meta", "type": "jsonb"}],
                   "record": {"id": 5, "body": "hi", "meta": {"a": 1}}, "errors": null})
        );
    }

    #[test]
    fn update_without_old_row_shows_the_key_and_fills_unchanged_toast_when_it_can() {
        let types = typnames();
        let c = change(
            Action::Update,
            Some(vec![t("5"), t("hi"), Datum::Unchanged]),
            None,
            false,
        );
        let d = data(&c, &view(&types, &ALL, None, false));
        assert_eq!(d["record"], json!({"id": 5, "body": "hi"}));
        assert_eq!(d["old_record"], json!({"id": 5}));
        let c = change(
            Action::Update,
            Some(vec![t("5"), t("hi"), Datum::Unchanged]),
            Some(vec![t("5"), t("old"), t("[1]")]),
            false,
        );
        let d = data(&c, &view(&types, &ALL, None, false));
        assert_eq!(d["record"], json!({"id": 5, "body": "hi", "meta": [1]}));
        assert_eq!(d["old_record"], json!({"id": 5, "body": "old", "meta": [1]}));
    }

    #[test]
    fn delete_with_default_and_full_identity() {
        let types = typnames();
        let key = change(Action::Delete, None, Some(vec![t("5"), Datum::Null, Datum::Null]), true);
        let d = data(&key, &view(&types, &ALL, None, false));
        assert_eq!(d["old_record"], json!({"id": 5}));
        assert!(d.get("record").is_none());
        let full = change(Action::Delete, None, Some(vec![t("5"), t("x"), Datum::Null]), false);
        assert_eq!(
            data(&full, &view(&types, &ALL, None, false))["old_record"],
            json!({"id": 5, "body": "x", "meta": null})
        );
        assert_eq!(
            data(&full, &view(&types, &ALL, None, true))["old_record"],
            json!({"id": 5}),
            "RLS: key only"
        );
    }

    #[test]
    fn columns_the_role_cannot_select_or_did_not_select_are_left_out() {
        let types = typnames();
        let c = change(Action::Insert, Some(vec![t("5"), t("hi"), t("{}")]), None, false);
        let d = data(&c, &view(&types, &[true, false, true], None, false));
        assert_eq!(d["record"], json!({"id": 5, "meta": {}}));
        assert_eq!(d["columns"].as_array().unwrap().len(), 2);
        let select = ["body".to_string()];
        let d = data(&c, &view(&types, &ALL, Some(&select), false));
        assert_eq!(
            d["record"],
            json!({"id": 5, "body": "hi"}),
            "the key is always included"
        );
    }

    #[test]
    fn oversized_rows_keep_small_fields_and_say_413() {
        let types = typnames();
        let big = "x".repeat(MAX_RECORD_BYTES + 1);
        let c = change(Action::Insert, Some(vec![t("5"), t(&big), t("{}")]), None, false);
        let d = data(&c, &view(&types, &ALL, None, false));
        assert_eq!(d["record"], json!({"id": 5, "meta": {}}));
        assert_eq!(d["errors"], json!(["Error 413: Payload Too Large"]));
    }

    #[test]
    fn error_rows() {
        let c = change(Action::Update, Some(vec![t("5"), t("hi"), t("{}")]), None, false);
        assert_eq!(
            error_data(&c, UNAUTHORIZED),
            json!({"schema": "public", "table": "t", "commit_timestamp": null, "type": "UPDATE", "columns": [],
                   "record": {}, "old_record": {}, "errors": ["Error 401: Unauthorized"]})
        );
    }

    #[test]
    fn filter_cells() {
        let c = change(Action::Delete, None, Some(vec![t("5"), Datum::Null, Datum::Null]), true);
        assert_eq!(c.cell(0), Cell::Text("5"));
        assert_eq!(c.cell(1), Cell::Absent, "not in a key-only identity");
        let c = change(
            Action::Update,
            Some(vec![t("5"), Datum::Null, Datum::Unchanged]),
            None,
            false,
        );
        assert_eq!(c.cell(1), Cell::Null);
        assert_eq!(c.cell(2), Cell::Absent);
        assert_eq!(c.key(&[0]), Some(vec!["5".to_string()]));
    }

    #[test]
    fn timestamps() {
        // 2026-01-02T03:04:05.678901Z
        let micros: i64 = 1_767_323_045_678_901 - 946_684_800_000_000;
        assert_eq!(commit_timestamp(micros), "2026-01-02T03:04:05.678Z");
    }
}
