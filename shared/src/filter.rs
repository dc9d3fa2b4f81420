//! Evaluating a subscription's filters against a row (docs/protocol.md 4.2): the typed comparison
//! upstream does in SQL (`'<v>'::<type> <op> '<f>'::<type>`), done in Rust on the text forms.
//!
//! Both sides must be in Postgres's canonical text form: the row's values come from pgoutput,
//! and the replicator canonicalizes each filter value once, at registration, by casting it to the
//! column's type and back to text in the same session settings (`DateStyle=ISO`, `TimeZone=UTC`).
//! Equal values then have equal texts, and ISO timestamps, dates and uuids order as their texts do.
//! Numbers compare as numbers, booleans as booleans; other types compare byte-wise (the `C`
//! collation; a database collation may order text differently for `lt`/`gt`).

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::pgvalue::oid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Is,
    Match,
    Imatch,
    Isdistinct,
}

impl Op {
    pub fn parse(op: &str) -> Option<Op> {
        Some(match op {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            "isdistinct" => Op::Isdistinct,
            _ => return None,
        })
    }
}

/// One `column=[not.]op.value` condition, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Condition {
    pub column: String,
    op: Op,
    negate: bool,
    /// Canonical texts: one value, the elements for `in`, the keyword for `is`.
    values: Vec<String>,
    /// `match`/`imatch`, and `like`/`ilike` translated to a regex.
    pattern: Option<Regex>,
}

/// The value a row has for a filter's column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    /// The change does not carry the column (an identity without it, unchanged TOAST).
    Absent,
    Null,
    Text(&'a str),
}

impl Condition {
    /// `values`: canonical texts (see the module doc). Fails with a message when a pattern does
    /// not compile or an `is` keyword is unknown.
    pub fn new(column: &str, op: Op, negate: bool, values: Vec<String>) -> Result<Condition, String> {
        let first = values.first().map(String::as_str).unwrap_or("");
        let pattern = match op {
            Op::Match | Op::Imatch => Some(
                RegexBuilder::new(first)
                    .case_insensitive(op == Op::Imatch)
                    .build()
                    .map_err(|e| format!("invalid regular expression: {e}"))?,
            ),
            Op::Like | Op::Ilike => Some(
                RegexBuilder::new(&like_to_regex(first))
                    .case_insensitive(op == Op::Ilike)
                    .dot_matches_new_line(true)
                    .build()
                    .map_err(|e| format!("invalid LIKE pattern: {e}"))?,
            ),
            _ => None,
        };
        if op == Op::Is
            && !matches!(
                first.to_ascii_lowercase().as_str(),
                "null" | "true" | "false" | "unknown"
            )
        {
            return Err(format!("invalid input for IS: {first}"));
        }
        Ok(Condition {
            column: column.to_string(),
            op,
            negate,
            values,
            pattern,
        })
    }

    /// Whether a row whose column (of type `type_oid`) holds `cell` passes. SQL semantics: a
    /// comparison with NULL is unknown, which fails whether negated or not; only `is` and
    /// `isdistinct` see NULLs. A column the change lacks fails.
    pub fn passes(&self, type_oid: u32, cell: Cell) -> bool {
        let value = match cell {
            Cell::Absent => return false,
            Cell::Null => None,
            Cell::Text(text) => Some(text),
        };
        let first = self.values.first().map(String::as_str).unwrap_or("");
        let outcome: Option<bool> = match (self.op, value) {
            (Op::Is, v) => Some(match first.to_ascii_lowercase().as_str() {
                "null" | "unknown" => v.is_none(),
                keyword => v.is_some_and(|v| is_true(v) == (keyword == "true")),
            }),
            (Op::Isdistinct, None) => Some(true),
            (Op::Isdistinct, Some(v)) => Some(compare(type_oid, v, first) != Some(std::cmp::Ordering::Equal)),
            // `NULL = any('{}')` is false, not unknown: no element to compare with.
            (Op::In, None) if self.values.is_empty() => Some(false),
            (_, None) => None,
            (Op::In, Some(v)) => Some(
                self.values
                    .iter()
                    .any(|f| compare(type_oid, v, f) == Some(std::cmp::Ordering::Equal)),
            ),
            (Op::Like | Op::Ilike | Op::Match | Op::Imatch, Some(v)) => self.pattern.as_ref().map(|p| p.is_match(v)),
            (op, Some(v)) => compare(type_oid, v, first).map(|ord| match op {
                Op::Eq => ord.is_eq(),
                Op::Neq => ord.is_ne(),
                Op::Lt => ord.is_lt(),
                Op::Lte => ord.is_le(),
                Op::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }),
        };
        match outcome {
            Some(result) => result != self.negate,
            None => false,
        }
    }
}

