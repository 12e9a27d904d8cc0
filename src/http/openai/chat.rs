//! `POST /v1/chat/completions`, the edge: read and parse the wire format (the key was checked
//! by the extractor), call the chat core, render its reply or failure.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::{Authenticated, Route, with_request_id};
use crate::error::Error;
use crate::gateway::auth::{ApiKey, KeyRules};
use crate::gateway::chat::{self, ChatRequest, Failure, Reply, Services, bad};
use crate::gateway::refusals::Refusal;
use crate::http::ApiError;
use crate::observability::{RequestRecord, UNKNOWN_MODEL};
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    auth: Authenticated<ChatCompletions>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Authenticated { key, rules, request_id, started, .. } = auth;
    let res = match handle(&state, key, &rules, &headers, body, &request_id, started).await {
        Ok(res) => res,
        Err(Failure { error, key, model, label, settled, headers }) => {
            if !settled {
                let mut record = RequestRecord::local(&request_id, ROUTE, started.elapsed(), error.status());
                record.error = Some(error.label());
                record.model = label;
                record.key_id = key.map(|k| k.key_id);
                record.user_id = key.map(|k| k.user_id);
                record.emit();
            }
            if let Some(key) = key {
                log_failure(&state, &request_id, key, model, error.status(), started);
            }
            let mut res = ApiError(error).into_response();
            res.headers_mut().extend(headers);
            res
        }
    };
    with_request_id(res, &request_id)
}

pub struct ChatCompletions;
impl Route for ChatCompletions {
    const NAME: &'static str = "chat_completions";
}

/// The route name in logs and metrics.
const ROUTE: &str = ChatCompletions::NAME;

async fn handle(
    state: &AppState,
    key: ApiKey,
    rules: &KeyRules,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, Failure> {
    let fail = |error: Error, model: &str| Failure {
        error,
        key: Some(key),
        model: model.to_owned(),
        label: String::new(),
        settled: false,
        headers: HeaderMap::new(),
    };

    let limit = state.gateway.max_request_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let too_large = || Error::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    if declared.is_some_and(|n| n > limit) {
        return Err(fail(too_large(), ""));
    }
    // A body that trickles in is cut off (slowloris); one over the limit is refused.
    let bytes = match tokio::time::timeout(state.gateway.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => return Err(fail(Error::RequestTimeout("the request body did not arrive in time".into()), "")),
        Ok(Err(_)) => return Err(fail(too_large(), "")),
        Ok(Ok(b)) => b,
    };
    let wire: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| fail(bad(format!("We could not parse the JSON body of your request: {e}")), ""))?;

    let model_name = match wire.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(fail(bad("`model` is required and must be a string"), "")),
    };
    // Until the model is found in the catalogue its name is the client's to choose: refusals
    // are logged without it, so invented names cannot multiply the refusal rows (nor metrics
    // series).
    let fail = |error: Error| Failure {
        error,
        key: Some(key),
        model: String::new(),
        label: UNKNOWN_MODEL.to_owned(),
        settled: false,
        headers: HeaderMap::new(),
    };
    match wire.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(fail(bad("`messages` is required and must be a non-empty array"))),
    }
    let stream = match wire.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(fail(bad("`stream` must be a boolean"))),
    };
    let request = ChatRequest { model: model_name, stream, body: wire, beta: headers.get("openai-beta").cloned() };
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
