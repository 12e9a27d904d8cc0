//! `/api/admin/models`: the catalogue with recent usage, and changes to it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminUser, path_id};
use crate::clock::rfc3339;
use crate::db::entities::models as rows;
use crate::error::Error;
use crate::http::ApiError;
use crate::http::internal::ApiJson;
use crate::models::{self, ModelChange};
use crate::money::{format_amount, parse_amount};
use crate::state::AppState;

fn model_json(m: &rows::Model, requests: i64) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "upstreamModel": m.upstream_model,
        "inputPrice": format_amount(m.input_price),
        "outputPrice": format_amount(m.output_price),
        // Unset cache prices are null here and take their defaults when billed.
        "cacheReadPrice": m.cache_read_price.map(format_amount),
        "cacheWritePrice": m.cache_write_price.map(format_amount),
        "requestPrice": format_amount(m.request_price),
        "maxOutputTokens": m.max_output_tokens,
        "contextWindow": m.context_window,
        "enabled": m.enabled,
        "capField": m.cap_field,
        "requestsLast30Days": requests,
        "createdAt": rfc3339(m.created_at),
        "updatedAt": rfc3339(m.updated_at),
    })
}

/// `GET /api/admin/models`: every model, enabled or not, with its requests over 30 days.
pub async fn list(State(state): State<AppState>, _admin: AdminUser) -> Result<Json<Value>, ApiError> {
    let all = models::all(&state.db.read).await?;
    let usage = crate::admin::model_requests_recent(&state.db).await?;
    let data: Vec<Value> = all.iter().map(|m| model_json(m, usage.get(&m.name).copied().unwrap_or(0))).collect();
    Ok(Json(json!({ "data": data })))
}

/// A model's fields as the API takes them: token prices are decimal strings per 1M tokens, the
/// request price a decimal string per request. A cache price given as `null` is cleared back to
/// its default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelBody {
    name: Option<String>,
    upstream_model: Option<String>,
    input_price: Option<String>,
    output_price: Option<String>,
    #[serde(default, deserialize_with = "present")]
    cache_read_price: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    cache_write_price: Option<Option<String>>,
    request_price: Option<String>,
    max_output_tokens: Option<i64>,
    context_window: Option<i64>,
    enabled: Option<bool>,
    cap_field: Option<String>,
}

/// A field that is present, `null` included (`Some(None)`); an absent field stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl ModelBody {
    fn into_change(self) -> Result<ModelChange, Error> {
        let price = |name: &str, v: Option<String>| {
            v.map(|p| parse_amount(&p).map_err(|e| Error::BadRequest(format!("{name}: {e}")))).transpose()
        };
        Ok(ModelChange {
            input_price: price("inputPrice", self.input_price)?,
            output_price: price("outputPrice", self.output_price)?,
            cache_read_price: self.cache_read_price.map(|v| price("cacheReadPrice", v)).transpose()?,
            cache_write_price: self.cache_write_price.map(|v| price("cacheWritePrice", v)).transpose()?,
            request_price: price("requestPrice", self.request_price)?,
            name: self.name,
            upstream_model: self.upstream_model,
            max_output_tokens: self.max_output_tokens,
            context_window: self.context_window,
            enabled: self.enabled,
            cap_field: self.cap_field,
        })
    }
}

/// `POST /api/admin/models`: a new model (name and both prices required).
pub async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Response, ApiError> {
    let mut change = body.into_change()?;
    let name = change.name.take().ok_or_else(|| Error::BadRequest("name is required".into()))?;
    let m = models::create(&state.db, &state.cache, name.trim(), change, &admin.actor).await?;
    Ok((StatusCode::CREATED, Json(model_json(&m, 0))).into_response())
}

/// `PATCH /api/admin/models/{id}`: changes the fields given.
pub async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "model")?;
    let change = body.into_change()?;
    if change == ModelChange::default() {
        return Err(ApiError(Error::BadRequest("nothing to change".into())));
    }
    let m = models::update(&state.db, &state.cache, id, change, &admin.actor).await?;
    let usage = crate::admin::model_requests_recent(&state.db).await?;
    Ok(Json(model_json(&m, usage.get(&m.name).copied().unwrap_or(0))))
}

/// `DELETE /api/admin/models/{id}`: only a model never billed for (409 otherwise).
pub async fn remove(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id, "model")?;
    models::delete(&state.db, &state.cache, id, &admin.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
