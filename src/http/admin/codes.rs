//! `/api/admin/redemption-codes`: creating a batch (its codes answered once, never again) and
//! listing batches or one batch's codes (a short prefix of each, never the code).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminUser, bad_query, page_json};
use crate::admin::Paging;
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::db::entities::{redemption_batches, redemption_codes};
use crate::error::Error;
use crate::http::ApiError;
use crate::http::internal::ApiJson;
use crate::money::{format_amount, parse_amount};
use crate::redeem::{self, BatchRow, NewBatch, Value as CodeValue};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    count: i64,
    amount: Option<String>,
    tokens: Option<i64>,
    days: Option<i64>,
    expires_in_days: Option<i64>,
    note: Option<String>,
}

/// The value a body asks for: `amount`, or `tokens` and `days`, never both.
fn value(body: &CreateBody) -> Result<CodeValue, Error> {
    match (&body.amount, body.tokens, body.days) {
        (Some(a), None, None) => {
            let micros = parse_amount(a).map_err(|e| Error::BadRequest(format!("amount: {e}")))?;
            Ok(CodeValue::Money(micros))
        }
        (None, Some(tokens), Some(days)) => Ok(CodeValue::Subscription { tokens, days }),
        _ => Err(Error::BadRequest("send either `amount`, or `tokens` and `days`".into())),
    }
}

fn batch_json(b: &redemption_batches::Model) -> Value {
    json!({
        "id": b.id,
        "kind": b.kind,
        "amount": format_amount(b.amount),
        "tokens": b.tokens,
        "days": b.days,
        "count": b.code_count,
        "expiresAt": b.expires_at.map(rfc3339),
        "note": b.note,
        "createdBy": b.created_by,
        "createdAt": rfc3339(b.created_at),
    })
}

fn batch_row_json(r: &BatchRow) -> Value {
    let mut v = batch_json(&r.batch);
    v["redeemed"] = json!(r.redeemed);
    v
}

fn code_json(c: &redemption_codes::Model) -> Value {
    json!({
        "id": c.id,
        "batchId": c.batch_id,
        "prefix": c.prefix,
        "redeemedBy": c.redeemed_by,
        "redeemedAt": c.redeemed_at.map(rfc3339),
    })
}

/// `POST /api/admin/redemption-codes` `{"count", "amount"}` or `{"count", "tokens", "days"}`,
/// with `expiresInDays` and `note` optional: 201 with `{batchId, codes}`, the only time the
/// codes are shown.
pub async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let new =
        NewBatch { count: body.count, value: value(&body)?, expires_in_days: body.expires_in_days, note: body.note };
    let created = redeem::create_batch(&state.db, &new, &admin.actor).await?;
    tracing::info!(batch.id = created.batch.id, codes = created.codes.len(), "redemption codes created");
    let mut answer = batch_json(&created.batch);
    answer["batchId"] = json!(created.batch.id);
    answer["codes"] = json!(created.codes);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    batch: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

/// `GET /api/admin/redemption-codes?page=&pageSize=`: batches, newest first, with how many of
/// their codes were redeemed; with `batch=ID`, that batch's codes by prefix.
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let paging = Paging::parse(q.page.as_deref(), q.page_size.as_deref())?;
    match q.batch.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
        None => Ok(Json(page_json(&redeem::list_batches(&state.db, paging).await?, batch_row_json))),
        Some(raw) => {
            let id =
                raw.parse::<i64>().map_err(|_| Error::BadRequest(format!("batch must be a batch id, not `{raw}`")))?;
            Ok(Json(page_json(&redeem::list_codes(&state.db, id, paging).await?, code_json)))
        }
    }
}
