//! The per-user limit on concurrent in-flight requests: per instance always, and global across
//! instances when Redis is configured.
//!
//! With Redis, each admitted request also holds an entry in the sorted set
//! `{prefix}inflight:{user_id}`: its member is a random slot id and its score the instant (Redis
//! time) after which it no longer counts. Admission is one Lua script that drops expired
//! entries, counts the rest and adds the new one only when under the limit, so instances racing
//! for the last slot cannot both win. While the request runs, a background task pushes its
//! expiry forward; when it ends, the same task removes the entry. A crashed instance stops
//! refreshing, so its slots expire by themselves within `SLOT_TTL` instead of leaking. When
//! Redis is down, slow or skipped by the cache's breaker, admission falls back to the
//! per-instance count at once (never a wait beyond the cache's timeout, never an error).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cache::RedisLayer;

/// How long a slot counts in Redis without being refreshed (a crashed instance's slots free
/// themselves after at most this long).
const SLOT_TTL: Duration = Duration::from_secs(30);
/// How often the slots held by this instance are refreshed (well within `SLOT_TTL`).
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// KEYS[1] the user's set; ARGV: limit, slot id, TTL ms. 1 when admitted, 0 when full.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

/// KEYS: the users' sets; ARGV[1] TTL ms, then one slot id per key. Pushes each slot's expiry
/// forward (only if it is still there: XX).
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return 1
";

/// KEYS: the users' sets; ARGV: one slot id per key.
const RELEASE: &str = r"
for i, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[i])
end
return 1
";

pub struct InFlight {
    max: u32,
    counts: Mutex<HashMap<i64, u32>>,
    global: Option<Global>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("max", &self.max).field("global", &self.global.is_some()).finish()
    }
}

/// The Redis side: the layer (with its breaker), the slots this instance holds there (slot id
/// to user id, for the refresher), and the channel to the task that refreshes and releases
/// them, so that dropping a slot never waits for Redis.
struct Global {
    redis: Arc<RedisLayer>,
    acquire: redis::Script,
    held: Arc<Mutex<HashMap<String, i64>>>,
    release: mpsc::UnboundedSender<(i64, String)>,
}

/// Held for the life of one request, stream included; releases its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    user_id: i64,
    /// The slot's id in Redis, when it was counted there.
    global_id: Option<String>,
}

fn set_key(user_id: i64) -> String {
    format!("inflight:{user_id}")
}

fn ttl_ms() -> String {
    SLOT_TTL.as_millis().to_string()
}

impl InFlight {
    /// A limit of `max` per user; global across instances when `redis` is given. With Redis this
    /// starts the background task that refreshes and releases slots, so it must be called
    /// inside the runtime; the task ends when the limit is dropped.
    pub fn new(max: u32, redis: Option<Arc<RedisLayer>>) -> Arc<Self> {
        let global = redis.map(|redis| {
            let (release, rx) = mpsc::unbounded_channel();
            let held = Arc::new(Mutex::new(HashMap::new()));
            tokio::spawn(keep_slots(redis.clone(), held.clone(), rx));
            Global { redis, acquire: redis::Script::new(ACQUIRE), held, release }
        });
        Arc::new(Self { max, counts: Mutex::new(HashMap::new()), global })
    }

    /// A slot for `user_id`, or `None` when they already have `max` requests in flight (on
    /// every instance together when Redis answers, on this one otherwise).
    pub async fn try_acquire(self: &Arc<Self>, user_id: i64) -> Option<Slot> {
        self.try_acquire_up_to(user_id, None).await
    }

    /// As `try_acquire`, with the user's own limit when they have one (`None`: the instance's).
    pub async fn try_acquire_up_to(self: &Arc<Self>, user_id: i64, max: Option<u32>) -> Option<Slot> {
        let max = max.filter(|m| *m > 0).unwrap_or(self.max);
        let mut slot = self.try_acquire_local(user_id, max)?;
        let Some(global) = &self.global else { return Some(slot) };
        let id = crate::crypto::random_token(12);
        let admitted: Option<i64> = global
            .redis
            .eval(&global.acquire, &[set_key(user_id)], &[max.to_string(), id.clone(), ttl_ms()], false)
            .await;
        match admitted {
            Some(1) => {
                global.held.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), user_id);
                slot.global_id = Some(id);
                Some(slot)
            }
            // Full on the instances together: the local slot is released by the drop.
            Some(_) => None,
            None => {
                // Redis did not answer in time: it may still have added the slot, so remove it
                // (in the background); this request counts on this instance only.
                let _ = global.release.send((user_id, id));
                tracing::debug!(user_id, "global in-flight limit unavailable; counting per instance");
                Some(slot)
            }
        }
    }

    /// The per-instance count.
    fn try_acquire_local(self: &Arc<Self>, user_id: i64, max: u32) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(user_id).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), user_id, global_id: None })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut counts = self.owner.counts.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = counts.get_mut(&self.user_id) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.user_id);
                }
            }
        }
        if let (Some(id), Some(global)) = (self.global_id.take(), &self.owner.global) {
            global.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            // Never blocks; if the task is gone (shutdown), the slot expires by its TTL.
            let _ = global.release.send((self.user_id, id));
        }
    }
}

/// Releases slots as requests end and refreshes the ones still held, until the limit is
/// dropped. A release Redis misses (outage) is not retried: the slot expires by its TTL.
async fn keep_slots(
    redis: Arc<RedisLayer>,
    held: Arc<Mutex<HashMap<String, i64>>>,
    mut rx: mpsc::UnboundedReceiver<(i64, String)>,
) {
    let release = redis::Script::new(RELEASE);
    let refresh = redis::Script::new(REFRESH);
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < 500 {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (keys, ids): (Vec<String>, Vec<String>) =
                    batch.into_iter().map(|(user, id)| (set_key(user), id)).unzip();
                let _: Option<i64> = redis.eval(&release, &keys, &ids, true).await;
            }
            _ = tick.tick() => {
                let slots: Vec<(String, i64)> = held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(id, user)| (id.clone(), *user))
                    .collect();
                for chunk in slots.chunks(500) {
                    let keys: Vec<String> = chunk.iter().map(|(_, user)| set_key(*user)).collect();
                    let mut args = vec![ttl_ms()];
                    args.extend(chunk.iter().map(|(id, _)| id.clone()));
                    let _: Option<i64> = redis.eval(&refresh, &keys, &args, true).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_counted_and_released() {
        let l = InFlight::new(2, None);
        let a = l.try_acquire(1).await.unwrap();
        let _b = l.try_acquire(1).await.unwrap();
        assert!(l.try_acquire(1).await.is_none());
        assert!(l.try_acquire(2).await.is_some());
        drop(a);
        assert!(l.try_acquire(1).await.is_some());
    }
}
