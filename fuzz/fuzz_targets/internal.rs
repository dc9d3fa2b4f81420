//! The internal API between the gateway and the replicator: every signed request's body as the
//! receiving side reads it, and the signature header itself. Input: one byte (which body), then
//! the body (JSON); for byte 255, the signature header, a newline, the body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use sluice_shared::internal::{
    Authorize, ChangeBatch, ChangeReceipt, ChannelRequest, ChannelResponse, DbBroadcasts, ReplayRequest, Reauthorize,
    Subscribe, Unsubscribe,
};
use sluice_shared::signature;

const SECRET: &str = "fuzzing-internal-secret";
const NOW_SECS: u64 = 1_800_000_000;

fn reads<T: DeserializeOwned>(body: &[u8]) {
    let _ = serde_json::from_slice::<T>(body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 16 {
        0 => reads::<Subscribe>(body),
        1 => reads::<Reauthorize>(body),
        2 => reads::<Unsubscribe>(body),
        3 => reads::<Authorize>(body),
        4 => reads::<ReplayRequest>(body),
        5 => reads::<ChangeBatch>(body),
        6 => reads::<ChangeReceipt>(body),
        7 => reads::<ChannelRequest>(body),
        8 => reads::<ChannelResponse>(body),
        9 => reads::<DbBroadcasts>(body),
        _ => {
            let (header, body) = match body.iter().position(|&b| b == b'\n') {
                Some(at) => (&body[..at], &body[at + 1..]),
                None => (body, &[][..]),
            };
            let Ok(header) = std::str::from_utf8(header) else { return };
            let verdict = signature::verify(Some(header), SECRET, NOW_SECS, "POST", "/v1/subscriptions", body);
            // Only a header made with the secret passes: the fuzzer cannot forge one.
            if verdict.is_ok() {
                let f: Vec<&str> = header.split(',').collect();
                let (t, n, tag) = (f[0][2..].parse::<u64>().unwrap(), f[1][2..].parse::<u64>().unwrap(), &f[2][3..]);
                let expected = signature::sign(SECRET, t, n, "POST", "/v1/subscriptions", body);
                assert_eq!(expected, format!("t={t},n={n},v1={}", tag.to_ascii_lowercase()));
            }
        }
    }
});
