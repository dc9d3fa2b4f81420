//! Filters differentially against Postgres: a `postgres_changes` filter registered as the
//! replicator registers it, evaluated as the replicator evaluates it on a row value, must agree
//! with Postgres's own answer for that row (`sluice_replicator::fuzzing::FilterOracle`). Input:
//! the filter after `c=` (`[not.]op.value`), a newline, a type number (an index into
//! `fuzzing::FILTER_TYPES`, the type of column `c`), a newline, the row value's text (absent: NULL).
//!
//! Needs a scratch Postgres: `SLUICE_FUZZ_DATABASE_URL` (`scripts/fuzz` starts one).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_replicator::fuzzing::FilterOracle;

fn oracle() -> &'static FilterOracle {
    static ORACLE: OnceLock<FilterOracle> = OnceLock::new();
    ORACLE.get_or_init(|| {
        let url = std::env::var("SLUICE_FUZZ_DATABASE_URL")
            .expect("set SLUICE_FUZZ_DATABASE_URL to a scratch Postgres (scripts/fuzz filter_pg starts one)");
        FilterOracle::connect(&url).unwrap_or_else(|e| panic!("cannot prepare the oracle's database: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let filter = parts.next().unwrap_or("");
    let type_index = parts.next().and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    oracle().check(&format!("c={filter}"), type_index, parts.next());
});
