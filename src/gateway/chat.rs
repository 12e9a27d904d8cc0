//! `POST /v1/chat/completions`: authenticate → validate → reserve → proxy → settle.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::auth::{self, ApiKey};
use super::catalog;
use super::chunks::Chunk;
use super::relay::Relay;
use super::settle::{Ending, Settler};
use super::tokens;
use super::upstream::{UpstreamFailure, error_message};
use crate::app::AppState;
use crate::billing::{Charge, ReserveRequest, UsageLog, reserve, usage_row};
use crate::error::Error;
use crate::http::ApiError;

/// The largest upstream body read for a non-streamed response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub fn new_request_id() -> String {
    format!("req_{}", crate::crypto::random_token(12))
}

/// Answers with the request id on every response, success or not.
fn with_request_id(mut res: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let request_id = new_request_id();
    let res = match handle(&state, &headers, body, &request_id, started).await {
        Ok(res) => res,
        Err(Failure { error, key, model }) => {
            let err = ApiError(error);
            if let Some(key) = key {
                log_failure(&state, &request_id, key, model, err.status().as_u16(), started);
            }
            err.into_response()
        }
    };
    with_request_id(res, &request_id)
}

/// An error, and who to log it for when the caller was authenticated.
struct Failure {
    error: Error,
    key: Option<ApiKey>,
    model: String,
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    started: Instant,
) -> Result<Response, Failure> {
    let key = auth::authenticate(&state.db, &state.cache, &state.tasks, headers).await.map_err(|error| Failure {
        error,
        key: None,
        model: String::new(),
    })?;
    let fail = |error: Error, model: &str| Failure { error, key: Some(key), model: model.to_owned() };

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
    let mut request: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| fail(bad(format!("We could not parse the JSON body of your request: {e}")), ""))?;

    let model_name = match request.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(fail(bad("`model` is required and must be a string"), "")),
    };
    let fail = |error: Error| Failure { error, key: Some(key), model: model_name.clone() };
    match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(fail(bad("`messages` is required and must be a non-empty array"))),
    }
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(fail(bad("`stream` must be a boolean"))),
    };
    let model = catalog::lookup(&state.db, &state.cache, &model_name).await.map_err(fail)?;
    let (cap_field, requested_cap) = output_cap(&request).map_err(fail)?;

    let Some(slot) = state.gateway.inflight.try_acquire(key.user_id) else {
        return Err(fail(Error::RateLimited {
            message: "too many concurrent requests for this account; retry shortly".into(),
            retry_after_secs: 1,
        }));
    };

    let prompt = tokens::count_prompt(&model.upstream_model, &request);
    if prompt >= model.context_window {
        return Err(fail(bad(format!(
            "this model's maximum context length is {} tokens; the messages use about {prompt}",
            model.context_window
        ))));
    }
    let max_out = requested_cap
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens)
        .min(model.context_window - prompt);

    // The upstream body: our model name, the clamped cap, usage requested for streams.
    request.insert("model".into(), Value::String(model.upstream_model.clone()));
    if let Some(field) = cap_field {
        request.insert(field.into(), Value::from(max_out));
    }
    let mut client_wants_usage = false;
    if stream {
        let options = request.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            return Err(fail(bad("`stream_options` must be an object")));
        }
        client_wants_usage = options.get("include_usage").and_then(Value::as_bool).unwrap_or(false);
        options["include_usage"] = Value::Bool(true);
    }
    let upstream_body = Bytes::from(serde_json::to_vec(&request).map_err(|e| fail(Error::Internal(e.into())))?);

    // From here on the settler resolves the reservation, whatever happens.
    let mut settler =
        reserve_detached(state, request_id, key, &model, stream, started, prompt, max_out).await.map_err(fail)?;

    let upstream = &state.gateway.upstream;
    let deadline = started + upstream.timeouts.total;
    settler.upstream_called = true;
    let response = match upstream.send(upstream_body, stream, headers.get("openai-beta"), deadline).await {
        Ok(r) => r,
        Err(failure) => {
            // Nothing was delivered: a full refund. The settlement writes the usage log.
            let error = ApiError(upstream_error(failure));
            settler.finish(Ending::Nothing { status: i32::from(error.status().as_u16()) });
            return Err(Failure { error: error.0, key: None, model: model.name });
        }
    };

    if stream {
        let relay = Relay::new(response, settler, client_wants_usage, upstream.timeouts.idle, deadline, slot);
        let mut res = Response::new(Body::from_stream(relay.into_stream()));
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(res);
    }

    let body = read_body(response, upstream.timeouts.idle, deadline, &mut settler).await;
    drop(slot);
    match body {
        Ok(body) => {
            let parsed: Option<Chunk> = serde_json::from_slice(&body).ok();
            let Some(parsed) = parsed else {
                settler.finish(Ending::Nothing { status: 502 });
                return Err(Failure {
                    error: Error::Upstream {
                        status: 502,
                        message: "the upstream sent an unreadable response".into(),
                        label: "upstream.bad_response",
                    },
                    key: None,
                    model: model.name,
                });
            };
            settler.usage = parsed.usage.and_then(|u| u.usage());
            if settler.usage.is_none() {
                parsed.collect_text(&mut settler.completion_text);
            }
            settler.finish(Ending::Delivered { status: 200 });
            let mut res = Response::new(Body::from(body));
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
        Err(error) => {
            // Part of the body may have been generated: bill the estimate of what arrived.
            let error = ApiError(error);
            settler.finish(Ending::Delivered { status: i32::from(error.status().as_u16()) });
            Err(Failure { error: error.0, key: None, model: model.name })
        }
    }
}

