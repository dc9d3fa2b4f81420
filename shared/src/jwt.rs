//! JWT verification for sockets and channels (docs/protocol.md 1.4). The caller passes the time in.

use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, Claims as JwtClaims, Token, UntrustedToken, ValidationError};
use serde_json::{Map, Value};

use crate::texts;

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
    /// The token's `role` is not one the tenant lets clients use ([`Keys::allowing_roles`]).
    RoleNotAllowed {
        role: String,
    },
    Expired {
        seconds_ago: i64,
    },
    /// `nbf` is later than now (beyond [`NBF_LEEWAY_SECS`] of clock skew).
    NotYetValid {
        seconds_early: i64,
    },
}

/// Clock skew forgiven on `nbf`: an issuer's clock a little ahead must not lock users out.
pub const NBF_LEEWAY_SECS: i64 = 30;

impl AuthError {
    /// The text of an HTTP rejection of the WebSocket upgrade.
    pub fn connect_message(&self) -> String {
        match self {
            AuthError::Missing => texts::API_KEY_MISSING.into(),
            AuthError::Expired { .. } => texts::TOKEN_EXPIRED.into(),
            other => other.message(),
        }
    }

    /// The message used inside channels (join errors and `system` messages).
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => texts::API_KEY_MISSING.into(),
            AuthError::Malformed => texts::JWT_MALFORMED.into(),
            AuthError::BadSignature => texts::JWT_BAD_SIGNATURE.into(),
            AuthError::Signer => texts::JWT_SIGNER.into(),
            AuthError::MissingRoleOrExp => texts::JWT_ROLE_AND_EXP.into(),
            AuthError::RoleNotAllowed { role } => texts::role_not_allowed(role),
            AuthError::Expired { seconds_ago } => texts::token_expired_ago(*seconds_ago),
            AuthError::NotYetValid { seconds_early } => texts::token_not_yet_valid(*seconds_early),
        }
    }

    /// Upstream's error code for the situation (`ERROR_CODES.md`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed | AuthError::Missing => "MalformedJWT",
            AuthError::BadSignature => "JwtSignatureError",
            AuthError::Signer => "JwtSignerError",
            AuthError::MissingRoleOrExp
            | AuthError::RoleNotAllowed { .. }
            | AuthError::Expired { .. }
            | AuthError::NotYetValid { .. } => "InvalidJWTToken",
        }
    }

    /// The `Code: message` reason of a failed `phx_join`.
    pub fn join_reason(&self) -> String {
        format!("{}: {}", self.code(), self.message())
    }
}

/// The keys a tenant's tokens are verified with: its HS secret, and a JWKS for asymmetric
/// algorithms (and HS keys by `kid`); and the roles its clients' tokens may carry.
#[derive(Clone, Debug)]
pub struct Keys {
    secret: Vec<u8>,
    jwks: Vec<Jwk>,
    allowed_roles: Vec<String>,
}

/// The roles clients' tokens may carry unless a tenant says otherwise: Supabase's API roles. A
/// token signed for another role (`postgres`, a role with a careless grant) is refused, since the
/// replicator checks RLS as the token's role and may be able to become any.
pub const DEFAULT_ALLOWED_ROLES: [&str; 3] = ["anon", "authenticated", "service_role"];

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(Vec::new())
    }
}

#[derive(Clone, Debug)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Clone, Debug)]
enum PublicKey {
    Hmac(Vec<u8>),
    Rsa(Box<RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(<Ed25519 as Algorithm>::VerifyingKey),
}

impl Keys {
    pub fn new(secret: Vec<u8>) -> Keys {
        Keys {
            secret,
            jwks: Vec::new(),
            allowed_roles: DEFAULT_ALLOWED_ROLES.map(String::from).to_vec(),
        }
    }

    /// The roles [`Keys::verify`] accepts, instead of [`DEFAULT_ALLOWED_ROLES`] (the tenant's
    /// `allowed_roles`).
    pub fn allowing_roles(mut self, roles: &[String]) -> Keys {
        self.allowed_roles = roles.to_vec();
        self
    }

