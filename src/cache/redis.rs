//! The Redis layer: a connection manager that reconnects by itself, with short timeouts so a
//! slow or dead Redis degrades to a cache miss instead of a slow request.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one Redis command may take before it counts as a miss.
const TIMEOUT: Duration = Duration::from_millis(250);

pub struct RedisLayer {
    client: redis::Client,
    prefix: String,
    manager: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    /// After a failed connection attempt, no new attempt before this instant: while Redis is
    /// down, requests skip it at once instead of each waiting for a timeout.
    retry_at: std::sync::Mutex<Option<Instant>>,
}

/// The pause between connection attempts while Redis is unreachable.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl RedisLayer {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.to_owned(),
            manager: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: std::sync::Mutex::new(None),
        })
    }

    /// The connection manager, creating it on first use (or after Redis was unreachable).
    /// Reads do not wait for a connection attempt in progress (a miss is cheap); writes do, so
    /// an invalidation is not skipped.
    async fn conn(&self, wait: bool) -> Option<ConnectionManager> {
        let current = || self.manager.read().ok().and_then(|g| g.clone());
        if let Some(m) = current() {
            return Some(m);
        }
        let paused = || self.retry_at.lock().ok().and_then(|g| *g).is_some_and(|t| Instant::now() < t);
        if paused() {
            return None;
        }
        let _guard = if wait { self.connecting.lock().await } else { self.connecting.try_lock().ok()? };
        if let Some(m) = current() {
            return Some(m);
        }
        if paused() {
            return None;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match tokio::time::timeout(TIMEOUT * 2, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(m)) => {
                if let Ok(mut slot) = self.manager.write() {
                    *slot = Some(m.clone());
                }
                tracing::info!("connected to Redis");
                Some(m)
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Redis unreachable; using the in-process cache and the database");
                self.pause();
                None
            }
            Err(_) => {
                tracing::warn!("Redis connection timed out; using the in-process cache and the database");
                self.pause();
                None
            }
        }
    }

    fn pause(&self) {
        if let Ok(mut g) = self.retry_at.lock() {
            *g = Some(Instant::now() + RETRY_PAUSE);
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value and its remaining TTL.
    pub async fn get(&self, key: &str) -> Option<(String, Duration)> {
        let mut conn = self.conn(false).await?;
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.get(&key).pttl(&key);
        let res: Result<(Option<String>, i64), _> =
            tokio::time::timeout(TIMEOUT, pipe.query_async(&mut conn)).await.ok()?;
        match res {
            Ok((Some(v), ttl_ms)) if ttl_ms > 0 => Some((v, Duration::from_millis(ttl_ms.unsigned_abs()))),
            Ok(_) => None,
            Err(err) => {
                tracing::debug!(error = %err, "Redis GET failed");
                None
            }
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) {
        let Some(mut conn) = self.conn(true).await else { return };
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let res: Result<Result<(), _>, _> = tokio::time::timeout(TIMEOUT, conn.pset_ex(self.key(key), value, ms)).await;
        if !matches!(res, Ok(Ok(()))) {
            tracing::debug!("Redis SET failed");
        }
    }

    pub async fn delete(&self, key: &str) {
        let Some(mut conn) = self.conn(true).await else { return };
        let res: Result<Result<(), _>, _> = tokio::time::timeout(TIMEOUT, conn.del(self.key(key))).await;
        if !matches!(res, Ok(Ok(()))) {
            tracing::warn!("Redis DEL failed; the entry expires by its TTL");
        }
    }
}
