//! `/api/admin/channels`: the upstream accounts, their health, changes to them and the test
//! action. Keys are accepted on POST and PATCH and never returned: a channel shows masked hints
//! (`sk-…abcd`) and the names of its extra headers only. Every change goes through the service
//! functions in `crate::channels` (database, audit and the routing directory together).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{AdminUser, path_id};
use crate::channels::health::State as Health;
use crate::channels::{self, ChannelPatch, ChannelView, KeyChange, ModelRoute, NewChannel, Settings, Timeouts};
use crate::clock::rfc3339;
use crate::config::Secret;
use crate::error::Error;
use crate::http::ApiError;
use crate::http::internal::ApiJson;
use crate::money::{format_amount, parse_amount};
use crate::state::AppState;

/// `healthy`, `cooling` (the circuit breaker is open: no calls) or `probing` (the cool-down is
/// over, one probe may go).
fn health_name(h: Health) -> &'static str {
    match h {
        Health::Closed => "healthy",
        Health::Open => "cooling",
        Health::HalfOpen => "probing",
    }
}

/// A channel as the API shows it: no key or header value, ever.
pub fn channel_json(c: &ChannelView, health: Health) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "type": c.provider,
        "baseUrl": c.base_url,
        "models": c.models.iter().map(|m| json!({ "name": m.public, "upstream": m.upstream })).collect::<Vec<_>>(),
        "priority": c.priority,
        "weight": c.weight,
        "enabled": c.enabled,
        "disabledReason": c.disabled_reason,
        "routable": c.routable,
        "health": health_name(health),
        "keys": c.keys.iter().map(|k| json!({
            "id": k.id,
            "hint": k.hint,
            "enabled": k.enabled,
            "disabledReason": k.disabled_reason,
            "disabledAt": k.disabled_at.map(rfc3339),
        })).collect::<Vec<_>>(),
        "headerNames": c.header_names,
        "timeouts": {
            "connectMs": c.timeouts.connect_ms,
            "firstByteMs": c.timeouts.first_byte_ms,
            "idleMs": c.timeouts.idle_ms,
            "totalMs": c.timeouts.total_ms,
        },
        "inputCost": c.input_cost.map(format_amount),
        "outputCost": c.output_cost.map(format_amount),
        "createdAt": rfc3339(c.created_at),
        "updatedAt": rfc3339(c.updated_at),
    })
}

async fn with_health(state: &AppState, c: &ChannelView) -> Value {
    let health = state.gateway.channels.health.states(&[c.id]).await.first().copied().unwrap_or(Health::Closed);
    channel_json(c, health)
}

/// `GET /api/admin/channels`: every channel, by priority then name, with its health.
pub async fn list(State(state): State<AppState>, _admin: AdminUser) -> Result<Json<Value>, ApiError> {
    let all = channels::list(&state.db).await?;
    let ids: Vec<i64> = all.iter().map(|c| c.id).collect();
    let health = state.gateway.channels.health.states(&ids).await;
    let data: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(i, c)| channel_json(c, health.get(i).copied().unwrap_or(Health::Closed)))
        .collect();
    Ok(Json(json!({ "data": data })))
}

/// A served model: `"name"`, `"name=upstream-name"`, or `{ "name": …, "upstream": … }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModelSpec {
    Text(String),
    Object {
        name: String,
        #[serde(default)]
        upstream: Option<String>,
    },
}

