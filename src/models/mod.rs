//! The model catalogue: lookups through the cache for the gateway, and every change to it
//! (create, update, enable/disable, delete-if-unused). Each change is audited in the same
//! transaction and drops the model's `model_config:{name}` entry locally and in Redis, so the
//! gateway serves the new configuration at once.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit;
use crate::billing::Prices;
use crate::cache::{self, Cache};
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::{models, reservations, usage_logs};
use crate::db::is_unique_violation;
use crate::error::{Error, Result};

/// What the gateway needs to know about a model; cached as `model_config:{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub id: i64,
    pub name: String,
    pub upstream_model: String,
    pub input_price: i64,
    pub output_price: i64,
    /// Unset: the default (see `billing::pricing`).
    #[serde(default)]
    pub cache_read_price: Option<i64>,
    #[serde(default)]
    pub cache_write_price: Option<i64>,
    #[serde(default)]
    pub request_price: i64,
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
        Prices::of_model(
            self.input_price,
            self.output_price,
            self.cache_read_price,
            self.cache_write_price,
            self.request_price,
        )
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
            cache_read_price: m.cache_read_price,
            cache_write_price: m.cache_write_price,
            request_price: m.request_price,
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
    let negative = [config.cache_read_price, config.cache_write_price].into_iter().flatten().any(|p| p < 0);
    if !config.enabled || config.input_price < 0 || config.output_price < 0 || config.request_price < 0 || negative {
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelChange {
    /// A new name (updates only; a new model is named by the caller).
    pub name: Option<String>,
    pub upstream_model: Option<String>,
    /// Micro-units per 1M tokens.
    pub input_price: Option<i64>,
    pub output_price: Option<i64>,
    /// `Some(None)` clears the price back to its default.
    pub cache_read_price: Option<Option<i64>>,
    /// `Some(None)` clears the price back to its default.
    pub cache_write_price: Option<Option<i64>>,
    /// Micro-units per request.
    pub request_price: Option<i64>,
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

impl ModelChange {
    /// Refuses values the gateway could not serve; nothing is written before this passes.
    fn validate(&self) -> Result<()> {
        let prices = [
            ("input price", self.input_price),
            ("output price", self.output_price),
            ("cache read price", self.cache_read_price.flatten()),
            ("cache write price", self.cache_write_price.flatten()),
            ("request price", self.request_price),
        ];
        for (label, v) in prices {
            if v.is_some_and(|p| p < 0) {
                return Err(Error::BadRequest(format!("the {label} cannot be negative")));
            }
            if v.is_some_and(|p| p > crate::money::MAX_AMOUNT) {
                return Err(Error::BadRequest(format!("the {label} is too large")));
            }
        }
        for (label, v) in [("max output tokens", self.max_output_tokens), ("context window", self.context_window)] {
            if v.is_some_and(|n| !(1..=100_000_000).contains(&n)) {
                return Err(Error::BadRequest(format!("the {label} must be between 1 and 100000000")));
            }
        }
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        if let Some(u) = &self.upstream_model {
            check_name(u)?;
        }
        if let Some(f) = &self.cap_field
            && !CAP_FIELDS.contains(&f.as_str())
        {
            return Err(Error::BadRequest(format!("the cap field must be one of {}", CAP_FIELDS.join(", "))));
        }
        Ok(())
    }

    fn apply(self, am: &mut models::ActiveModel) {
        if let Some(v) = self.name {
            am.name = Set(v);
        }
        if let Some(v) = self.upstream_model {
            am.upstream_model = Set(v);
        }
        if let Some(v) = self.input_price {
            am.input_price = Set(v);
        }
        if let Some(v) = self.output_price {
            am.output_price = Set(v);
        }
        if let Some(v) = self.cache_read_price {
            am.cache_read_price = Set(v);
        }
        if let Some(v) = self.cache_write_price {
            am.cache_write_price = Set(v);
        }
        if let Some(v) = self.request_price {
            am.request_price = Set(v);
        }
        if let Some(v) = self.max_output_tokens {
            am.max_output_tokens = Set(v);
        }
        if let Some(v) = self.context_window {
            am.context_window = Set(v);
        }
        if let Some(v) = self.enabled {
            am.enabled = Set(v);
        }
        if let Some(v) = self.cap_field {
            am.cap_field = Set(v);
        }
    }
}

fn name_taken(name: &str) -> Error {
    Error::Conflict(format!("a model named `{name}` already exists"))
}

fn no_model(id: i64) -> Error {
    Error::NotFound(format!("no model with id {id}"))
}

fn map_unique(name: &str) -> impl FnOnce(sea_orm::DbErr) -> Error + '_ {
    move |e| if is_unique_violation(&e) { name_taken(name) } else { Error::Database(e) }
}

/// The model with this id.
pub async fn find(conn: &impl ConnectionTrait, id: i64) -> Result<models::Model> {
    models::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| no_model(id))
}

