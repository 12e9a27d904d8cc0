//! The startup seam: `Application::build` opens the database and binds the listener (port 0 in
//! tests), `port()` reports the real port, `run_until_stopped()` serves until SIGINT/SIGTERM or
//! `shutdown()`, then drains background work.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::db::Db;
use crate::{http, jobs};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    /// Work that must finish before the process exits (settlements, jobs).
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects to the database, migrates it (unless `AUTO_MIGRATE=false`) and binds
    /// `config.listen_addr`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url, config.database_pool_size).await?;
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
        if config.auth_secret_generated {
            tracing::warn!(
                "NEXTAUTH_SECRET is not set: a random one is used, so sessions end at restart and differ between instances"
            );
        }
        if config.usable_cron_secret().is_none() {
            tracing::warn!("cron endpoint disabled: CRON_SECRET is unset or shorter than 16 characters");
        }
        let state =
            AppState { config: Arc::new(config), db, tasks: TaskTracker::new(), shutdown: CancellationToken::new() };
        Ok(Self { listener, port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server when cancelled (signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until a shutdown signal, then waits (bounded) for open requests and background
    /// work, and closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { listener, state, .. } = self;
        jobs::start(&state.config, &state.db, &state.tasks, &state.shutdown);
        let shutdown = state.shutdown.clone();
        tokio::spawn(watch_signals(shutdown.clone()));
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        tracing::info!(addr = %listener.local_addr()?, database = ?state.db.backend, "tollgate listening");

        let server = axum::serve(listener, http::router(state.clone())).with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        });
        let server = tokio::spawn(async move { server.await });
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining open requests and settlements");
        if tokio::time::timeout(grace, server).await.is_err() {
            tracing::warn!(grace_secs = grace.as_secs(), "open connections outlived the shutdown grace period");
        }
        state.tasks.close();
        if tokio::time::timeout(grace, state.tasks.wait()).await.is_err() {
            tracing::warn!("background work outlived the shutdown grace period");
        }
        state.db.close().await;
        tracing::info!("stopped");
        Ok(())
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
