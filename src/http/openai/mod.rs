//! The OpenAI-compatible edge: chat completions, the model list and the chat apps' billing
//! endpoints, under `/v1` and `/api/v1`.

pub mod billing;
pub mod chat;
pub mod models;

use std::future::Future;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::Error;
use crate::gateway::auth::{self, ApiKey};
use crate::http::ApiError;
use crate::observability::RequestRecord;
use crate::state::AppState;

pub fn new_request_id() -> String {
    format!("req_{}", crate::crypto::random_token(12))
}

/// Answers with the request id on every response, success or not.
pub(crate) fn with_request_id(mut res: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// Authenticates the key, runs `answer` for it and logs the request under `route`, like every
/// API-key request.
async fn with_key<F, Fut>(state: &AppState, headers: &HeaderMap, route: &'static str, answer: F) -> Response
where
    F: FnOnce(ApiKey) -> Fut,
    Fut: Future<Output = Result<Value, Error>>,
{
    let started = Instant::now();
    let request_id = new_request_id();
    let mut key = None;
    let result = match auth::authenticate(&state.db, &state.cache, &state.tasks, headers).await {
        Ok(k) => {
            key = Some(k);
            answer(k).await
        }
        Err(err) => Err(err),
    };
    let (res, error) = match result {
        Ok(body) => ((StatusCode::OK, axum::Json(body)).into_response(), None),
        Err(err) => {
            let label = err.label();
            (ApiError(err).into_response(), Some(label))
        }
    };
    let mut record = RequestRecord::local(&request_id, route, started.elapsed(), res.status().as_u16());
    record.error = error;
    record.key_id = key.map(|k| k.key_id);
    record.user_id = key.map(|k| k.user_id);
    record.emit();
    with_request_id(res, &request_id)
}
