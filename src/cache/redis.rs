//! The Redis layer: a connection manager that reconnects by itself, with short timeouts so a
//! slow or dead Redis degrades to a cache miss instead of a slow request, and a breaker so it
//! costs that timeout once, not on every call.
//!
//! When a command times out or the connection fails, the breaker opens: for `COOL_DOWN` every
//! call skips Redis at once (reads miss, writes are kept aside), so a hung Redis does not add
//! its timeout to each cache call of each request. After the cool-down one call goes through as
//! a probe; if Redis answers, the breaker closes and the writes kept aside are sent, newest per
//! key, with what is left of their TTL, so an invalidation made meanwhile (a revocation) is not
//! lost. Whatever Redis misses in the meantime is only a cache: authentication falls back to
//! the database, and each instance's in-process layer is invalidated at once either way.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long Redis is skipped after it failed to answer, before one call probes it again.
const COOL_DOWN: Duration = Duration::from_secs(3);

/// Writes kept aside while Redis is skipped, at most (an outage must not grow memory unbounded;
/// every entry also expires in Redis by its own TTL).
const MAX_PENDING: usize = 10_000;

pub struct RedisLayer {
    client: redis::Client,
    /// How long one call may take (`REDIS_TIMEOUT_MS`) before the breaker opens.
    timeout: Duration,
    prefix: String,
    manager: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    /// Set while Redis is skipped: until this instant no call is sent to it, after it one probe.
    open_until: Option<Instant>,
    /// A probe is in flight; the other calls keep skipping Redis until it ends.
    probing: bool,
    /// Writes skipped or failed while Redis was failing, by full key, newest only.
    pending: HashMap<String, Pending>,
}

#[derive(Clone, Debug)]
enum Pending {
    Set { value: String, expires: Instant },
    Delete,
}

/// Permission for one call to use Redis. A probe dropped without an outcome (its request was
/// cancelled) lets the next call probe instead.
struct Pass<'a> {
    layer: &'a RedisLayer,
    probe: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe
            && let Ok(mut b) = self.layer.breaker.lock()
        {
            b.probing = false;
        }
    }
}

/// True when `err` means Redis cannot be reached or does not answer, as opposed to an error
/// reply (which proves it is up).
fn is_outage(err: &redis::RedisError) -> bool {
    err.is_timeout() || err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal()
}

