//! A client's token verified with a tenant's keys: its HS secret and a JWKS. Input: the token,
//! a newline, the JWKS document (absent: none). A token that verifies carries a `role` and an
//! `exp` in the future; a JWKS that reads is used as the tenant's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_shared::jwt::Keys;

const SECRET: &[u8] = b"fuzzing-secret-at-least-32-bytes-long";
const NOW_SECS: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (token, jwks) = match text.split_once('\n') {
        Some((token, jwks)) => (token, Some(jwks)),
        None => (text, None),
    };
    let keys = Keys::new(SECRET.to_vec());
    let keys = match jwks {
        Some(jwks) => match keys.clone().with_jwks(jwks) {
            Ok(with) => with,
            Err(_) => keys,
        },
        None => keys,
    };
    if let Ok(claims) = keys.verify(token, NOW_SECS) {
        assert!(claims.exp > NOW_SECS, "a verified token has not expired");
        assert!(claims.all.contains_key("role"));
    }
    let _ = keys.verify_any(token, NOW_SECS).map_err(|e| (e.message(), e.join_reason(), e.connect_message()));
});