/// Whether sluice evaluates `op` on a column of type `type_oid` exactly as Postgres does (the
/// filter differential fuzz target checks it against Postgres). Registration refuses the others
/// rather than deliver by another rule: equality by text is wrong where equal values print
/// differently (`jsonb`, `citext`, `interval`, arrays of numbers), and byte order is wrong for
/// most types' `<`. `enum_type`: the column's type is an enum (labels are unique, so equality by
/// text is exact; their order is the declaration's, so `lt`/`gt` are not).
pub fn evaluated_exactly(op: Op, type_oid: u32, enum_type: bool) -> bool {
    let scalar = matches!(
        type_oid,
        oid::BOOL
            | oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::NUMERIC
            | oid::TEXT
            | oid::VARCHAR
            | oid::UUID
            | oid::DATE
            | oid::TIMESTAMP
            | oid::TIMESTAMPTZ
    );
    match op {
        Op::Is => true,
        Op::Like | Op::Ilike | Op::Match | Op::Imatch => matches!(type_oid, oid::TEXT | oid::VARCHAR),
        Op::Eq | Op::Neq | Op::In | Op::Isdistinct => scalar || enum_type,
        Op::Lt | Op::Lte | Op::Gt | Op::Gte => scalar,
    }
}

/// Whether every condition passes for a row; `cell(column)` gives a column's type and value.
pub fn all_pass<'a>(conditions: &[Condition], cell: impl Fn(&str) -> (u32, Cell<'a>)) -> bool {
    conditions.iter().all(|c| {
        let (type_oid, value) = cell(&c.column);
        c.passes(type_oid, value)
    })
}

fn is_true(text: &str) -> bool {
    text == "t" || text.eq_ignore_ascii_case("true")
}

/// Orders two canonical texts of one type; `None` when they cannot be compared.
fn compare(type_oid: u32, a: &str, b: &str) -> Option<std::cmp::Ordering> {
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Some(a.parse::<i128>().ok()?.cmp(&b.parse::<i128>().ok()?)),
        oid::NUMERIC => compare_numeric(a, b),
        oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ => Some(date_key(a).cmp(&date_key(b))),
        oid::FLOAT4 | oid::FLOAT8 => {
            if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
                return Some(x.cmp(&y));
            }
            // Postgres orders NaN above every number and equal to itself; f64 does not.
            let key = |t: &str| {
                t.parse::<f64>()
                    .ok()
                    .map(|f| if f.is_nan() { f64::INFINITY } else { f })
            };
            let (x, y) = (key(a)?, key(b)?);
            match (a == "NaN", b == "NaN") {
                (true, true) => Some(std::cmp::Ordering::Equal),
                (true, false) => Some(std::cmp::Ordering::Greater),
                (false, true) => Some(std::cmp::Ordering::Less),
                _ => x.partial_cmp(&y),
            }
        }
        oid::BOOL => Some(is_true(a).cmp(&is_true(b))),
        _ => Some(a.as_bytes().cmp(b.as_bytes())),
    }
}

/// Orders two `numeric` texts exactly, as Postgres: `-Infinity` < numbers < `Infinity` < `NaN`
/// (NaN equal to itself); any number of digits (an `f64` would make 10^30 + 1 equal to 10^30).
fn compare_numeric(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    // (class, negative, integer digits without leading zeros, fraction digits without trailing).
    fn parts(t: &str) -> Option<(u8, bool, &str, &str)> {
        match t {
            "NaN" => return Some((3, false, "", "")),
            "Infinity" => return Some((2, false, "", "")),
            "-Infinity" => return Some((0, false, "", "")),
            _ => {}
        }
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let (int, frac) = (int.trim_start_matches('0'), frac.trim_end_matches('0'));
        // Zero has no sign.
        let negative = negative && !(int.is_empty() && frac.is_empty());
        Some((1, negative, int, frac))
    }
    let (x, y) = (parts(a)?, parts(b)?);
    if x.0 != y.0 || x.0 != 1 {
        return Some(x.0.cmp(&y.0));
    }
    let magnitude = x.2.len().cmp(&y.2.len()).then_with(|| x.2.cmp(y.2)).then_with(|| x.3.cmp(y.3));
    Some(match (x.1, y.1) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    })
}

