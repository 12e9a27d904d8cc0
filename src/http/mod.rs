//! The route table: paths to handlers, nothing else.

mod cron;
mod error;
mod health;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;
use crate::gateway::chat;

pub use error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/cron/expire-subscriptions", get(cron::expire_subscriptions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/api/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(chat::list_models))
        .route("/api/v1/models", get(chat::list_models))
        .with_state(state)
}
