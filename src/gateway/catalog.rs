//! The model catalogue: lookups through the cache, the starter list, and `model set`.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit;
use crate::billing::Prices;
use crate::cache::{self, Cache};
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::models;
use crate::error::{Error, Result};

/// What the gateway needs to know about a model; cached as `model_config:{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub id: i64,
    pub name: String,
    pub upstream_model: String,
    pub input_price: i64,
    pub output_price: i64,
    pub max_output_tokens: i64,
    pub context_window: i64,
    pub enabled: bool,
    /// The request field that carries the output cap upstream.
    #[serde(default = "default_cap_field")]
    pub cap_field: String,
}

/// The output-cap fields an upstream may honour.
pub const CAP_FIELDS: [&str; 2] = ["max_completion_tokens", "max_tokens"];

fn default_cap_field() -> String {
    CAP_FIELDS[0].to_owned()
}

impl ModelConfig {
    pub fn prices(&self) -> Prices {
        Prices { input: self.input_price, output: self.output_price }
    }
}

impl From<models::Model> for ModelConfig {
    fn from(m: models::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            upstream_model: m.upstream_model,
            input_price: m.input_price,
            output_price: m.output_price,
            max_output_tokens: m.max_output_tokens,
            context_window: m.context_window,
            enabled: m.enabled,
            cap_field: m.cap_field,
        }
    }
}

/// A served model by name: enabled and priced. Unknown and disabled models are `ModelNotFound`.
pub async fn lookup(db: &Db, cache: &Cache, name: &str) -> Result<ModelConfig> {
    let not_found =
        || Error::ModelNotFound(format!("The model `{name}` does not exist or you do not have access to it."));
    if name.is_empty() || name.len() > 128 {
        return Err(not_found());
    }
    let key = cache::model_config(name);
    let config = match cache.get(&key).await.and_then(|v| serde_json::from_str::<ModelConfig>(&v).ok()) {
        Some(c) => c,
        None => {
            let row = models::Entity::find()
                .filter(models::Column::Name.eq(name))
                .one(&db.read)
                .await?
                .ok_or_else(not_found)?;
            let config = ModelConfig::from(row);
            if let Ok(v) = serde_json::to_string(&config) {
                cache.set(&key, &v, cache::MODEL_TTL).await;
            }
            config
        }
    };
    if !config.enabled || config.input_price < 0 || config.output_price < 0 {
        return Err(not_found());
    }
    Ok(config)
}

/// Every model, enabled or not, by name.
pub async fn all(conn: &impl ConnectionTrait) -> Result<Vec<models::Model>> {
    Ok(models::Entity::find().order_by_asc(models::Column::Name).all(conn).await?)
}

/// The enabled models, by name.
pub async fn enabled(conn: &impl ConnectionTrait) -> Result<Vec<models::Model>> {
    Ok(models::Entity::find()
        .filter(models::Column::Enabled.eq(true))
        .order_by_asc(models::Column::Name)
        .all(conn)
        .await?)
}

/// A change to a model; `None` keeps the current value (or the default for a new model).
#[derive(Clone, Debug, Default)]
pub struct ModelChange {
    pub upstream_model: Option<String>,
    /// Micro-units per 1M tokens.
    pub input_price: Option<i64>,
    pub output_price: Option<i64>,
    pub max_output_tokens: Option<i64>,
    pub context_window: Option<i64>,
    pub enabled: Option<bool>,
    /// `max_completion_tokens` or `max_tokens`.
    pub cap_field: Option<String>,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!("`{name}` is not a model name (letters, digits and - _ . : / @, at most 128)")))
    }
}

/// Creates the model or updates it, with an audit entry, and drops its cache entry. A new model
/// needs both prices.
pub async fn set(db: &Db, cache: &Cache, name: &str, change: ModelChange, actor: Option<i64>) -> Result<models::Model> {
    check_name(name)?;
    for (label, v) in [("input price", change.input_price), ("output price", change.output_price)] {
        if v.is_some_and(|p| p < 0) {
            return Err(Error::BadRequest(format!("the {label} cannot be negative")));
        }
    }
    for (label, v) in [("max output tokens", change.max_output_tokens), ("context window", change.context_window)] {
        if v.is_some_and(|n| !(1..=100_000_000).contains(&n)) {
            return Err(Error::BadRequest(format!("the {label} must be between 1 and 100000000")));
        }
    }
    if let Some(u) = &change.upstream_model {
        check_name(u)?;
    }
    if let Some(f) = &change.cap_field
        && !CAP_FIELDS.contains(&f.as_str())
    {
        return Err(Error::BadRequest(format!("the cap field must be one of {}", CAP_FIELDS.join(", "))));
    }
    let now = now_ms();
    let txn = db.begin().await?;
    let existing = models::Entity::find().filter(models::Column::Name.eq(name)).one(&txn).await?;
    let before = existing.as_ref().map(|m| json!(ModelConfig::from(m.clone())));
    let saved = match existing {
        Some(m) => {
            let mut am: models::ActiveModel = m.into();
            if let Some(v) = change.upstream_model {
                am.upstream_model = Set(v);
            }
            if let Some(v) = change.input_price {
                am.input_price = Set(v);
            }
            if let Some(v) = change.output_price {
                am.output_price = Set(v);
            }
            if let Some(v) = change.max_output_tokens {
                am.max_output_tokens = Set(v);
            }
            if let Some(v) = change.context_window {
                am.context_window = Set(v);
            }
            if let Some(v) = change.enabled {
                am.enabled = Set(v);
            }
            if let Some(v) = change.cap_field {
                am.cap_field = Set(v);
            }
            am.updated_at = Set(now);
            am.update(&txn).await?
        }
        None => {
            let (Some(input), Some(output)) = (change.input_price, change.output_price) else {
                return Err(Error::BadRequest("a new model needs both an input and an output price".into()));
            };
            models::ActiveModel {
                name: Set(name.to_owned()),
                upstream_model: Set(change.upstream_model.unwrap_or_else(|| name.to_owned())),
                input_price: Set(input),
                output_price: Set(output),
                max_output_tokens: Set(change.max_output_tokens.unwrap_or(4096)),
                context_window: Set(change.context_window.unwrap_or(128_000)),
                enabled: Set(change.enabled.unwrap_or(true)),
                cap_field: Set(change.cap_field.unwrap_or_else(default_cap_field)),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await?
        }
    };
    audit::record(
        &txn,
        audit::Entry {
            actor_user_id: actor,
            action: if before.is_some() { "model.update" } else { "model.create" },
            target_type: "model",
            target_id: saved.id.to_string(),
            before,
            after: Some(json!(ModelConfig::from(saved.clone()))),
        },
    )
    .await?;
    txn.commit().await?;
    cache.delete(&cache::model_config(name)).await;
    Ok(saved)
}
