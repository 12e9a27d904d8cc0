//! `POST /v1/chat/completions`: (authenticated by the extractor) validate → reserve → proxy → settle.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Authenticated, Route, with_request_id};
use crate::billing::{ReserveRequest, reserve};
use crate::error::Error;
use crate::gateway::auth::ApiKey;
use crate::gateway::exchange::{Exchange, Head};
use crate::gateway::refusals::Refusal;
use crate::gateway::settle::Settler;
use crate::gateway::tokens;
use crate::http::ApiError;
use crate::models;
use crate::observability::{self, RequestRecord, UNKNOWN_MODEL};
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    auth: Authenticated<ChatCompletions>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Authenticated { key, request_id, started, .. } = auth;
    let res = match handle(&state, key, &headers, body, &request_id, started).await {
        Ok(res) => res,
        Err(Failure { error, key, model, label, settled }) => {
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
            ApiError(error).into_response()
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

/// An error, and who to log its refusal for (none once the settlement has logged the request).
struct Failure {
    error: Error,
    key: Option<ApiKey>,
    /// The catalogue model of the request; empty before it was found (the client's own name
    /// for it is never logged, so invented names cannot multiply refusal rows).
    model: String,
    /// The model for logs and metrics: a catalogue name, `unknown`, or empty when none was named.
    label: String,
    /// The settlement already wrote this request's usage row and log line.
    settled: bool,
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

async fn handle(
    state: &AppState,
    key: ApiKey,
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
    let mut wire: Map<String, Value> = serde_json::from_slice(&bytes)
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
    let model = models::lookup(&state.db, &state.cache, &model_name).await.map_err(fail)?;
    // From here on the model is in the catalogue: its name may label metrics.
    let fail = |error: Error| Failure {
        error,
        key: Some(key),
        model: model.name.clone(),
        label: model.name.clone(),
        settled: false,
    };
    let choices = choices(&wire, state.config.max_choices).map_err(fail)?;
    refuse_unpriced(&wire).map_err(fail)?;
    let (cap_fields, requested_cap) = output_caps(&wire).map_err(fail)?;

    let Some(slot) = state.gateway.inflight.try_acquire(key.user_id).await else {
        observability::rate_limited("concurrency");
        return Err(fail(Error::RateLimited {
            message: "too many concurrent requests for this account; retry shortly".into(),
            retry_after_secs: 1,
        }));
    };

    let prompt = tokens::count_prompt_parts(&model.upstream_model, &wire);
    if prompt.text >= model.context_window {
        return Err(fail(bad(format!(
            "this model's maximum context length is {} tokens; the messages use about {}",
            model.context_window, prompt.text
        ))));
    }
    let max_out = requested_cap
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens)
        .min(model.context_window - prompt.text);

    // The upstream body: our model name; the reserved cap in the field this model's upstream
    // honours — and in no other, whatever the client sent — so the upstream cannot produce
    // more than was reserved; usage requested for streams.
    wire.insert("model".into(), Value::String(model.upstream_model.clone()));
    for field in cap_fields {
        wire.remove(field);
    }
    wire.insert(model.cap_field.clone(), Value::from(max_out));
    let mut client_wants_usage = false;
    if stream {
        let options = wire.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            return Err(fail(bad("`stream_options` must be an object")));
        }
        client_wants_usage = options.get("include_usage").and_then(Value::as_bool).unwrap_or(false);
        options["include_usage"] = Value::Bool(true);
    }
    let upstream_body = Bytes::from(serde_json::to_vec(&wire).map_err(|e| fail(Error::Internal(e.into())))?);

    // The worst case: the prompt (media included) and the cap for every choice.
    let reserved_prompt = prompt.reserved(model.context_window);
    let reserved_output = max_out.saturating_mul(i64::from(choices));
    // From here on the settler resolves the reservation, whatever happens.
    let billing = (reserved_prompt, reserved_output, prompt.estimate());
    let settler = reserve_detached(state, request_id, key, &model, stream, started, billing).await.map_err(fail)?;

    // The upstream exchange runs in a tracked task of its own: a client that leaves does not
    // stop it, so the request is settled on what the upstream reports, never on less.
    let exchange = Exchange {
        gateway: state.gateway.clone(),
        hard_stop: state.hard_stop.clone(),
        settler,
        body: upstream_body,
        stream,
        beta: headers.get("openai-beta").cloned(),
        client_wants_usage,
        deadline: started + state.gateway.upstream.timeouts.total,
        slot,
    };
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    state.tasks.spawn(exchange.run(head_tx));
    match head_rx.await {
        Ok(Head::Failed(error)) => {
            Err(Failure { error, key: None, label: model.name.clone(), model: model.name, settled: true })
        }
        Ok(Head::Json(body)) => {
            let mut res = Response::new(Body::from(body));
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(res)
        }
        Ok(Head::Stream(frames)) => {
            let body = futures_util::stream::unfold(frames, |mut rx| async move {
                rx.recv().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
            });
            let mut res = Response::new(Body::from_stream(body));
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(res)
        }
        Err(_) => Err(Failure {
            error: Error::Internal(anyhow::anyhow!("the upstream exchange stopped")),
            key: None,
            label: model.name.clone(),
            model: model.name,
            settled: true,
        }),
    }
}

/// Reserves from a tracked task of its own, which hands back the settlement guard. A client
/// that goes away while the reservation commits drops this handler, not the reservation: the
/// guard, received or not, is dropped and refunds it in full (the upstream was never called).
/// `(prompt, max_out, estimate)`: the prompt and output tokens reserved, and the prompt billed
/// when the upstream reports no usage.
async fn reserve_detached(
    state: &AppState,
    request_id: &str,
    key: ApiKey,
    model: &models::ModelConfig,
    stream: bool,
    started: Instant,
    (prompt, max_out, estimate): (i64, i64, i64),
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
            Settler::new(db.clone(), cache, tasks, reservation, model_name, prices, stream, started, estimate)
        });
        // If the handler is gone, the guard comes back here (or dies unreceived in the channel)
        // and its drop voids the reservation.
        drop(tx.send(result));
    });
    rx.await.map_err(|_| Error::Internal(anyhow::anyhow!("the reservation task stopped")))?
}

