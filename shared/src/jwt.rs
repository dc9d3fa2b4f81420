//! JWT verification for sockets and channels (PROTOCOL.md 1.4). The caller passes the time in.

use jwt_compact::alg::{Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key};
use jwt_compact::{AlgorithmExt, Claims as JwtClaims, Token, UntrustedToken, ValidationError};
use serde_json::{Map, Value};

/// The verified claims of a token. `role` and `exp` are guaranteed present.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Every claim, `exp` included, as the client's token carried them.
    pub all: Map<String, Value>,
}

/// Why a token was refused. The texts are upstream's; callers choose where they go (an HTTP body at
/// connect, a join error reason, a `system` message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    /// The header names an algorithm sluice has no key for.
    Signer,
    MissingRoleOrExp,
    Expired { seconds_ago: i64 },
}

impl AuthError {
    /// The text of an HTTP rejection of the WebSocket upgrade.
    pub fn connect_message(&self) -> String {
        match self {
            AuthError::Missing => "API key is missing".into(),
            AuthError::Expired { .. } => "Token has expired".into(),
            other => other.message(),
        }
    }

    /// The message used inside channels (join errors and `system` messages).
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "API key is missing".into(),
            AuthError::Malformed => "The token provided is not a valid JWT".into(),
            AuthError::BadSignature => "Failed to validate JWT signature".into(),
            AuthError::Signer => {
                "Failed to generate JWT signer, check your JWT secret or JWKS configuration".into()
            }
            AuthError::MissingRoleOrExp => "Fields `role` and `exp` are required in JWT".into(),
            AuthError::Expired { seconds_ago } => format!("Token has expired {seconds_ago} seconds ago"),
        }
    }

    /// The `Code: message` reason of a failed `phx_join`.
    pub fn join_reason(&self) -> String {
        let code = match self {
            AuthError::Malformed | AuthError::Missing => "MalformedJWT",
            AuthError::BadSignature => "JwtSignatureError",
            AuthError::Signer => "JwtSignerError",
            AuthError::MissingRoleOrExp | AuthError::Expired { .. } => "InvalidJWTToken",
        };
        format!("{code}: {}", self.message())
    }
}

/// The keys a tenant's tokens are verified with.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    secret: Vec<u8>,
}

impl Keys {
    pub fn new(secret: Vec<u8>) -> Keys {
        Keys { secret }
    }

    /// Verifies `token` and checks `role` and `exp` at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, AuthError> {
        verify(token, &self.secret, now_secs)
    }
}

/// Verifies an HS256/384/512 token against the tenant secret and checks `role` and `exp`.
pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Claims, AuthError> {
    // Upstream strips whitespace and newlines that proxies and copy-paste leave in keys.
    let token: String = token.chars().filter(|c| !c.is_whitespace()).collect();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let untrusted = UntrustedToken::new(&token).map_err(|_| AuthError::Malformed)?;
    let verified: Token<Map<String, Value>> = match untrusted.algorithm() {
        "HS256" => Hs256.validator(&Hs256Key::new(secret)).validate(&untrusted),
        "HS384" => Hs384.validator(&Hs384Key::new(secret)).validate(&untrusted),
        "HS512" => Hs512.validator(&Hs512Key::new(secret)).validate(&untrusted),
        _ => return Err(AuthError::Signer),
    }
    .map_err(|e| match e {
        ValidationError::InvalidSignature
        | ValidationError::InvalidSignatureLen { .. }
        | ValidationError::MalformedSignature(_) => AuthError::BadSignature,
        _ => AuthError::Malformed,
    })?;
    claims_of(verified.claims(), now_secs)
}

fn claims_of(claims: &JwtClaims<Map<String, Value>>, now_secs: i64) -> Result<Claims, AuthError> {
    let role = claims.custom.get("role").and_then(Value::as_str);
    let (Some(role), Some(exp)) = (role, claims.expiration) else {
        return Err(AuthError::MissingRoleOrExp);
    };
    let exp = exp.timestamp();
    if exp <= now_secs {
        return Err(AuthError::Expired { seconds_ago: now_secs - exp });
    }
    let mut all = claims.custom.clone();
    all.insert("exp".into(), exp.into());
    if let Some(iat) = claims.issued_at {
        all.insert("iat".into(), iat.timestamp().into());
    }
    Ok(Claims { role: role.to_string(), exp, all })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jwt_compact::{Claims as C, Header};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    pub const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters-long";
    pub const NOW: i64 = 1_800_000_000;

    pub fn sign(claims: Value) -> String {
        let mut c = C::new(claims.as_object().unwrap().clone());
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
            c.expiration = Some(chrono_from(exp));
            c.custom.remove("exp");
        }
        Hs256.token(&Header::empty(), &c, &Hs256Key::new(SECRET)).unwrap()
    }

    fn chrono_from(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn accepts_valid_token() {
        let c = verify(&sign(json!({"role": "anon", "exp": NOW + 60, "sub": "u1"})), SECRET, NOW).unwrap();
        assert_eq!(c.role, "anon");
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.all["sub"], json!("u1"));
        assert_eq!(c.all["exp"], json!(NOW + 60));
    }

    #[test]
    fn whitespace_is_ignored() {
        let t = sign(json!({"role": "anon", "exp": NOW + 60}));
        let spaced = format!(" {}\n{} ", &t[..10], &t[10..]);
        assert!(verify(&spaced, SECRET, NOW).is_ok());
    }

    #[test]
    fn refusals_have_upstream_texts() {
        let expired = verify(&sign(json!({"role": "anon", "exp": NOW - 12})), SECRET, NOW).unwrap_err();
        assert_eq!(expired, AuthError::Expired { seconds_ago: 12 });
        assert_eq!(expired.connect_message(), "Token has expired");
        assert_eq!(expired.join_reason(), "InvalidJWTToken: Token has expired 12 seconds ago");

        let no_role = verify(&sign(json!({"exp": NOW + 60})), SECRET, NOW).unwrap_err();
        assert_eq!(no_role.connect_message(), "Fields `role` and `exp` are required in JWT");
        let no_exp = verify(&sign(json!({"role": "anon"})), SECRET, NOW).unwrap_err();
        assert_eq!(no_exp, AuthError::MissingRoleOrExp);

        let bad_sig = verify(&sign(json!({"role": "anon", "exp": NOW + 60})), b"another-secret", NOW).unwrap_err();
        assert_eq!(bad_sig.connect_message(), "Failed to validate JWT signature");

        assert_eq!(verify("not a jwt", SECRET, NOW).unwrap_err().connect_message(), "The token provided is not a valid JWT");
        assert_eq!(verify("", SECRET, NOW).unwrap_err().connect_message(), "API key is missing");
    }

    #[test]
    fn alg_none_and_unknown_algs_are_refused() {
        // {"alg":"none"} . {"role":"service_role","exp":9999999999} . (empty signature)
        let none = "eyJhbGciOiJub25lIn0.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(verify(none, SECRET, NOW), Err(AuthError::Signer));
    }
}
