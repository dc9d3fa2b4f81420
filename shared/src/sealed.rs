//! Database passwords sealed for the replicator: the gateway stores a tenant's password sealed
//! with a public key (`DB_ENC_PUBLIC_KEY`) whose secret half only the replicators hold, derived
//! from `DB_ENC_KEY` (upstream's name for the key its passwords are encrypted with). A copy of the
//! gateway's storage, or of its configuration, opens nothing.
//!
//! The seal is libsodium's sealed box (X25519, XSalsa20-Poly1305, an ephemeral key per seal);
//! keys and sealed texts travel as hex.

use crypto_box::aead::rand_core::CryptoRngCore;
pub use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};

use crate::signature;

/// The shortest `DB_ENC_KEY` taken (upstream's is 16 characters).
pub const MIN_KEY_LEN: usize = 16;

/// The key pair `DB_ENC_KEY` stands for: the same at every start.
pub struct OpeningKey(SecretKey);

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpeningKey(..)")
    }
}

impl OpeningKey {
    /// From `DB_ENC_KEY`; `Err` says what to fix.
    pub fn from_enc_key(enc_key: &str) -> Result<OpeningKey, String> {
        if enc_key.len() < MIN_KEY_LEN {
            return Err(format!(
                "DB_ENC_KEY must be at least {MIN_KEY_LEN} characters: set it to a long random string"
            ));
        }
        let derived = signature::derive(enc_key, "sluice database password key");
        let bytes: [u8; 32] = signature::decode_hex(&derived)
            .and_then(|b| b.try_into().ok())
            .expect("HMAC-SHA256 is 32 bytes");
        Ok(OpeningKey(SecretKey::from(bytes)))
    }

    /// The public half, as the gateway's `DB_ENC_PUBLIC_KEY` takes it.
    pub fn public_hex(&self) -> String {
        signature::hex(self.0.public_key().as_bytes())
    }

    /// The text `sealed` (hex) holds; `Err` when it was sealed for another key or is damaged.
    pub fn open(&self, sealed: &str) -> Result<String, String> {
        let bytes = signature::decode_hex(sealed).ok_or("the sealed text is not hex")?;
        let opened = self
            .0
            .unseal(&bytes)
            .map_err(|_| "it was sealed with another DB_ENC_PUBLIC_KEY than this DB_ENC_KEY's, or is damaged")?;
        String::from_utf8(opened).map_err(|_| "it is not UTF-8".into())
    }
}

/// A public key (`DB_ENC_PUBLIC_KEY`, hex) texts are sealed with.
pub struct SealingKey(PublicKey);

impl SealingKey {
    pub fn from_hex(text: &str) -> Result<SealingKey, String> {
        let bytes: [u8; 32] = signature::decode_hex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or("DB_ENC_PUBLIC_KEY must be 64 hex digits: print it with `sluice-replicator db-enc-public-key` (DB_ENC_KEY set)")?;
        Ok(SealingKey(PublicKey::from(bytes)))
    }

    /// `text` sealed (hex): only the holder of the opening key reads it.
    pub fn seal(&self, text: &str, rng: &mut impl CryptoRngCore) -> String {
        let sealed = self.0.seal(rng, text.as_bytes()).expect("sealing takes any length");
        signature::hex(&sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn sealed_with_the_public_half_opened_with_the_key() {
        let key = OpeningKey::from_enc_key("0123456789abcdef").unwrap();
        let public = key.public_hex();
        assert_eq!(
            public,
            OpeningKey::from_enc_key("0123456789abcdef").unwrap().public_hex()
        );
        let sealing = SealingKey::from_hex(&public).unwrap();
        let sealed = sealing.seal("pä$$word", &mut OsRng);
        assert!(!sealed.contains("word"));
        assert_ne!(
            sealed,
            sealing.seal("pä$$word", &mut OsRng),
            "an ephemeral key per seal"
        );
        assert_eq!(key.open(&sealed).unwrap(), "pä$$word");
        let other = OpeningKey::from_enc_key("another key, 16+ chars").unwrap();
        assert!(other.open(&sealed).unwrap_err().contains("another DB_ENC_PUBLIC_KEY"));
        assert!(key.open("zz").is_err());
        assert!(OpeningKey::from_enc_key("short").unwrap_err().contains("16"));
        assert!(SealingKey::from_hex("abcd").is_err());
    }
}
