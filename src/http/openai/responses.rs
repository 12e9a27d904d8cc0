//! OpenAI Responses: `POST /v1/responses` (the shared edge is `http::calls`), and reading,
//! listing the input of, and deleting a stored response — `GET`/`DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items` — on the channel that created it, for its owner only
//! (see `gateway::responses`). Nothing here is billed: the upstream charges for generating a
//! response, not for reading it.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Authenticated, Route, with_request_id};
use crate::error::Error;
use crate::gateway::protocol::Protocol;
use crate::gateway::responses::channel_of;
use crate::gateway::upstream::UpstreamFailure;
use crate::http::ApiError;
use crate::observability::RequestRecord;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    auth: Authenticated<Responses>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::http::calls::serve(&state, Protocol::Responses, auth, headers, body).await
}

pub struct Responses;
impl Route for Responses {
    const NAME: &'static str = "responses";
}

pub struct StoredResponses;
impl Route for StoredResponses {
    const NAME: &'static str = "responses_stored";
}

pub async fn get(
    State(state): State<AppState>,
    auth: Authenticated<StoredResponses>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    stored(&state, auth, reqwest::Method::GET, &id, "", query).await
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Authenticated<StoredResponses>,
    Path(id): Path<String>,
) -> Response {
    stored(&state, auth, reqwest::Method::DELETE, &id, "", None).await
}

pub async fn input_items(
    State(state): State<AppState>,
    auth: Authenticated<StoredResponses>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    stored(&state, auth, reqwest::Method::GET, &id, "/input_items", query).await
}

/// Whether `id` can be a response id (and so be put in a URL path as it is).
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= crate::gateway::responses::MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn stored(
    state: &AppState,
    auth: Authenticated<StoredResponses>,
    method: reqwest::Method,
    id: &str,
    suffix: &str,
    query: Option<String>,
) -> Response {
    let result = forward(state, auth.key.user_id, method, id, suffix, query).await;
    let (res, error) = match result {
        Ok(res) => (res, None),
        Err(err) => {
            let label = err.label();
            (ApiError(err).into_response(), Some(label))
        }
    };
    let mut record =
        RequestRecord::local(&auth.request_id, StoredResponses::NAME, auth.started.elapsed(), res.status().as_u16());
    record.error = error;
    record.key_id = Some(auth.key.key_id);
    record.user_id = Some(auth.key.user_id);
    record.emit();
    with_request_id(res, &auth.request_id)
}

async fn forward(
    state: &AppState,
    user_id: i64,
    method: reqwest::Method,
    id: &str,
    suffix: &str,
    query: Option<String>,
) -> Result<Response, Error> {
    let not_found = || Error::NotFound(format!("Response with id '{id}' not found."));
    if !plausible_id(id) {
        return Err(not_found());
    }
    let Some(channel) = channel_of(&state.db, id, user_id).await? else { return Err(not_found()) };
    let routes = state.gateway.channels.directory.routes(&state.db, &state.cache).await?;
    let Some(route) = routes.into_iter().find(|r| r.id == channel) else {
        return Err(Error::Upstream {
            status: 503,
            message: "the channel that holds this response is not available".into(),
            label: "no_available_channel",
        });
    };
    let key = state.gateway.channels.directory.next_key(&route, &[]).flatten();
    let mut path = format!("responses/{id}{suffix}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(&q);
    }
    let res = match state.gateway.upstream.fetch(&route, key.as_ref(), method, &path).await {
        Ok(res) => res,
        Err(UpstreamFailure::Timeout | UpstreamFailure::Unanswered) => {
            return Err(Error::Upstream {
                status: 504,
                message: "the upstream did not answer in time".into(),
                label: "upstream.timeout",
            });
        }
        Err(_) => {
            return Err(Error::Upstream {
                status: 502,
                message: "the upstream could not be reached".into(),
                label: "upstream.unreachable",
            });
        }
    };
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The channel's credentials are the operator's business, not the customer's.
        return Err(Error::Upstream {
            status: 502,
            message: "the upstream refused the relay's credentials".into(),
            label: "upstream.auth",
        });
    }
    let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
    let mut out = Response::new(Body::from_stream(res.bytes_stream()));
    *out.status_mut() = status;
    out.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("application/json")));
    Ok(out)
}
