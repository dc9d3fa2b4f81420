//! A database connection string (`SLUICE_DATABASE_URL`, a tenant's `db_url`): libpq's URI and
//! key/value forms with sluice's TLS options. Input: the text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        sluice_replicator::fuzzing::connection_string(text);
    }
});
