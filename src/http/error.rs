//! Rendering of the domain error as `{"error": {"message", "type", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "authentication_error"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error"),
            Error::ModelNotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict_error"),
            Error::Gone(_) => (StatusCode::GONE, "invalid_request_error"),
            Error::InsufficientBalance { .. } => (StatusCode::PAYMENT_REQUIRED, "insufficient_quota"),
            Error::BalanceTooLow { .. } => (StatusCode::CONFLICT, "conflict_error"),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            Error::Upstream { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                if *status < 500 { "invalid_request_error" } else { "upstream_error" },
            ),
            Error::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        let message = match &self.0 {
            // Internals are logged with their cause and hidden from the client.
            Error::Database(e) => {
                tracing::error!(error = %e, label = self.0.label(), "database error");
                "the service is temporarily unavailable".to_owned()
            }
            Error::Internal(e) => {
                tracing::error!(error = ?e, label = self.0.label(), "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        // OpenAI's own code where clients test for it; our label otherwise.
        let code = match &self.0 {
            Error::ModelNotFound(_) => "model_not_found",
            other => other.label(),
        };
        let mut body = json!({ "error": { "message": message, "type": kind, "code": code } });
        if let Error::BalanceTooLow { balance, .. } = &self.0 {
            // The caller needs the current balance to correct by at most that much.
            body["error"]["balance"] = json!(crate::money::format_amount(*balance));
        }
        let mut res = (status, Json(body)).into_response();
        if let Error::RateLimited { retry_after_secs, .. } = &self.0 {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        res
    }
}
