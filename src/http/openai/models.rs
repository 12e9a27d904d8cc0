//! `GET /v1/models` and `GET /v1/models/{id}`: the enabled models, in OpenAI's shapes.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::with_key;
use crate::db::entities::models as model_rows;
use crate::error::Error;
use crate::models;
use crate::state::AppState;

/// `GET /v1/models`: the enabled models, in OpenAI's list shape.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let db = &state.db;
    with_key(&state, &headers, "models", |_| async move {
        let data: Vec<Value> = models::enabled(&db.read).await?.iter().map(model_entry).collect();
        Ok(json!({ "object": "list", "data": data }))
    })
    .await
}

/// A model as listed by `/v1/models`.
pub fn model_entry(m: &model_rows::Model) -> Value {
    json!({ "id": m.name, "object": "model", "created": m.created_at / 1000, "owned_by": "tollgate" })
}

/// `GET /v1/models/{id}`: one enabled model, or 404 `model_not_found`.
pub async fn model(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let db = &state.db;
    with_key(&state, &headers, "model", |_| async move {
        let found = model_rows::Entity::find()
            .filter(model_rows::Column::Name.eq(id.as_str()))
            .filter(model_rows::Column::Enabled.eq(true))
            .one(&db.read)
            .await?;
        found.as_ref().map(model_entry).ok_or_else(|| {
            Error::ModelNotFound(format!("The model `{id}` does not exist or you do not have access to it."))
        })
    })
    .await
}