    /// Adds the keys of a JWKS document (`{"keys": [...]}`). Keys of types sluice cannot use
    /// are an error, so a typo in the configuration is found at once.
    pub fn with_jwks(mut self, jwks: &str) -> Result<Keys, String> {
        let doc: Value = serde_json::from_str(jwks).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS needs a \"keys\" array")?;
        for (i, raw) in keys.iter().enumerate() {
            let kid = raw.get("kid").and_then(Value::as_str).map(str::to_string);
            let jwk: JsonWebKey = serde_json::from_value(raw.clone()).map_err(|e| format!("JWKS key {i}: {e}"))?;
            let key = match &jwk {
                JsonWebKey::Symmetric { secret } => PublicKey::Hmac(secret.to_vec()),
                JsonWebKey::Rsa { .. } => PublicKey::Rsa(Box::new(
                    RsaPublicKey::try_from(&jwk).map_err(|e| format!("JWKS key {i}: {e}"))?,
                )),
                JsonWebKey::EllipticCurve { curve, x, y, .. } if curve == "P-256" => {
                    // Found by fuzzing: coordinates of another length panicked in the conversion.
                    let (Ok(x), Ok(y)) = (<[u8; 32]>::try_from(x.as_ref()), <[u8; 32]>::try_from(y.as_ref())) else {
                        return Err(format!("JWKS key {i}: a P-256 key's x and y are 32 bytes each"));
                    };
                    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                    PublicKey::P256(
                        p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                            .map_err(|e| format!("JWKS key {i}: {e}"))?,
                    )
                }
                JsonWebKey::KeyPair { .. } => {
                    PublicKey::Ed25519(TryFrom::try_from(&jwk).map_err(|e| format!("JWKS key {i}: {e}"))?)
                }
                _ => {
                    return Err(format!(
                        "JWKS key {i}: unsupported key type or curve (use oct, RSA, EC P-256 or OKP Ed25519)"
                    ))
                }
            };
            self.jwks.push(Jwk { kid, key });
        }
        Ok(self)
    }

    /// Verifies `token` and checks `role` (present and allowed) and `exp` at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, AuthError> {
        let claims = claims_of(&self.verify_any(token, now_secs)?, now_secs)?;
        if !self.allowed_roles.contains(&claims.role) {
            return Err(AuthError::RoleNotAllowed { role: claims.role });
        }
        Ok(claims)
    }

    /// Verifies the signature (and `exp`, when present) of a token with any claims: admin tokens
    /// need no `role`.
    pub fn verify_any(&self, token: &str, now_secs: i64) -> Result<JwtClaims<Map<String, Value>>, AuthError> {
        // Upstream strips whitespace and newlines that proxies and copy-paste leave in keys.
        let token: String = token.chars().filter(|c| !c.is_whitespace()).collect();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let untrusted = UntrustedToken::new(&token).map_err(|_| AuthError::Malformed)?;
        let kid = untrusted.header().key_id.as_deref();
        let by_kid = |pick: fn(&PublicKey) -> bool| {
            self.jwks
                .iter()
                .find(|k| k.kid.as_deref() == kid && kid.is_some() && pick(&k.key))
                .map(|k| &k.key)
        };
        let hmac_secret = match by_kid(|k| matches!(k, PublicKey::Hmac(_))) {
            Some(PublicKey::Hmac(secret)) => secret.as_slice(),
            _ => self.secret.as_slice(),
        };
        let alg = untrusted.algorithm();
        let verified: Result<Token<Map<String, Value>>, ValidationError> = match alg {
            "HS256" => Hs256.validator(&Hs256Key::new(hmac_secret)).validate(&untrusted),
            "HS384" => Hs384.validator(&Hs384Key::new(hmac_secret)).validate(&untrusted),
            "HS512" => Hs512.validator(&Hs512Key::new(hmac_secret)).validate(&untrusted),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                match by_kid(|k| matches!(k, PublicKey::Rsa(_))) {
                    Some(PublicKey::Rsa(key)) => Rsa::with_name(alg).validator(key.as_ref()).validate(&untrusted),
                    _ => return Err(AuthError::Signer),
                }
            }
            "ES256" => match by_kid(|k| matches!(k, PublicKey::P256(_))) {
                Some(PublicKey::P256(key)) => Es256.validator(key).validate(&untrusted),
                _ => return Err(AuthError::Signer),
            },
            "EdDSA" | "Ed25519" => match by_kid(|k| matches!(k, PublicKey::Ed25519(_))) {
                // jwt-compact checks the header's name against "EdDSA"; both names mean Ed25519.
                Some(PublicKey::Ed25519(key)) => {
                    jwt_compact::Renamed::new(Ed25519, if alg == "EdDSA" { "EdDSA" } else { "Ed25519" })
                        .validator(key)
                        .validate(&untrusted)
                }
                _ => return Err(AuthError::Signer),
            },
            _ => return Err(AuthError::Signer),
        };
        let verified = verified.map_err(|e| match e {
            ValidationError::InvalidSignature
            | ValidationError::InvalidSignatureLen { .. }
            | ValidationError::MalformedSignature(_) => AuthError::BadSignature,
            _ => AuthError::Malformed,
        })?;
        let (_, claims) = verified.into_parts();
        if let Some(exp) = claims.expiration.map(|e| e.timestamp()) {
            if exp <= now_secs {
                return Err(AuthError::Expired {
                    seconds_ago: now_secs - exp,
                });
            }
        }
        if let Some(nbf) = claims.not_before.map(|n| n.timestamp()) {
            if nbf > now_secs + NBF_LEEWAY_SECS {
                return Err(AuthError::NotYetValid {
                    seconds_early: nbf - now_secs,
                });
            }
        }
        Ok(claims)
    }
}

