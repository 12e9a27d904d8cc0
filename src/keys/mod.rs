//! `sk-` keys: generation, storage as a SHA-256 hash, creation, edits and revocation. Every
//! change to an existing key is audited and reaches the key caches of every instance.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};

use serde_json::{Map, Value, json};

use crate::audit::{self, Actor, Entry};
use crate::billing::key_spend::{self, Period};
use crate::cache::{self, Cache};
use crate::clock::{now_ms, rfc3339};
use crate::crypto;
use crate::db::Db;
use crate::db::entities::{api_keys, audit_logs, models, users};
use crate::error::{Error, Result};

/// Every key starts with this.
pub const PREFIX: &str = "sk-";
/// `sk-` + base64url(24 bytes) = 3 + 32 characters.
pub const KEY_LEN: usize = 35;
/// Non-revoked keys a user may hold at once.
pub const MAX_KEYS_PER_USER: u64 = 50;

/// A freshly generated key. The plaintext exists only here; `Debug` does not print it.
pub struct NewKey {
    pub plaintext: String,
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// Generates a key: `sk-` + base64url of 24 random bytes.
pub fn generate() -> NewKey {
    let plaintext = format!("{PREFIX}{}", crypto::random_token(24));
    let hash = crypto::sha256_hex(&plaintext);
    NewKey { plaintext, hash }
}

/// True when `key` has the shape of a key we issue; anything else is rejected before a lookup.
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(PREFIX)
        && key[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The SHA-256 under which a key is stored.
pub fn hash(key: &str) -> String {
    crypto::sha256_hex(key)
}

/// Checks a key name given by a person.
pub fn normalize_name(raw: Option<&str>) -> Result<String> {
    let name = raw.map(str::trim).filter(|n| !n.is_empty()).unwrap_or("default");
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::BadRequest("key names are 1 to 64 printable characters".into()));
    }
    Ok(name.to_owned())
}

/// Creates a key for `user_id` and returns its row and plaintext (shown once, never stored).
///
/// The limit holds only when `conn` is a transaction (see `create_in`); `create_limited` is the
/// way for requests that may race.
pub async fn create(
    conn: &impl ConnectionTrait,
    user_id: i64,
    name: Option<&str>,
) -> Result<(api_keys::Model, String)> {
    let name = normalize_name(name)?;
    create_in(conn, user_id, &name).await?.ok_or_else(too_many)
}

/// Creates a key in one write transaction, so that concurrent requests can never take a user
/// past `MAX_KEYS_PER_USER`.
pub async fn create_limited(db: &Db, user_id: i64, name: Option<&str>) -> Result<(api_keys::Model, String)> {
    let name = normalize_name(name)?;
    // A full user is an answer, not a failure: the job returns `None` so that on SQLite the
    // writer does not roll back the other jobs committed with it.
    db.write(move |txn| {
        let name = name.clone();
        Box::pin(async move { create_in(txn, user_id, &name).await })
    })
    .await?
    .ok_or_else(too_many)
}

fn too_many() -> Error {
    Error::Conflict(format!("a user may hold at most {MAX_KEYS_PER_USER} keys; revoke one first"))
}

/// Counts and inserts under the user's row lock: the first statement writes the user's row, which
/// on MySQL/MariaDB and PostgreSQL makes a concurrent creation for the same user wait until this
/// transaction ends (and then count this key); SQLite runs one write transaction at a time.
/// `None` when the user already holds the most keys allowed.
async fn create_in(conn: &impl ConnectionTrait, user_id: i64, name: &str) -> Result<Option<(api_keys::Model, String)>> {
    let now = now_ms();
    users::Entity::update_many()
        .col_expr(users::Column::UpdatedAt, Expr::value(now))
        .filter(users::Column::Id.eq(user_id))
        .exec(conn)
        .await?;
    let active = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .count(conn)
        .await?;
    if active >= MAX_KEYS_PER_USER {
        return Ok(None);
    }
    let key = generate();
    let row = api_keys::ActiveModel {
        user_id: Set(user_id),
        name: Set(name.to_owned()),
        key_hash: Set(key.hash.clone()),
        prefix: Set(key.plaintext[..7].to_owned()),
        last4: Set(key.plaintext[KEY_LEN - 4..].to_owned()),
        disabled: Set(false),
        revoked_at: Set(None),
        last_used_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(Some((row, key.plaintext)))
}

/// What a person may change on a key. `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChange {
    pub name: Option<String>,
    pub disabled: Option<bool>,
    pub settings: SettingsChange,
}

