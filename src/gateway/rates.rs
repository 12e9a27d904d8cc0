//! Requests and tokens per minute, per key and per user: global across instances with Redis,
//! per instance without (and when Redis does not answer: the same fail-open policy as the
//! in-flight limit, never an error).
//!
//! Each limited scope (`key:{id}`, `user:{id}`) counts requests and tokens in one-minute
//! windows; the usage a request is judged against is a sliding estimate, the previous window's
//! count weighted by the part of it still within the last minute plus the current window's.
//! With Redis, one Lua script reads every scope of a request, decides, and counts the request in
//! all of them only when every limit admits it, so instances racing for the last request of a
//! minute cannot both win. A request's tokens are its reservation's worst case at admission,
//! corrected to what was charged at settlement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::header::{HeaderMap, HeaderValue};

use crate::cache::RedisLayer;
use crate::clock::now_ms;

/// The window counts are kept in.
const WINDOW_MS: i64 = 60_000;

/// KEYS: one hash per scope. ARGV[1] tokens of this request, ARGV[2] the window in ms, then a
/// requests limit and a tokens limit per key (0: none). Returns the index (1-based) of the
/// first scope that refused (0: admitted and counted everywhere), the window, the ms into it,
/// then per scope the estimated requests and tokens of the last minute before this request.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local win = tonumber(ARGV[2])
local w = math.floor(now / win)
local into = now - w * win
local keep = 1 - into / win
local refused = 0
local out = {0, w, into}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'r:' .. (w - 1), 'r:' .. w, 't:' .. (w - 1), 't:' .. w)
  local r = math.floor((tonumber(v[1]) or 0) * keep + (tonumber(v[2]) or 0))
  local tk = math.floor((tonumber(v[3]) or 0) * keep + (tonumber(v[4]) or 0))
  local rl = tonumber(ARGV[1 + 2 * i])
  local tl = tonumber(ARGV[2 + 2 * i])
  if refused == 0 and ((rl > 0 and r + 1 > rl) or (tl > 0 and tk + cost > tl)) then
    refused = i
  end
  out[#out + 1] = r
  out[#out + 1] = tk
end
if refused == 0 then
  for _, key in ipairs(KEYS) do
    redis.call('HINCRBY', key, 'r:' .. w, 1)
    redis.call('HINCRBY', key, 't:' .. w, cost)
    redis.call('HDEL', key, 'r:' .. (w - 2), 't:' .. (w - 2))
    redis.call('PEXPIRE', key, win * 2)
  end
end
out[1] = refused
return out
";

/// KEYS: the scopes' hashes; ARGV[1] the field (`t:{window}`), ARGV[2] the tokens to add
/// (negative: to give back). Only where the window is still counted.
const CORRECT: &str = r"
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, ARGV[1]) == 1 then
    redis.call('HINCRBY', key, ARGV[1], tonumber(ARGV[2]))
  end
end
return 1
";

/// One limited scope and its limits (`None`: not limited in that dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub scope: String,
    pub requests: Option<i64>,
    pub tokens: Option<i64>,
}

/// A request that was counted: what to correct at settlement, and the headers it answers with.
#[derive(Clone, Debug, Default)]
pub struct Admitted {
    scopes: Vec<String>,
    window: i64,
    tokens: i64,
    global: bool,
    pub headers: HeaderMap,
}

/// A refusal: the message and how long to wait.
#[derive(Clone, Debug)]
pub struct Refused {
    pub message: String,
    pub retry_after_secs: u64,
    /// The `x-ratelimit-*` headers, boxed: refusals are the rare path.
    pub headers: Box<HeaderMap>,
}

/// The counts of one scope, as the limits see them.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    requests: i64,
    tokens: i64,
}

pub struct RateLimits {
    local: Mutex<HashMap<String, HashMap<i64, Seen>>>,
    global: Option<(Arc<RedisLayer>, redis::Script, redis::Script)>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("global", &self.global.is_some()).finish()
    }
}

