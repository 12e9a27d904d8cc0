//! The one error type of the domain. It carries its status and renders its own JSON body,
//! `{"error": {"message", "type", "code"}}`: `http` answers with it, and streams end with it as
//! their last SSE event.

use sea_orm::DbErr;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; the message tells the caller what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that do not identify anyone.
    #[error("{0}")]
    Unauthorized(String),
    /// Identified, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// No enabled model by that name (OpenAI's `model_not_found`).
    #[error("{0}")]
    ModelNotFound(String),
    /// The change would break a uniqueness rule (an email already in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// The thing asked for existed but is no longer usable (an expired redemption code).
    #[error("{0}")]
    Gone(String),
    /// The user cannot cover the worst case of the request.
    #[error("insufficient balance: this request needs up to {needed} and {available} is available")]
    InsufficientBalance { needed: String, available: String },
    /// The key's spend cap would be passed by the worst case of the request.
    #[error(
        "this key's spend limit of {limit} ({period}) would be exceeded: this request needs up to {needed} and {left} is left"
    )]
    KeyBudgetExceeded { needed: String, limit: String, left: String, period: &'static str },
    /// The key may not use this model (OpenAI-style `model_not_allowed`).
    #[error("{0}")]
    ModelNotAllowed(String),
    /// A deduction larger than the balance (micro-units): refused, nothing changed.
    #[error(
        "the balance is {}; a change of {} would take it below zero",
        crate::money::format_amount(*.balance),
        crate::money::format_amount(*.delta)
    )]
    BalanceTooLow { balance: i64, delta: i64 },
    /// The client was too slow to send its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many requests: in flight for this user, or the upstream is rate limiting.
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// The upstream failed or refused; `status` is what the client gets (400, 413, 502, 504).
    #[error("{message}")]
    Upstream { status: u16, message: String, label: &'static str },
    /// The database could not be reached or failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A short fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "request.invalid",
            Self::Unauthorized(_) => "auth.unauthorized",
            Self::Forbidden(_) => "auth.forbidden",
            Self::NotFound(_) => "request.not_found",
            Self::ModelNotFound(_) => "model.not_found",
            Self::Conflict(_) => "request.conflict",
            Self::Gone(_) => "request.gone",
            Self::InsufficientBalance { .. } => "billing.insufficient_balance",
            Self::KeyBudgetExceeded { .. } => "billing.key_budget_exceeded",
            Self::ModelNotAllowed(_) => "model.not_allowed",
            Self::BalanceTooLow { .. } => "billing.balance_too_low",
            Self::PayloadTooLarge(_) => "request.too_large",
            Self::RequestTimeout(_) => "request.timeout",
            Self::RateLimited { .. } => "limits.too_many_requests",
            Self::Upstream { label, .. } => label,
            Self::Database(_) => "database.error",
            Self::Internal(_) => "internal",
        }
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) | Self::ModelNotFound(_) => 404,
            Self::Conflict(_) | Self::BalanceTooLow { .. } => 409,
            Self::Gone(_) => 410,
            Self::InsufficientBalance { .. } | Self::KeyBudgetExceeded { .. } => 402,
            Self::ModelNotAllowed(_) => 403,
            Self::PayloadTooLarge(_) => 413,
            Self::RequestTimeout(_) => 408,
            Self::RateLimited { .. } => 429,
            // Only valid statuses reach the client; anything else is a bad gateway.
            Self::Upstream { status, .. } => {
                if (100..=999).contains(status) {
                    *status
                } else {
                    502
                }
            }
            Self::Database(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_)
            | Self::ModelNotFound(_)
            | Self::Gone(_)
            | Self::PayloadTooLarge(_)
            | Self::RequestTimeout(_) => "invalid_request_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::NotFound(_) => "not_found_error",
            Self::Conflict(_) | Self::BalanceTooLow { .. } => "conflict_error",
            Self::InsufficientBalance { .. } | Self::KeyBudgetExceeded { .. } => "insufficient_quota",
            Self::ModelNotAllowed(_) => "permission_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::Upstream { status, .. } => {
                if *status < 500 {
                    "invalid_request_error"
                } else {
                    "upstream_error"
                }
            }
            Self::Database(_) => "service_unavailable",
            Self::Internal(_) => "server_error",
        }
    }

    /// The error `code`: OpenAI's own where clients test for it, our label otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ModelNotFound(_) => "model_not_found",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::KeyBudgetExceeded { .. } => "key_budget_exceeded",
            other => other.label(),
        }
    }

    /// The seconds a client should wait before retrying, for a `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The body a client gets, `{"error": {"message", "type", "code"}}`. Internals are logged
    /// with their cause here and hidden from the client.
    pub fn body(&self) -> Value {
        let message = match self {
            Self::Database(e) => {
                tracing::error!(error = %e, label = self.label(), "database error");
                "the service is temporarily unavailable".to_owned()
            }
            Self::Internal(e) => {
                tracing::error!(error = ?e, label = self.label(), "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = error_body(&message, self.kind(), self.code());
        if let Self::BalanceTooLow { balance, .. } = self {
            // The caller needs the current balance to correct by at most that much.
            body["error"]["balance"] = json!(crate::money::format_amount(*balance));
        }
        if let Self::KeyBudgetExceeded { limit, left, period, .. } = self {
            body["error"]["limit"] = json!(limit);
            body["error"]["remaining"] = json!(left);
            body["error"]["period"] = json!(period);
        }
        body
    }
}

impl Error {
    /// The body an Anthropic Messages client gets: `{"type": "error", "error": {"type",
    /// "message"}}`, with the same message as `body`.
    pub fn anthropic_body(&self) -> Value {
        let openai = self.body();
        let message = openai["error"]["message"].as_str().unwrap_or_default().to_owned();
        let mut body =
            json!({ "type": "error", "error": { "type": anthropic_error_type(self.status()), "message": message } });
        for field in ["balance", "limit", "remaining", "period"] {
            if let Some(v) = openai["error"].get(field) {
                body["error"][field] = v.clone();
            }
        }
        body
    }
}

/// Anthropic's error type for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        // Other 4xx statuses are invalid requests, as Anthropic answers them.
        _ => "invalid_request_error",
    }
}

/// Our JSON error shape, `{"error": {"message", "type", "code"}}`: the one renderer of every
/// refusal, whether it comes from an `Error` or is answered before one exists.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": code } })
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
