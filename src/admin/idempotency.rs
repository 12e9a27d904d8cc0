//! `Idempotency-Key` for admin writes: the first request with a key runs and its answer is
//! stored in the same transaction as its change; a retry with the same key and the same request
//! gets that answer again and changes nothing. A failed request stores nothing (it changed
//! nothing), so it may be retried.

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set};

use crate::clock::now_ms;
use crate::crypto::sha256_hex;
use crate::db::entities::idempotency_keys;
use crate::db::writer::BoxFuture;
use crate::db::{Db, is_unique_violation};
use crate::error::{Error, Result};

/// How long a stored answer is kept: retries come within minutes, not weeks.
pub const KEEP_MS: i64 = 7 * crate::clock::MS_PER_DAY;

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// Checks a key as sent: 1 to 128 visible ASCII characters.
pub fn check_key(raw: &str) -> Result<&str> {
    let key = raw.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")));
    }
    Ok(key)
}

/// The fingerprint of a request: what it does and to what.
pub fn fingerprint(parts: &[&str]) -> String {
    sha256_hex(&parts.join("\n"))
}

/// An answer: the status code and the JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    /// True when this is the stored answer of an earlier request.
    pub replayed: bool,
}

async fn stored(db: &Db, actor: i64, key: &str, request: &str) -> Result<Option<Answer>> {
    let row = idempotency_keys::Entity::find()
        .filter(idempotency_keys::Column::ActorUserId.eq(actor))
        .filter(idempotency_keys::Column::IdemKey.eq(key))
        .one(&db.write)
        .await?;
    let Some(row) = row else { return Ok(None) };
    if row.request_hash != request {
        return Err(Error::Conflict("this Idempotency-Key was used for a different request".into()));
    }
    let body = serde_json::from_str(&row.response).map_err(|e| Error::Internal(e.into()))?;
    let status = u16::try_from(row.status_code).map_err(|e| Error::Internal(e.into()))?;
    Ok(Some(Answer { status, body, replayed: true }))
}

/// Runs `work` in a write transaction, at most once per `(actor, key)`. Without a key it simply
/// runs. `request` is the request's fingerprint: the same key for another request is refused.
pub async fn once<F>(db: &Db, actor: i64, key: Option<&str>, request: &str, work: F) -> Result<Answer>
where
    F: for<'a> FnOnce(&'a DatabaseTransaction) -> BoxFuture<'a, Result<(u16, serde_json::Value)>>,
{
    let Some(key) = key else {
        let txn = db.begin().await?;
        let (status, body) = work(&txn).await?;
        txn.commit().await?;
        return Ok(Answer { status, body, replayed: false });
    };
    // Stored as its SHA-256: keys then compare byte for byte on every engine (MySQL's default
    // collation would treat `Batch-A` and `batch-a` as one key).
    let hashed = sha256_hex(key);
    let key = hashed.as_str();
    if let Some(answer) = stored(db, actor, key, request).await? {
        return Ok(answer);
    }
    let txn = db.begin().await?;
    // Claiming the key first: a concurrent request with the same key waits on this row's unique
    // index until this transaction ends, then finds the stored answer.
    let claim = idempotency_keys::ActiveModel {
        actor_user_id: Set(actor),
        idem_key: Set(key.to_owned()),
        request_hash: Set(request.to_owned()),
        status_code: Set(0),
        response: Set(String::new()),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(&txn)
    .await;
    let claim = match claim {
        Ok(row) => row,
        Err(e) if is_unique_violation(&e) => {
            drop(txn);
            return stored(db, actor, key, request)
                .await?
                .ok_or_else(|| Error::Conflict("a request with this Idempotency-Key is in progress".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let (status, body) = work(&txn).await?;
    idempotency_keys::Entity::update_many()
        .col_expr(idempotency_keys::Column::StatusCode, Expr::value(i32::from(status)))
        .col_expr(idempotency_keys::Column::Response, Expr::value(body.to_string()))
        .filter(idempotency_keys::Column::Id.eq(claim.id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(Answer { status, body, replayed: false })
}

/// Deletes stored answers older than `KEEP_MS`; returns how many.
pub async fn purge(db: &Db) -> Result<u64> {
    Ok(idempotency_keys::Entity::delete_many()
        .filter(idempotency_keys::Column::CreatedAt.lt(now_ms() - KEEP_MS))
        .exec(&db.write)
        .await?
        .rows_affected)
}