impl RateLimits {
    pub fn new(redis: Option<Arc<RedisLayer>>) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            global: redis.map(|r| (r, redis::Script::new(ADMIT), redis::Script::new(CORRECT))),
        }
    }

    /// Counts a request of at most `tokens` tokens against every limit in `limits`, or refuses
    /// it (then it is counted nowhere). No limits: admitted, no headers.
    pub async fn admit(&self, limits: &[Limit], tokens: i64) -> Result<Admitted, Refused> {
        let limits: Vec<&Limit> = limits.iter().filter(|l| l.requests.is_some() || l.tokens.is_some()).collect();
        if limits.is_empty() {
            return Ok(Admitted::default());
        }
        let tokens = tokens.max(0);
        if let Some((redis, admit, _)) = &self.global {
            let keys: Vec<String> = limits.iter().map(|l| format!("rl:{}", l.scope)).collect();
            let mut args = vec![tokens.to_string(), WINDOW_MS.to_string()];
            for l in &limits {
                args.push(l.requests.unwrap_or(0).to_string());
                args.push(l.tokens.unwrap_or(0).to_string());
            }
            let answer: Option<Vec<i64>> = redis.eval(admit, &keys, &args, false).await;
            if let Some(v) = answer.filter(|v| v.len() == 3 + 2 * limits.len()) {
                let seen: Vec<Seen> = v[3..].chunks(2).map(|c| Seen { requests: c[0], tokens: c[1] }).collect();
                let (refused, window, into) = (v[0], v[1], v[2]);
                if refused == 0 {
                    // Counted here too, so that an outage falls back on this instance's history.
                    self.record_local(&limits, window, tokens);
                }
                return decide(&limits, &seen, refused, window, into, tokens, true);
            }
            tracing::debug!("global rate limits unavailable; counting per instance");
        }
        let now = now_ms();
        let (window, into) = (now.div_euclid(WINDOW_MS), now.rem_euclid(WINDOW_MS));
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let seen: Vec<Seen> = limits.iter().map(|l| estimate(local.get(&l.scope), window, into)).collect();
        let refused = limits
            .iter()
            .zip(&seen)
            .position(|(l, s)| {
                l.requests.is_some_and(|r| s.requests + 1 > r) || l.tokens.is_some_and(|t| s.tokens + tokens > t)
            })
            .map_or(0, |i| i64::try_from(i + 1).unwrap_or(i64::MAX));
        if refused == 0 {
            count(&mut local, &limits, window, tokens);
        }
        drop(local);
        decide(&limits, &seen, refused, window, into, tokens, false)
    }

    fn record_local(&self, limits: &[&Limit], window: i64, tokens: i64) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        count(&mut local, limits, window, tokens);
    }

    /// Corrects the tokens counted for an admitted request to `actual` (what was charged).
    pub async fn settle(&self, admitted: &mut Admitted, actual: i64) {
        let delta = actual.max(0) - admitted.tokens;
        if admitted.scopes.is_empty() || delta == 0 {
            return;
        }
        admitted.tokens = actual.max(0);
        {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            for scope in &admitted.scopes {
                if let Some(seen) = local.get_mut(scope).and_then(|w| w.get_mut(&admitted.window)) {
                    seen.tokens = (seen.tokens + delta).max(0);
                }
            }
        }
        if admitted.global
            && let Some((redis, _, correct)) = &self.global
        {
            let keys: Vec<String> = admitted.scopes.iter().map(|s| format!("rl:{s}")).collect();
            let args = [format!("t:{}", admitted.window), delta.to_string()];
            let _: Option<i64> = redis.eval(correct, &keys, &args, false).await;
        }
    }
}

/// The sliding estimate of a scope's last minute from its window counts.
fn estimate(windows: Option<&HashMap<i64, Seen>>, window: i64, into: i64) -> Seen {
    let Some(w) = windows else { return Seen::default() };
    let (prev, cur) = (w.get(&(window - 1)).copied().unwrap_or_default(), w.get(&window).copied().unwrap_or_default());
    let keep =
        |n: i64| i64::try_from(i128::from(n) * i128::from(WINDOW_MS - into) / i128::from(WINDOW_MS)).unwrap_or(n);
    Seen { requests: keep(prev.requests) + cur.requests, tokens: keep(prev.tokens) + cur.tokens }
}

fn count(local: &mut HashMap<String, HashMap<i64, Seen>>, limits: &[&Limit], window: i64, tokens: i64) {
    for l in limits {
        let windows = local.entry(l.scope.clone()).or_default();
        windows.retain(|w, _| *w >= window - 1);
        let seen = windows.entry(window).or_default();
        seen.requests += 1;
        seen.tokens = seen.tokens.saturating_add(tokens);
    }
    // Scopes idle for two windows are forgotten.
    if local.len() > 10_000 {
        local.retain(|_, w| w.keys().any(|k| *k >= window - 1));
    }
}

/// OpenAI's duration format: `1s`, `6m0s`, `250ms`.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1000;
    if secs < 60 { format!("{secs}s") } else { format!("{}m{}s", secs / 60, secs % 60) }
}

