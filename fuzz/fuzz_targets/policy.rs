//! A row-level security policy's text, as `pg_get_expr` prints it, read by the analyser that
//! decides which subscribers may see a row. Input: the table's name, a newline, the policy text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (table, qual) = text.split_once('\n').unwrap_or(("docs", text));
    sluice_replicator::fuzzing::policy(qual, table);
});
