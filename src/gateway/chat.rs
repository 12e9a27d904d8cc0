//! The chat completion core: validate against the catalogue and limits → reserve → exchange
//! with the upstream (which settles). The edge (`http::openai::chat`) parses the wire format
//! into a `ChatRequest` and renders the `Reply` or the `Failure`; nothing here knows axum.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Gateway;
use super::auth::{ApiKey, KeyRules};
use super::exchange::{Exchange, Head};
use super::settle::Settler;
use super::tokens;
use crate::billing::reservations::Affordable;
use crate::billing::{ReserveRequest, reserve};
use crate::cache::Cache;
use crate::db::Db;
use crate::error::Error;
use crate::models;
use crate::observability::{self, UNKNOWN_MODEL};

/// What a chat completion needs from the running service.
pub struct Services<'a> {
    pub db: &'a Db,
    pub cache: &'a Cache,
    pub tasks: &'a TaskTracker,
    pub gateway: &'a Arc<Gateway>,
    /// Cancelled when shutdown's grace period has run out.
    pub hard_stop: &'a CancellationToken,
}

/// A chat completion as the edge read it: the model named, whether it streams, and the body's
/// fields (the core rewrites the model, the output caps and the stream options before they go
/// upstream, and passes everything else through).
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub body: Map<String, Value>,
    /// The client's `OpenAI-Beta` header, passed upstream.
    pub beta: Option<HeaderValue>,
}

/// The upstream's answer, as it comes.
pub enum Reply {
    /// A whole non-streamed answer (JSON).
    Json(Bytes),
    /// SSE frames, as they come; a failure after the first byte ends them with an error event.
    Stream(mpsc::Receiver<Bytes>),
}

/// An admitted request's answer, and headers for the client (`x-tollgate-output-cap` when the
/// output cap was lowered to what the funds cover).
pub struct Answer {
    pub reply: Reply,
    pub headers: reqwest::header::HeaderMap,
}

/// The header that tells a client its output cap was lowered to what its funds cover.
pub const OUTPUT_CAP_HEADER: &str = "x-tollgate-output-cap";

/// An error, and who to log its refusal for (none once the settlement has logged the request).
pub struct Failure {
    pub error: Error,
    pub key: Option<ApiKey>,
    /// The catalogue model of the request; empty before it was found (the client's own name
    /// for it is never logged, so invented names cannot multiply refusal rows).
    pub model: String,
    /// The model for logs and metrics: a catalogue name, `unknown`, or empty when none was named.
    pub label: String,
    /// The settlement already wrote this request's usage row and log line.
    pub settled: bool,
    /// Headers for the client (`x-ratelimit-*` on a rate-limit refusal).
    pub headers: reqwest::header::HeaderMap,
}

pub fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

