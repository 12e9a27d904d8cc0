//! The route table: paths to handlers, nothing else.

pub mod admin;
mod admin_pages;
pub mod anthropic;
mod body_limits;
pub mod calls;
pub mod client_ip;
mod cron;
mod error;
mod fallback;
mod health;
pub mod internal;
pub mod openai;
mod pages;
mod redeem;
pub mod session;
mod signin;
mod usage_stats;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};

use self::openai::{billing, chat, completions, embeddings, models, responses};
use crate::state::AppState;

pub use error::{AnthropicError, ApiError};

pub fn router(state: AppState) -> Router {
    let router = api_router(state.clone());
    // With `METRICS_ADDR`, `/metrics` lives on its own listener only (`metrics_router`).
    if state.config.metrics_addr.is_some() { router } else { router.merge(metrics_router(state)) }
}

/// `/metrics` alone, for the public listener or the one on `METRICS_ADDR`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(crate::observability::metrics)).with_state(state)
}

fn api_router(state: AppState) -> Router {
    // Everything a browser session reaches: sessions and the cross-site check apply here only,
    // never on the API hot path.
    let with_session = Router::new()
        .route("/", get(pages::root))
        .route("/login", get(pages::login))
        .route("/dashboard", get(pages::dashboard))
        .route("/dashboard/keys", get(pages::keys_page))
        .route("/dashboard/usage", get(pages::usage_page))
        .route("/pricing", get(pages::pricing))
        .route("/admin", get(admin_pages::home))
        .route("/admin/models", get(admin_pages::models))
        .route("/admin/channels", get(admin_pages::channels))
        .route("/admin/users", get(admin_pages::users))
        .route("/admin/users/{id}", get(admin_pages::user))
        .route("/admin/revenue", get(admin_pages::revenue))
        .route("/admin/audit", get(admin_pages::audit))
        .route("/admin/codes", get(admin_pages::codes))
        .route("/api/auth/signin/password", post(signin::password_signin))
        .route("/api/auth/signin/{provider}", get(signin::start))
        .route("/api/auth/callback/{provider}", get(signin::callback))
        .route("/api/auth/signout", post(signin::signout))
        .route("/api/internal/me", get(internal::me))
        .route("/api/internal/keys", get(internal::list_keys).post(internal::create_key))
        .route("/api/internal/keys/{id}", delete(internal::revoke_key).patch(internal::update_key))
        .route("/api/internal/usage", get(internal::usage))
        .route("/api/internal/usage/daily", get(usage_stats::daily))
        .route("/api/internal/usage/export", get(internal::export))
        .route("/api/internal/redeem", post(redeem::redeem))
        // The back office's JSON API (role admin on every route).
        .merge(admin::routes())
        .layer(from_fn(session::json_refusals))
        .layer(from_fn_with_state(state.clone(), session::reject_cross_site))
        .layer(crate::auth::sessions::layer(&state.config, &state.db));
    Router::new()
        .merge(with_session)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/cron/expire-subscriptions", get(cron::expire_subscriptions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/api/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/api/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/api/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/api/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/api/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/api/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/api/v1/embeddings", post(embeddings::create))
        .route("/v1/completions", post(completions::create))
        .route("/api/v1/completions", post(completions::create))
        .route("/v1/models", get(models::list))
        .route("/api/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::model))
        .route("/api/v1/models/{*id}", get(models::model))
        .route("/v1/dashboard/billing/subscription", get(billing::subscription))
        .route("/dashboard/billing/subscription", get(billing::subscription))
        .route("/api/v1/dashboard/billing/subscription", get(billing::subscription))
        .route("/v1/dashboard/billing/usage", get(billing::billing_usage))
        .route("/dashboard/billing/usage", get(billing::billing_usage))
        .route("/api/v1/dashboard/billing/usage", get(billing::billing_usage))
        .route("/assets/{file}", get(pages::asset))
        .route("/lang/{code}", get(pages::switch_language))
        // After every route: unknown paths and wrong methods answer in their surface's shape.
        .fallback(fallback::not_found)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), body_limits::bound_body))
        .layer(from_fn(fallback::security_headers))
        .with_state(state)
}