/// Verifies an HS256/384/512 token against `secret` and checks `role` and `exp`.
pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Claims, AuthError> {
    Keys::new(secret.to_vec()).verify(token, now_secs)
}

/// Whether an `Authorization` header holds `Bearer <JWT>` signed with one of `secrets` (HS*;
/// `exp` checked when present), as upstream checks admin and metrics tokens. No secret: no one.
pub fn bearer_signed_by(authorization: Option<&str>, secrets: &[&str], now_secs: i64) -> bool {
    let token = crate::rest::caller_token(authorization, None).unwrap_or("");
    secrets
        .iter()
        .any(|secret| Keys::new(secret.as_bytes().to_vec()).verify_any(token, now_secs).is_ok())
}

fn claims_of(claims: &JwtClaims<Map<String, Value>>, now_secs: i64) -> Result<Claims, AuthError> {
    let role = claims.custom.get("role").and_then(Value::as_str);
    let (Some(role), Some(exp)) = (role, claims.expiration) else {
        return Err(AuthError::MissingRoleOrExp);
    };
    let exp = exp.timestamp();
    if exp <= now_secs {
        return Err(AuthError::Expired {
            seconds_ago: now_secs - exp,
        });
    }
    let mut all = claims.custom.clone();
    all.insert("exp".into(), exp.into());
    if let Some(iat) = claims.issued_at {
        all.insert("iat".into(), iat.timestamp().into());
    }
    Ok(Claims {
        role: role.to_string(),
        exp,
        all,
    })
}

