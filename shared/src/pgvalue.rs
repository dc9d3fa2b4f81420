//! Column values as `postgres_changes` payloads carry them: pgoutput's text form of a value,
//! rendered as Postgres's `to_jsonb` would render it (docs/protocol.md 4.6). Numbers become JSON
//! numbers, booleans booleans, json/jsonb nested JSON, arrays JSON arrays, timestamps ISO 8601
//! with `T`, bytea hex; everything else stays a string.
//!
//! The replication connection must run with `DateStyle=ISO` and `TimeZone=UTC` so that the text
//! forms are the ones parsed here.

use serde_json::{Number, Value};

/// Type OIDs sluice renders specially (from `pg_type`); anything else is a string.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const UUID: u32 = 2950;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of an array type, for the array types of the types above and the common
/// string-like ones (their elements render as strings).
pub fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1016 => oid::INT8,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1028 => oid::OID,
        199 => oid::JSON,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        3807 => oid::JSONB,
        // text, varchar, bpchar, name, uuid, date, time, timetz, interval, inet, cidr, char
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1041 | 651 | 1002 => 25,
        _ => return None,
    })
}

/// Renders one non-NULL value given in pgoutput text format.
pub fn render(type_oid: u32, text: &str) -> Value {
    if let Some(element) = array_element(type_oid) {
        return parse_array(text, element).unwrap_or_else(|| Value::String(text.to_string()));
    }
    match type_oid {
        oid::BOOL => Value::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            text.parse::<i64>().map(Value::from).unwrap_or_else(|_| text.into())
        }
        oid::FLOAT4 | oid::FLOAT8 => number(text),
        oid::NUMERIC => exact_number(text),
        oid::JSON | oid::JSONB => serde_json::from_str(text).unwrap_or_else(|_| text.into()),
        oid::TIMESTAMP => Value::String(text.replacen(' ', "T", 1)),
        oid::TIMESTAMPTZ => Value::String(iso_timestamptz(text)),
        oid::BYTEA => Value::String(text.strip_prefix("\\x").unwrap_or(text).to_string()),
        _ => Value::String(text.to_string()),
    }
}

/// A numeric value: a JSON number, or a string for NaN and the infinities (as `to_jsonb`).
fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match text.parse::<f64>().ok().and_then(Number::from_f64) {
        Some(n) => Value::Number(n),
        None => Value::String(text.to_string()),
    }
}

/// A `numeric`, digit for digit as Postgres printed it (`to_jsonb` keeps `12.50` and every digit
/// of `12345678901234567890.123`); NaN and the infinities as strings. Exact because the workspace
/// builds serde_json with `arbitrary_precision`: a JSON number keeps its text end to end.
fn exact_number(text: &str) -> Value {
    match serde_json::from_str::<Number>(text) {
        Ok(n) => Value::Number(n),
        Err(_) => Value::String(text.to_string()),
    }
}

/// `2026-01-02 03:04:05.123+00` → `2026-01-02T03:04:05.123+00:00`.
fn iso_timestamptz(text: &str) -> String {
    let t = text.replacen(' ', "T", 1);
    // The offset is the last `+hh`, `-hh` or `+hh:mm` after the time.
    let Some(sign) = t.rfind(['+', '-']).filter(|i| *i > 10) else {
        return t;
    };
    let offset = &t[sign + 1..];
    if offset.len() == 2 && offset.chars().all(|c| c.is_ascii_digit()) {
        format!("{t}:00")
    } else {
        t
    }
}

/// Parses a Postgres array literal (`{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`).
fn parse_array(text: &str, element: u32) -> Option<Value> {
    // Arrays with explicit bounds (`[0:1]={...}`) start after the `=`.
    if text.starts_with('[') {
        let eq = text.find('=')?;
        return parse_array(&text[eq + 1..], element);
    }
    let mut chars = text.char_indices().peekable();
    let value = parse_level(&mut chars, text, element)?;
    chars.next().is_none().then_some(value)
}