/// A key's controls to change: `None` leaves one as it is, `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub allowed_models: Option<Option<Vec<String>>>,
    /// Micro-units.
    pub spend_limit: Option<Option<i64>>,
    pub spend_limit_period: Option<Option<Period>>,
    /// Unix ms.
    pub expires_at: Option<Option<i64>>,
    /// CIDRs, normalized.
    pub allowed_ips: Option<Option<Vec<String>>>,
    pub rpm: Option<Option<i64>>,
    pub tpm: Option<Option<i64>>,
}

impl SettingsChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The most models or address ranges one key may list.
pub const MAX_LIST: usize = 100;
/// The largest RPM or TPM a key or user may be given.
pub const MAX_RATE: i64 = 1_000_000_000_000;

/// A key's controls as the dashboard and the admin API show them (camelCase, money as decimal
/// strings, times RFC 3339; `null` when unset).
pub fn settings_json(k: &api_keys::Model) -> Value {
    let list = |raw: &Option<String>| raw.as_deref().and_then(|j| serde_json::from_str::<Value>(j).ok());
    json!({
        "allowedModels": list(&k.allowed_models),
        "spendLimit": k.spend_limit.map(crate::money::format_amount),
        "spendLimitPeriod": k.spend_limit.and(k.spend_limit_period.clone()),
        "expiresAt": k.expires_at.map(rfc3339),
        "allowedIps": list(&k.allowed_ips),
        "rpm": k.rpm,
        "tpm": k.tpm,
    })
}

/// Reads a key PATCH body (`name`, `disabled` and the camelCase controls; `null` clears a
/// control). Anything else, or a value of the wrong shape, is a `BadRequest` naming the field.
pub fn change_from_json(body: &Map<String, Value>) -> Result<KeyChange> {
    let bad = |m: String| Err(Error::BadRequest(m));
    let mut change = KeyChange::default();
    for (field, value) in body {
        let set = &mut change.settings;
        match field.as_str() {
            "name" => match value {
                Value::String(n) => change.name = Some(n.clone()),
                Value::Null => {}
                _ => return bad("`name` must be a string".into()),
            },
            "disabled" => match value {
                Value::Bool(d) => change.disabled = Some(*d),
                Value::Null => {}
                _ => return bad("`disabled` must be true or false".into()),
            },
            "allowedModels" => set.allowed_models = Some(nullable(value, |v| string_list(v, field, 128))?),
            "allowedIps" => {
                set.allowed_ips = Some(nullable(value, |v| {
                    string_list(v, field, 64)?
                        .iter()
                        .map(|raw| {
                            crate::gateway::auth::parse_cidr(raw).map(|n| n.trunc().to_string()).ok_or_else(|| {
                                Error::BadRequest(format!("`allowedIps`: `{raw}` is not an address or CIDR range"))
                            })
                        })
                        .collect()
                })?);
            }
            "spendLimit" => {
                set.spend_limit = Some(nullable(value, |v| {
                    let raw = v.as_str().ok_or_else(|| {
                        Error::BadRequest("`spendLimit` must be a decimal string such as \"5.00\"".into())
                    })?;
                    match crate::money::parse_amount(raw) {
                        Ok(a) if a > 0 && a <= crate::money::MAX_AMOUNT => Ok(a),
                        Ok(_) => Err(Error::BadRequest("`spendLimit` must be more than zero".into())),
                        Err(e) => Err(Error::BadRequest(format!("`spendLimit`: {e}"))),
                    }
                })?);
            }
            "spendLimitPeriod" => {
                set.spend_limit_period = Some(nullable(value, |v| {
                    v.as_str().and_then(Period::parse).ok_or_else(|| {
                        Error::BadRequest("`spendLimitPeriod` must be \"total\", \"day\" or \"month\"".into())
                    })
                })?);
            }
            "expiresAt" => {
                set.expires_at = Some(nullable(value, |v| {
                    let raw = v.as_str().unwrap_or_default();
                    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                        .ok()
                        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
                        .ok_or_else(|| {
                            Error::BadRequest(
                                "`expiresAt` must be an RFC 3339 time such as 2027-01-31T00:00:00Z".into(),
                            )
                        })
                })?);
            }
            "rpm" | "tpm" => {
                let limit = nullable(value, |v| match v.as_i64() {
                    Some(n) if (1..=MAX_RATE).contains(&n) => Ok(n),
                    _ => Err(Error::BadRequest(format!("`{field}` must be an integer from 1 to {MAX_RATE}"))),
                })?;
                if field == "rpm" {
                    set.rpm = Some(limit);
                } else {
                    set.tpm = Some(limit);
                }
            }
            other => return bad(format!("unknown field `{other}`")),
        }
    }
    Ok(change)
}

