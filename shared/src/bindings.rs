//! Parsing a `postgres_changes` binding of a join into subscription parameters, with upstream's
//! exact error texts (docs/protocol.md 4.1–4.2; `postgres_cdc_rls/subscriptions.ex`).
//!
//! Checks that need the database (columns exist, values cast to the column type, the role may
//! select them, `in` has at most 100 elements, the table is in the publication) are the
//! replicator's; this is the part every hub and replicator agree on.

use serde_json::{Map, Value};

use crate::texts;

/// The filter operators upstream accepts.
pub const OPERATORS: [&str; 13] = [
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "like",
    "ilike",
    "is",
    "match",
    "imatch",
    "isdistinct",
];

/// Which change types a binding wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    All,
    Insert,
    Update,
    Delete,
}

impl Action {
    /// From a binding's `event` (any case); anything else means every event, as upstream.
    pub fn from_event(event: &str) -> Action {
        match event.to_ascii_uppercase().as_str() {
            "INSERT" => Action::Insert,
            "UPDATE" => Action::Update,
            "DELETE" => Action::Delete,
            _ => Action::All,
        }
    }

    /// `*`, `INSERT`, `UPDATE` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::All => "*",
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }
}

/// One `column=[not.]op.value` condition. `in` values are kept as a Postgres array literal
/// (`(a,b)` becomes `{a,b}`), other values unquoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub column: String,
    pub op: String,
    pub value: String,
    pub negate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionParams {
    pub action: Action,
    /// `*` matches every schema / table of the publication.
    pub schema: String,
    pub table: String,
    /// ANDed.
    pub filters: Vec<Filter>,
    /// `None`: every column.
    pub select: Option<Vec<String>>,
}

/// The client-visible id of a binding: a hash of its canonical JSON (keys sorted), so identical
/// bindings get the same id everywhere (upstream uses `phash2` of the map the same way). A JSON
/// number below 2^31.
pub fn binding_id(binding: &Map<String, Value>) -> u64 {
    // FNV-1a, 32 bits: stable across builds and platforms, unlike std's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in canonical(&Value::Object(binding.clone())).bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u64::from(hash & 0x7fff_ffff)
}

/// JSON text with object keys sorted at every level.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The parameters as upstream prints them in subscribe errors:
/// `event: INSERT, schema: public, table: t, filters: [{"id", "eq", "1", false}], select: nil`.
pub fn params_to_log(params: &SubscriptionParams) -> String {
    let event = params.action.as_str();
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let filters: Vec<String> = params
        .filters
        .iter()
        .map(|f| {
            format!(
                "{{{}, {}, {}, {}}}",
                quote(&f.column),
                quote(&f.op),
                quote(&f.value),
                f.negate
            )
        })
        .collect();
    let select = match &params.select {
        None => "nil".to_string(),
        Some(cols) => format!("[{}]", cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")),
    };
    format!(
        "event: {event}, schema: {}, table: {}, filters: [{}], select: {select}",
        params.schema,
        params.table,
        filters.join(", ")
    )
}

/// Parses one binding as the client sent it.
pub fn parse(binding: &Map<String, Value>) -> Result<SubscriptionParams, String> {
    let action = Action::from_event(binding.get("event").and_then(Value::as_str).unwrap_or("*"));
    let select = match binding.get("select") {
        Some(Value::Array(cols)) => {
            let cols: Vec<String> = cols.iter().filter_map(Value::as_str).map(str::to_string).collect();
            (!cols.is_empty()).then_some(cols)
        }
        Some(Value::String(_)) => return Err(texts::BAD_SELECT.into()),
        _ => None,
    };
    let text = |key: &str| binding.get(key).and_then(Value::as_str);
    let has = |key: &str| binding.contains_key(key);
    let (schema, table, filters) = match (text("schema"), text("table"), text("filter")) {
        (Some(schema), Some(table), Some(filter)) => {
            let filters = parse_filters(filter).map_err(|reason| texts::bad_filter(&reason))?;
            (schema, table, filters)
        }
        (Some(schema), Some(table), None) if !has("filter") => (schema, table, Vec::new()),
        (Some(schema), None, None) if !has("table") && !has("filter") => (schema, "*", Vec::new()),
        (None, Some(table), None) if !has("schema") && !has("filter") => ("public", table, Vec::new()),
        _ if has("user_token") || has("auth_token") => return Err(texts::no_subscription_params("<redacted>")),
        _ => return Err(texts::no_subscription_params(&inspect(&Value::Object(binding.clone())))),
    };
    if select.is_some() && (schema == "*" || table == "*") {
        return Err(texts::SELECT_ON_WILDCARD.into());
    }
    Ok(SubscriptionParams {
        action,
        schema: schema.into(),
        table: table.into(),
        filters,
        select,
    })
}

fn parse_filters(filter: &str) -> Result<Vec<Filter>, String> {
    let trimmed = filter.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(trimmed)
        .iter()
        .map(|segment| parse_segment(segment))
        .collect()
}

/// Splits on commas outside parentheses and outside double quotes (a quote opens only after
/// `.`, `(` or `,`; backslash escapes inside quotes).
fn split_top_level(filter: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let (mut depth, mut quoted, mut prev) = (0usize, false, '\0');
    let mut chars = filter.chars();
    while let Some(c) = chars.next() {
        if quoted {
            current.push(c);
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        current.push(next);
                        prev = next;
                        continue;
                    }
                }
                '"' => quoted = false,
                _ => {}
            }
            prev = c;
            continue;
        }
        match c {
            '"' if matches!(prev, '.' | '(' | ',') => quoted = true,
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                segments.push(std::mem::take(&mut current));
                prev = '\0';
                continue;
            }
            _ => {}
        }
        current.push(c);
        prev = c;
    }
    segments.push(current);
    segments
}

