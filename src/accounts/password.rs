//! Password hashing with argon2id, off the async runtime.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};

/// The shortest password accepted.
pub const MIN_LEN: usize = 10;

fn hash_blocking(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    crate::crypto::fill_random(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(anyhow::anyhow!("argon2: {e}")))
}

/// A real hash of a random password, checked when an account has none, so that a failure for a
/// missing account costs the same time as one for a wrong password.
static DUMMY: LazyLock<String> = LazyLock::new(|| hash_blocking(&crate::crypto::random_token(16)).unwrap_or_default());

/// Hashes `password` with argon2id and a random salt.
pub async fn hash(password: String) -> Result<String> {
    if password.chars().count() < MIN_LEN {
        return Err(Error::BadRequest(format!("passwords must be at least {MIN_LEN} characters")));
    }
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await.map_err(|e| Error::Internal(e.into()))?
}

/// True when `password` matches the PHC string `phc`; always false (after the same work) when
/// there is none.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let target = phc.as_deref().unwrap_or(DUMMY.as_str());
        let ok = Argon2::default().verify_password(password.as_bytes(), target).is_ok();
        ok && phc.is_some()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_reject() {
        let phc = hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("correct horse battery".into(), Some(phc.clone())).await);
        assert!(!verify("wrong horse battery".into(), Some(phc)).await);
        assert!(!verify("correct horse battery".into(), None).await);
        assert!(matches!(hash("short".into()).await, Err(Error::BadRequest(_))));
    }
}
