//! `GET /api/cron/expire-subscriptions` for external schedulers, behind `CRON_SECRET`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiError;
use super::session::refusal;
use crate::crypto::constant_time_eq;
use crate::error::Error;
use crate::jobs;
use crate::state::AppState;

pub async fn expire_subscriptions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(secret) = state.config.usable_cron_secret() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "cron.disabled",
            "the cron endpoint is disabled: CRON_SECRET is unset or shorter than 16 characters",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    // Compared in constant time, also when nothing usable was presented.
    let authorized = constant_time_eq(presented.unwrap_or(""), secret.expose()) && presented.is_some();
    if !authorized {
        return ApiError(Error::Unauthorized(
            "a valid `Authorization: Bearer <CRON_SECRET>` header is required".into(),
        ))
        .into_response();
    }
    match jobs::run_expiry(&state.db).await {
        Ok(affected) => Json(json!({ "affected": affected })).into_response(),
        Err(err) => ApiError(err).into_response(),
    }
}
