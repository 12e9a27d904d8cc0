//! The one error type of the domain; `http` renders it per surface (OpenAI JSON, JSON, HTML).

use sea_orm::DbErr;

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

pub type Result<T, E = Error> = std::result::Result<T, E>;
