//! A socket's whole conversation: frames decoded and handled by its session (joins, broadcasts,
//! presence, token refreshes, leaves) with the default limits. Input: one byte (bit 0: vsn 2.0.0),
//! then frames, one per line; a line starting with byte 0x02 is a binary frame (the rest of it).
//! Every reply must encode, and the session must survive its hibernation attachment (JSON)
//! unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluice_shared::frame::{decode_binary, decode_text, encode, Vsn};
use sluice_shared::jwt::{sign_hs256, Keys};
use sluice_shared::limits::{Limits, Rates};
use sluice_shared::session::{Ctx, Effect, Session};

const SECRET: &[u8] = b"fuzzing-secret-at-least-32-bytes-long";
const NOW_SECS: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frames)) = data.split_first() else { return };
    let vsn = if mode & 1 == 1 { Vsn::V2 } else { Vsn::V1 };
    let keys = Keys::new(SECRET.to_vec());
    let token = sign_hs256(
        json!({"role": "authenticated", "sub": "u1", "exp": NOW_SECS + 3600}).as_object().unwrap().clone(),
        SECRET,
    );
    let claims = keys.verify(&token, NOW_SECS).expect("the session's own token verifies");
    let limits = Limits::default();
    let mut rates = Rates::default();
    let mut keys_made = 0u32;
    let mut fresh_key = || {
        keys_made += 1;
        format!("key-{keys_made}")
    };
    let mut session = Session::new("socket-1".into(), "tenant".into(), vsn, &claims);
    for (i, line) in frames.split(|&b| b == b'\n').enumerate() {
        let decoded = match line.split_first() {
            Some((2, bytes)) => decode_binary(vsn, bytes),
            _ => match std::str::from_utf8(line) {
                Ok(text) => decode_text(vsn, text),
                Err(_) => continue,
            },
        };
        let Ok(message) = decoded else { continue };
        let mut ctx = Ctx {
            now_ms: (NOW_SECS as u64) * 1000 + i as u64 * 10,
            keys: &keys,
            limits: &limits,
            rates: &mut rates,
            users: 1,
            fresh_key: &mut fresh_key,
        };
        for effect in session.handle(message, &mut ctx) {
            if let Effect::Send(out) | Effect::RefuseJoin(out) = &effect {
                let _ = encode(vsn, out);
            }
        }
        assert!(session.channels.len() <= limits.max_channels_per_client as usize);
    }
    let _ = session.expire(NOW_SECS + 7200);
    let kept = serde_json::to_string(&session).expect("a session serializes");
    let restored: Session = serde_json::from_str(&kept).expect("a session's attachment reads back");
    assert_eq!(serde_json::to_string(&restored).unwrap(), kept);
});
