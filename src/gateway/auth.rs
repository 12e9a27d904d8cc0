//! API-key authentication: cache (`key_cache:{hash}`, 5 s) → revoked set → database.

use reqwest::header::AUTHORIZATION;
use reqwest::header::HeaderMap;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use crate::cache::{self, Cache};
use crate::db::Db;
use crate::db::entities::{api_keys, users};
use crate::error::{Error, Result};
use crate::keys;

/// Who a valid key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: i64,
    pub user_id: i64,
}

/// The one answer for unknown, revoked, disabled and malformed keys alike.
pub fn invalid_key() -> Error {
    Error::Unauthorized("Incorrect API key provided. You can find your API keys in the dashboard.".into())
}

/// The key presented as `Authorization: Bearer sk-…`. A database lookup (at most once per key
/// per cache lifetime) also records the key as used, on `tasks`, off the request path.
pub async fn authenticate(db: &Db, cache: &Cache, tasks: &TaskTracker, headers: &HeaderMap) -> Result<ApiKey> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Error::Unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer sk-...`.".into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(invalid_key)?;
    // Malformed keys never reach the cache or the database.
    if !keys::is_well_formed(token) {
        return Err(invalid_key());
    }
    let hash = keys::hash(token);
    let cache_key = cache::key_cache(&hash);
    if let Some(hit) = cache.get(&cache_key).await
        && let Ok(key) = serde_json::from_str::<ApiKey>(&hit)
    {
        return Ok(key);
    }
    if cache.get(&cache::revoked(&hash)).await.is_some() {
        return Err(invalid_key());
    }
    let key = lookup(db, &hash).await?.ok_or_else(invalid_key)?;
    if let Ok(v) = serde_json::to_string(&key) {
        cache.set(&cache_key, &v, cache::KEY_TTL).await;
    }
    let db = db.clone();
    tasks.spawn(async move {
        let now = crate::clock::now_ms();
        let res = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::LastUsedAt, sea_orm::sea_query::Expr::value(now))
            .filter(api_keys::Column::Id.eq(key.key_id))
            .exec(&db.write)
            .await;
        if let Err(err) = res {
            tracing::debug!(error = %err, "could not record key use");
        }
    });
    Ok(key)
}

/// The key with this hash if it is usable: not revoked, not disabled, its user not disabled.
async fn lookup(db: &Db, hash: &str) -> Result<Option<ApiKey>> {
    let Some(key) = api_keys::Entity::find()
        .filter(api_keys::Column::KeyHash.eq(hash))
        .filter(api_keys::Column::RevokedAt.is_null())
        .filter(api_keys::Column::Disabled.eq(false))
        .one(&db.read)
        .await?
    else {
        return Ok(None);
    };
    let user_ok = users::Entity::find_by_id(key.user_id).one(&db.read).await?.is_some_and(|u| !u.disabled);
    Ok(user_ok.then_some(ApiKey { key_id: key.id, user_id: key.user_id }))
}

/// Drops the cached identity of every key of a user (after disabling them).
pub async fn forget_user_keys(db: &Db, cache: &Cache, user_id: i64) -> Result<()> {
    let hashes = api_keys::Entity::find().filter(api_keys::Column::UserId.eq(user_id)).all(&db.read).await?;
    for k in hashes {
        cache.delete(&cache::key_cache(&k.key_hash)).await;
    }
    Ok(())
}
