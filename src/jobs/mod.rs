//! Scheduled work inside `serve`: the daily subscription expiry, the stale-reservation
//! sweeper, the hourly removal of expired sessions and abandoned OAuth attempts, and the hourly
//! daily roll-up of usage for days that are over (`usage::rollup`).
//!
//! With several instances every instance runs both. That is safe because both jobs are
//! idempotent compare-and-set loops (see `subscriptions::expire_due` and
//! `billing::sweep_stale`): each subscription and each reservation is resolved by exactly one
//! run, whichever instance gets there first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::billing;
use crate::clock::{ms_until_next, now_ms};
use crate::config::Config;
use crate::db::Db;
use crate::subscriptions;

/// Runs the expiry job once and logs the outcome.
pub async fn run_expiry(db: &Db) -> crate::error::Result<u64> {
    let started = now_ms();
    let affected = subscriptions::expire_due(db).await?;
    tracing::info!(affected, duration_ms = now_ms() - started, "subscription expiry run finished");
    Ok(affected)
}

/// Starts the scheduled jobs on `tracker`; they stop when `shutdown` is cancelled.
pub fn start(config: &Config, db: &Db, tracker: &TaskTracker, shutdown: &CancellationToken) {
    if !config.scheduler_enabled {
        tracing::info!("scheduler disabled (SCHEDULER_ENABLED=false): no expiry run, no sweeper in this instance");
        return;
    }
    let at = config.expire_subscriptions_at;
    {
        let (db, shutdown) = (db.clone(), shutdown.clone());
        tracker.spawn(async move {
            // A run at start catches a daily run missed while no instance was up.
            if let Err(err) = run_expiry(&db).await {
                tracing::error!(error = %err, "subscription expiry run failed");
            }
            loop {
                let wait = Duration::from_millis(u64::try_from(ms_until_next(now_ms(), at)).unwrap_or(0));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                if let Err(err) = run_expiry(&db).await {
                    tracing::error!(error = %err, "subscription expiry run failed");
                }
            }
        });
    }
    let (db, shutdown) = (db.clone(), shutdown.clone());
    let max_age_ms = i64::try_from(config.stale_reservation_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let every = Duration::from_secs(config.sweep_interval_secs);
    tracker.spawn(async move {
        let mut next_purge = now_ms();
        loop {
            if now_ms() >= next_purge {
                next_purge = now_ms() + 3_600_000;
                match crate::auth::sessions::purge_expired(&db).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired sessions removed"),
                    Err(err) => tracing::error!(error = %err, "expired-session cleanup failed"),
                }
                match crate::admin::idempotency::purge(&db).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "old idempotency keys removed"),
                    Err(err) => tracing::error!(error = %err, "idempotency-key cleanup failed"),
                }
                match crate::auth::oauth::purge_states(&db, crate::auth::oauth::STATE_TTL_MS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "abandoned OAuth attempts removed"),
                    Err(err) => tracing::error!(error = %err, "OAuth-state cleanup failed"),
                }
                match crate::usage::rollup::roll_closed_days(&db, now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(days = n, "usage rolled up by day"),
                    Err(err) => tracing::error!(error = %err, "usage roll-up failed"),
                }
            }
            match billing::sweep_stale(&db, max_age_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(swept = n, "stale reservations resolved"),
                Err(err) => tracing::error!(error = %err, "stale-reservation sweep failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
}