fn parse_level(chars: &mut std::iter::Peekable<std::str::CharIndices>, text: &str, element: u32) -> Option<Value> {
    if chars.next()?.1 != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek()?.1 == '}' {
        chars.next();
        return Some(Value::Array(items));
    }
    loop {
        match chars.peek()?.1 {
            '{' => items.push(parse_level(chars, text, element)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()?.1 {
                        '\\' => s.push(chars.next()?.1),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(render(element, &s));
            }
            _ => {
                let start = chars.peek()?.0;
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let raw = &text[start..end];
                items.push(if raw == "NULL" {
                    Value::Null
                } else {
                    render(element, raw)
                });
            }
        }
        match chars.next()?.1 {
            ',' => continue,
            '}' => return Some(Value::Array(items)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn scalars() {
        assert_eq!(render(oid::BOOL, "t"), json!(true));
        assert_eq!(render(oid::BOOL, "f"), json!(false));
        assert_eq!(render(oid::INT8, "9007199254740993"), json!(9007199254740993i64));
        assert_eq!(render(oid::INT4, "-5"), json!(-5));
        assert_eq!(render(oid::NUMERIC, "1.5"), json!(1.5));
        assert_eq!(render(oid::NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(render(oid::FLOAT8, "Infinity"), json!("Infinity"));
        assert_eq!(render(oid::FLOAT4, "0.25"), json!(0.25));
        assert_eq!(
            render(oid::JSONB, r#"{"a": [1, {"b": null}]}"#),
            json!({"a": [1, {"b": null}]})
        );
        assert_eq!(render(oid::JSON, "\"s\""), json!("s"));
        assert_eq!(render(oid::BYTEA, "\\x0102ff"), json!("0102ff"));
        assert_eq!(render(25, "plain text"), json!("plain text"));
        assert_eq!(
            render(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
    }

    #[test]
    fn numerics_keep_every_digit() {
        let text = |v: Value| serde_json::to_string(&v).unwrap();
        for digits in [
            "12345678901234567890.123",
            "12.50",
            "-0.000000000000000000001",
            "100000000000000000000",
        ] {
            assert_eq!(text(render(oid::NUMERIC, digits)), digits);
        }
        assert_eq!(
            text(render(1231, "{1.10,NaN,99999999999999999999}")),
            r#"[1.10,"NaN",99999999999999999999]"#
        );
        assert_eq!(
            text(render(oid::JSONB, r#"{"n": 12345678901234567890.123}"#)),
            r#"{"n":12345678901234567890.123}"#
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            render(oid::TIMESTAMPTZ, "2026-01-02 03:04:05.123+00"),
            json!("2026-01-02T03:04:05.123+00:00")
        );
        assert_eq!(
            render(oid::TIMESTAMPTZ, "2026-01-02 03:04:05+05:30"),
            json!("2026-01-02T03:04:05+05:30")
        );
        assert_eq!(
            render(oid::TIMESTAMPTZ, "2026-01-02 03:04:05-08"),
            json!("2026-01-02T03:04:05-08:00")
        );
        assert_eq!(
            render(oid::TIMESTAMP, "2026-01-02 03:04:05.123"),
            json!("2026-01-02T03:04:05.123")
        );
        assert_eq!(render(1082, "2026-01-02"), json!("2026-01-02"));
    }

    #[test]
    fn arrays() {
        assert_eq!(render(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            render(1009, r#"{"a b","c\"d",plain,NULL,"NULL"}"#),
            json!(["a b", "c\"d", "plain", null, "NULL"])
        );
        assert_eq!(render(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(render(1000, "{t,f}"), json!([true, false]));
        assert_eq!(render(3807, r#"{"{\"a\": 1}","[2]"}"#), json!([{"a": 1}, [2]]));
        assert_eq!(
            render(1185, r#"{"2026-01-02 03:04:05+00"}"#),
            json!(["2026-01-02T03:04:05+00:00"])
        );
        assert_eq!(render(1007, "{}"), json!([]));
        assert_eq!(render(1007, "[0:1]={7,8}"), json!([7, 8]));
        // Anything unparseable is passed through as text rather than lost.
        assert_eq!(render(1007, "{1,2"), json!("{1,2"));
    }
}
