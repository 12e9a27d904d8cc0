//! `GET /v1/models` and `GET /v1/models/{id}`: the enabled models, in OpenAI's shapes.

use axum::extract::{Path, State};
use axum::response::Response;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::{Authenticated, Route};
use crate::db::entities::models as model_rows;
use crate::error::Error;
use crate::models;
use crate::state::AppState;

/// `GET /v1/models`: the enabled models, in OpenAI's list shape.
pub async fn list(State(state): State<AppState>, auth: Authenticated<List>) -> Response {
    let result = models::enabled(&state.db.read).await;
    // A key limited to some models sees only those.
    let rules = auth.rules.clone();
    auth.reply(result.map(|models| {
        let data: Vec<Value> = models.iter().filter(|m| rules.allows_model(&m.name)).map(model_entry).collect();
        json!({ "object": "list", "data": data })
    }))
}

pub struct List;
impl Route for List {
    const NAME: &'static str = "models";
}

/// A model as listed by `/v1/models`.
pub fn model_entry(m: &model_rows::Model) -> Value {
    json!({ "id": m.name, "object": "model", "created": m.created_at / 1000, "owned_by": "tollgate" })
}

/// `GET /v1/models/{id}`: one enabled model, or 404 `model_not_found`.
pub async fn model(State(state): State<AppState>, Path(id): Path<String>, auth: Authenticated<One>) -> Response {
    let db = &state.db;
    let rules = auth.rules.clone();
    let result = async {
        let found = model_rows::Entity::find()
            .filter(model_rows::Column::Name.eq(id.as_str()))
            .filter(model_rows::Column::Enabled.eq(true))
            .one(&db.read)
            .await?;
        found.as_ref().filter(|m| rules.allows_model(&m.name)).map(model_entry).ok_or_else(|| {
            Error::ModelNotFound(format!("The model `{id}` does not exist or you do not have access to it."))
        })
    };
    auth.reply(result.await)
}

pub struct One;
impl Route for One {
    const NAME: &'static str = "model";
}
