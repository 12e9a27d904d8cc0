//! Values encrypted at rest under `ENCRYPTION_KEY` (channel keys and extra headers):
//! ChaCha20-Poly1305 with a random 96-bit nonce per value, stored as base64 of
//! `version byte (1) ‖ nonce (12) ‖ ciphertext and tag`. The version byte leaves room for key
//! rotation. Generate a key with `openssl rand -base64 32`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};

/// The format of what `seal` writes.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The key values are sealed with. Its `Debug` prints nothing.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl PartialEq for Sealer {
    fn eq(&self, other: &Self) -> bool {
        crate::crypto::constant_time_eq(&hex::encode(self.key), &hex::encode(other.key))
    }
}

/// A sealed value that cannot be opened: another key, or altered.
#[derive(Debug, thiserror::Error)]
#[error("the value cannot be decrypted with this ENCRYPTION_KEY (another key, or altered data)")]
pub struct OpenError;

impl Sealer {
    /// The key from its text: 32 bytes as base64 (standard or URL-safe, padded or not) or as 64
    /// hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines.iter().find_map(|e| e.decode(text).ok()).ok_or_else(|| {
                "must be 32 bytes as base64 or 64 hex digits (generate one with `openssl rand -base64 32`)".to_owned()
            })?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("must be 32 bytes, not {} (generate one with `openssl rand -base64 32`)", b.len())
        })?;
        Ok(Self { key })
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.key.into())
    }

    /// Encrypts `plain` under a fresh random nonce.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        crate::crypto::fill_random(&mut nonce);
        // Encryption fails only for messages beyond 256 GiB; values here are at most kilobytes.
        let sealed = self.cipher().encrypt(&Nonce::from(nonce), plain.as_bytes()).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Decrypts what `seal` wrote.
    pub fn open(&self, sealed: &str) -> Result<String, OpenError> {
        let bytes = STANDARD.decode(sealed.trim()).map_err(|_| OpenError)?;
        if bytes.len() < 1 + NONCE_LEN + 16 || bytes[0] != VERSION {
            return Err(OpenError);
        }
        let nonce: [u8; NONCE_LEN] = bytes[1..=NONCE_LEN].try_into().map_err(|_| OpenError)?;
        let plain = self.cipher().decrypt(&Nonce::from(nonce), &bytes[1 + NONCE_LEN..]).map_err(|_| OpenError)?;
        String::from_utf8(plain).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_with_a_fresh_nonce_and_opens_only_with_the_same_key() {
        let key = Sealer::parse(&STANDARD.encode([7u8; 32])).unwrap();
        let (a, b) = (key.seal("sk-secret"), key.seal("sk-secret"));
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.contains("sk-secret"));
        assert_eq!(key.open(&a).unwrap(), "sk-secret");
        let other = Sealer::parse(&hex::encode([8u8; 32])).unwrap();
        assert!(other.open(&a).is_err());
        let mut tampered = STANDARD.decode(&a).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(&STANDARD.encode(tampered)).is_err());
        assert!(Sealer::parse("too-short").is_err());
        assert!(Sealer::parse(&STANDARD.encode([1u8; 16])).is_err());
        assert_eq!(format!("{key:?}"), "Sealer([redacted])");
    }
}