/// `null` as `None`, anything else through `parse`.
fn nullable<T>(value: &Value, parse: impl FnOnce(&Value) -> Result<T>) -> Result<Option<T>> {
    if value.is_null() { Ok(None) } else { parse(value).map(Some) }
}

/// A non-empty list of at most `MAX_LIST` distinct non-empty strings of at most `max_len`
/// characters.
fn string_list(value: &Value, field: &str, max_len: usize) -> Result<Vec<String>> {
    let shape = || {
        Error::BadRequest(format!(
            "`{field}` must be a list of 1 to {MAX_LIST} strings (send null to lift the restriction)"
        ))
    };
    let items = value.as_array().filter(|a| !a.is_empty() && a.len() <= MAX_LIST).ok_or_else(shape)?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().map(str::trim).filter(|s| !s.is_empty() && s.chars().count() <= max_len);
        let s = s.ok_or_else(shape)?;
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// Locks the key `key_id`, not revoked, of `owner` when given (`None`: any owner, for
/// operators) for the rest of `txn`, and returns it. The first statement writes the row (its
/// `updated_at`), so on MySQL/MariaDB and PostgreSQL a concurrent change to the same key waits
/// for this transaction and then finds the key as it left it (revoked: not found); SQLite runs
/// one write transaction at a time.
async fn lock_active(txn: &impl ConnectionTrait, owner: Option<i64>, key_id: i64, now: i64) -> Result<api_keys::Model> {
    let not_found = || Error::NotFound(format!("no active key with id {key_id}"));
    let mut lock = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::UpdatedAt, Expr::value(now))
        .filter(api_keys::Column::Id.eq(key_id))
        .filter(api_keys::Column::RevokedAt.is_null());
    if let Some(uid) = owner {
        lock = lock.filter(api_keys::Column::UserId.eq(uid));
    }
    // `updated_at` is in the SET, so MySQL's matched-rows count agrees with the others.
    if lock.exec(txn).await?.rows_affected != 1 {
        return Err(not_found());
    }
    api_keys::Entity::find_by_id(key_id).one(txn).await?.ok_or_else(not_found)
}

/// An audit entry for a key; the actor is the owner who asked (`None` for the command line).
fn key_entry<'a>(owner: Option<i64>, action: &'a str, key: &api_keys::Model, before: Value, after: Value) -> Entry<'a> {
    Entry {
        actor_user_id: owner,
        action,
        target_type: "key",
        target_id: key.id.to_string(),
        before: Some(before),
        after: Some(after),
    }
}

/// Renames and/or disables or re-enables a key of `owner` (any owner when `None`), with an
/// audit entry per change, in one transaction. A disabled key's cached identity is dropped on
/// every instance, so the gateway refuses it at once here and within a second elsewhere with
/// Redis (within its 5 s cache lifetime without). Returns the updated key, or `NotFound` when the
/// key does not exist, belongs to someone else or is revoked; an empty change is a `BadRequest`.
pub async fn update(
    db: &Db,
    cache: &Cache,
    owner: Option<i64>,
    key_id: i64,
    change: KeyChange,
) -> Result<api_keys::Model> {
    update_as(db, cache, owner, key_id, change, &Actor { user_id: owner, ip: None }).await
}

