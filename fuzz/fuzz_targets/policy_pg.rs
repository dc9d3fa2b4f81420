//! RLS policies differentially against Postgres: with the policies of the input on a table, what
//! the replicator delivers of its rows to each of a fixed set of subscribers must be exactly what
//! Postgres lets each of them select (`sluice_replicator::fuzzing::PolicyOracle`). Input: up to
//! three policy conditions (the SQL inside `using (…)`), one per line: permissive for
//! `authenticated`, permissive for everyone, restrictive.
//!
//! Needs a scratch Postgres: `SLUICE_FUZZ_DATABASE_URL` (`scripts/fuzz` starts one).
#![no_main]
use std::sync::Mutex;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_replicator::fuzzing::PolicyOracle;

fn oracle() -> &'static Mutex<PolicyOracle> {
    static ORACLE: OnceLock<Mutex<PolicyOracle>> = OnceLock::new();
    ORACLE.get_or_init(|| {
        let url = std::env::var("SLUICE_FUZZ_DATABASE_URL")
            .expect("set SLUICE_FUZZ_DATABASE_URL to a scratch Postgres (scripts/fuzz policy_pg starts one)");
        Mutex::new(PolicyOracle::connect(&url).unwrap_or_else(|e| panic!("cannot prepare the oracle's database: {e}")))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    oracle().lock().unwrap_or_else(|e| e.into_inner()).check(text);
});
