//! How the gateway and the replicator prove an internal request comes from the other: each
//! request is signed with the shared secret, which itself never travels.
//!
//! `x-sluice-signature: t=<unix seconds>,n=<nonce>,v1=<hex HMAC-SHA256(secret, "<t>\n<n>\n<METHOD>\n<path>\n<body>")>`
//!
//! The receiver accepts a signature only within [`WINDOW_SECS`] of its time, so a captured
//! request cannot be replayed later; within the window the replicator also refuses a signature
//! it has already seen (the nonce, random per request, keeps two identical requests of one second
//! apart), and what the gateway receives is idempotent (hubs drop changes by LSN).
//! The clock is passed in: both sides must keep time (NTP) to within the window.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-sluice-signature";
/// How far a signature's time may be from the receiver's clock, either way.
pub const WINDOW_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature header: not a sluice peer, or one of a version that sent the bearer secret.
    Missing,
    Malformed,
    /// Older (or later) than the window: a replay, or clocks apart.
    OutsideWindow,
    /// The secret differs, or the request was altered.
    Invalid,
}

impl SignatureError {
    /// For logs and the 401 body: what to check.
    pub fn explain(self) -> &'static str {
        match self {
            SignatureError::Missing => "the request is not signed",
            SignatureError::Malformed => "the signature header is malformed",
            SignatureError::OutsideWindow => {
                "the signature is older than 30 s (a replay), or the two machines' clocks differ: keep them in sync"
            }
            SignatureError::Invalid => {
                "the signature does not match: the replicator's SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET"
            }
        }
    }
}

/// Whether requests to `url` would cross a network in clear text: `http://` to a host other than
/// loopback (`localhost`, `127.0.0.0/8`, `[::1]`). Neither side sends internal requests so.
pub fn cleartext_off_loopback(url: &str) -> bool {
    let Some(rest) = url.trim().strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

fn mac(secret: &str, time: u64, nonce: u64, method: &str, path: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(format!("{time}\n{nonce}\n{method}\n{path}\n").as_bytes());
    mac.update(body);
    mac
}

/// The header value for a request sent at `now_secs`; `nonce` is random (or otherwise unique).
pub fn sign(secret: &str, now_secs: u64, nonce: u64, method: &str, path: &str, body: &[u8]) -> String {
    let tag = mac(secret, now_secs, nonce, method, path, body).finalize().into_bytes();
    format!("t={now_secs},n={nonce},v1={}", hex(&tag))
}

/// A secret for `purpose` derived from `secret` (hex HMAC-SHA256): the same at every start, and
/// telling nothing of `secret`.
pub fn derive(secret: &str, purpose: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(purpose.as_bytes());
    hex(&mac.finalize().into_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request's signature header, read and checked for all but the body: well formed, a secret
/// to check it with, within the window. The receiver reads the body only then.
pub struct Signature {
    time: u64,
    nonce: u64,
    tag: Vec<u8>,
}

/// Reads `header` (see [`Signature`]). An empty secret accepts nothing.
pub fn read(header: Option<&str>, secret: &str, now_secs: u64) -> Result<Signature, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut fields = header.split(',');
    let mut field = |name: &str| fields.next().and_then(|f| f.strip_prefix(name));
    let (time, nonce, tag) = (|| {
        let time = field("t=")?.parse::<u64>().ok()?;
        let nonce = field("n=")?.parse::<u64>().ok()?;
        Some((time, nonce, field("v1=")?))
    })()
    .ok_or(SignatureError::Malformed)?;
    let tag = decode_hex(tag).ok_or(SignatureError::Malformed)?;
    if secret.is_empty() {
        return Err(SignatureError::Invalid);
    }
    if time.abs_diff(now_secs) > WINDOW_SECS {
        return Err(SignatureError::OutsideWindow);
    }
    Ok(Signature { time, nonce, tag })
}

impl Signature {
    /// Whether it signs this method, path and body with `secret`, in constant time.
    pub fn verify(&self, secret: &str, method: &str, path: &str, body: &[u8]) -> Result<(), SignatureError> {
        mac(secret, self.time, self.nonce, method, path, body)
            .verify_slice(&self.tag)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// Checks a request's header against the secret: [`read`], then [`Signature::verify`].
pub fn verify(
    header: Option<&str>,
    secret: &str,
    now_secs: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    read(header, secret, now_secs)?.verify(secret, method, path, body)
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_request_verifies_once_unaltered_and_in_time() {
        let header = sign(SECRET, 1_000, 7, "POST", "/v1/subscriptions", b"{}");
        assert!(header.starts_with("t=1000,n=7,v1="));
        assert_ne!(header, sign(SECRET, 1_000, 8, "POST", "/v1/subscriptions", b"{}"));
        let check = |h: &str, now, method, path, body: &[u8]| verify(Some(h), SECRET, now, method, path, body);
        assert_eq!(check(&header, 1_010, "POST", "/v1/subscriptions", b"{}"), Ok(()));
        assert_eq!(check(&header, 990, "POST", "/v1/subscriptions", b"{}"), Ok(()));
        assert_eq!(
            check(&header, 1_031, "POST", "/v1/subscriptions", b"{}"),
            Err(SignatureError::OutsideWindow)
        );
        assert_eq!(
            check(&header, 1_000, "DELETE", "/v1/subscriptions", b"{}"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            check(&header, 1_000, "POST", "/v1/replay", b"{}"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            check(&header, 1_000, "POST", "/v1/subscriptions", b"{ }"),
            Err(SignatureError::Invalid)
        );
        let later = header.replacen("t=1000", "t=1020", 1);
        assert_eq!(
            check(&later, 1_020, "POST", "/v1/subscriptions", b"{}"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(
                Some(&header),
                "another-secret-of-enough-length!!",
                1_000,
                "POST",
                "/v1/subscriptions",
                b"{}"
            ),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(Some(&header), "", 1_000, "POST", "/v1/subscriptions", b"{}"),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn clear_text_is_for_loopback_only() {
        for local in [
            "http://127.0.0.1:9187",
            "http://localhost:8787/x",
            "http://[::1]:1",
            "http://127.9.9.9",
            "https://db.example.com",
        ] {
            assert!(!cleartext_off_loopback(local), "{local}");
        }
        for remote in [
            "http://replicator.example.com",
            "http://10.0.0.5:9187",
            "http://127.0.0.1.nip.io",
            "http://u@example.com:80",
        ] {
            assert!(cleartext_off_loopback(remote), "{remote}");
        }
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            "",
            "t=1,n=1,v1=zz",
            "v1=00,t=1,n=1",
            "t=x,n=1,v1=00",
            "t=1;n=1;v1=00",
            "t=1,n=1,v1=0",
            "t=1,v1=00",
        ] {
            assert_eq!(
                verify(Some(bad), SECRET, 1, "GET", "/", b""),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(verify(None, SECRET, 1, "GET", "/", b""), Err(SignatureError::Missing));
    }

    #[test]
    fn matches_a_known_vector() {
        // openssl: printf '1000\n42\nGET\n/internal/v1/ping\n' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let header = sign(SECRET, 1_000, 42, "GET", "/internal/v1/ping", b"");
        assert_eq!(
            header,
            "t=1000,n=42,v1=bd39671768d9c1b1fcf17b337f6498d6753f535bccba8fd78556ed7fcf8b1eb8"
        );
    }
}
