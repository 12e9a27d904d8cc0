//! The route table: paths to handlers, nothing else.

mod cron;
mod error;
mod health;

use axum::Router;
use axum::routing::get;

use crate::app::AppState;

pub use error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/cron/expire-subscriptions", get(cron::expire_subscriptions))
        .with_state(state)
}
