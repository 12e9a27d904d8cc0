//! `/api/admin/users`, `/api/admin/keys` and subscriptions: finding people, their balance,
//! role and access, for support.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminUser, bad_query, page_json, path_id};
use crate::accounts;
use crate::admin::users::UserQuery;
use crate::admin::views::{key_json, summary_json};
use crate::admin::{self, Paging, idempotency};
use crate::billing::ledger;
use crate::cache;
use crate::clock::rfc3339;
use crate::db::entities::{credit_transactions, subscriptions as subs, usage_logs};
use crate::error::Error;
use crate::http::ApiError;
use crate::http::internal::ApiJson;
use crate::money::format_amount;
use crate::state::AppState;
use crate::{keys, subscriptions};

fn subscription_json(s: &subs::Model) -> Value {
    json!({
        "id": s.id,
        "userId": s.user_id,
        "name": s.name,
        "tokensTotal": s.tokens_total,
        "tokensRemaining": s.tokens_remaining,
        "startsAt": rfc3339(s.starts_at),
        "expiresAt": rfc3339(s.expires_at),
        "active": s.expires_at > crate::clock::now_ms() && s.tokens_remaining > 0,
    })
}

/// A usage row for the operator: with the channel that served it (its name, or `#id` once
/// deleted) and the upstream attempts made. Customers' answers never carry these.
fn usage_json(r: &usage_logs::Model, channel_names: &HashMap<i64, String>) -> Value {
    json!({
        "channelId": r.channel_id,
        "channel": r.channel_id.map(|id| channel_names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))),
        "attempts": r.attempts,
        "id": r.id,
        "requestId": r.request_id,
        "keyId": r.key_id,
        "model": r.model,
        "statusCode": r.status_code,
        "promptTokens": r.prompt_tokens,
        "completionTokens": r.completion_tokens,
        "totalTokens": r.total_tokens,
        "cacheReadTokens": r.cache_read_tokens,
        "cacheWriteTokens": r.cache_write_tokens,
        "reasoningTokens": r.reasoning_tokens,
        "cost": format_amount(r.cost),
        "subscriptionTokens": r.subscription_tokens,
        "requestCount": r.request_count,
        "createdAt": rfc3339(r.created_at),
    })
}

