//! The connect-time decision for a WebSocket upgrade (docs/protocol.md 1.2–1.4) and the naming of the
//! Durable Objects a socket lands in (docs/architecture.md).

use serde_json::{Map, Value};

use crate::frame::Vsn;
use crate::jwt::{AuthError, Claims, Keys};
use crate::texts;

/// The most bytes of `x-` headers kept for `request.headers`: they live in the socket's 16 KiB
/// hibernation attachment.
pub const MAX_X_HEADER_BYTES: usize = 4096;

/// What the client presented when opening the socket.
pub struct ConnectRequest<'a> {
    /// The tenant the host names (the caller resolved it: `tenants::Hosts`).
    pub tenant: &'a str,
    /// `x-api-key` header; takes precedence over the `apikey` query parameter.
    pub header_key: Option<&'a str>,
    pub query_key: Option<&'a str>,
    pub vsn: Option<&'a str>,
    /// Every request header, for [`x_headers`].
    pub headers: Vec<(String, String)>,
}

/// An accepted connection.
#[derive(Debug, PartialEq)]
pub struct Accepted {
    pub tenant: String,
    pub vsn: Vsn,
    pub claims: Claims,
    /// Its `x-` headers: what policies see as `request.headers`.
    pub headers: Map<String, Value>,
}

/// A refused connection: an HTTP status and the `{"error": ...}` text.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
    /// Whether upstream's connect error backoff applies (token problems).
    pub delay: bool,
    /// Upstream's error code for logs and metrics (`MissingAPIKey`, `InvalidJWTToken`, ...), or
    /// sluice's own where upstream has none.
    pub code: &'static str,
}

pub fn authorize(req: &ConnectRequest, keys: &Keys, now_secs: i64) -> Result<Accepted, Refused> {
    let Some(vsn) = Vsn::from_param(req.vsn) else {
        return Err(Refused {
            status: 400,
            message: texts::UNSUPPORTED_VSN.into(),
            delay: false,
            code: "UnsupportedVsn",
        });
    };
    let token = req.header_key.or(req.query_key).unwrap_or("");
    let claims = keys.verify(token, now_secs).map_err(|e: AuthError| Refused {
        status: 401,
        message: e.connect_message(),
        delay: true,
        code: match e {
            AuthError::Missing => "MissingAPIKey",
            other => other.code(),
        },
    })?;
    Ok(Accepted {
        tenant: req.tenant.to_string(),
        vsn,
        claims,
        headers: x_headers(&req.headers)?,
    })
}

/// The `x-` headers of a request as a JSON object (names lower-cased), which Realtime
/// Authorization policies read as `current_setting('request.headers')` (docs/protocol.md 5.6).
/// More than [`MAX_X_HEADER_BYTES`] is refused rather than cut, so a policy never sees half.
pub fn x_headers(headers: &[(String, String)]) -> Result<Map<String, Value>, Refused> {
    let kept: Map<String, Value> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .filter(|(name, _)| name.starts_with("x-"))
        .map(|(name, value)| (name, Value::String(value.clone())))
        .collect();
    // Measured as stored (JSON): found by fuzzing, quotes and backslashes escape to twice their
    // size, which a count of the raw bytes let past the bound.
    let bytes = Value::Object(kept.clone()).to_string().len();
    if bytes > MAX_X_HEADER_BYTES {
        return Err(Refused {
            status: 431,
            message: texts::headers_too_big(bytes, MAX_X_HEADER_BYTES),
            delay: false,
            code: "HeadersTooLarge",
        });
    }
    Ok(kept)
}

/// Tenant = the first DNS label of the host, port removed (upstream `get_external_id`).
pub fn tenant_from_host(host: &str) -> String {
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    host.split('.').next().unwrap_or(host).to_string()
}

/// `hub:{tenant}:{region}:{shard}`: the SocketHub that holds a socket.
pub fn hub_name(tenant: &str, region: &str, shard: u32) -> String {
    format!("hub:{tenant}:{region}:{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{sign, NOW, SECRET};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req<'a>(header_key: Option<&'a str>, query_key: Option<&'a str>, vsn: Option<&'a str>) -> ConnectRequest<'a> {
        ConnectRequest {
            tenant: "realtime-dev",
            header_key,
            query_key,
            vsn,
            headers: Vec::new(),
        }
    }

    #[test]
    fn tenants() {
        assert_eq!(tenant_from_host("abc.supabase.co"), "abc");
        assert_eq!(tenant_from_host("realtime-dev.localhost:4000"), "realtime-dev");
        assert_eq!(tenant_from_host("localhost"), "localhost");
        assert_eq!(tenant_from_host("127.0.0.1:8787"), "127");
    }

    #[test]
    fn accepts_query_key_and_prefers_header() {
        let good = sign(json!({"role": "anon", "exp": NOW + 60}));
        let ok = authorize(&req(None, Some(&good), Some("2.0.0")), &Keys::new(SECRET.to_vec()), NOW).unwrap();
        assert_eq!(
            (ok.tenant.as_str(), ok.vsn, ok.claims.role.as_str()),
            ("realtime-dev", Vsn::V2, "anon")
        );
        let refused = authorize(
            &req(Some("garbage"), Some(&good), None),
            &Keys::new(SECRET.to_vec()),
            NOW,
        )
        .unwrap_err();
        assert_eq!(refused.message, "The token provided is not a valid JWT");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            authorize(&req(None, None, None), &Keys::new(SECRET.to_vec()), NOW),
            Err(Refused {
                status: 401,
                message: "API key is missing".into(),
                delay: true,
                code: "MissingAPIKey",
            })
        );
        let expired = sign(json!({"role": "anon", "exp": NOW - 1}));
        assert_eq!(
            authorize(&req(None, Some(&expired), None), &Keys::new(SECRET.to_vec()), NOW)
                .unwrap_err()
                .message,
            "Token has expired"
        );
        assert_eq!(
            authorize(&req(None, None, Some("9")), &Keys::new(SECRET.to_vec()), NOW)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn keeps_x_headers_lower_cased_and_refuses_too_many() {
        let headers = vec![
            ("X-Device".to_string(), "kiosk".to_string()),
            ("authorization".to_string(), "Bearer t".to_string()),
            ("x-api-key".to_string(), "k".to_string()),
        ];
        assert_eq!(
            Value::Object(x_headers(&headers).unwrap()),
            json!({"x-device": "kiosk", "x-api-key": "k"})
        );
        let huge = vec![("x-big".to_string(), "a".repeat(MAX_X_HEADER_BYTES))];
        assert_eq!(x_headers(&huge).unwrap_err().status, 431);
        // Found by fuzzing: 3,000 quotes are 6,000 bytes stored.
        let escaped = vec![("x-q".to_string(), "\"".repeat(3000))];
        assert_eq!(x_headers(&escaped).unwrap_err().status, 431);
    }

    #[test]
    fn hub_names() {
        assert_eq!(hub_name("t", "eu", 3), "hub:t:eu:3");
    }
}