/// A sort key for ISO date and timestamp texts: `-infinity` first, `infinity` last, BC years
/// before AD ones, years of any number of digits (`10000-01-01` after `9999-12-31`).
fn date_key(text: &str) -> (u8, i64, &str) {
    match text {
        "-infinity" => return (0, 0, ""),
        "infinity" => return (2, 0, ""),
        _ => {}
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (year, rest) = text.split_once('-').unwrap_or((text, ""));
    let year: i64 = year.parse().unwrap_or(0);
    // 1 BC is year 0; within a year, BC or AD, the rest orders as text.
    (1, if bc { 1 - year } else { year }, rest)
}

/// A LIKE pattern as an anchored regex: `%` any run, `_` one character, `\` escapes.
fn like_to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push_str(&regex::escape(&next.to_string()));
                }
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cond(op: &str, negate: bool, values: &[&str]) -> Condition {
        Condition::new(
            "c",
            Op::parse(op).unwrap(),
            negate,
            values.iter().map(|v| v.to_string()).collect(),
        )
        .unwrap()
    }

    fn passes(op: &str, value: &str, type_oid: u32, cell: Cell) -> bool {
        cond(op, false, &[value]).passes(type_oid, cell)
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(passes("gt", "9", oid::INT4, Cell::Text("10")));
        assert!(!passes("gt", "9", oid::TEXT, Cell::Text("10")));
        assert!(passes("eq", "1.5", oid::NUMERIC, Cell::Text("1.50")));
        assert!(passes("lte", "2", oid::FLOAT8, Cell::Text("-1e3")));
        assert!(passes("gt", "1e308", oid::FLOAT8, Cell::Text("NaN")));
        assert!(passes(
            "eq",
            "9223372036854775807",
            oid::INT8,
            Cell::Text("9223372036854775807")
        ));
        assert!(!passes(
            "eq",
            "9223372036854775806",
            oid::INT8,
            Cell::Text("9223372036854775807")
        ));
    }

    #[test]
    fn numerics_compare_exactly_at_any_precision() {
        let n = oid::NUMERIC;
        assert!(!passes("eq", "1000000000000000000000000000000", n, Cell::Text("1000000000000000000000000000001")));
        assert!(passes("gt", "1000000000000000000000000000000", n, Cell::Text("1000000000000000000000000000001")));
        assert!(passes("eq", "0.10", n, Cell::Text("0.1")));
        assert!(passes("eq", "0", n, Cell::Text("-0.000")));
        assert!(passes("lt", "-1.5", n, Cell::Text("-2")));
        assert!(passes("gt", "99.99", n, Cell::Text("100")));
        assert!(passes("gt", "Infinity", n, Cell::Text("NaN")));
        assert!(passes("lt", "-99999999999999999999999999999999999999999", n, Cell::Text("-Infinity")));
        assert!(passes("eq", "NaN", n, Cell::Text("NaN")));
    }

    #[test]
    fn dates_order_across_eras_and_infinities() {
        let d = oid::DATE;
        assert!(passes("gt", "9999-12-31", d, Cell::Text("10000-01-01")));
        assert!(passes("lt", "0001-01-01", d, Cell::Text("0001-12-31 BC")));
        assert!(passes("lt", "0044-03-15 BC", d, Cell::Text("0045-03-15 BC")));
        assert!(passes("gt", "0044-03-15 BC", d, Cell::Text("0044-03-16 BC")));
        assert!(passes("lt", "0001-01-01 BC", oid::TIMESTAMPTZ, Cell::Text("-infinity")));
        assert!(passes("gt", "294276-12-31 23:59:59+00", oid::TIMESTAMPTZ, Cell::Text("infinity")));
    }

    #[test]
    fn only_exact_evaluations_are_accepted() {
        assert!(evaluated_exactly(Op::Gt, oid::NUMERIC, false));
        assert!(evaluated_exactly(Op::Eq, oid::UUID, false));
        assert!(evaluated_exactly(Op::Eq, 77_777, true), "an enum's labels compare as text");
        assert!(!evaluated_exactly(Op::Lt, 77_777, true), "an enum orders by declaration");
        assert!(!evaluated_exactly(Op::Eq, oid::JSONB, false), "1.0 and 1 are equal jsonb");
        assert!(!evaluated_exactly(Op::Gt, 1007, false), "int4[] does not order as text");
        assert!(!evaluated_exactly(Op::Like, oid::INT4, false));
        assert!(evaluated_exactly(Op::Is, oid::JSONB, false));
    }

    #[test]
    fn every_comparison_operator() {
        let t = oid::INT4;
        for (op, value, expected) in [
            ("eq", "5", true),
            ("neq", "5", false),
            ("lt", "6", true),
            ("lte", "5", true),
            ("gt", "5", false),
            ("gte", "5", true),
            ("isdistinct", "5", false),
            ("isdistinct", "4", true),
        ] {
            assert_eq!(passes(op, value, t, Cell::Text("5")), expected, "{op}.{value}");
            assert_eq!(
                cond(op, true, &[value]).passes(t, Cell::Text("5")),
                !expected,
                "not.{op}.{value}"
            );
        }
    }

    #[test]
    fn in_lists() {
        let c = cond("in", false, &["1", "2", "3"]);
        assert!(c.passes(oid::INT8, Cell::Text("2")));
        assert!(!c.passes(oid::INT8, Cell::Text("4")));
        assert!(cond("in", true, &["1", "2"]).passes(oid::INT8, Cell::Text("4")));
        // An empty list holds nothing, NULL included (`NULL = any('{}')` is false in Postgres;
        // found by filter_pg): `not.in.()` passes a NULL.
        assert!(!cond("in", false, &[]).passes(oid::BOOL, Cell::Null));
        assert!(cond("in", true, &[]).passes(oid::BOOL, Cell::Null));
        assert!(!cond("in", true, &["t"]).passes(oid::BOOL, Cell::Null), "a list: still unknown");
    }

    #[test]
    fn nulls_fail_comparisons_even_negated() {
        for op in ["eq", "neq", "lt", "in", "like", "match"] {
            assert!(!passes(op, "x", oid::TEXT, Cell::Null), "{op}");
            assert!(!cond(op, true, &["x"]).passes(oid::TEXT, Cell::Null), "not.{op}");
        }
        assert!(passes("is", "null", oid::TEXT, Cell::Null));
        assert!(!passes("is", "null", oid::TEXT, Cell::Text("")));
        assert!(cond("is", true, &["null"]).passes(oid::TEXT, Cell::Text("")));
        assert!(passes("isdistinct", "x", oid::TEXT, Cell::Null));
        assert!(!cond("isdistinct", true, &["x"]).passes(oid::TEXT, Cell::Null));
    }

    #[test]
    fn is_booleans() {
        assert!(passes("is", "true", oid::BOOL, Cell::Text("t")));
        assert!(!passes("is", "true", oid::BOOL, Cell::Text("f")));
        assert!(passes("is", "false", oid::BOOL, Cell::Text("f")));
        assert!(!passes("is", "false", oid::BOOL, Cell::Null));
        assert!(Condition::new("c", Op::Is, false, vec!["maybe".into()]).is_err());
    }

    #[test]
    fn like_and_match() {
        assert!(passes("like", "a%c", oid::TEXT, Cell::Text("abbbc")));
        assert!(!passes("like", "a%c", oid::TEXT, Cell::Text("ABC")));
        assert!(passes("ilike", "a%c", oid::TEXT, Cell::Text("ABC")));
        assert!(passes("like", "a_c", oid::TEXT, Cell::Text("a.c")));
        assert!(!passes("like", "a\\_c", oid::TEXT, Cell::Text("abc")));
        assert!(passes("like", "1.5%", oid::TEXT, Cell::Text("1.5x")));
        assert!(!passes("like", "1.5%", oid::TEXT, Cell::Text("105")));
        assert!(passes("match", "^h.l+o$", oid::TEXT, Cell::Text("hello")));
        assert!(!passes("match", "^H", oid::TEXT, Cell::Text("hello")));
        assert!(passes("imatch", "^H", oid::TEXT, Cell::Text("hello")));
        assert!(Condition::new("c", Op::Match, false, vec!["(".into()]).is_err());
    }

    #[test]
    fn iso_timestamps_order_as_text() {
        let t = oid::TIMESTAMPTZ;
        assert!(passes(
            "gt",
            "2026-01-01 00:00:00+00",
            t,
            Cell::Text("2026-01-01 00:00:00.5+00")
        ));
        assert!(passes(
            "lt",
            "2026-01-02 00:00:00+00",
            t,
            Cell::Text("2026-01-01 23:59:59+00")
        ));
    }

    #[test]
    fn absent_columns_fail() {
        assert!(!passes("isdistinct", "1", oid::INT4, Cell::Absent));
        assert!(!cond("eq", true, &["1"]).passes(oid::INT4, Cell::Absent));
        let conditions = [cond("eq", false, &["1"])];
        assert!(all_pass(&conditions, |_| (oid::INT4, Cell::Text("1"))));
        assert!(!all_pass(&conditions, |_| (oid::INT4, Cell::Absent)));
    }
}