/// Validates a chat completion against the catalogue and the limits, reserves its worst case,
/// and hands it to an upstream exchange of its own (which settles it); answers with the
/// upstream's reply, or the failure and whom to log it for.
pub async fn complete(
    ctx: &Services<'_>,
    key: ApiKey,
    rules: &KeyRules,
    request: ChatRequest,
    request_id: &str,
    started: Instant,
) -> Result<Answer, Failure> {
    let ChatRequest { model: model_name, stream, mut body, beta } = request;
    // Until the model is found in the catalogue its name is the client's to choose: refusals
    // are logged without it, so invented names cannot multiply the refusal rows (nor metrics
    // series).
    let fail = |error: Error| Failure {
        error,
        key: Some(key),
        model: String::new(),
        label: UNKNOWN_MODEL.to_owned(),
        settled: false,
        headers: reqwest::header::HeaderMap::new(),
    };
    let model = models::lookup(ctx.db, ctx.cache, &model_name).await.map_err(fail)?;
    // From here on the model is in the catalogue: its name may label metrics.
    let fail = |error: Error| Failure {
        error,
        key: Some(key),
        model: model.name.clone(),
        label: model.name.clone(),
        settled: false,
        headers: reqwest::header::HeaderMap::new(),
    };
    if !rules.allows_model(&model.name) {
        return Err(fail(Error::ModelNotAllowed(format!(
            "this API key is not allowed to use the model `{}`; its owner can change the key's allowed models in the dashboard",
            model.name
        ))));
    }
    let choices = choices(&body, ctx.gateway.max_choices).map_err(fail)?;
    refuse_unpriced(&body).map_err(fail)?;
    let (cap_fields, requested_cap) = output_caps(&body).map_err(fail)?;

    let max_concurrent = rules.user_max_concurrent.and_then(|n| u32::try_from(n).ok());
    let Some(slot) = ctx.gateway.inflight.try_acquire_up_to(key.user_id, max_concurrent).await else {
        observability::rate_limited("concurrency");
        return Err(fail(Error::RateLimited {
            message: "too many concurrent requests for this account; retry shortly".into(),
            retry_after_secs: 1,
        }));
    };

    let prompt = tokens::count_prompt_parts(&model.upstream_model, &body);
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

    let mut client_wants_usage = false;
    if stream {
        let options = body.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            return Err(fail(bad("`stream_options` must be an object")));
        }
        client_wants_usage = options.get("include_usage").and_then(Value::as_bool).unwrap_or(false);
        options["include_usage"] = Value::Bool(true);
    }

    // The worst case: the prompt (media included) and the cap for every choice. A client that
    // named no cap may be given a lower one its funds cover; an explicit cap is never lowered.
    let reserved_prompt = prompt.reserved(model.context_window);
    let reserved_output = max_out.saturating_mul(i64::from(choices));
    let affordable = requested_cap.is_none().then_some(Affordable {
        choices: i64::from(choices),
        min_per_choice: ctx.gateway.min_affordable_output_tokens,
    });
    // Requests and tokens per minute: the tokens are the worst case, corrected at settlement.
    let limits = rules.rate_limits(key, ctx.gateway.default_user_rpm, ctx.gateway.default_user_tpm);
    let rates = &ctx.gateway.rates;
    let mut admitted = match rates.admit(&limits, reserved_prompt.saturating_add(reserved_output)).await {
        Ok(a) => a,
        Err(refused) => {
            observability::rate_limited("rate");
            let error = Error::RateLimited { message: refused.message, retry_after_secs: refused.retry_after_secs };
            return Err(Failure { headers: *refused.headers, ..fail(error) });
        }
    };
    // From here on the settler resolves the reservation, whatever happens.
    let billing = Billing { prompt: reserved_prompt, output: reserved_output, estimate: prompt.estimate(), affordable };
    let mut settler = match reserve_detached(ctx, request_id, key, rules, &model, stream, started, billing).await {
        Ok(s) => s,
        Err(error) => {
            // Refused: it used no tokens.
            rates.settle(&mut admitted, 0).await;
            return Err(fail(error));
        }
    };
    let lowered = settler.reservation.lowered_cap;
    let max_out = lowered.unwrap_or(max_out);
    if let Some(cap) = lowered {
        rates.settle(&mut admitted, reserved_prompt.saturating_add(cap.saturating_mul(i64::from(choices)))).await;
    }
    let mut headers = std::mem::take(&mut admitted.headers);
    settler.rate = Some((Arc::clone(rates), admitted));

    // The upstream body: our model name; the reserved cap in the field this model's upstream
    // honours — and in no other, whatever the client sent — so the upstream cannot produce
    // more than was reserved; usage requested for streams.
    body.insert("model".into(), Value::String(model.upstream_model.clone()));
    for field in cap_fields {
        body.remove(field);
    }
    body.insert(model.cap_field.clone(), Value::from(max_out));
    // Dropping the settler here (a body that cannot be written) voids the reservation.
    let upstream_body = Bytes::from(serde_json::to_vec(&body).map_err(|e| fail(Error::Internal(e.into())))?);
    if let Some(cap) = lowered {
        headers.insert(OUTPUT_CAP_HEADER, HeaderValue::from(cap));
    }

    // The upstream exchange runs in a tracked task of its own: a client that leaves does not
    // stop it, so the request is settled on what the upstream reports, never on less.
    let exchange = Exchange {
        gateway: Arc::clone(ctx.gateway),
        hard_stop: ctx.hard_stop.clone(),
        settler,
        body: upstream_body,
        wire: body,
        upstream_model: model.upstream_model.clone(),
        stream,
        beta,
        client_wants_usage,
        deadline: started + ctx.gateway.upstream.timeouts.total,
        slot,
    };
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    ctx.tasks.spawn(exchange.run(head_tx));
    match head_rx.await {
        Ok(Head::Failed(error)) => Err(Failure {
            error,
            key: None,
            label: model.name.clone(),
            model: model.name,
            settled: true,
            headers: reqwest::header::HeaderMap::new(),
        }),
        Ok(Head::Json(body)) => Ok(Answer { reply: Reply::Json(body), headers }),
        Ok(Head::Stream(frames)) => Ok(Answer { reply: Reply::Stream(frames), headers }),
        Err(_) => Err(Failure {
            error: Error::Internal(anyhow::anyhow!("the upstream exchange stopped")),
            key: None,
            label: model.name.clone(),
            model: model.name,
            settled: true,
            headers: reqwest::header::HeaderMap::new(),
        }),
    }
}

/// Reserves from a tracked task of its own, which hands back the settlement guard. A client
/// that goes away while the reservation commits drops this handler, not the reservation: the
/// guard, received or not, is dropped and refunds it in full (the upstream was never called).
#[expect(clippy::too_many_arguments, reason = "one request's admission context")]
async fn reserve_detached(
    ctx: &Services<'_>,
    request_id: &str,
    key: ApiKey,
    rules: &KeyRules,
    model: &models::ModelConfig,
    stream: bool,
    started: Instant,
    billing: Billing,
) -> Result<Settler, Error> {
    let Billing { prompt, output: max_out, estimate, affordable } = billing;
    let key_cap = rules.key_cap(key);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (db, cache, tasks, request_id, model_id, prices, model_name) = (
        ctx.db.clone(),
        ctx.cache.clone(),
        ctx.tasks.clone(),
        request_id.to_owned(),
        model.id,
        model.prices(),
        model.name.clone(),
    );
    ctx.tasks.spawn(async move {
        let req = ReserveRequest {
            request_id: &request_id,
            user_id: key.user_id,
            key_id: Some(key.key_id),
            model_id: Some(model_id),
            prompt_tokens: prompt,
            max_completion_tokens: max_out,
            prices,
            key_cap,
            affordable,
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

/// What a request reserves: the prompt and output tokens, the prompt billed when the upstream
/// reports no usage, and whether the output may be lowered to what the funds cover.
struct Billing {
    prompt: i64,
    output: i64,
    estimate: i64,
    affordable: Option<Affordable>,
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