/// The answer for a request judged against `limits`, whose last-minute usage before it was
/// `seen`: `refused` is the 1-based index of the scope that refused it (0: admitted).
fn decide(
    limits: &[&Limit],
    seen: &[Seen],
    refused: i64,
    window: i64,
    into: i64,
    tokens: i64,
    global: bool,
) -> Result<Admitted, Refused> {
    let admitted = refused == 0;
    let after = |s: &Seen| if admitted { Seen { requests: s.requests + 1, tokens: s.tokens + tokens } } else { *s };
    // The headers speak of the tightest limit of each kind: the one with the least room left.
    let mut headers = HeaderMap::new();
    let until_window_ends = WINDOW_MS - into;
    let tight = |pick: fn(&Limit) -> Option<i64>, used: fn(&Seen) -> i64| {
        limits
            .iter()
            .zip(seen)
            .filter_map(|(l, s)| pick(l).map(|limit| (limit, (limit - used(&after(s))).max(0))))
            .min_by_key(|(_, left)| *left)
    };
    for (kind, found) in
        [("requests", tight(|l| l.requests, |s| s.requests)), ("tokens", tight(|l| l.tokens, |s| s.tokens))]
    {
        if let Some((limit, left)) = found {
            let reset = if left >= limit { 0 } else { until_window_ends };
            for (name, value) in [
                (format!("x-ratelimit-limit-{kind}"), limit.to_string()),
                (format!("x-ratelimit-remaining-{kind}"), left.to_string()),
                (format!("x-ratelimit-reset-{kind}"), duration(reset)),
            ] {
                if let (Ok(n), Ok(v)) = (reqwest::header::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
                    headers.insert(n, v);
                }
            }
        }
    }
    if admitted {
        let scopes = limits.iter().map(|l| l.scope.clone()).collect();
        return Ok(Admitted { scopes, window, tokens, global, headers });
    }
    let index = usize::try_from(refused - 1).unwrap_or(0).min(limits.len() - 1);
    let (limit, s) = (limits[index], seen[index]);
    let who = if limit.scope.starts_with("key:") { "this API key" } else { "this account" };
    let message = match (limit.requests, limit.tokens) {
        (Some(r), _) if s.requests + 1 > r => format!("rate limit reached for {who}: {r} requests per minute"),
        (_, Some(t)) if tokens > t => format!(
            "this request may use up to {tokens} tokens, more than the {t} tokens per minute allowed for {who}; ask for fewer output tokens"
        ),
        (_, Some(t)) => format!("rate limit reached for {who}: {t} tokens per minute"),
        _ => format!("rate limit reached for {who}"),
    };
    let retry_after_secs = u64::try_from((until_window_ends + 999) / 1000).unwrap_or(1).max(1);
    Err(Refused { message, retry_after_secs, headers: Box::new(headers) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(scope: &str, requests: Option<i64>, tokens: Option<i64>) -> Limit {
        Limit { scope: scope.into(), requests, tokens }
    }

    #[tokio::test]
    async fn every_limit_of_a_request_must_admit_it() {
        let rl = RateLimits::new(None);
        let limits = [limit("key:1", Some(3), None), limit("user:1", None, Some(1000))];
        let mut first = rl.admit(&limits, 100).await.unwrap();
        assert_eq!(first.headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(first.headers["x-ratelimit-remaining-requests"], "2");
        assert_eq!(first.headers["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(first.headers["x-ratelimit-remaining-tokens"], "900");
        // Settled for less: the tokens come back.
        rl.settle(&mut first, 40).await;
        let second = rl.admit(&limits, 100).await.unwrap();
        assert_eq!(second.headers["x-ratelimit-remaining-tokens"], "860");
        // Too many tokens for the user: refused, and counted nowhere.
        let refused = rl.admit(&limits, 900).await.unwrap_err();
        assert!(refused.message.contains("tokens per minute"), "{}", refused.message);
        assert!(refused.retry_after_secs >= 1);
        rl.admit(&limits, 1).await.unwrap();
        let third = rl.admit(&limits, 1).await.unwrap_err();
        assert!(third.message.contains("3 requests per minute"), "{}", third.message);
        // Another key of the same user is not held by the first key's limit.
        assert!(rl.admit(&[limit("key:2", Some(3), None)], 1).await.is_ok());
        assert!(rl.admit(&[], 1_000_000).await.unwrap().headers.is_empty());
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(duration(250), "250ms");
        assert_eq!(duration(1000), "1s");
        assert_eq!(duration(59_001), "1m0s");
        assert_eq!(duration(61_000), "1m1s");
    }
}
