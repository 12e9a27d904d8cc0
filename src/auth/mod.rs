//! Signing in: OAuth (GitHub, Google) with PKCE, passwords, and database-backed sessions.

pub mod limiter;
pub mod oauth;
pub mod sessions;
pub mod signin;
