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
use super::protocol::{self, Forward, Outbound, Protocol};
use super::settle::Settler;
use crate::billing::reservations::Affordable;
use crate::billing::{CacheWrites, ReserveRequest, reserve};
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

/// A request as the edge read it: its protocol, the model named, whether it streams, the
/// body's fields and its bytes (which pass upstream unchanged but for the model name and the
/// output cap wherever the channel speaks the client's protocol).
pub struct CallRequest {
    pub protocol: Protocol,
    pub model: String,
    pub stream: bool,
    pub body: Map<String, Value>,
    pub raw: Bytes,
    /// The client's headers passed upstream (beta features, API version).
    pub forward: Forward,
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

pub use super::protocol::bad;

/// Validates a request against the catalogue and the limits, reserves its worst case, and
/// hands it to an upstream exchange of its own (which settles it); answers with the upstream's
/// reply, or the failure and whom to log it for.
pub async fn complete(
    ctx: &Services<'_>,
    key: ApiKey,
    rules: &KeyRules,
    request: CallRequest,
    request_id: &str,
    started: Instant,
) -> Result<Answer, Failure> {
    let CallRequest { protocol, model: model_name, stream, mut body, raw, forward } = request;
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
    let shape = protocol::shape(protocol, &body, &model.upstream_model, ctx.gateway.max_choices).map_err(fail)?;
    let choices = shape.choices;
    // A continued response is served by the channel that holds the earlier one, and only for
    // its owner.
    let pinned_channel = match body.get("previous_response_id") {
        Some(Value::String(id)) if protocol == Protocol::Responses => {
            match super::responses::channel_of(ctx.db, id, key.user_id).await.map_err(fail)? {
                Some(channel) => Some(channel),
                None => return Err(fail(Error::NotFound(format!("Previous response with id '{id}' not found.")))),
            }
        }
        _ => None,
    };

    let max_concurrent = rules.user_max_concurrent.and_then(|n| u32::try_from(n).ok());
    let Some(slot) = ctx.gateway.inflight.try_acquire_up_to(key.user_id, max_concurrent).await else {
        observability::rate_limited("concurrency");
        return Err(fail(Error::RateLimited {
            message: "too many concurrent requests for this account; retry shortly".into(),
            retry_after_secs: 1,
        }));
    };

    let mut prompt = shape.prompt;
    if protocol == Protocol::Messages {
        // The count is an upper bound with a margin, not the upstream's count: it is never a
        // reason to refuse, and no upstream bills more prompt than its context window.
        prompt.text = prompt.text.min(model.context_window);
    } else if prompt.text >= model.context_window {
        return Err(fail(bad(format!(
            "this model's maximum context length is {} tokens; the messages use about {}",
            model.context_window, prompt.text
        ))));
    }
    let room = if protocol == Protocol::Messages { model.context_window } else { model.context_window - prompt.text };
    let max_out = if shape.output {
        shape
            .requested_cap
            .or(shape.default_cap)
            .unwrap_or(model.max_output_tokens)
            .min(model.max_output_tokens)
            .min(room)
            .max(1)
    } else {
        0
    };

    if stream && protocol.openai_chunks() {
        let options = body.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        options["include_usage"] = Value::Bool(true);
    }

    // The worst case: the prompt (media included) and the cap for every choice. A client that
    // named no cap may be given a lower one its funds cover; an explicit cap is never lowered.
    let reserved_prompt = prompt.reserved(model.context_window);
    let reserved_output = max_out.saturating_mul(i64::from(choices));
    let affordable = (shape.output && shape.requested_cap.is_none()).then_some(Affordable {
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
    let billing = Billing {
        prompt: reserved_prompt,
        output: reserved_output,
        estimate: prompt.estimate(),
        affordable,
        cache_writes: shape.cache_writes,
    };
    let mut settler = match reserve_detached(ctx, request_id, key, rules, &model, stream, started, billing).await {
        Ok(s) => s,
        Err(error) => {
            // Refused: it used no tokens.
            rates.settle(&mut admitted, 0).await;
            return Err(fail(error));
        }
    };
    settler.route = protocol.route();
    let lowered = settler.reservation.lowered_cap;
    let max_out = lowered.unwrap_or(max_out);
    if let Some(cap) = lowered {
        rates.settle(&mut admitted, reserved_prompt.saturating_add(cap.saturating_mul(i64::from(choices)))).await;
    }
    let mut headers = std::mem::take(&mut admitted.headers);
    settler.rate = Some((Arc::clone(rates), admitted));
    if let Some(cap) = lowered {
        headers.insert(OUTPUT_CAP_HEADER, HeaderValue::from(cap));
    }

    // The upstream body of each channel names its model and carries the reserved cap — in the
    // field that upstream honours, and in no other, whatever the client sent — so the upstream
    // cannot produce more than was reserved.
    let outbound = Outbound {
        protocol,
        raw,
        wire: body,
        cap_fields: shape.cap_fields,
        cap: max_out,
        stream,
        chat_cap_field: model.cap_field.clone(),
    };

    // The upstream exchange runs in a tracked task of its own: a client that leaves does not
    // stop it, so the request is settled on what the upstream reports, never on less.
    let exchange = Exchange {
        gateway: Arc::clone(ctx.gateway),
        hard_stop: ctx.hard_stop.clone(),
        settler,
        outbound,
        upstream_model: model.upstream_model.clone(),
        forward,
        client_wants_usage: shape.client_wants_usage,
        hidden_output: shape.hidden_output,
        pinned_channel,
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
    let Billing { prompt, output: max_out, estimate, affordable, cache_writes } = billing;
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
            cache_writes,
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
/// reports no usage, whether the output may be lowered to what the funds cover, and the cache
/// writes that decide the prompt's price.
struct Billing {
    prompt: i64,
    output: i64,
    estimate: i64,
    affordable: Option<Affordable>,
    cache_writes: CacheWrites,
}