/// Reserves from a tracked task of its own, which hands back the settlement guard. A client
/// that goes away while the reservation commits drops this handler, not the reservation: the
/// guard, received or not, is dropped and refunds it in full (the upstream was never called).
#[expect(clippy::too_many_arguments, reason = "the request's billing context, passed once")]
async fn reserve_detached(
    state: &AppState,
    request_id: &str,
    key: ApiKey,
    model: &catalog::ModelConfig,
    stream: bool,
    started: Instant,
    prompt: i64,
    max_out: i64,
) -> Result<Settler, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (db, cache, tasks, request_id, model_id, prices, model_name) = (
        state.db.clone(),
        state.cache.clone(),
        state.tasks.clone(),
        request_id.to_owned(),
        model.id,
        model.prices(),
        model.name.clone(),
    );
    state.tasks.spawn(async move {
        let req = ReserveRequest {
            request_id: &request_id,
            user_id: key.user_id,
            key_id: Some(key.key_id),
            model_id: Some(model_id),
            prompt_tokens: prompt,
            max_completion_tokens: max_out,
            prices,
        };
        let result = reserve(&db, &req).await.map(|reservation| {
            Settler::new(db.clone(), cache, tasks, reservation, model_name, prices, stream, started, prompt)
        });
        // If the handler is gone, the guard comes back here (or dies unreceived in the channel)
        // and its drop voids the reservation.
        drop(tx.send(result));
    });
    rx.await.map_err(|_| Error::Internal(anyhow::anyhow!("the reservation task stopped")))?
}

/// The reservation's output cap: the field the client used and its value (`None` when absent).
fn output_cap(request: &Map<String, Value>) -> Result<(Option<&'static str>, Option<i64>), Error> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match request.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => {
                let value = if let Some(v) = n.as_i64() {
                    v
                } else if n.as_u64().is_some() {
                    i64::MAX
                } else {
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f > 0.0 => i64::MAX,
                        _ => return Err(bad(format!("`{field}` must be a positive integer"))),
                    }
                };
                if value < 1 {
                    return Err(bad(format!("`{field}` must be a positive integer")));
                }
                return Ok((Some(field), Some(value)));
            }
            Some(_) => return Err(bad(format!("`{field}` must be a positive integer"))),
        }
    }
    Ok((None, None))
}

