//! The replicator's settings as it reads them at start: `SLUICE_*` variables (`KEY=VALUE`
//! lines), or a tenants file (JSON). Input: one byte (0: variables, else a tenants file), then
//! the text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which {
        0 => sluice_replicator::fuzzing::settings(text),
        _ => {
            if let Ok(doc) = serde_json::from_str(text) {
                sluice_replicator::fuzzing::tenants_file(&doc);
            }
        }
    }
});
