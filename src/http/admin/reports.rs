//! `/api/admin/audit-logs` and `/api/admin/revenue`: reading the books.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminUser, bad_query, page_json};
use crate::admin::Paging;
use crate::admin::audit_log::{self, AuditQuery};
use crate::admin::revenue::{self, Figures, Granularity};
use crate::http::ApiError;
use crate::money::format_amount;
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditListQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

/// `GET /api/admin/audit-logs?actor=&action=&target=&page=&pageSize=`: newest first.
pub async fn audit_logs(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<AuditListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let paging = Paging::parse(q.page.as_deref(), q.page_size.as_deref())?;
    let page =
        audit_log::list(&state.db, &AuditQuery { actor: q.actor, action: q.action, target: q.target, paging }).await?;
    Ok(Json(page_json(&page, crate::admin::views::audit_json)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevenueQuery {
    granularity: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

fn figures_json(f: &Figures) -> Value {
    json!({ "charged": format_amount(f.charged), "tokens": f.tokens, "requests": f.requests })
}

/// `GET /api/admin/revenue?granularity=day|month&start=YYYY-MM-DD&end=YYYY-MM-DD`.
pub async fn revenue(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<RevenueQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let granularity = Granularity::parse(q.granularity.as_deref())?;
    let (start, end) = revenue::range(granularity, q.start.as_deref(), q.end.as_deref())?;
    let r = revenue::report(&state.db, granularity, start, end).await?;
    let periods: Vec<Value> = r
        .periods
        .iter()
        .map(|p| {
            let mut v = figures_json(&p.figures);
            v["period"] = json!(p.period);
            v["payingUsers"] = json!(p.paying_users);
            v["topups"] = json!(format_amount(p.topups));
            v
        })
        .collect();
    let models: Vec<Value> = r
        .models
        .iter()
        .map(|(name, f)| {
            let mut v = figures_json(f);
            v["model"] = json!(name);
            v
        })
        .collect();
    let mut totals = figures_json(&r.totals);
    totals["topups"] = json!(format_amount(r.topups));
    Ok(Json(json!({
        "granularity": if granularity == Granularity::Day { "day" } else { "month" },
        "start": r.start,
        "end": r.end,
        "periods": periods,
        "models": models,
        "totals": totals,
    })))
}