/// The number of choices asked for (`n`): 1 when absent; 400 beyond `max`.
fn choices(wire: &Map<String, Value>, max: u32) -> Result<u32, Error> {
    match wire.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(bad(format!("`n` must be an integer between 1 and {max}"))),
        },
        Some(_) => Err(bad(format!("`n` must be an integer between 1 and {max}"))),
    }
}

/// Refuses what the upstream would bill outside the model's two token prices — audio in or
/// out, web search calls, and service tiers that cost more — so nothing is served below its
/// cost.
fn refuse_unpriced(wire: &Map<String, Value>) -> Result<(), Error> {
    let audio_out = wire.get("audio").is_some_and(|v| !v.is_null())
        || wire.get("modalities").and_then(Value::as_array).is_some_and(|m| m.iter().any(|v| v == "audio"));
    if audio_out {
        return Err(bad("audio output is not offered on this service"));
    }
    let audio_in = wire.get("messages").and_then(Value::as_array).is_some_and(|messages| {
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .any(|piece| matches!(piece.get("type").and_then(Value::as_str), Some("input_audio" | "audio")))
    });
    if audio_in {
        return Err(bad("audio input is not offered on this service"));
    }
    if wire.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return Err(bad("web search is not offered on this service"));
    }
    match wire.get("service_tier") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(t)) if matches!(t.as_str(), "auto" | "default" | "flex") => Ok(()),
        Some(other) => Err(bad(format!("service_tier {other} is not offered; use auto, default or flex"))),
    }
}

/// The output-cap fields the client sent, and the smallest cap among them (`None` when it
/// sent none). Every one of them is sent upstream set to the reserved cap.
fn output_caps(wire: &Map<String, Value>) -> Result<(Vec<&'static str>, Option<i64>), Error> {
    let mut fields = Vec::new();
    let mut smallest: Option<i64> = None;
    for field in models::CAP_FIELDS {
        match wire.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => {
                let value = if let Some(v) = n.as_i64() {
                    v
                } else if n.as_u64().is_some() {
                    i64::MAX
                } else {
                    match n.as_f64() {
                        // An integral float is its value (saturating at i64::MAX).
                        Some(f) if f.fract() == 0.0 && f > 0.0 => f as i64,
                        _ => return Err(bad(format!("`{field}` must be a positive integer"))),
                    }
                };
                if value < 1 {
                    return Err(bad(format!("`{field}` must be a positive integer")));
                }
                fields.push(field);
                smallest = Some(smallest.map_or(value, |s| s.min(value)));
            }
            Some(_) => return Err(bad(format!("`{field}` must be a positive integer"))),
        }
    }
    Ok((fields, smallest))
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
