//! The edge every model call shares, whatever its protocol: read the body within its size and
//! time bounds, parse it, call the gateway core, and render its reply — or its failure in the
//! protocol's own error shape (OpenAI's `{"error": {…}}`, Anthropic's `{"type": "error", …}`).

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::gateway::auth::{ApiKey, KeyRules};
use crate::gateway::chat::{self, CallRequest, Failure, Reply, Services, bad};
use crate::gateway::protocol::{Forward, Protocol};
use crate::gateway::refusals::Refusal;
use crate::http::openai::{Authenticated, Route, with_request_id};
use crate::http::{AnthropicError, ApiError};
use crate::observability::RequestRecord;
use crate::state::AppState;

/// Answers one model call of `protocol`.
pub async fn serve<R: Route>(
    state: &AppState,
    protocol: Protocol,
    auth: Authenticated<R>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Authenticated { key, rules, request_id, started, .. } = auth;
    let res = match handle(state, protocol, key, &rules, &headers, body, &request_id, started).await {
        Ok(res) => res,
        Err(Failure { error, key, model, label, settled, headers }) => {
            if !settled {
                let mut record = RequestRecord::local(&request_id, protocol.route(), started.elapsed(), error.status());
                record.error = Some(error.label());
                record.model = label;
                record.key_id = key.map(|k| k.key_id);
                record.user_id = key.map(|k| k.user_id);
                record.emit();
            }
            if let Some(key) = key {
                log_failure(state, &request_id, key, model, error.status(), started);
            }
            let mut res = render_error(protocol, error);
            res.headers_mut().extend(headers);
            res
        }
    };
    with_request_id(res, &request_id)
}

/// An error in the protocol's own shape.
pub fn render_error(protocol: Protocol, error: Error) -> Response {
    match protocol {
        Protocol::Messages => AnthropicError(error).into_response(),
        _ => ApiError(error).into_response(),
    }
}

/// Reads the request body within the size limit and the read timeout.
pub async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Error> {
    let limit = state.gateway.max_request_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let too_large = || Error::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // A body that trickles in is cut off (slowloris); one over the limit is refused.
    match tokio::time::timeout(state.gateway.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Error::RequestTimeout("the request body did not arrive in time".into())),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Parses a JSON object body and its `model`.
pub fn parse_body(bytes: &[u8]) -> Result<(Map<String, Value>, String), Error> {
    let wire: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("We could not parse the JSON body of your request: {e}")))?;
    let model = match wire.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(bad("`model` is required and must be a string")),
    };
    Ok((wire, model))
}

#[expect(clippy::too_many_arguments, reason = "one request's edge context")]
async fn handle(
    state: &AppState,
    protocol: Protocol,
    key: ApiKey,
    rules: &KeyRules,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, Failure> {
    let fail = |error: Error| Failure {
        error,
        key: Some(key),
        model: String::new(),
        label: String::new(),
        settled: false,
        headers: HeaderMap::new(),
    };
    let raw = read_body(state, headers, body).await.map_err(fail)?;
    let (wire, model_name) = parse_body(&raw).map_err(fail)?;
    crate::gateway::protocol::precheck(protocol, &wire).map_err(fail)?;
    let stream = match (protocol, wire.get("stream")) {
        (Protocol::Embeddings, _) | (_, None | Some(Value::Null)) => false,
        (_, Some(Value::Bool(b))) => *b,
        (_, Some(_)) => return Err(fail(bad("`stream` must be a boolean"))),
    };
    let request =
        CallRequest { protocol, model: model_name, stream, body: wire, raw, forward: Forward::from_headers(headers) };
    let services = Services {
        db: &state.db,
        cache: &state.cache,
        tasks: &state.tasks,
        gateway: &state.gateway,
        hard_stop: &state.hard_stop,
    };
    let answer = chat::complete(&services, key, rules, request, request_id, started).await?;
    let mut res = match answer.reply {
        Reply::Json(body) => {
            let mut res = Response::new(Body::from(body));
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        Reply::Stream(frames) => {
            let body = futures_util::stream::unfold(frames, |mut rx| async move {
                rx.recv().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
            });
            let mut res = Response::new(Body::from_stream(body));
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            res
        }
    };
    res.headers_mut().extend(answer.headers);
    Ok(res)
}

/// A usage-log row for an authenticated call that failed before a reservation (cost 0),
/// aggregated per key, status and minute. Written off the request path.
fn log_failure(state: &AppState, request_id: &str, key: ApiKey, model: String, status: u16, started: Instant) {
    state.gateway.refusals.record(
        &state.db,
        &state.tasks,
        &state.shutdown,
        Refusal {
            request_id: request_id.to_owned(),
            user_id: key.user_id,
            key_id: key.key_id,
            model,
            status,
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        },
    );
}