/// `update`, audited as `actor` (an administrator changing a customer's key, from an address).
/// Changed controls reach the gateway at once here (the key's cached identity is dropped) and
/// on other instances within the key cache's lifetime.
pub async fn update_as(
    db: &Db,
    cache: &Cache,
    owner: Option<i64>,
    key_id: i64,
    change: KeyChange,
    actor: &Actor,
) -> Result<api_keys::Model> {
    if change.name.is_none() && change.disabled.is_none() && change.settings.is_empty() {
        return Err(Error::BadRequest(
            "nothing to change: send `name`, `disabled` or a control such as `allowedModels`".into(),
        ));
    }
    let set = &change.settings;
    if let Some(Some(at)) = set.expires_at
        && at <= now_ms()
    {
        return Err(Error::BadRequest("`expiresAt` must be in the future (disable the key to stop it now)".into()));
    }
    if let Some(Some(names)) = &set.allowed_models {
        let known: Vec<String> = models::Entity::find()
            .filter(models::Column::Name.is_in(names.iter().cloned()))
            .all(&db.read)
            .await?
            .into_iter()
            .map(|m| m.name)
            .collect();
        if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
            return Err(Error::BadRequest(format!("`allowedModels`: there is no model `{unknown}`")));
        }
    }
    let name = match change.name.as_deref() {
        Some(raw) if raw.trim().is_empty() => return Err(Error::BadRequest("a key name cannot be blank".into())),
        Some(raw) => Some(normalize_name(Some(raw))?),
        None => None,
    };
    let txn = db.begin().await?;
    let now = now_ms();
    let key = lock_active(&txn, owner, key_id, now).await?;
    if let Some(owner) = owner
        && change.disabled == Some(false)
        && key.disabled
        && disabled_by(&txn, &key).await?.is_none_or(|actor| actor != owner)
    {
        return Err(Error::Forbidden("this key was disabled by the operator; only they can enable it again".into()));
    }
    let mut update = api_keys::Entity::update_many().col_expr(api_keys::Column::UpdatedAt, Expr::value(now));
    if let Some(n) = &name {
        update = update.col_expr(api_keys::Column::Name, Expr::value(n.clone()));
    }
    if let Some(d) = change.disabled {
        update = update.col_expr(api_keys::Column::Disabled, Expr::value(d));
    }
    let updated = apply_settings(&key, set);
    if updated.spend_limit.is_none() && matches!(set.spend_limit_period, Some(Some(_))) {
        return Err(Error::BadRequest("`spendLimitPeriod` needs a `spendLimit`".into()));
    }
    if !set.is_empty() {
        update = update
            .col_expr(api_keys::Column::AllowedModels, Expr::value(updated.allowed_models.clone()))
            .col_expr(api_keys::Column::SpendLimit, Expr::value(updated.spend_limit))
            .col_expr(api_keys::Column::SpendLimitPeriod, Expr::value(updated.spend_limit_period.clone()))
            .col_expr(api_keys::Column::ExpiresAt, Expr::value(updated.expires_at))
            .col_expr(api_keys::Column::AllowedIps, Expr::value(updated.allowed_ips.clone()))
            .col_expr(api_keys::Column::Rpm, Expr::value(updated.rpm))
            .col_expr(api_keys::Column::Tpm, Expr::value(updated.tpm));
    }
    update.filter(api_keys::Column::Id.eq(key.id)).exec(&txn).await?;
    let (before, after) = (settings_json(&key), settings_json(&updated));
    if before != after {
        // A cap newly set, or moved to another period, counts from the usage rows afresh.
        let period = |k: &api_keys::Model| k.spend_limit.map(|_| k.spend_limit_period.clone());
        if period(&key) != period(&updated) {
            key_spend::forget(&txn, key.id).await?;
        }
        let entry = key_entry(actor.user_id, "key.settings", &key, before, after);
        audit::record_from(&txn, entry, actor.ip.as_deref()).await?;
    }
    if let Some(n) = &name
        && *n != key.name
    {
        let entry = key_entry(actor.user_id, "key.rename", &key, json!({ "name": key.name }), json!({ "name": n }));
        audit::record_from(&txn, entry, actor.ip.as_deref()).await?;
    }
    if let Some(d) = change.disabled
        && d != key.disabled
    {
        let action = if d { "key.disable" } else { "key.enable" };
        let entry =
            key_entry(actor.user_id, action, &key, json!({ "disabled": key.disabled }), json!({ "disabled": d }));
        audit::record_from(&txn, entry, actor.ip.as_deref()).await?;
    }
    txn.commit().await?;
    let disabled = change.disabled.unwrap_or(key.disabled);
    if disabled || !set.is_empty() {
        cache.delete(&cache::key_cache(&key.key_hash)).await;
    }
    Ok(api_keys::Model { name: name.unwrap_or(updated.name.clone()), disabled, ..updated })
}