fn parse_segment(segment: &str) -> Result<Filter, String> {
    let trimmed = segment.trim();
    if trimmed.is_empty() {
        return Err("filter must not contain empty segments (check for extra commas)".into());
    }
    let Some((column, rest)) = trimmed.split_once('=') else {
        return Err(inspect_list(&[trimmed]));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(op_value) => (true, op_value),
        None => (false, rest),
    };
    let Some((op, value)) = op_value.split_once('.') else {
        return Err(inspect_list(&[op_value]));
    };
    if !OPERATORS.contains(&op) {
        return Err(inspect_list(&[op, value]));
    }
    let value = if op == "in" {
        let inner = value.strip_prefix('(').and_then(|v| v.strip_suffix(')'));
        match inner {
            Some(inner) => format!("{{{inner}}}"),
            None => return Err("`in` filter value must be wrapped by parentheses".into()),
        }
    } else {
        unquote(value)
    };
    Ok(Filter {
        column: column.into(),
        op: op.into(),
        value,
        negate,
    })
}

/// `"a\"b"` → `a"b`; anything not a single well-formed quoted string is kept as it is.
fn unquote(value: &str) -> String {
    let Some(rest) = value.strip_prefix('"') else {
        return value.to_string();
    };
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => return value.to_string(),
            },
            '"' => return if chars.next().is_none() { out } else { value.to_string() },
            c => out.push(c),
        }
    }
    value.to_string()
}

/// Elixir's `inspect` of a list of strings, as upstream puts it in error texts.
fn inspect_list(items: &[&str]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|s| inspect(&Value::String((*s).to_string())))
        .collect();
    format!("[{}]", items.join(", "))
}

