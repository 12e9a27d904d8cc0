//! The circuit breaker of each channel: `CHANNEL_FAILURE_THRESHOLD` consecutive failures (a
//! connection error, a timeout, 429 or 5xx before the first byte) cool the channel down for
//! `CHANNEL_COOLDOWN_SECS`; then one request at a time is let through as a probe, and a
//! success closes the breaker. With Redis the count, the cool-down and the probe are shared by
//! every instance (`channel_fail:{id}`, `channel_cool:{id}`, `channel_probe:{id}`, all with a
//! TTL); when Redis fails, this instance's own state decides (never an error to the client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cache::RedisLayer;

/// How long the failure count of a channel that stopped failing is kept.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// How long one probe may hold the channel before another may try.
const PROBE_HOLD: Duration = Duration::from_secs(60);

/// Whether a channel may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Healthy.
    Closed,
    /// Cooling down: no calls.
    Open,
    /// The cool-down is over: one probe may go.
    HalfOpen,
}

#[derive(Default)]
struct Local {
    failures: u32,
    open_until: Option<Instant>,
    probe_until: Option<Instant>,
}

pub struct Health {
    threshold: u32,
    cooldown: Duration,
    local: Mutex<HashMap<i64, Local>>,
    redis: Option<Arc<RedisLayer>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("threshold", &self.threshold).field("cooldown", &self.cooldown).finish()
    }
}

fn keys(id: i64) -> [String; 3] {
    [format!("channel_fail:{id}"), format!("channel_cool:{id}"), format!("channel_probe:{id}")]
}

const STATES: &str = r"
local out = {}
local threshold = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    out[#out + 1] = 1
  elseif tonumber(redis.call('GET', KEYS[i]) or '0') >= threshold then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
";

const FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[3])
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return 1
end
return 0
";

const SUCCESS: &str = r"
redis.call('DEL', KEYS[1], KEYS[3])
return 1
";

const PROBE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
";

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl Health {
    pub fn new(threshold: u32, cooldown: Duration, redis: Option<Arc<RedisLayer>>) -> Self {
        Self { threshold: threshold.max(1), cooldown, local: Mutex::new(HashMap::new()), redis }
    }

    fn local_state(&self, id: i64) -> State {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        match local.get(&id) {
            Some(l) if l.open_until.is_some_and(|t| Instant::now() < t) => State::Open,
            Some(l) if l.failures >= self.threshold => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// The state of each channel in `ids`, in order.
    pub async fn states(&self, ids: &[i64]) -> Vec<State> {
        if let Some(redis) = &self.redis
            && !ids.is_empty()
        {
            let keys: Vec<String> = ids.iter().flat_map(|id| keys(*id).into_iter().take(2)).collect();
            let script = redis::Script::new(STATES);
            if let Some(found) = redis.eval::<Vec<i64>>(&script, &keys, &[self.threshold.to_string()], false).await
                && found.len() == ids.len()
            {
                return found
                    .into_iter()
                    .map(|s| match s {
                        1 => State::Open,
                        2 => State::HalfOpen,
                        _ => State::Closed,
                    })
                    .collect();
            }
        }
        ids.iter().map(|id| self.local_state(*id)).collect()
    }

    /// Claims the one probe of a channel whose cool-down is over; false when another request
    /// (here or on another instance) holds it.
    pub async fn try_probe(&self, id: i64) -> bool {
        if let Some(redis) = &self.redis {
            let script = redis::Script::new(PROBE);
            if let Some(got) = redis.eval::<i64>(&script, &keys(id), &[ms(PROBE_HOLD)], false).await {
                return got == 1;
            }
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let l = local.entry(id).or_default();
        let now = Instant::now();
        if l.open_until.is_some_and(|t| now < t) || l.probe_until.is_some_and(|t| now < t) {
            return false;
        }
        l.probe_until = Some(now + PROBE_HOLD);
        true
    }

    /// A failure before the first byte. True when it cooled the channel down.
    pub async fn failure(&self, id: i64) -> bool {
        let tripped_here = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            let l = local.entry(id).or_default();
            l.failures = l.failures.saturating_add(1);
            l.probe_until = None;
            if l.failures >= self.threshold {
                l.open_until = Some(Instant::now() + self.cooldown);
                true
            } else {
                false
            }
        };
        let tripped = match &self.redis {
            Some(redis) => {
                let script = redis::Script::new(FAILURE);
                let args = [self.threshold.to_string(), ms(self.cooldown), ms(FAILURE_MEMORY)];
                redis.eval::<i64>(&script, &keys(id), &args, false).await.map_or(tripped_here, |t| t == 1)
            }
            None => tripped_here,
        };
        if tripped {
            tracing::warn!(
                channel.id = id,
                cool_down_secs = self.cooldown.as_secs(),
                "channel cooling down after repeated failures"
            );
        }
        tripped
    }

    /// A response head arrived: the breaker closes.
    pub async fn success(&self, id: i64) {
        let had_failures = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.remove(&id).is_some_and(|l| l.failures > 0)
        };
        if let Some(redis) = &self.redis
            && (had_failures || self.threshold > 0)
        {
            let script = redis::Script::new(SUCCESS);
            let _ = redis.eval::<i64>(&script, &keys(id), &[], false).await;
        }
    }

    /// Ends a probe that had neither outcome (the request was refused as the client's fault).
    pub async fn release(&self, id: i64) {
        {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(l) = local.get_mut(&id) {
                l.probe_until = None;
            }
        }
        if let Some(redis) = &self.redis {
            redis.delete(&keys(id)[2]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trips_after_the_threshold_and_lets_one_probe_through() {
        let h = Health::new(2, Duration::from_millis(100), None);
        assert_eq!(h.states(&[1]).await, vec![State::Closed]);
        assert!(!h.failure(1).await);
        assert!(h.failure(1).await);
        assert_eq!(h.states(&[1, 2]).await, vec![State::Open, State::Closed]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(h.states(&[1]).await, vec![State::HalfOpen]);
        assert!(h.try_probe(1).await);
        assert!(!h.try_probe(1).await, "one probe at a time");
        h.success(1).await;
        assert_eq!(h.states(&[1]).await, vec![State::Closed]);
    }
}
