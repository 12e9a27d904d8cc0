//! The cache: an in-process layer (moka) always, and Redis when `REDIS_URL` is set, with the
//! same key names and TTLs either way.
//!
//! The cache only ever saves work: authentication falls back to the database when Redis is
//! down or slow, and billing never reads it. With Redis, the in-process layer keeps entries for
//! at most `LOCAL_TTL_WITH_REDIS`, so a change written to Redis (a revocation) reaches every
//! instance within that time; without Redis, each entry's own TTL bounds staleness.

mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

pub use self::redis::RedisLayer;

/// `key_cache:{hash}`: a valid key's identity.
pub const KEY_TTL: Duration = Duration::from_secs(5);
/// `revoked:{hash}`: a revoked key, refused without a database lookup.
pub const REVOKED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// `user_balance:{user_id}`: the balance shown in dashboards (never used for billing).
pub const BALANCE_TTL: Duration = Duration::from_secs(10);
/// `model_config:{name}`: a model's configuration and prices.
pub const MODEL_TTL: Duration = Duration::from_secs(60);
/// The in-process layer's lifetime for entries also kept in Redis.
pub const LOCAL_TTL_WITH_REDIS: Duration = Duration::from_secs(1);

pub fn key_cache(hash: &str) -> String {
    format!("key_cache:{hash}")
}
pub fn revoked(hash: &str) -> String {
    format!("revoked:{hash}")
}
pub fn user_balance(user_id: i64) -> String {
    format!("user_balance:{user_id}")
}
pub fn model_config(name: &str) -> String {
    format!("model_config:{name}")
}

#[derive(Clone)]
struct Entry {
    value: Arc<str>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Clone)]
pub struct Cache {
    local: moka::future::Cache<String, Entry>,
    redis: Option<Arc<RedisLayer>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("redis", &self.redis.is_some()).finish()
    }
}

impl Cache {
    /// An in-process cache only.
    pub fn in_process() -> Self {
        Self {
            local: moka::future::Cache::builder().max_capacity(200_000).expire_after(PerEntryTtl).build(),
            redis: None,
        }
    }

    /// The in-process layer in front of Redis at `url`; keys are written under `prefix`.
    /// This does not connect (`connect_now` does): while Redis is unreachable the cache works
    /// in-process.
    /// Each Redis call may take `timeout` before the instance goes on without Redis for a while.
    pub fn with_redis(url: &str, prefix: &str, timeout: Duration) -> Result<Self, ::redis::RedisError> {
        let layer = RedisLayer::connect(url, prefix, timeout)?;
        Ok(Self { redis: Some(Arc::new(layer)), ..Self::in_process() })
    }

    /// With Redis: connects now rather than on the first request (see `RedisLayer::connect_now`).
    /// False when Redis is configured and could not be reached.
    pub async fn connect_now(&self) -> bool {
        match &self.redis {
            Some(redis) => redis.connect_now().await,
            None => true,
        }
    }

    /// The shared Redis layer, when configured (for state shared by instances beyond caching).
    pub fn redis(&self) -> Option<Arc<RedisLayer>> {
        self.redis.clone()
    }

    fn local_ttl(&self, ttl: Duration) -> Duration {
        if self.redis.is_some() { ttl.min(LOCAL_TTL_WITH_REDIS) } else { ttl }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<str>> {
        let found = self.lookup(key).await;
        crate::observability::cache_lookup(found.is_some());
        found
    }

    async fn lookup(&self, key: &str) -> Option<Arc<str>> {
        if let Some(hit) = self.local.get(key).await {
            return Some(hit.value);
        }
        let redis = self.redis.as_ref()?;
        let (value, ttl) = redis.get(key).await?;
        let value: Arc<str> = value.into();
        self.local.insert(key.to_owned(), Entry { value: value.clone(), ttl: self.local_ttl(ttl) }).await;
        Some(value)
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) {
        self.local.insert(key.to_owned(), Entry { value: value.into(), ttl: self.local_ttl(ttl) }).await;
        if let Some(redis) = &self.redis {
            redis.set(key, value, ttl).await;
        }
    }

    pub async fn delete(&self, key: &str) {
        self.local.invalidate(key).await;
        if let Some(redis) = &self.redis {
            redis.delete(key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_entries_expire_by_their_own_ttl() {
        let cache = Cache::in_process();
        cache.set("a", "1", Duration::from_millis(50)).await;
        cache.set("b", "2", Duration::from_secs(60)).await;
        assert_eq!(cache.get("a").await.as_deref(), Some("1"));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("a").await, None);
        assert_eq!(cache.get("b").await.as_deref(), Some("2"));
        cache.delete("b").await;
        assert_eq!(cache.get("b").await, None);
    }
}