/// Elixir's `inspect` of a decoded JSON value: `%{"k" => v}` maps (keys sorted), `[..]` lists,
/// quoted strings, `nil`.
fn inspect(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(inspect).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} => {}", inspect(&Value::String((*k).clone())), inspect(v)))
                .collect();
            format!("%{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn p(v: Value) -> Result<SubscriptionParams, String> {
        parse(v.as_object().unwrap())
    }

    fn f(column: &str, op: &str, value: &str, negate: bool) -> Filter {
        Filter {
            column: column.into(),
            op: op.into(),
            value: value.into(),
            negate,
        }
    }

    #[test]
    fn schema_table_event_defaults() {
        let s = p(json!({"schema": "public", "table": "messages", "filter": "subject=eq.hey"})).unwrap();
        assert_eq!(
            s,
            SubscriptionParams {
                action: Action::All,
                schema: "public".into(),
                table: "messages".into(),
                filters: vec![f("subject", "eq", "hey", false)],
                select: None
            }
        );
        assert_eq!(p(json!({"schema": "public"})).unwrap().table, "*");
        assert_eq!(p(json!({"table": "messages"})).unwrap().schema, "public");
        assert_eq!(
            p(json!({"event": "insert", "schema": "s", "table": "t"}))
                .unwrap()
                .action,
            Action::Insert
        );
        assert_eq!(
            p(json!({"event": "TRUNCATE", "schema": "s", "table": "t"}))
                .unwrap()
                .action,
            Action::All
        );
        assert!(p(json!({"schema": "public", "table": "t", "filter": "   "}))
            .unwrap()
            .filters
            .is_empty());
    }

    #[test]
    fn every_operator_not_and_and() {
        for op in OPERATORS.iter().filter(|o| **o != "in") {
            assert_eq!(
                parse_filters(&format!("c={op}.v")).unwrap(),
                vec![f("c", op, "v", false)]
            );
        }
        assert_eq!(
            parse_filters("subject=not.like.hey%").unwrap(),
            vec![f("subject", "like", "hey%", true)]
        );
        assert_eq!(
            parse_filters("id=gt.0,id=lt.100").unwrap(),
            vec![f("id", "gt", "0", false), f("id", "lt", "100", false)]
        );
        assert_eq!(
            parse_filters("subject=in.(hidee,ho)").unwrap(),
            vec![f("subject", "in", "{hidee,ho}", false)]
        );
        assert_eq!(parse_filters("a=in.(1,2),b=eq.3").unwrap().len(), 2);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            parse_filters(r#"name=eq."a,b""#).unwrap(),
            vec![f("name", "eq", "a,b", false)]
        );
        assert_eq!(
            parse_filters(r#"name=eq."say \"hi\"",x=eq.1"#).unwrap(),
            vec![f("name", "eq", r#"say "hi""#, false), f("x", "eq", "1", false)]
        );
        // A quote that does not follow `.`, `(` or `,` is a plain character.
        assert_eq!(
            parse_filters(r#"name=eq.a"b"#).unwrap(),
            vec![f("name", "eq", r#"a"b"#, false)]
        );
    }

    #[test]
    fn upstream_error_texts() {
        let err = |v: Value| p(v).unwrap_err();
        assert_eq!(
            err(json!({"schema": "public", "table": "messages", "filter": "subject=foo.hey"})),
            r#"Error parsing `filter` params: ["foo", "hey"]"#
        );
        assert_eq!(
            err(json!({"schema": "public", "table": "messages", "filter": "undefined"})),
            r#"Error parsing `filter` params: ["undefined"]"#
        );
        assert_eq!(
            err(json!({"schema": "public", "table": "m", "filter": "a=eq.1,,b=eq.2"})),
            "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
        );
        assert_eq!(
            err(json!({"schema": "public", "table": "m", "filter": "a=in.1,2"})),
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        );
        assert_eq!(
            err(json!({"schema": "public", "table": "m", "filter": "a=eq"})),
            r#"Error parsing `filter` params: ["eq"]"#
        );
        assert_eq!(
            err(json!({})),
            "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: %{}"
        );
        assert_eq!(
            err(json!({"event": "*", "filter": "id=eq.1"})),
            r#"No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: %{"event" => "*", "filter" => "id=eq.1"}"#
        );
        assert_eq!(
            err(json!({"schema": "public", "table": "t", "select": "id"})),
            "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]"
        );
        assert_eq!(
            err(json!({"schema": "public", "select": ["id"]})),
            "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
        );
    }

    #[test]
    fn select_lists() {
        assert_eq!(
            p(json!({"schema": "public", "table": "t", "select": ["id", 5, "name"]}))
                .unwrap()
                .select,
            Some(vec!["id".into(), "name".into()])
        );
        assert_eq!(
            p(json!({"schema": "public", "table": "t", "select": []}))
                .unwrap()
                .select,
            None
        );
    }

    #[test]
    fn binding_ids_are_stable_and_shared_by_identical_bindings() {
        let a = json!({"event": "*", "schema": "public", "table": "t"});
        let b = json!({"table": "t", "schema": "public", "event": "*"});
        let c = json!({"event": "INSERT", "schema": "public", "table": "t"});
        let id = |v: &Value| binding_id(v.as_object().unwrap());
        assert_eq!(id(&a), id(&b));
        assert_ne!(id(&a), id(&c));
        assert!(id(&a) < 1 << 31);
        // Pinned: hubs and replicators of any version must agree.
        assert_eq!(
            id(&a),
            binding_id(
                json!({"event": "*", "schema": "public", "table": "t"})
                    .as_object()
                    .unwrap()
            )
        );
    }

    #[test]
    fn params_print_like_upstream() {
        let params = p(json!({"event": "INSERT", "schema": "public", "table": "t", "filter": "id=not.eq.1"})).unwrap();
        assert_eq!(
            params_to_log(&params),
            r#"event: INSERT, schema: public, table: t, filters: [{"id", "eq", "1", true}], select: nil"#
        );
        let params = p(json!({"schema": "public", "table": "t", "select": ["id"]})).unwrap();
        assert_eq!(
            params_to_log(&params),
            r#"event: *, schema: public, table: t, filters: [], select: ["id"]"#
        );
    }
}