/// An HS256 token of `claims` signed with `secret` (the replicator's admin token for the
/// gateway's management API).
pub fn sign_hs256(claims: Map<String, Value>, secret: &[u8]) -> String {
    let header = jwt_compact::Header::empty();
    Hs256
        .token(&header, &JwtClaims::new(claims), &Hs256Key::new(secret))
        .expect("HS256 signs any JSON claims")
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
        let c = verify(
            &sign(json!({"role": "anon", "exp": NOW + 60, "sub": "u1"})),
            SECRET,
            NOW,
        )
        .unwrap();
        assert_eq!(c.role, "anon");
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.all["sub"], json!("u1"));
        assert_eq!(c.all["exp"], json!(NOW + 60));
    }

    #[test]
    fn bearer_tokens_of_admin_and_metrics_callers() {
        let secret = std::str::from_utf8(SECRET).unwrap();
        let header = format!("Bearer {}", sign(json!({"exp": NOW + 60})));
        assert!(bearer_signed_by(Some(&header), &["another-secret", secret], NOW));
        assert!(!bearer_signed_by(Some(&header), &["another-secret"], NOW));
        assert!(!bearer_signed_by(Some(&header), &[], NOW), "no secret: no one");
        assert!(!bearer_signed_by(Some(&header), &[secret], NOW + 61), "expired");
        assert!(!bearer_signed_by(None, &[secret], NOW));
        assert!(!bearer_signed_by(Some(&sign(json!({}))), &[secret], NOW), "not a bearer header");
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
        assert_eq!(
            expired.join_reason(),
            "InvalidJWTToken: Token has expired 12 seconds ago"
        );

        let no_role = verify(&sign(json!({"exp": NOW + 60})), SECRET, NOW).unwrap_err();
        assert_eq!(no_role.connect_message(), "Fields `role` and `exp` are required in JWT");
        let no_exp = verify(&sign(json!({"role": "anon"})), SECRET, NOW).unwrap_err();
        assert_eq!(no_exp, AuthError::MissingRoleOrExp);

        let bad_sig = verify(&sign(json!({"role": "anon", "exp": NOW + 60})), b"another-secret", NOW).unwrap_err();
        assert_eq!(bad_sig.connect_message(), "Failed to validate JWT signature");

        assert_eq!(
            verify("not a jwt", SECRET, NOW).unwrap_err().connect_message(),
            "The token provided is not a valid JWT"
        );
        assert_eq!(
            verify("", SECRET, NOW).unwrap_err().connect_message(),
            "API key is missing"
        );
    }

    #[test]
    fn only_the_allowed_roles_pass() {
        let token = |role: &str| sign(json!({"role": role, "exp": NOW + 60}));
        for role in DEFAULT_ALLOWED_ROLES {
            assert!(verify(&token(role), SECRET, NOW).is_ok(), "{role}");
        }
        let postgres = verify(&token("postgres"), SECRET, NOW).unwrap_err();
        assert_eq!(
            postgres,
            AuthError::RoleNotAllowed {
                role: "postgres".into()
            }
        );
        assert_eq!(
            postgres.join_reason(),
            "InvalidJWTToken: Role \"postgres\" is not allowed for clients of this project: sign tokens for one of the tenant's allowed_roles (by default anon, authenticated, service_role)"
        );
        let keys = Keys::new(SECRET.to_vec()).allowing_roles(&["reader".into()]);
        assert!(keys.verify(&token("reader"), NOW).is_ok());
        assert!(matches!(
            keys.verify(&token("anon"), NOW),
            Err(AuthError::RoleNotAllowed { .. })
        ));
        // Admin and metrics tokens are checked by signature only.
        assert!(keys.verify_any(&token("supabase_admin"), NOW).is_ok());
    }

    #[test]
    fn a_token_used_before_its_nbf_is_refused_beyond_the_leeway() {
        let with_nbf = |nbf: i64| {
            let mut c = C::new(json!({"role": "anon"}).as_object().unwrap().clone());
            c.expiration = Some(chrono_from(NOW + 3600));
            c.not_before = Some(chrono_from(nbf));
            Hs256.token(&Header::empty(), &c, &Hs256Key::new(SECRET)).unwrap()
        };
        let early = verify(&with_nbf(NOW + 600), SECRET, NOW).unwrap_err();
        assert_eq!(early, AuthError::NotYetValid { seconds_early: 600 });
        assert_eq!(
            early.join_reason(),
            "InvalidJWTToken: Token is not valid yet: it becomes valid in 600 seconds"
        );
        assert!(verify(&with_nbf(NOW + NBF_LEEWAY_SECS), SECRET, NOW).is_ok());
        assert!(verify(&with_nbf(NOW - 60), SECRET, NOW).is_ok());
    }

    #[test]
    fn alg_none_and_unknown_algs_are_refused() {
        // {"alg":"none"} . {"role":"service_role","exp":9999999999} . (empty signature)
        let none = "eyJhbGciOiJub25lIn0.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(verify(none, SECRET, NOW), Err(AuthError::Signer));
    }

    #[test]
    fn jwks_configuration_errors_say_what_is_wrong() {
        assert!(Keys::new(vec![]).with_jwks("nope").unwrap_err().contains("not JSON"));
        assert!(Keys::new(vec![]).with_jwks("{}").unwrap_err().contains("\"keys\""));
        let p384 = r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#;
        assert!(Keys::new(vec![]).with_jwks(p384).unwrap_err().starts_with("JWKS key 0"));
        // Found by fuzzing (fuzz/corpus/jwt/regression-ec-short-coordinate): a P-256 x of 33 bytes
        // panicked.
        let long_x = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF10Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m18HLN_tue659LNpXW2pCyStikYjKIWI5a0"}]}"#;
        assert_eq!(
            Keys::new(vec![]).with_jwks(long_x).unwrap_err(),
            "JWKS key 0: a P-256 key's x and y are 32 bytes each"
        );
    }

    #[test]
    fn hs_key_by_kid_and_unknown_kids() {
        // An oct key with a kid verifies HS tokens that name it; others use the tenant secret.
        let keys = Keys::new(SECRET.to_vec())
            .with_jwks(r#"{"keys":[{"kty":"oct","kid":"k1","k":"b3RoZXItc2VjcmV0"}]}"#)
            .unwrap();
        let mut c = C::new(json!({"role": "anon"}).as_object().unwrap().clone());
        c.expiration = Some(chrono_from(NOW + 60));
        let with_kid = Hs256
            .token(&Header::empty().with_key_id("k1"), &c, &Hs256Key::new(b"other-secret"))
            .unwrap();
        assert!(keys.verify(&with_kid, NOW).is_ok());
        assert!(keys
            .verify(&sign(json!({"role": "anon", "exp": NOW + 60})), NOW)
            .is_ok());
        // An RS256 token whose kid is not in the JWKS cannot get a signer.
        let rs = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUifQ.eyJyb2xlIjoiYW5vbiIsImV4cCI6OTk5OTk5OTk5OX0.c2ln";
        assert_eq!(keys.verify(rs, NOW), Err(AuthError::Signer));
    }
}
