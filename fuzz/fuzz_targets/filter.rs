//! A `postgres_changes` filter (`column=[not.]op.value`) parsed as the client sent it, then
//! evaluated on a row's value as the replicator does. Input: the filter, a newline, a type
//! number (an index into common column types), a newline, the column's value text (absent:
//! NULL).
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluice_shared::bindings;
use sluice_shared::filter::{Cell, Condition, Op};

/// bool, int8, int2, int4, text, oid, float4, float8, varchar, date, timestamp, timestamptz,
/// numeric, uuid, jsonb, int4[], text[].
const TYPES: [u32; 17] = [16, 20, 21, 23, 25, 26, 700, 701, 1043, 1082, 1114, 1184, 1700, 2950, 3802, 1007, 1009];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let filter = parts.next().unwrap_or("");
    let type_oid = TYPES[parts.next().and_then(|t| t.parse::<usize>().ok()).unwrap_or(0) % TYPES.len()];
    let cell = match parts.next() {
        Some(value) => Cell::Text(value),
        None => Cell::Null,
    };
    let binding = json!({"event": "*", "schema": "public", "table": "t", "filter": filter});
    let Ok(params) = bindings::parse(binding.as_object().unwrap()) else { return };
    for f in &params.filters {
        let Some(op) = Op::parse(&f.op) else { continue };
        let values: Vec<String> = match f.op.as_str() {
            "in" => f.value.trim_matches(['{', '}']).split(',').map(str::to_string).collect(),
            _ => vec![f.value.clone()],
        };
        if let Ok(condition) = Condition::new(&f.column, op, f.negate, values) {
            let passes = condition.passes(type_oid, cell);
            // SQL: a comparison with NULL is unknown, which fails negated or not.
            if matches!(cell, Cell::Null) && !matches!(op, Op::Is | Op::Isdistinct) {
                assert!(!passes, "a NULL passed {f:?}");
            }
        }
    }
});