async fn audited(
    txn: &impl ConnectionTrait,
    actor: &audit::Actor,
    action: &str,
    id: i64,
    before: Option<&models::Model>,
    after: Option<&models::Model>,
) -> Result<()> {
    let view = |m: &models::Model| json!(ModelConfig::from(m.clone()));
    audit::record_from(
        txn,
        audit::Entry {
            actor_user_id: actor.user_id,
            action,
            target_type: "model",
            target_id: id.to_string(),
            before: before.map(view),
            after: after.map(view),
        },
        actor.ip.as_deref(),
    )
    .await
}

/// Drops the cached configuration of each name, locally and in Redis.
async fn forget(cache: &Cache, names: &[&str]) {
    for name in names {
        cache.delete(&cache::model_config(name)).await;
    }
    // A request that read the old row just before the change committed may put it back in the
    // cache just after this delete; a second delete a moment later removes that stale copy, so
    // an old price or a disabled model is served for at most about a second.
    let (cache, keys): (Cache, Vec<String>) = (cache.clone(), names.iter().map(|n| cache::model_config(n)).collect());
    tokio::spawn(async move {
        tokio::time::sleep(STALE_COPY_WINDOW).await;
        for key in keys {
            cache.delete(&key).await;
        }
    });
}

/// How long after a catalogue change a stale copy of the old row can still be written back.
const STALE_COPY_WINDOW: std::time::Duration = std::time::Duration::from_millis(1500);

/// Creates a model named `name`; both prices are required. A name in use is a `Conflict`.
pub async fn create(
    db: &Db,
    cache: &Cache,
    name: &str,
    change: ModelChange,
    actor: &audit::Actor,
) -> Result<models::Model> {
    check_name(name)?;
    change.validate()?;
    let txn = db.begin().await?;
    if models::Entity::find().filter(models::Column::Name.eq(name)).one(&txn).await?.is_some() {
        return Err(name_taken(name));
    }
    let saved = insert(&txn, name, change).await?;
    audited(&txn, actor, "model.create", saved.id, None, Some(&saved)).await?;
    txn.commit().await?;
    forget(cache, &[name]).await;
    Ok(saved)
}

