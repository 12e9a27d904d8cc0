//! Request bodies outside the gateway (sign-in forms, key creation, …) are read in full before
//! any handler runs: within `BODY_READ_TIMEOUT_MS` (else 408) and at most `MAX_FORM_BYTES`
//! (else 413), so a trickling or huge body holds neither a handler nor a database connection.
//! The gateway reads its own bodies, bounded by the same timeout and by `MAX_REQUEST_BYTES`.

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::ApiError;
use crate::error::Error;
use crate::state::AppState;

/// The largest body accepted outside the gateway: forms and small JSON documents.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Paths whose handlers bound their own bodies (the OpenAI-compatible API).
fn reads_its_own_body(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/api/v1/")
}

pub async fn bound_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if reads_its_own_body(request.uri().path()) || request.body().size_hint().exact() == Some(0) {
        return next.run(request).await;
    }
    let too_large =
        || ApiError(Error::PayloadTooLarge(format!("the request body is larger than {MAX_FORM_BYTES} bytes")));
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return too_large().into_response();
    }
    let (parts, body) = request.into_parts();
    let read = async {
        let mut data = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|_| ApiError(Error::BadRequest("the request body could not be read".into())))?;
            if bytes.len() + chunk.len() > MAX_FORM_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(state.config.body_read_timeout, read).await {
        Err(_) => ApiError(Error::RequestTimeout("the request body did not arrive in time".into())).into_response(),
        Ok(Err(refusal)) => refusal.into_response(),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}
