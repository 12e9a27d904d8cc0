//! The Anthropic Messages edge: `POST /v1/messages` (the shared edge is `http::calls`) and
//! `POST /v1/messages/count_tokens`, under `/v1` and `/api/v1`. The key is accepted as
//! `x-api-key` or `Authorization: Bearer`; refusals are Anthropic-shaped
//! (`{"type": "error", "error": {"type", "message"}}`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::Error;
use crate::gateway::chat::bad;
use crate::gateway::protocol::{Forward, Protocol};
use crate::http::AnthropicError;
use crate::http::calls::{parse_body, read_body};
use crate::http::openai::{Authenticated, Route, with_request_id};
use crate::observability::RequestRecord;
use crate::state::AppState;

pub struct Messages;
impl Route for Messages {
    const NAME: &'static str = "messages";
    const ANTHROPIC: bool = true;
}

pub struct CountTokens;
impl Route for CountTokens {
    const NAME: &'static str = "messages_count_tokens";
    const ANTHROPIC: bool = true;
}

pub async fn messages(
    State(state): State<AppState>,
    auth: Authenticated<Messages>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::http::calls::serve(&state, Protocol::Messages, auth, headers, body).await
}

/// Counts the input tokens of a Messages request, free of charge: exactly, by the Anthropic
/// channel that would serve the model when there is one; otherwise by our approximation
/// (`gateway::tokens::count_messages_parts`: `o200k_base` with a margin, images and documents
/// by fixed allowances), which is never below the upstream's count.
pub async fn count_tokens(
    State(state): State<AppState>,
    auth: Authenticated<CountTokens>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = count(&state, &auth, &headers, body).await;
    let (res, error) = match result {
        Ok(res) => (res, None),
        Err(err) => {
            let label = err.label();
            (AnthropicError(err).into_response(), Some(label))
        }
    };
    let mut record =
        RequestRecord::local(&auth.request_id, CountTokens::NAME, auth.started.elapsed(), res.status().as_u16());
    record.error = error;
    record.key_id = Some(auth.key.key_id);
    record.user_id = Some(auth.key.user_id);
    record.emit();
    with_request_id(res, &auth.request_id)
}

async fn count(
    state: &AppState,
    auth: &Authenticated<CountTokens>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let raw = read_body(state, headers, body).await?;
    let (wire, model_name) = parse_body(&raw)?;
    match wire.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(bad("messages: `messages` is required and must be a non-empty array")),
    }
    let model = crate::models::lookup(&state.db, &state.cache, &model_name).await?;
    if !auth.rules.allows_model(&model.name) {
        return Err(Error::ModelNotAllowed(format!("this API key is not allowed to use the model `{}`", model.name)));
    }
    if let Some(res) = count_upstream(state, &model, &raw, headers).await {
        return Ok(res);
    }
    let n = crate::gateway::tokens::count_messages_parts(&model.upstream_model, &wire).estimate();
    Ok((StatusCode::OK, axum::Json(json!({ "input_tokens": n }))).into_response())
}

/// The count of an Anthropic channel serving the model, passed on as it is; `None` when no
/// such channel answers (the caller counts instead).
async fn count_upstream(
    state: &AppState,
    model: &crate::models::ModelConfig,
    raw: &Bytes,
    headers: &HeaderMap,
) -> Option<Response> {
    let routes = state.gateway.channels.directory.routes(&state.db, &state.cache).await.ok()?;
    let (route, name) = routes.into_iter().find_map(|r| {
        let name = (r.provider == crate::channels::ANTHROPIC)
            .then(|| r.upstream_name(&model.name, &model.upstream_model))??;
        Some((r, name))
    })?;
    let body = crate::gateway::json_edit::set_members(raw, &[("model", Value::String(name).to_string())])?;
    let key = state.gateway.channels.directory.next_key(&route, &[]).flatten();
    let forward = Forward::from_headers(headers);
    let res = state
        .gateway
        .upstream
        .post_once(&route, key.as_ref(), Bytes::from(body), "messages/count_tokens", &forward)
        .await
        .ok()?;
    let status = StatusCode::from_u16(res.status().as_u16()).ok()?;
    let body = res.bytes().await.ok()?;
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Some(out)
}
