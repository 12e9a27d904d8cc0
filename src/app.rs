//! The startup seam: `Application::build` opens the database and binds the listener (port 0 in
//! tests), `port()` reports the real port, `run_until_stopped()` serves until SIGINT/SIGTERM or
//! `shutdown()`, then drains background work.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use axum_extra::extract::cookie::Key;

use crate::auth::limiter::Failures;
use crate::auth::oauth::Provider;
use crate::cache::Cache;
use crate::config::Config;
use crate::db::Db;
use crate::gateway::Gateway;
use crate::server::Connections;
use crate::{http, jobs};

/// The shared state lives in `crate::state`; these names stay here for callers that use them.
pub use crate::state::{AppState, AuthState};

pub struct Application {
    listener: TcpListener,
    /// The listener of `METRICS_ADDR`, when set.
    metrics_listener: Option<TcpListener>,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects to the database, migrates it (unless `AUTO_MIGRATE=false`) and binds
    /// `config.listen_addr`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db =
            Db::connect_with(&config.database_url, config.database_pool_size, config.database_acquire_timeout).await?;
        if config.auto_migrate {
            db.migrate().await.context("applying migrations")?;
        } else if !db.pending_migrations().await?.is_empty() {
            tracing::warn!("the database has unapplied migrations and AUTO_MIGRATE=false: run `tollgate migrate`");
        }
        Self::build_with_db(config, db).await
    }

    /// As `build`, on an open database.
    pub async fn build_with_db(config: Config, db: Db) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("LISTEN_ADDR: cannot listen on {}", config.listen_addr))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = match config.metrics_addr {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("METRICS_ADDR: cannot listen on {addr}"))?)
            }
            None => None,
        };
        // The recorder is process-wide: installed by the first application, shared by the rest.
        crate::observability::handle();
        // reqwest uses the process-wide rustls provider; install ring once (a second call fails
        // harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cache = build_cache(&config)?;
        // Shared limits hold from the first request: connect to Redis before serving (at most
        // twice REDIS_TIMEOUT_MS; an unreachable Redis is logged and skipped as at any time).
        if !cache.connect_now().await {
            tracing::warn!("Redis is not reachable at start-up; serving with per-instance limits until it is");
        }
        crate::channels::check_encryption_key(&db, &config).await?;
        crate::channels::ensure_default(&db, &cache, &config).await?;
        let gateway = Arc::new(Gateway::new(&config, &cache)?);
        let public_url = if config.public_url_explicit {
            config.public_url.clone()
        } else {
            url::Url::parse(&format!("http://{}", listener.local_addr()?))?
        };
        let auth = Arc::new(AuthState {
            providers: Provider::all(&config, &public_url)?,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(20))
                .build()?,
            cookie_key: cookie_key(&config),
            failures: Failures::new(config.password_hash_concurrency),
        });
        if config.auth_secret_generated {
            tracing::warn!(
                "NEXTAUTH_SECRET is not set: a random one is used, so sessions end at restart and differ between instances"
            );
        }
        if config.usable_cron_secret().is_none() {
            tracing::warn!("cron endpoint disabled: CRON_SECRET is unset or shorter than 16 characters");
        }
        let state = AppState::new(crate::state::Shared {
            config: Arc::new(config),
            db,
            cache,
            gateway,
            auth,
            public_url,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        });
        Ok(Self { listener, metrics_listener, port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server when cancelled (signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// The port `/metrics` is served on when `METRICS_ADDR` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until a shutdown signal, then stops accepting and lets open requests finish for
    /// up to `SHUTDOWN_GRACE_SECS`. When that runs out, `hard_stop` ends open streams, and
    /// connections still open a moment later are cut. Then it waits (bounded) for background
    /// work such as settlements, and closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { listener, metrics_listener, state, .. } = self;
        jobs::start(&state.config, &state.db, &state.tasks, &state.shutdown);
        state.tasks.spawn(crate::observability::upkeep(state.shutdown.clone()));
        if let Some(metrics_listener) = metrics_listener {
            tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
            let router = http::metrics_router(state.clone());
            let stop = state.shutdown.clone();
            state.tasks.spawn(async move {
                let served = axum::serve(metrics_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "the metrics listener failed");
                }
            });
        }
        let shutdown = state.shutdown.clone();
        tokio::spawn(watch_signals(shutdown.clone()));
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        tracing::info!(addr = %listener.local_addr()?, database = ?state.db.backend, "tollgate listening");

        let router = http::router(state.clone());
        let connections = Connections::new(&state.config);
        connections.accept_until(&listener, &router, &shutdown).await;
        drop(listener);
        let deadline = Instant::now() + grace;
        tracing::info!(open_connections = connections.open(), "shutting down: draining open requests and settlements");
        if !connections.drain(deadline).await {
            // Open streams end and settle for what was delivered; their last bytes get a moment
            // to reach the client before the connection is dropped.
            state.hard_stop.cancel();
            if !connections.wait_until(Instant::now() + FLUSH_AFTER_HARD_STOP).await {
                let cut = connections.cut().await;
                tracing::warn!(cut, grace_secs = grace.as_secs(), "connections cut after the shutdown grace period");
            }
        }
        state.tasks.close();
        if tokio::time::timeout_at(deadline, state.tasks.wait()).await.is_err() {
            state.hard_stop.cancel();
            if tokio::time::timeout(TASKS_AFTER_GRACE, state.tasks.wait()).await.is_err() {
                tracing::warn!("background work outlived the shutdown grace period");
            }
        }
        state.hard_stop.cancel();
        // Closing a copy closes the pools every copy shares.
        state.db.clone().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// After `hard_stop`, how long open connections get to flush their last bytes before the cut.
const FLUSH_AFTER_HARD_STOP: Duration = Duration::from_secs(2);
/// After the grace period, how much longer settlements and jobs get before the database closes.
const TASKS_AFTER_GRACE: Duration = Duration::from_secs(10);

/// The cookie encryption key: 64 bytes derived from `NEXTAUTH_SECRET`, the same on every
/// instance that shares the secret.
fn cookie_key(config: &Config) -> Key {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(b"tollgate cookie key\0");
    h.update(config.auth_secret.expose().as_bytes());
    Key::from(&h.finalize())
}

/// The cache this configuration asks for: Redis in front of nothing else when `REDIS_URL` is set.
pub fn build_cache(config: &Config) -> anyhow::Result<Cache> {
    match &config.redis_url {
        Some(url) => Cache::with_redis(url, &config.redis_prefix, config.redis_timeout).context("REDIS_URL"),
        None => Ok(Cache::in_process()),
    }
}

async fn watch_signals(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