/// Maps an upstream failure before the first byte to what the client gets.
fn upstream_error(failure: UpstreamFailure) -> Error {
    match failure {
        UpstreamFailure::Timeout => Error::Upstream {
            status: 504,
            message: "the upstream did not answer in time".into(),
            label: "upstream.timeout",
        },
        UpstreamFailure::Connect(detail) => {
            tracing::warn!(error = %detail, "upstream unreachable");
            Error::Upstream {
                status: 502,
                message: "the upstream could not be reached".into(),
                label: "upstream.unreachable",
            }
        }
        UpstreamFailure::Status { status, retry_after, body } => match status {
            429 => Error::RateLimited {
                message: "the upstream is rate limiting; retry shortly".into(),
                retry_after_secs: retry_after.unwrap_or(1).clamp(1, 600),
            },
            401 | 403 => {
                tracing::error!(upstream.status = status, "the upstream refused our credentials: check OPENAI_API_KEY");
                Error::Upstream {
                    status: 502,
                    message: "the upstream refused the relay's credentials".into(),
                    label: "upstream.auth",
                }
            }
            400 | 413 | 422 => Error::Upstream {
                status: if status == 413 { 413 } else { 400 },
                message: error_message(&body),
                label: "upstream.rejected",
            },
            _ => {
                tracing::warn!(upstream.status = status, "upstream error");
                Error::Upstream {
                    status: 502,
                    message: "the upstream failed to answer".into(),
                    label: "upstream.error",
                }
            }
        },
    }
}

/// Reads a non-streamed upstream body within the timeouts and the size bound.
async fn read_body(
    mut response: reqwest::Response,
    idle: std::time::Duration,
    deadline: Instant,
    settler: &mut Settler,
) -> Result<Bytes, Error> {
    let mut buf = bytes::BytesMut::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, response.chunk()).await {
            Err(_) => return Err(upstream_error(UpstreamFailure::Timeout)),
            Ok(Err(_)) => {
                return Err(Error::Upstream {
                    status: 502,
                    message: "the upstream connection failed".into(),
                    label: "upstream.error",
                });
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                if settler.ttfb.is_none() {
                    settler.ttfb = Some(settler.started.elapsed());
                }
                if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Error::Upstream {
                        status: 502,
                        message: "the upstream response is too large".into(),
                        label: "upstream.too_large",
                    });
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// A usage-log row for an authenticated call that failed before a reservation (cost 0). Written
/// off the request path.
fn log_failure(state: &AppState, request_id: &str, key: ApiKey, model: String, status: u16, started: Instant) {
    let db = state.db.clone();
    let log = UsageLog {
        model,
        status_code: i32::from(status),
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        ttfb_ms: None,
        stream: false,
        usage_source: "none",
    };
    let row = usage_row(request_id, key.user_id, Some(key.key_id), &log, 0, 0, Charge::default());
    state.tasks.spawn(async move {
        use sea_orm::EntityTrait;
        if let Err(err) = crate::db::entities::usage_logs::Entity::insert(row).exec(&db.write).await {
            tracing::warn!(error = %err, "could not write the usage log of a failed request");
        }
    });
}

/// `GET /v1/models`: the enabled models, in OpenAI's list shape.
pub async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = auth::authenticate(&state.db, &state.cache, &state.tasks, &headers).await {
        return ApiError(err).into_response();
    }
    match catalog::enabled(&state.db.read).await {
        Ok(models) => {
            let data: Vec<Value> = models
                .into_iter()
                .map(|m| serde_json::json!({ "id": m.name, "object": "model", "created": m.created_at / 1000, "owned_by": "tollgate" }))
                .collect();
            (StatusCode::OK, axum::Json(serde_json::json!({ "object": "list", "data": data }))).into_response()
        }
        Err(err) => ApiError(err).into_response(),
    }
}
