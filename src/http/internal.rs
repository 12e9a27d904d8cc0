//! The dashboard's JSON API (session cookie): keys, usage, the CSV export, and `me`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ApiError;
use super::session::CurrentUser;
use crate::cache;
use crate::clock::{now_ms, rfc3339};
use crate::db::entities::{api_keys, usage_logs};
use crate::error::Error;
use crate::money::format_amount;
use crate::state::AppState;
use crate::usage::{self, RawFilter};
use crate::{billing, keys, subscriptions};

/// A JSON body whose every rejection (bad JSON, wrong types, unknown fields) is a 400 in our
/// error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError(Error::BadRequest("send JSON with `Content-Type: application/json`".into())))
            }
            Err(e) => Err(ApiError(Error::BadRequest(e.body_text()))),
        }
    }
}

fn key_json(k: &api_keys::Model) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "last4": k.last4,
        "createdAt": rfc3339(k.created_at),
        "lastUsedAt": k.last_used_at.map(rfc3339),
        "disabled": k.disabled,
        "status": if k.disabled { "disabled" } else { "active" },
        "settings": keys::settings_json(k),
    })
}

/// `GET /api/internal/keys`: the user's keys that are not revoked, never their plaintext.
pub async fn list_keys(State(state): State<AppState>, me: CurrentUser) -> Result<Json<Value>, ApiError> {
    let rows = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(me.user.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .order_by_asc(api_keys::Column::Id)
        .all(&state.db.read)
        .await
        .map_err(Error::from)?;
    Ok(Json(json!({ "data": rows.iter().map(key_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    name: Option<String>,
}

/// `POST /api/internal/keys`: a new key; its plaintext is in this answer and nowhere else.
pub async fn create_key(
    State(state): State<AppState>,
    me: CurrentUser,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<Response, ApiError> {
    let (row, plaintext) = keys::create_limited(&state.db, me.user.id, body.name.as_deref()).await?;
    let mut value = key_json(&row);
    value["key"] = Value::String(plaintext);
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

/// A key id from the path; anything but a number names no key of this user.
fn key_id(raw: &str) -> Result<i64, Error> {
    raw.parse().map_err(|_| Error::NotFound(format!("no active key with id {raw}")))
}

/// `DELETE /api/internal/keys/{id}`: revokes one of the user's keys, everywhere within seconds.
/// Another user's key is a 404 and changes nothing.
pub async fn revoke_key(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = keys::revoke(&state.db, &state.cache, Some(me.user.id), key_id(&id)?).await?;
    tracing::info!(user.id = me.user.id, key.id = row.id, "key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /api/internal/keys/{id}`: renames, disables or re-enables one of the user's keys, or
/// changes its controls (`allowedModels`, `spendLimit`, `spendLimitPeriod`, `expiresAt`,
/// `allowedIps`, `rpm`, `tpm`; `null` clears one). A disabled key is refused by the gateway at
/// once. Another user's or a revoked key is a 404, and a bad value a 400; both change nothing.
pub async fn update_key(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let change = keys::change_from_json(&body)?;
    let row = keys::update(&state.db, &state.cache, Some(me.user.id), key_id(&id)?, change).await?;
    tracing::info!(user.id = me.user.id, key.id = row.id, key.disabled = row.disabled, "key updated");
    Ok(Json(key_json(&row)))
}

fn row_json(r: &usage_logs::Model, key_names: &HashMap<i64, String>) -> Value {
    json!({
        "id": r.id,
        "requestId": r.request_id,
        "model": r.model,
        "keyId": r.key_id,
        "keyName": r.key_id.and_then(|id| key_names.get(&id)),
        "statusCode": r.status_code,
        "stream": r.stream,
        "promptTokens": r.prompt_tokens,
        "completionTokens": r.completion_tokens,
        "totalTokens": r.total_tokens,
        "cacheReadTokens": r.cache_read_tokens,
        "cacheWriteTokens": r.cache_write_tokens,
        "reasoningTokens": r.reasoning_tokens,
        "cost": format_amount(r.cost),
        "subscriptionTokens": r.subscription_tokens,
        "usageSource": r.usage_source,
        "latencyMs": r.latency_ms,
        "ttfbMs": r.ttfb_ms,
        "requestCount": r.request_count,
        "createdAt": rfc3339(r.created_at),
        "day": r.day,
    })
}

/// `GET /api/internal/usage`: totals over everything the filters match, and one page of rows.
pub async fn usage(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<Query<RawFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(raw) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let filter = raw.validate(me.user.id)?;
    let totals = usage::totals(&state.db, &filter).await?;
    let rows = usage::page(&state.db, &filter).await?;
    let names = usage::key_names(&state.db, me.user.id, rows.iter().filter_map(|r| r.key_id)).await?;
    Ok(Json(json!({
        "totalCost": format_amount(totals.total_cost),
        "totalTokens": totals.total_tokens,
        "totalRequestCount": totals.total_request_count,
        "page": filter.page,
        "pageSize": filter.page_size,
        "data": rows.iter().map(|r| row_json(r, &names)).collect::<Vec<_>>(),
    })))
}

/// `GET /api/internal/usage/export`: the filtered rows as CSV, streamed; refused (400) beyond
/// 10,000 rows.
pub async fn export(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<Query<RawFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(raw) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let filter = raw.validate(me.user.id)?;
    let matching = usage::count(&state.db, &filter).await?;
    if matching > usage::EXPORT_LIMIT {
        return Err(ApiError(Error::BadRequest(format!(
            "{matching} rows match; an export holds at most {}. Narrow the dates or filters.",
            usage::EXPORT_LIMIT
        ))));
    }
    let db = state.db.clone();
    let header_line = csv_line(&usage::CSV_HEADER.map(str::to_owned));
    let batches = futures_util::stream::unfold(Some(None::<usage::ExportCursor>), move |cursor| {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            let before = cursor?;
            let batch = async {
                let rows = usage::export_batch(&db, &filter, before, 1000).await?;
                let names = usage::key_names(&db, filter.user_id, rows.iter().filter_map(|r| r.key_id)).await?;
                Ok::<_, Error>((rows, names))
            };
            match batch.await {
                Ok((rows, _)) if rows.is_empty() => None,
                Ok((rows, names)) => {
                    let next = if rows.len() < 1000 { None } else { rows.last().map(|r| Some(usage::cursor_after(r))) };
                    let name = |r: &usage_logs::Model| r.key_id.and_then(|id| names.get(&id)).map(String::as_str);
                    let chunk: String = rows.iter().map(|r| csv_line(&usage::csv_record(r, name(r)))).collect();
                    Some((Ok::<_, std::io::Error>(chunk), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(header_line) }).chain(batches);
    let filename = format!("tollgate-usage-{}.csv", crate::clock::day_of(now_ms()));
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

fn csv_line<const N: usize>(cells: &[String; N]) -> String {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    let _ = w.write_record(cells.iter());
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// `GET /api/internal/me`: who is signed in, their balance and subscriptions.
pub async fn me(State(state): State<AppState>, me: CurrentUser) -> Result<Json<Value>, ApiError> {
    let balance = cached_balance(&state, me.user.id).await?;
    let subs = subscriptions::active(&state.db.read, me.user.id).await?;
    Ok(Json(json!({
        "id": me.user.id,
        "email": me.user.email,
        "name": me.user.name,
        "role": me.user.role,
        "balance": format_amount(balance),
        "subscriptions": subs.iter().map(|s| json!({
            "id": s.id,
            "name": s.name,
            "tokensRemaining": s.tokens_remaining,
            "tokensTotal": s.tokens_total,
            "expiresAt": rfc3339(s.expires_at),
        })).collect::<Vec<_>>(),
    })))
}

/// The balance for display, through `user_balance:{id}` (10 s). Billing never reads this.
pub async fn cached_balance(state: &AppState, user_id: i64) -> Result<i64, Error> {
    let key = cache::user_balance(user_id);
    if let Some(v) = state.cache.get(&key).await.and_then(|v| v.parse().ok()) {
        return Ok(v);
    }
    let amount = billing::balance::amount(&state.db.read, user_id).await?;
    state.cache.set(&key, &amount.to_string(), cache::BALANCE_TTL).await;
    Ok(amount)
}