impl RedisLayer {
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            timeout,
            prefix: prefix.to_owned(),
            manager: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            breaker: Mutex::new(Breaker::default()),
        })
    }

    /// Whether this call may use Redis: always while the breaker is closed, never while it is
    /// open, and for one call at a time (a probe) once the cool-down is over.
    fn admit(&self) -> Option<Pass<'_>> {
        let mut b = self.breaker.lock().ok()?;
        match b.open_until {
            None => Some(Pass { layer: self, probe: false }),
            Some(until) if Instant::now() < until || b.probing => None,
            Some(_) => {
                b.probing = true;
                Some(Pass { layer: self, probe: true })
            }
        }
    }

    /// Redis failed to answer: skip it for the cool-down.
    fn trip(&self, mut pass: Pass<'_>, why: &str) {
        // The outcome is recorded here; the pass must not clear a later probe's flag.
        pass.probe = false;
        let was_closed = match self.breaker.lock() {
            Ok(mut b) => {
                let was_closed = b.open_until.is_none();
                b.open_until = Some(Instant::now() + COOL_DOWN);
                b.probing = false;
                was_closed
            }
            Err(_) => false,
        };
        if was_closed {
            tracing::warn!(
                cool_down_ms = COOL_DOWN.as_millis() as u64,
                "Redis {why}; skipping it for a while (using the in-process cache and the database)"
            );
        } else {
            tracing::debug!("Redis probe: {why}");
        }
    }

    /// Redis answered. After a probe, closes the breaker and sends the writes kept aside.
    async fn answered(&self, mut pass: Pass<'_>, conn: &mut ConnectionManager) {
        if !pass.probe {
            return;
        }
        pass.probe = false;
        let pending = match self.breaker.lock() {
            Ok(mut b) => {
                b.open_until = None;
                b.probing = false;
                std::mem::take(&mut b.pending)
            }
            Err(_) => return,
        };
        tracing::info!(pending = pending.len(), "Redis answers again");
        let now = Instant::now();
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(pending.len());
        for (key, op) in pending {
            match &op {
                Pending::Set { value, expires } => {
                    let left = expires.saturating_duration_since(now);
                    if left.is_zero() {
                        continue;
                    }
                    pipe.pset_ex(&key, value, u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)).ignore();
                }
                Pending::Delete => {
                    pipe.del(&key).ignore();
                }
            }
            sent.push((key, op));
        }
        if sent.is_empty() {
            return;
        }
        let res: Result<Result<(), _>, _> = tokio::time::timeout(self.timeout, pipe.query_async(conn)).await;
        if !matches!(res, Ok(Ok(()))) {
            // Put them back (unless a newer write for the same key came meanwhile) for the next
            // probe.
            if let Ok(mut b) = self.breaker.lock() {
                b.open_until = Some(Instant::now() + COOL_DOWN);
                for (key, op) in sent {
                    if b.pending.len() < MAX_PENDING {
                        b.pending.entry(key).or_insert(op);
                    }
                }
            }
            tracing::warn!("Redis failed again while catching up on skipped writes");
        }
    }

    /// Keeps a write that did not reach Redis, to be sent when it answers again.
    fn keep(&self, key: String, op: Pending) {
        let Ok(mut b) = self.breaker.lock() else { return };
        if b.pending.len() >= MAX_PENDING && !b.pending.contains_key(&key) {
            let now = Instant::now();
            b.pending.retain(|_, op| !matches!(op, Pending::Set { expires, .. } if *expires <= now));
            if b.pending.len() >= MAX_PENDING {
                tracing::debug!("too many Redis writes kept aside; this one expires by its TTL");
                return;
            }
        }
        b.pending.insert(key, op);
    }

    /// The connection manager, creating it on first use (or after Redis was unreachable).
    /// Reads do not wait for a connection attempt in progress (a miss is cheap); writes do, so
    /// an invalidation is not skipped. `None` after a failed attempt, which trips the breaker.
    async fn conn<'a>(&'a self, pass: Pass<'a>, wait: bool) -> (Option<ConnectionManager>, Option<Pass<'a>>) {
        let current = || self.manager.read().ok().and_then(|g| g.clone());
        if let Some(m) = current() {
            return (Some(m), Some(pass));
        }
        let _guard = if wait {
            self.connecting.lock().await
        } else {
            match self.connecting.try_lock() {
                Ok(g) => g,
                Err(_) => return (None, Some(pass)),
            }
        };
        if let Some(m) = current() {
            return (Some(m), Some(pass));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match tokio::time::timeout(self.timeout * 2, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(m)) => {
                if let Ok(mut slot) = self.manager.write() {
                    *slot = Some(m.clone());
                }
                tracing::info!("connected to Redis");
                (Some(m), Some(pass))
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot connect to Redis");
                self.trip(pass, "is unreachable");
                (None, None)
            }
            Err(_) => {
                self.trip(pass, "connection timed out");
                (None, None)
            }
        }
    }

    /// Opens the connection before the first request needs it, waiting at most twice the
    /// timeout; on failure the breaker is open as after any failed attempt. Requests do not
    /// wait for a connection attempt in progress (they go on without Redis), so without this
    /// the first requests of an instance would be judged by its own rate-limit and in-flight
    /// counts alone, and a burst at start-up could pass a global limit.
    pub async fn connect_now(&self) -> bool {
        let Some(pass) = self.admit() else { return false };
        matches!(self.conn(pass, true).await, (Some(_), Some(_)))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value and its remaining TTL.
    pub async fn get(&self, key: &str) -> Option<(String, Duration)> {
        let pass = self.admit()?;
        let (conn, pass) = self.conn(pass, false).await;
        let (mut conn, pass) = (conn?, pass?);
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.get(&key).pttl(&key);
        let res: Result<Result<(Option<String>, i64), _>, _> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await;
        match res {
            Err(_) => {
                self.trip(pass, "did not answer in time");
                None
            }
            Ok(Err(err)) if is_outage(&err) => {
                tracing::debug!(error = %err, "Redis GET failed");
                self.trip(pass, "failed");
                None
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "Redis GET failed");
                self.answered(pass, &mut conn).await;
                None
            }
            Ok(Ok(found)) => {
                self.answered(pass, &mut conn).await;
                match found {
                    (Some(v), ttl_ms) if ttl_ms > 0 => Some((v, Duration::from_millis(ttl_ms.unsigned_abs()))),
                    _ => None,
                }
            }
        }
    }

    /// Runs `script` on `keys` (prefixed here) with `args`. `None` when Redis is skipped by the
    /// breaker, unreachable, slower than the timeout, or replies with an error: the caller falls
    /// back to what it can decide alone. `wait` waits for a connection attempt in progress (for
    /// background work; a request must not).
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
        wait: bool,
    ) -> Option<T> {
        let pass = self.admit()?;
        let (conn, pass) = self.conn(pass, wait).await;
        let (mut conn, pass) = (conn?, pass?);
        let mut call = script.prepare_invoke();
        for key in keys {
            call.key(self.key(key));
        }
        for arg in args {
            call.arg(arg);
        }
        let res: Result<Result<T, _>, _> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        match res {
            Err(_) => {
                self.trip(pass, "did not answer in time");
                None
            }
            Ok(Err(err)) if is_outage(&err) => {
                tracing::debug!(error = %err, "Redis script failed");
                self.trip(pass, "failed");
                None
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Redis refused a script");
                self.answered(pass, &mut conn).await;
                None
            }
            Ok(Ok(value)) => {
                self.answered(pass, &mut conn).await;
                Some(value)
            }
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) {
        let op = Pending::Set { value: value.to_owned(), expires: Instant::now() + ttl };
        self.write(key, op).await;
    }

    pub async fn delete(&self, key: &str) {
        self.write(key, Pending::Delete).await;
    }

    /// Sends one write, or keeps it for later when Redis is skipped or fails to take it.
    async fn write(&self, key: &str, op: Pending) {
        let key = self.key(key);
        let Some(pass) = self.admit() else {
            self.keep(key, op);
            return;
        };
        let (conn, pass) = self.conn(pass, true).await;
        let (Some(mut conn), Some(pass)) = (conn, pass) else {
            self.keep(key, op);
            return;
        };
        let sent = match &op {
            Pending::Set { value, expires } => {
                let left = expires.saturating_duration_since(Instant::now());
                let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                tokio::time::timeout(self.timeout, conn.pset_ex::<_, _, ()>(&key, value, ms)).await
            }
            Pending::Delete => tokio::time::timeout(self.timeout, conn.del::<_, ()>(&key)).await,
        };
        match sent {
            Ok(Ok(())) => self.answered(pass, &mut conn).await,
            Ok(Err(err)) if !is_outage(&err) => {
                tracing::debug!(error = %err, "Redis refused a write; the entry expires by its TTL");
                self.answered(pass, &mut conn).await;
            }
            failed => {
                if let Ok(Err(err)) = failed {
                    tracing::debug!(error = %err, "Redis write failed");
                }
                self.keep(key, op);
                self.trip(pass, "did not take a write in time");
            }
        }
    }
}