/// The key with `change` applied to its controls (a spend period with no cap is dropped; a cap
/// with no period counts in total).
fn apply_settings(key: &api_keys::Model, change: &SettingsChange) -> api_keys::Model {
    let list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
    let mut k = key.clone();
    if let Some(v) = &change.allowed_models {
        k.allowed_models = v.as_ref().map(list);
    }
    if let Some(v) = change.spend_limit {
        k.spend_limit = v;
    }
    if let Some(v) = change.spend_limit_period {
        k.spend_limit_period = v.map(|p| p.as_str().to_owned());
    }
    if let Some(v) = change.expires_at {
        k.expires_at = v;
    }
    if let Some(v) = &change.allowed_ips {
        k.allowed_ips = v.as_ref().map(list);
    }
    if let Some(v) = change.rpm {
        k.rpm = v;
    }
    if let Some(v) = change.tpm {
        k.tpm = v;
    }
    k.spend_limit_period = match k.spend_limit {
        None => None,
        Some(_) => Some(k.spend_limit_period.unwrap_or_else(|| Period::Total.as_str().to_owned())),
    };
    k
}

/// Who disabled `key` last, from the audit log: the owner themselves, or `None` for the operator
/// (the command line, or a key disabled before the log recorded it).
async fn disabled_by(conn: &impl ConnectionTrait, key: &api_keys::Model) -> Result<Option<i64>> {
    let last = audit_logs::Entity::find()
        .filter(audit_logs::Column::TargetType.eq("key"))
        .filter(audit_logs::Column::TargetId.eq(key.id.to_string()))
        .filter(audit_logs::Column::Action.eq("key.disable"))
        .order_by_desc(audit_logs::Column::Id)
        .one(conn)
        .await?;
    Ok(last.and_then(|e| e.actor_user_id))
}

/// Renames a key of `owner` (any owner when `None`); see `update`.
pub async fn rename(db: &Db, cache: &Cache, owner: Option<i64>, key_id: i64, name: &str) -> Result<api_keys::Model> {
    update(db, cache, owner, key_id, KeyChange { name: Some(name.to_owned()), ..KeyChange::default() }).await
}

/// Disables or re-enables a key of `owner` (any owner when `None`) without revoking it; see
/// `update`.
pub async fn set_disabled(
    db: &Db,
    cache: &Cache,
    owner: Option<i64>,
    key_id: i64,
    disabled: bool,
) -> Result<api_keys::Model> {
    update(db, cache, owner, key_id, KeyChange { disabled: Some(disabled), ..KeyChange::default() }).await
}

/// Revokes a key of `owner` (any owner when `None`), with an audit entry, and makes it fail
/// on every instance at once: `revoked:{hash}` for 30 days and no `key_cache:{hash}`. Returns
/// the revoked row, or `NotFound` when the key does not exist, belongs to someone else or is
/// already revoked.
pub async fn revoke(db: &Db, cache: &Cache, owner: Option<i64>, key_id: i64) -> Result<api_keys::Model> {
    revoke_as(db, cache, owner, key_id, &Actor { user_id: owner, ip: None }).await
}

/// `revoke`, audited as `actor` (an administrator revoking a customer's key, from an address).
pub async fn revoke_as(
    db: &Db,
    cache: &Cache,
    owner: Option<i64>,
    key_id: i64,
    actor: &Actor,
) -> Result<api_keys::Model> {
    let txn = db.begin().await?;
    let now = now_ms();
    let key = lock_active(&txn, owner, key_id, now).await?;
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(now))
        .col_expr(api_keys::Column::UpdatedAt, Expr::value(now))
        .filter(api_keys::Column::Id.eq(key.id))
        .exec(&txn)
        .await?;
    let entry = key_entry(
        actor.user_id,
        "key.revoke",
        &key,
        json!({ "userId": key.user_id, "revokedAt": null }),
        json!({ "userId": key.user_id, "revokedAt": now }),
    );
    audit::record_from(&txn, entry, actor.ip.as_deref()).await?;
    txn.commit().await?;
    forget_revoked(cache, &key.key_hash).await;
    Ok(api_keys::Model { revoked_at: Some(now), ..key })
}

/// Makes a revoked key fail everywhere at once, before any database lookup.
async fn forget_revoked(cache: &Cache, hash: &str) {
    cache.set(&cache::revoked(hash), "1", cache::REVOKED_TTL).await;
    cache.delete(&cache::key_cache(hash)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_hashed() {
        let k = generate();
        assert!(is_well_formed(&k.plaintext), "{}", k.plaintext);
        assert_eq!(k.hash, hash(&k.plaintext));
        assert_eq!(k.hash.len(), 64);
        assert!(!format!("{k:?}").contains(&k.plaintext));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "sk-",
            "sk-short",
            "pk-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "sk-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
            "sk-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }
}
