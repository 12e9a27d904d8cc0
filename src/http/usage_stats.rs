//! `GET /api/internal/usage/daily` (session cookie): the dashboard chart's per-day usage.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde_json::{Value, json};

use super::ApiError;
use super::session::CurrentUser;
use crate::clock::now_ms;
use crate::error::Error;
use crate::money::format_amount;
use crate::state::AppState;
use crate::usage::daily::{self, RawDailyFilter};

/// `?days=30&model=&keyId=`: `days` UTC days ending today, zero-filled and oldest first, the
/// models used in them (most expensive first) and the totals; the signed-in user's rows only.
pub async fn daily(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<Query<RawDailyFilter>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(raw) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let filter = raw.validate(me.user.id)?;
    let d = daily::daily(&state.db, &filter, now_ms()).await?;
    Ok(Json(json!({
        "days": filter.days,
        "from": d.from,
        "to": d.to,
        "currency": state.config.currency,
        "currencySymbol": state.config.currency_symbol,
        "series": d.series.iter().map(|s| json!({
            "day": s.day,
            "requests": s.requests,
            "promptTokens": s.prompt_tokens,
            "completionTokens": s.completion_tokens,
            "totalTokens": s.total_tokens,
            "cost": format_amount(s.cost),
        })).collect::<Vec<_>>(),
        "models": d.models.iter().map(|m| json!({
            "model": m.model,
            "requests": m.requests,
            "totalTokens": m.total_tokens,
            "cost": format_amount(m.cost),
        })).collect::<Vec<_>>(),
        "totals": { "requests": d.requests, "totalTokens": d.total_tokens, "cost": format_amount(d.cost) },
    })))
}
