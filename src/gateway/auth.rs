//! API-key authentication: cache (`key_cache:{hash}`, 5 s) → revoked set → database. The
//! cached entry carries the key's own controls (`KeyRules`), which admission applies.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::header::AUTHORIZATION;
use reqwest::header::HeaderMap;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use crate::billing::key_spend::{KeyCap, Period};
use crate::cache::{self, Cache};
use crate::clock::{now_ms, rfc3339};
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

/// A key's own controls; `None` everywhere is a key without any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRules {
    /// The catalogue names this key may use.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Micro-units per `spend_period`.
    #[serde(default)]
    pub spend_limit: Option<i64>,
    #[serde(default)]
    pub spend_period: Option<Period>,
    /// Unix ms from which the key is refused.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// CIDRs (a bare address is its /32 or /128).
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    pub rpm: Option<i64>,
    #[serde(default)]
    pub tpm: Option<i64>,
    /// The owner's own limits (`None`: the instance defaults).
    #[serde(default)]
    pub user_rpm: Option<i64>,
    #[serde(default)]
    pub user_tpm: Option<i64>,
    #[serde(default)]
    pub user_max_concurrent: Option<i64>,
}

impl KeyRules {
    /// The controls stored on a key row. Lists that do not parse count as empty (nothing
    /// allowed): the service functions only store valid ones.
    pub fn of(row: &api_keys::Model, user: &users::Model) -> Self {
        let list =
            |raw: &Option<String>| raw.as_deref().map(|j| serde_json::from_str::<Vec<String>>(j).unwrap_or_default());
        Self {
            allowed_models: list(&row.allowed_models),
            spend_limit: row.spend_limit,
            spend_period: row.spend_limit.and(row.spend_limit_period.as_deref().and_then(Period::parse)),
            expires_at: row.expires_at,
            allowed_ips: list(&row.allowed_ips),
            rpm: row.rpm,
            tpm: row.tpm,
            user_rpm: user.rpm,
            user_tpm: user.tpm,
            user_max_concurrent: user.max_concurrent,
        }
    }

    /// Whether the key may use the catalogue model `name`.
    pub fn allows_model(&self, name: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|list| list.iter().any(|m| m == name))
    }

    /// Whether the key may be used from `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let Some(list) = &self.allowed_ips else { return true };
        // An IPv4 client seen through an IPv6 socket is compared as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        list.iter().filter_map(|c| parse_cidr(c)).any(|net| net.contains(&ip))
    }

    /// The rate limits a request with this key is counted against: the key's own, and its
    /// owner's (theirs, or the instance defaults).
    pub fn rate_limits(
        &self,
        key: ApiKey,
        default_rpm: Option<i64>,
        default_tpm: Option<i64>,
    ) -> Vec<super::rates::Limit> {
        let mut limits = Vec::with_capacity(2);
        if self.rpm.is_some() || self.tpm.is_some() {
            limits.push(super::rates::Limit {
                scope: format!("key:{}", key.key_id),
                requests: self.rpm,
                tokens: self.tpm,
            });
        }
        let (rpm, tpm) = (self.user_rpm.or(default_rpm), self.user_tpm.or(default_tpm));
        if rpm.is_some() || tpm.is_some() {
            limits.push(super::rates::Limit { scope: format!("user:{}", key.user_id), requests: rpm, tokens: tpm });
        }
        limits
    }

    /// The spend cap the reservation enforces, if any.
    pub fn key_cap(&self, key: ApiKey) -> Option<KeyCap> {
        Some(KeyCap {
            key_id: key.key_id,
            user_id: key.user_id,
            limit: self.spend_limit?,
            period: self.spend_period.unwrap_or(Period::Total),
        })
    }
}

/// A CIDR or a bare address (as its single-address network).
pub fn parse_cidr(raw: &str) -> Option<IpNet> {
    let raw = raw.trim();
    raw.parse::<IpNet>().ok().or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A key that was accepted, with its controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    pub key: ApiKey,
    pub rules: Arc<KeyRules>,
}

/// What `key_cache:{hash}` holds.
#[derive(Serialize, Deserialize)]
struct Cached {
    key_id: i64,
    user_id: i64,
    #[serde(default)]
    rules: KeyRules,
}

/// The answer for a key past its expiry.
fn expired(at: i64) -> Error {
    Error::Unauthorized(format!(
        "This API key expired at {}. Create a new key or extend this one's expiry in the dashboard.",
        rfc3339(at)
    ))
}

/// The one answer for unknown, revoked, disabled and malformed keys alike.
pub fn invalid_key() -> Error {
    Error::Unauthorized("Incorrect API key provided. You can find your API keys in the dashboard.".into())
}

/// The key presented as `Authorization: Bearer sk-…`. A database lookup (at most once per key
/// per cache lifetime) also records the key as used, on `tasks`, off the request path.
/// A key past its `expires_at` is refused with a message saying so.
pub async fn authenticate(db: &Db, cache: &Cache, tasks: &TaskTracker, headers: &HeaderMap) -> Result<Authorized> {
    let found = identify(db, cache, tasks, headers).await?;
    if let Some(at) = found.rules.expires_at
        && at <= now_ms()
    {
        return Err(expired(at));
    }
    Ok(found)
}

