//! What every handler can reach. A leaf: it holds the shared resources (configuration,
//! database, caches, the gateway, sign-in machinery, shutdown signals) and imports no handler;
//! the router (`http`) is the root that wires handlers to it.

use std::sync::Arc;

use axum::extract::FromRef;
use axum_extra::extract::cookie::Key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::limiter::Failures;
use crate::auth::oauth::Provider;
use crate::cache::Cache;
use crate::config::Config;
use crate::db::Db;
use crate::gateway::Gateway;

/// Sign-in machinery shared by the sign-in routes.
pub struct AuthState {
    pub providers: Vec<Provider>,
    /// For provider calls: no redirects followed, short timeouts.
    pub http: reqwest::Client,
    /// Encrypts the OAuth-attempt and first-key cookies; derived from `NEXTAUTH_SECRET`.
    pub cookie_key: Key,
    pub failures: Failures,
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Self {
        state.auth.cookie_key.clone()
    }
}

/// What every handler can reach: a handle on the shared `Shared`, so that the copy each
/// request's extractors and middleware take is one reference count, not one per resource.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The resources every handler can reach, behind `AppState`.
pub struct Shared {
    pub config: Arc<Config>,
    pub db: Db,
    pub cache: Cache,
    pub gateway: Arc<Gateway>,
    pub auth: Arc<AuthState>,
    /// The address users reach (`PUBLIC_URL`, or the bound address when it is unset).
    pub public_url: url::Url,
    /// Work that must finish before the process exits (settlements, jobs).
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins: stop accepting, let open requests finish.
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period has run out: open streams and upstream
    /// exchanges stop where they are and settle for what was delivered.
    pub hard_stop: CancellationToken,
}
