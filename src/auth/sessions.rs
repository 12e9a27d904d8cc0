//! Server-side sessions on our own database, behind tower-sessions.
//!
//! The cookie carries only the session id; the `sessions` row is keyed by the id's SHA-256, so
//! someone who can read the database cannot replay a cookie. The row also records the user, so
//! every session of a user can be ended at once.

use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error as StoreError, Result as StoreResult};
use tower_sessions::{Expiry, SessionManagerLayer, SessionStore, cookie::SameSite};

use crate::clock::now_ms;
use crate::config::Config;
use crate::crypto::sha256_hex;
use crate::db::Db;
use crate::db::entities::sessions;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// Session keys.
pub const USER_ID: &str = "user_id";
/// When the user signed in (unix ms), for the absolute lifetime.
pub const SIGNED_IN_AT: &str = "signed_in_at";

#[derive(Clone, Debug)]
pub struct DbStore {
    db: Db,
}

impl DbStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn key(id: &Id) -> String {
    sha256_hex(&id.to_string())
}

fn expiry_ms(record: &Record) -> i64 {
    i64::try_from(record.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[async_trait]
impl SessionStore for DbStore {
    async fn create(&self, record: &mut Record) -> StoreResult<()> {
        // Ids are 128 random bits; a collision is retried with a new id rather than overwriting.
        loop {
            let row = row_of(record)?;
            match sessions::Entity::insert(row).exec(&self.db.write).await {
                Ok(_) => return Ok(()),
                Err(e) if crate::db::is_unique_violation(&e) => record.id = Id::default(),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn save(&self, record: &Record) -> StoreResult<()> {
        let row = row_of(record)?;
        sessions::Entity::insert(row)
            .on_conflict(
                OnConflict::column(sessions::Column::Id)
                    .update_columns([sessions::Column::UserId, sessions::Column::Data, sessions::Column::ExpiresAt])
                    .to_owned(),
            )
            .exec(&self.db.write)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> StoreResult<Option<Record>> {
        let Some(row) = sessions::Entity::find_by_id(key(id))
            .filter(sessions::Column::ExpiresAt.gt(now_ms()))
            .one(&self.db.read)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let data = serde_json::from_str(&row.data).map_err(|e| StoreError::Decode(e.to_string()))?;
        let expiry_date = OffsetDateTime::from_unix_timestamp_nanos(i128::from(row.expires_at) * 1_000_000)
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        Ok(Some(Record { id: *id, data, expiry_date }))
    }

    async fn delete(&self, id: &Id) -> StoreResult<()> {
        sessions::Entity::delete_by_id(key(id)).exec(&self.db.write).await.map_err(backend)?;
        Ok(())
    }
}

fn row_of(record: &Record) -> StoreResult<sessions::ActiveModel> {
    let user_id = record.data.get(USER_ID).and_then(serde_json::Value::as_i64);
    Ok(sessions::ActiveModel {
        id: Set(key(&record.id)),
        user_id: Set(user_id),
        data: Set(serde_json::to_string(&record.data).map_err(|e| StoreError::Encode(e.to_string()))?),
        expires_at: Set(expiry_ms(record)),
        created_at: Set(now_ms()),
    })
}

/// Ends every session of `user_id` (when they are disabled, say).
pub async fn end_all(db: &Db, user_id: i64) -> crate::error::Result<u64> {
    Ok(sessions::Entity::delete_many()
        .filter(sessions::Column::UserId.eq(user_id))
        .exec(&db.write)
        .await?
        .rows_affected)
}

/// Deletes expired sessions; returns how many.
pub async fn purge_expired(db: &Db) -> crate::error::Result<u64> {
    Ok(sessions::Entity::delete_many()
        .filter(sessions::Column::ExpiresAt.lt(now_ms()))
        .exec(&db.write)
        .await?
        .rows_affected)
}

/// The session layer: `HttpOnly`, `SameSite=Lax`, `Secure` unless `PUBLIC_URL` is plain http,
/// ending after `SESSION_IDLE_SECS` without use (every request renews it).
pub fn layer(config: &Config, db: &Db) -> SessionManagerLayer<DbStore> {
    let idle = time::Duration::seconds(i64::try_from(config.session_idle.as_secs()).unwrap_or(i64::MAX));
    SessionManagerLayer::new(DbStore::new(db.clone()))
        .with_name(COOKIE)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(config.secure_cookies())
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(idle))
        .with_always_save(true)
}
