//! The OpenAI-compatible edge: chat completions, the model list and the chat apps' billing
//! endpoints, under `/v1` and `/api/v1`.

pub mod billing;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod responses;

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::Error;
use crate::gateway::auth::{self, ApiKey, KeyRules};
use crate::http::ApiError;
use crate::observability::RequestRecord;
use crate::state::AppState;

/// A new request id: `req_`, the time in milliseconds (12 hex digits), then 72 random bits.
/// Ids made later sort after earlier ones, so the unique index on reservations' request ids
/// grows at its right edge, as the table does, instead of at a random page per request.
pub fn new_request_id() -> String {
    format!("req_{:012x}{}", crate::clock::now_ms().max(0), crate::crypto::random_token(9))
}

/// Answers with the request id on every response, success or not.
pub(crate) fn with_request_id(mut res: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// A `/v1` route's fixed name in logs and metrics.
pub trait Route: Send + Sync + 'static {
    const NAME: &'static str;
    /// Refusals are rendered in Anthropic's error shape (the Messages edge).
    const ANTHROPIC: bool = false;
}

/// A request whose API key (`Authorization: Bearer sk-…`, or `x-api-key`) was accepted, with its request id and
/// the instant it began. Every `/v1` handler takes one: a refused key is answered (401 in
/// OpenAI's shape, with `x-request-id`) and logged under the route `R` before the handler runs.
pub struct Authenticated<R> {
    pub key: ApiKey,
    /// The key's own controls (allowed models, spend cap, limits).
    pub rules: Arc<KeyRules>,
    pub request_id: String,
    pub started: Instant,
    route: PhantomData<R>,
}

impl<R: Route> FromRequestParts<AppState> for Authenticated<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let started = Instant::now();
        let request_id = new_request_id();
        let admitted = auth::authenticate(&state.db, &state.cache, &state.tasks, &parts.headers).await.and_then(|a| {
            // A key with an address allowlist is used only from those addresses (the client's,
            // as the trusted proxies report it); no known peer is no allowed address.
            if a.rules.allowed_ips.is_some() {
                let peer = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
                let ip =
                    peer.map(|p| crate::http::client_ip::client_ip(p, &parts.headers, &state.config.trusted_proxies));
                if !ip.is_some_and(|ip| a.rules.allows_ip(ip)) {
                    let shown = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
                    return Err(Error::Forbidden(format!(
                        "this API key may not be used from {shown}: the address is not in the key's allowlist"
                    )));
                }
            }
            Ok(a)
        });
        match admitted {
            Ok(auth::Authorized { key, rules }) => Ok(Self { key, rules, request_id, started, route: PhantomData }),
            Err(err) => {
                let mut record = RequestRecord::local(&request_id, R::NAME, started.elapsed(), err.status());
                record.error = Some(err.label());
                record.emit();
                let res = if R::ANTHROPIC {
                    crate::http::AnthropicError(err).into_response()
                } else {
                    ApiError(err).into_response()
                };
                Err(with_request_id(res, &request_id))
            }
        }
    }
}

impl<R: Route> Authenticated<R> {
    /// Answers with `result` (200 and its JSON, or the error) and logs the request under `R`.
    fn reply(self, result: Result<Value, Error>) -> Response {
        let (res, error) = match result {
            Ok(body) => ((StatusCode::OK, axum::Json(body)).into_response(), None),
            Err(err) => {
                let label = err.label();
                (ApiError(err).into_response(), Some(label))
            }
        };
        let mut record = RequestRecord::local(&self.request_id, R::NAME, self.started.elapsed(), res.status().as_u16());
        record.error = error;
        record.key_id = Some(self.key.key_id);
        record.user_id = Some(self.key.user_id);
        record.emit();
        with_request_id(res, &self.request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::new_request_id;

    /// Ids made later sort after earlier ones (the index on reservations' request ids grows at
    /// its right edge), and two made in the same millisecond still differ.
    #[test]
    fn request_ids_sort_by_time_and_differ() {
        let first = new_request_id();
        let same_ms = new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_request_id();
        assert_ne!(first, same_ms);
        assert!(first < later && same_ms < later, "{first} {same_ms} {later}");
        assert!(first.starts_with("req_") && first.len() <= 64, "{first}");
    }
}