async fn identify(db: &Db, cache: &Cache, tasks: &TaskTracker, headers: &HeaderMap) -> Result<Authorized> {
    // `Authorization: Bearer sk-…`, or Anthropic's `x-api-key: sk-…` when no Authorization is sent.
    let token = match (headers.get(AUTHORIZATION), headers.get("x-api-key")) {
        (Some(value), _) => value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(invalid_key)?,
        (None, Some(value)) => value.to_str().map(str::trim).map_err(|_| invalid_key())?,
        (None, None) => {
            return Err(Error::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer sk-...` (or `x-api-key: sk-...`)."
                    .into(),
            ));
        }
    };
    // Malformed keys never reach the cache or the database.
    if !keys::is_well_formed(token) {
        return Err(invalid_key());
    }
    let hash = keys::hash(token);
    let cache_key = cache::key_cache(&hash);
    if let Some(hit) = cache.get(&cache_key).await
        && let Ok(c) = serde_json::from_str::<Cached>(&hit)
    {
        return Ok(Authorized { key: ApiKey { key_id: c.key_id, user_id: c.user_id }, rules: Arc::new(c.rules) });
    }
    if cache.get(&cache::revoked(&hash)).await.is_some() {
        return Err(invalid_key());
    }
    let (key, rules) = lookup(db, &hash).await?.ok_or_else(invalid_key)?;
    let cached = Cached { key_id: key.key_id, user_id: key.user_id, rules };
    if let Ok(v) = serde_json::to_string(&cached) {
        cache.set(&cache_key, &v, cache::KEY_TTL).await;
    }
    let now = now_ms();
    if use_worth_recording(key.key_id, now) {
        let db = db.clone();
        tasks.spawn(async move {
            // Through the writer (on SQLite its thread, so it never waits on the write lock).
            let res = db
                .write(move |txn| {
                    Box::pin(async move {
                        api_keys::Entity::update_many()
                            .col_expr(api_keys::Column::LastUsedAt, sea_orm::sea_query::Expr::value(now))
                            .filter(api_keys::Column::Id.eq(key.key_id))
                            .exec(txn)
                            .await?;
                        Ok(())
                    })
                })
                .await;
            if let Err(err) = res {
                tracing::debug!(error = %err, "could not record key use");
            }
        });
    }
    Ok(Authorized { key, rules: Arc::new(cached.rules) })
}

/// How often a key's `last_used_at` is written at most (per process).
const LAST_USE_EVERY_MS: i64 = 60_000;

/// True when key `key_id`'s use at `now` should be written: not written by this process in the
/// last minute. Remembers the keys written lately only (a bounded map).
fn use_worth_recording(key_id: i64, now: i64) -> bool {
    static WRITTEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<i64, i64>>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(mut written) = WRITTEN.lock() else { return true };
    if written.get(&key_id).is_some_and(|&at| now - at < LAST_USE_EVERY_MS) {
        return false;
    }
    if written.len() >= 100_000 {
        written.retain(|_, at| now - *at < LAST_USE_EVERY_MS);
    }
    written.insert(key_id, now);
    true
}

/// The key with this hash, and its controls, if it is usable: not revoked, not disabled, its user not disabled.
async fn lookup(db: &Db, hash: &str) -> Result<Option<(ApiKey, KeyRules)>> {
    let Some(key) = api_keys::Entity::find()
        .filter(api_keys::Column::KeyHash.eq(hash))
        .filter(api_keys::Column::RevokedAt.is_null())
        .filter(api_keys::Column::Disabled.eq(false))
        .one(&db.read)
        .await?
    else {
        return Ok(None);
    };
    let user = users::Entity::find_by_id(key.user_id).one(&db.read).await?.filter(|u| !u.disabled);
    Ok(user.map(|u| (ApiKey { key_id: key.id, user_id: key.user_id }, KeyRules::of(&key, &u))))
}

/// Drops the cached identity of every key of a user (after disabling them).
pub async fn forget_user_keys(db: &Db, cache: &Cache, user_id: i64) -> Result<()> {
    let hashes = api_keys::Entity::find().filter(api_keys::Column::UserId.eq(user_id)).all(&db.read).await?;
    for k in hashes {
        cache.delete(&cache::key_cache(&k.key_hash)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_use_is_written_at_most_once_a_minute() {
        let key = i64::MAX - 7;
        let t = 1_000_000_000;
        assert!(use_worth_recording(key, t));
        assert!(!use_worth_recording(key, t + 1));
        assert!(!use_worth_recording(key, t + LAST_USE_EVERY_MS - 1));
        assert!(use_worth_recording(key, t + LAST_USE_EVERY_MS));
        assert!(use_worth_recording(key - 1, t + 1), "each key on its own");
    }

    #[test]
    fn address_allowlists_match_cidrs_and_bare_addresses() {
        let rules = KeyRules {
            allowed_ips: Some(vec!["10.0.0.0/8".into(), "2001:db8::1".into(), "192.0.2.7".into()]),
            ..KeyRules::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.allows_ip(ip("10.1.2.3")));
        assert!(rules.allows_ip(ip("192.0.2.7")));
        assert!(rules.allows_ip(ip("::ffff:10.9.9.9")));
        assert!(rules.allows_ip(ip("2001:db8::1")));
        assert!(!rules.allows_ip(ip("192.0.2.8")));
        assert!(!rules.allows_ip(ip("2001:db8::2")));
        assert!(KeyRules::default().allows_ip(ip("203.0.113.1")));
        let none = KeyRules { allowed_ips: Some(vec![]), ..KeyRules::default() };
        assert!(!none.allows_ip(ip("127.0.0.1")));
    }
}