async fn insert(txn: &impl ConnectionTrait, name: &str, change: ModelChange) -> Result<models::Model> {
    let (Some(input), Some(output)) = (change.input_price, change.output_price) else {
        return Err(Error::BadRequest("a new model needs both an input and an output price".into()));
    };
    let now = now_ms();
    models::ActiveModel {
        name: Set(name.to_owned()),
        upstream_model: Set(change.upstream_model.unwrap_or_else(|| name.to_owned())),
        input_price: Set(input),
        output_price: Set(output),
        cache_read_price: Set(change.cache_read_price.flatten()),
        cache_write_price: Set(change.cache_write_price.flatten()),
        request_price: Set(change.request_price.unwrap_or(0)),
        max_output_tokens: Set(change.max_output_tokens.unwrap_or(4096)),
        context_window: Set(change.context_window.unwrap_or(128_000)),
        enabled: Set(change.enabled.unwrap_or(true)),
        cap_field: Set(change.cap_field.unwrap_or_else(default_cap_field)),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(txn)
    .await
    .map_err(map_unique(name))
}

async fn update_row(txn: &impl ConnectionTrait, current: models::Model, change: ModelChange) -> Result<models::Model> {
    let new_name = change.name.clone().unwrap_or_else(|| current.name.clone());
    let mut am: models::ActiveModel = current.into();
    change.apply(&mut am);
    am.updated_at = Set(now_ms());
    am.update(txn).await.map_err(map_unique(&new_name))
}

/// Changes the model with this id (a rename included). Returns the saved model.
pub async fn update(
    db: &Db,
    cache: &Cache,
    id: i64,
    change: ModelChange,
    actor: &audit::Actor,
) -> Result<models::Model> {
    change.validate()?;
    let txn = db.begin().await?;
    let current = find(&txn, id).await?;
    let before = current.clone();
    let saved = update_row(&txn, current, change).await?;
    audited(&txn, actor, "model.update", id, Some(&before), Some(&saved)).await?;
    txn.commit().await?;
    forget(cache, &[&before.name, &saved.name]).await;
    Ok(saved)
}

/// Enables or disables the model with this id; a disabled model is unknown to clients.
pub async fn set_enabled(
    db: &Db,
    cache: &Cache,
    id: i64,
    enabled: bool,
    actor: &audit::Actor,
) -> Result<models::Model> {
    let txn = db.begin().await?;
    let current = find(&txn, id).await?;
    let before = current.clone();
    let saved = update_row(&txn, current, ModelChange { enabled: Some(enabled), ..Default::default() }).await?;
    let action = if enabled { "model.enable" } else { "model.disable" };
    audited(&txn, actor, action, id, Some(&before), Some(&saved)).await?;
    txn.commit().await?;
    forget(cache, &[&saved.name]).await;
    Ok(saved)
}

/// Deletes the model with this id if nothing was ever billed for it: a model with usage rows or
/// reservations is a `Conflict` (disable it instead), so the books keep naming what they charged.
pub async fn delete(db: &Db, cache: &Cache, id: i64, actor: &audit::Actor) -> Result<models::Model> {
    let txn = db.begin().await?;
    let current = find(&txn, id).await?;
    // Whether any row names it, not how many: the first row found answers. (No index of usage
    // rows leads with the model; SQLite skips through each customer's part of
    // `(user_id, model, created_at)`, the others may read more: a deletion is rare and by hand.)
    let used = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::Id)
        .filter(usage_logs::Column::Model.eq(&current.name))
        .into_tuple::<i64>()
        .one(&txn)
        .await?
        .is_some()
        || reservations::Entity::find()
            .select_only()
            .column(reservations::Column::Id)
            .filter(reservations::Column::ModelId.eq(id))
            .into_tuple::<i64>()
            .one(&txn)
            .await?
            .is_some();
    if used {
        return Err(Error::Conflict(format!(
            "the model `{}` has been used (it has usage records); disable it instead",
            current.name
        )));
    }
    models::Entity::delete_by_id(id).exec(&txn).await?;
    audited(&txn, actor, "model.delete", id, Some(&current), None).await?;
    txn.commit().await?;
    forget(cache, &[&current.name]).await;
    Ok(current)
}

/// The model named `name`.
pub async fn find_by_name(conn: &impl ConnectionTrait, name: &str) -> Result<models::Model> {
    models::Entity::find()
        .filter(models::Column::Name.eq(name))
        .one(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no model named `{name}`")))
}

/// Creates the model or updates it (the command line's `model set`): a new model needs both
/// prices.
pub async fn set(db: &Db, cache: &Cache, name: &str, change: ModelChange, actor: Option<i64>) -> Result<models::Model> {
    check_name(name)?;
    change.validate()?;
    let txn = db.begin().await?;
    let existing = models::Entity::find().filter(models::Column::Name.eq(name)).one(&txn).await?;
    let (saved, before) = match existing {
        Some(m) => {
            let before = m.clone();
            (update_row(&txn, m, change).await?, Some(before))
        }
        None => (insert(&txn, name, change).await?, None),
    };
    let action = if before.is_some() { "model.update" } else { "model.create" };
    audited(&txn, &audit::Actor { user_id: actor, ip: None }, action, saved.id, before.as_ref(), Some(&saved)).await?;
    txn.commit().await?;
    forget(cache, &[name, &saved.name]).await;
    Ok(saved)
}