fn ledger_json(t: &credit_transactions::Model) -> Value {
    json!({
        "id": t.id,
        "kind": t.kind,
        "amount": format_amount(t.amount),
        "tokens": t.tokens,
        "subscriptionId": t.subscription_id,
        "reason": t.reason,
        "actorUserId": t.actor_user_id,
        "createdAt": rfc3339(t.created_at),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserListQuery {
    q: Option<String>,
    role: Option<String>,
    status: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

/// `GET /api/admin/users?q=&role=&status=&page=&pageSize=`.
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<UserListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let paging = Paging::parse(q.page.as_deref(), q.page_size.as_deref())?;
    let found = admin::users::search(&state.db, &UserQuery { q: q.q, role: q.role, status: q.status, paging }).await?;
    Ok(Json(page_json(&found, summary_json)))
}

/// `GET /api/admin/users/{id}`: the user with keys, subscriptions, recent usage and ledger.
pub async fn detail(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = admin::users::detail(&state.db, path_id(&id, "user")?).await?;
    let mut value = summary_json(&d.summary);
    value["apiKeys"] = d.keys.iter().map(key_json).collect();
    value["limits"] = accounts::limits_json(&d.summary.user);
    value["subscriptions"] = d.subscriptions.iter().map(subscription_json).collect();
    let channel_names: HashMap<i64, String> =
        crate::channels::list(&state.db).await?.into_iter().map(|c| (c.id, c.name)).collect();
    value["recentUsage"] = d.usage.iter().map(|r| usage_json(r, &channel_names)).collect();
    value["ledger"] = d.ledger.iter().map(ledger_json).collect();
    Ok(Json(value))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPatch {
    role: Option<String>,
    disabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent: Option<Option<i64>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /api/admin/users/{id}` `{role?, disabled?, rpm?, tpm?, maxConcurrent?}`. Disabling
/// ends the user's sessions and stops their keys at once. An admin cannot lock themselves out.
/// The limits are the user's own (`null`: the instance default).
pub async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "user")?;
    let limits = accounts::LimitsChange { rpm: body.rpm, tpm: body.tpm, max_concurrent: body.max_concurrent };
    if body.role.is_none() && body.disabled.is_none() && limits == accounts::LimitsChange::default() {
        return Err(ApiError(Error::BadRequest(
            "nothing to change: send role, disabled, rpm, tpm or maxConcurrent".into(),
        )));
    }
    accounts::require(&state.db.read, id).await?;
    if id == admin.user.id && (body.disabled == Some(true) || body.role.as_deref().is_some_and(|r| r != "admin")) {
        return Err(ApiError(Error::BadRequest("you cannot disable yourself or remove your own admin role".into())));
    }
    if limits != accounts::LimitsChange::default() {
        accounts::set_limits(&state.db, &state.cache, id, limits, &admin.actor).await?;
    }
    if let Some(role) = body.role.as_deref() {
        let target = accounts::require(&state.db.read, id).await?;
        if role != accounts::ROLE_ADMIN && state.config.admin_emails.contains(&target.email) {
            return Err(ApiError(Error::Conflict(format!(
                "{} is listed in ADMIN_EMAILS and would be made an admin again at their next sign-in; remove it there first",
                target.email
            ))));
        }
        accounts::set_role(&state.db, id, role, &admin.actor).await?;
    }
    if let Some(disabled) = body.disabled {
        let (_, ended) = accounts::set_disabled(&state.db, &state.cache, id, disabled, &admin.actor).await?;
        if ended > 0 {
            tracing::info!(user.id = id, sessions = ended, "user disabled; sessions ended");
        }
    }
    let d = admin::users::detail(&state.db, id).await?;
    let mut value = summary_json(&d.summary);
    value["limits"] = accounts::limits_json(&d.summary.user);
    Ok(Json(value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceBody {
    amount: String,
    reason: String,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// `POST /api/admin/users/{id}/balance` `{"amount": "12.50", "reason": "..."}`: a top-up
/// (positive) or a correction (negative), never below zero (409 with the current balance).
/// With `Idempotency-Key`, a retry answers the first result and changes nothing.
pub async fn balance(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BalanceBody>,
) -> Result<Response, ApiError> {
    let user_id = path_id(&id, "user")?;
    let key = idempotency_key(&headers)?;
    let delta = admin::parse_delta(&body.amount)?;
    let reason = ledger::normalize_reason(&body.reason)?;
    accounts::require(&state.db.read, user_id).await?;
    let request = idempotency::fingerprint(&["balance", &user_id.to_string(), &delta.to_string(), &reason]);
    let actor = admin.actor.clone();
    let answer = idempotency::once(&state.db, admin.user.id, key.as_deref(), &request, move |txn| {
        Box::pin(async move {
            let kind = if delta > 0 { ledger::TOPUP } else { ledger::ADJUSTMENT };
            let applied = ledger::apply(
                txn,
                ledger::Change { user_id, delta, kind, reason: &reason, actor: actor.user_id, ip: actor.ip.clone() },
            )
            .await?;
            let body = json!({
                "userId": user_id,
                "kind": kind,
                "amount": format_amount(delta),
                "balanceBefore": format_amount(applied.before),
                "balance": format_amount(applied.after),
            });
            Ok((200, body))
        })
    })
    .await?;
    state.cache.delete(&cache::user_balance(user_id)).await;
    Ok(respond(answer))
}

/// The request's `Idempotency-Key`, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            let raw = v.to_str().map_err(|_| Error::BadRequest("bad Idempotency-Key".into()))?;
            Ok(idempotency::check_key(raw)?.to_owned())
        })
        .transpose()
}

/// An answer of `idempotency::once`, marked when it is a replay.
fn respond(answer: idempotency::Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut res = (status, Json(answer.body)).into_response();
    if answer.replayed {
        res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    name: Option<String>,
    tokens: i64,
    days: i64,
}

/// `POST /api/admin/users/{id}/subscriptions` `{"tokens", "days", "name"?}`: grants a package.
/// With `Idempotency-Key`, a retry answers the first result and grants nothing more.
pub async fn grant(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Response, ApiError> {
    let user_id = path_id(&id, "user")?;
    let key = idempotency_key(&headers)?;
    accounts::require(&state.db.read, user_id).await?;
    let name = body.name.unwrap_or_else(|| "subscription".to_owned());
    let (tokens, days) = (body.tokens, body.days);
    let request =
        idempotency::fingerprint(&["grant", &user_id.to_string(), &tokens.to_string(), &days.to_string(), &name]);
    let actor = admin.actor.clone();
    let answer = idempotency::once(&state.db, admin.user.id, key.as_deref(), &request, move |txn| {
        Box::pin(async move {
            let sub = subscriptions::grant_in(txn, user_id, &name, tokens, days, &actor).await?;
            Ok((201, subscription_json(&sub)))
        })
    })
    .await?;
    Ok(respond(answer))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    days: i64,
    tokens: Option<i64>,
}

/// `POST /api/admin/subscriptions/{id}/renew` `{"days", "tokens"?}`; `Idempotency-Key` as for
/// grants.
pub async fn renew(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RenewBody>,
) -> Result<Response, ApiError> {
    let id = path_id(&id, "subscription")?;
    let key = idempotency_key(&headers)?;
    let (days, tokens) = (body.days, body.tokens.unwrap_or(0));
    let request = idempotency::fingerprint(&["renew", &id.to_string(), &days.to_string(), &tokens.to_string()]);
    let actor = admin.actor.clone();
    let answer = idempotency::once(&state.db, admin.user.id, key.as_deref(), &request, move |txn| {
        Box::pin(async move {
            let sub = subscriptions::renew_in(txn, id, days, tokens, &actor).await?;
            Ok((200, subscription_json(&sub)))
        })
    })
    .await?;
    Ok(respond(answer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyListQuery {
    user: Option<String>,
    q: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

/// `GET /api/admin/keys?user=&q=`: every key (revoked ones included), never a plaintext.
pub async fn keys(
    State(state): State<AppState>,
    _admin: AdminUser,
    query: Result<Query<KeyListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let paging = Paging::parse(q.page.as_deref(), q.page_size.as_deref())?;
    let found = admin::keys::list(&state.db, &admin::keys::KeyQuery { user: q.user, q: q.q, paging }).await?;
    Ok(Json(page_json(&found, crate::admin::views::key_row_json)))
}

/// `PATCH /api/admin/keys/{id}`: renames, disables or re-enables any user's key, or changes its
/// controls (the same fields as the dashboard's), audited as the administrator.
pub async fn update_key(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "active key")?;
    let change = keys::change_from_json(&body)?;
    let row = keys::update_as(&state.db, &state.cache, None, id, change, &admin.actor).await?;
    tracing::info!(key.id = row.id, user.id = row.user_id, "key changed by an administrator");
    Ok(Json(key_json(&row)))
}

/// `DELETE /api/admin/keys/{id}`: revokes any user's key, audited, refused everywhere at once.
pub async fn revoke_key(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id, "active key")?;
    let row = keys::revoke_as(&state.db, &state.cache, None, id, &admin.actor).await?;
    tracing::info!(key.id = row.id, user.id = row.user_id, "key revoked by an administrator");
    Ok(StatusCode::NO_CONTENT)
}
