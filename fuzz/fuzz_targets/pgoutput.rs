//! pgoutput messages from the replication stream, decoded into row changes, rendered as
//! `postgres_changes` payloads and filtered as the replicator does. Input: messages, each a
//! big-endian u16 length then that many bytes (one XLogData's data).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut messages = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        messages.push(&tail[..len]);
        rest = &tail[len..];
    }
    sluice_replicator::fuzzing::pgoutput(messages);
});