impl ModelSpec {
    fn route(self) -> ModelRoute {
        match self {
            Self::Text(spec) => ModelRoute::parse(&spec),
            Self::Object { name, upstream } => ModelRoute { public: name.trim().to_owned(), upstream },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimeoutsBody {
    connect_ms: Option<i64>,
    first_byte_ms: Option<i64>,
    idle_ms: Option<i64>,
    total_ms: Option<i64>,
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A channel's fields as the API takes them. On PATCH, `keys` replaces every key, `addKeys`
/// adds to them and `enableKeys` (ids) enables keys the upstream refused again; `headers`
/// replaces every extra header (`{}` removes them).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelBody {
    name: Option<String>,
    #[serde(rename = "type")]
    provider: Option<String>,
    base_url: Option<String>,
    models: Option<Vec<ModelSpec>>,
    priority: Option<i32>,
    weight: Option<i32>,
    enabled: Option<bool>,
    keys: Option<Vec<String>>,
    add_keys: Option<Vec<String>>,
    enable_keys: Option<Vec<i64>>,
    headers: Option<BTreeMap<String, String>>,
    timeouts: Option<TimeoutsBody>,
    #[serde(default, deserialize_with = "nullable")]
    input_cost: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    output_cost: Option<Option<String>>,
}

fn cost(field: &str, v: Option<Option<String>>) -> Result<Option<Option<i64>>, Error> {
    v.map(|c| c.map(|p| parse_amount(&p).map_err(|e| Error::BadRequest(format!("{field}: {e}")))).transpose())
        .transpose()
}

fn secrets(keys: Vec<String>) -> Vec<Secret> {
    keys.into_iter().map(Secret::new).collect()
}

impl ChannelBody {
    fn into_patch(self) -> Result<ChannelPatch, Error> {
        let keys = match (self.keys, self.add_keys, self.enable_keys) {
            (Some(k), None, None) => Some(KeyChange::Replace(secrets(k))),
            (None, Some(k), None) => Some(KeyChange::Add(secrets(k))),
            (None, None, Some(ids)) => Some(KeyChange::Enable(ids)),
            (None, None, None) => None,
            _ => {
                return Err(Error::BadRequest(
                    "give one of keys (replace), addKeys (add) or enableKeys (enable again), not several".into(),
                ));
            }
        };
        Ok(ChannelPatch {
            input_cost: cost("inputCost", self.input_cost)?,
            output_cost: cost("outputCost", self.output_cost)?,
            name: self.name,
            provider: self.provider,
            base_url: self.base_url,
            models: self.models.map(|m| m.into_iter().map(ModelSpec::route).collect()),
            priority: self.priority,
            weight: self.weight,
            enabled: self.enabled,
            keys,
            headers: self.headers.map(|h| h.into_iter().map(|(n, v)| (n, Secret::new(v))).collect()),
            timeouts: self.timeouts.map(|t| Timeouts {
                connect_ms: t.connect_ms,
                first_byte_ms: t.first_byte_ms,
                idle_ms: t.idle_ms,
                total_ms: t.total_ms,
            }),
        })
    }

    fn is_empty(p: &ChannelPatch) -> bool {
        p.name.is_none()
            && p.provider.is_none()
            && p.base_url.is_none()
            && p.models.is_none()
            && p.priority.is_none()
            && p.weight.is_none()
            && p.enabled.is_none()
            && p.keys.is_none()
            && p.headers.is_none()
            && p.timeouts.is_none()
            && p.input_cost.is_none()
            && p.output_cost.is_none()
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, Error> {
    v.ok_or_else(|| Error::BadRequest(format!("{field} is required")))
}

/// `POST /api/admin/channels`: a new channel (name, type, baseUrl and models required).
pub async fn create(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiJson(body): ApiJson<ChannelBody>,
) -> Result<Response, ApiError> {
    if body.add_keys.is_some() || body.enable_keys.is_some() {
        return Err(ApiError(Error::BadRequest(
            "addKeys and enableKeys are for changes; give the keys as keys".into(),
        )));
    }
    let p = body.into_patch()?;
    let keys = match p.keys {
        Some(KeyChange::Replace(k)) => k,
        _ => Vec::new(),
    };
    let mut new = NewChannel::new(
        &required(p.name, "name")?,
        &required(p.provider, "type")?,
        &required(p.base_url, "baseUrl")?,
        required(p.models, "models")?,
        keys,
    );
    new.priority = p.priority.unwrap_or(new.priority);
    new.weight = p.weight.unwrap_or(new.weight);
    new.enabled = p.enabled.unwrap_or(true);
    new.headers = p.headers.unwrap_or_default();
    new.timeouts = p.timeouts.unwrap_or_default();
    new.input_cost = p.input_cost.flatten();
    new.output_cost = p.output_cost.flatten();
    let settings = Settings::from_config(&state.config);
    let c = channels::create(&state.db, &state.cache, &settings, &admin.actor, new).await?;
    Ok((StatusCode::CREATED, Json(with_health(&state, &c).await)).into_response())
}

/// `PATCH /api/admin/channels/{id}`: changes the fields given.
pub async fn update(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "channel")?;
    let patch = body.into_patch()?;
    if ChannelBody::is_empty(&patch) {
        return Err(ApiError(Error::BadRequest("nothing to change".into())));
    }
    let settings = Settings::from_config(&state.config);
    // Enabling or disabling alone is the operator's switch (with its own audit action).
    let c = if let (Some(enabled), true) =
        (patch.enabled, ChannelBody::is_empty(&ChannelPatch { enabled: None, ..patch.clone() }))
    {
        channels::set_enabled(&state.db, &state.cache, &admin.actor, id, enabled).await?
    } else {
        channels::update(&state.db, &state.cache, &settings, &admin.actor, id, patch).await?
    };
    Ok(Json(with_health(&state, &c).await))
}

/// `DELETE /api/admin/channels/{id}`: the channel and its keys (usage rows keep its id).
pub async fn remove(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id, "channel")?;
    channels::delete(&state.db, &state.cache, &admin.actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/admin/channels/{id}/test`: a 1-token request to the channel; its status and latency.
pub async fn test(
    State(state): State<AppState>,
    admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "channel")?;
    let r = channels::test(&state.db, &state.gateway, &admin.actor, id).await?;
    Ok(Json(json!({
        "ok": r.error.is_none(),
        "status": r.status,
        "latencyMs": r.latency_ms,
        "model": r.model,
        "error": r.error,
    })))
}
