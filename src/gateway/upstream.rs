//! The upstream client: pooled connections, separate timeouts, no redirects, the channel's
//! credentials only, the SSRF guard at connect time, and failover before the first byte.
//!
//! One request tries its candidate channels in order (see `channels::directory`): a failure
//! before the first byte — connection error, timeout, 429, 5xx, or a key the upstream refuses
//! (401/403, which disables that key) — moves on to the next candidate at once. When the
//! candidates run out and attempts remain, those that failed retriably are tried again after
//! a backoff (100 ms × 3ⁿ, or the upstream's `Retry-After` when it asks for a pause that is at
//! most `UPSTREAM_MAX_RETRY_WAIT_MS`; a longer one is passed on to the client), at most
//! `UPSTREAM_MAX_RETRIES` times. `UPSTREAM_MAX_ATTEMPTS` bounds all attempts of one request
//! together (by default 3, or `UPSTREAM_MAX_RETRIES + 1` if that is more, so a single channel
//! behaves as before channels existed). A non-streamed request that was sent and timed out is
//! never retried: the upstream may have done, and billed, the work.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};

use crate::cache::Cache;
use crate::channels::directory::{Directory, Route, RouteKey};
use crate::channels::health::Health;
use crate::channels::ssrf;
use crate::config::Config;
use crate::db::Db;
use crate::gateway::protocol::Forward;
use crate::observability;

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response head arrives.
    pub first_byte: Duration,
    /// Between two chunks of a streamed body.
    pub idle: Duration,
    /// The whole exchange.
    pub total: Duration,
}

impl Timeouts {
    /// These timeouts with a channel's own where it sets them.
    pub fn for_route(&self, route: &Route) -> Self {
        let pick = |own: Option<i64>, default: Duration| {
            own.and_then(|ms| u64::try_from(ms).ok()).map_or(default, Duration::from_millis)
        };
        Self {
            connect: pick(route.timeouts.connect_ms, self.connect),
            first_byte: pick(route.timeouts.first_byte_ms, self.first_byte),
            idle: pick(route.timeouts.idle_ms, self.idle),
            total: pick(route.timeouts.total_ms, self.total),
        }
    }
}

#[derive(Debug)]
pub struct Upstream {
    /// One pooled client per connect timeout in use (a channel may set its own).
    clients: Mutex<HashMap<Duration, reqwest::Client>>,
    allow_private: bool,
    pub timeouts: Timeouts,
    max_retries: u32,
    max_attempts: u32,
    /// The longest `Retry-After` waited out before a retry; a longer one ends the retries.
    max_retry_wait: Duration,
}

/// Why the upstream gave no usable response.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// No response head in time (or the connection could not be made in time).
    Timeout,
    /// A non-streamed request was sent and no answer came in time: the upstream answers only
    /// once it has generated, so it may have done (and billed) the work. Never retried.
    Unanswered,
    /// The connection failed.
    Connect(String),
    /// A response with a non-success status; `retry_after` in whole seconds, rounded up.
    Status { status: u16, retry_after: Option<u64>, body: String },
    /// No channel could be tried (every key refused, or every probe taken).
    NoChannel,
}

/// One channel a request may go to, with the body for it (its upstream model name).
pub struct Candidate {
    pub route: Arc<Route>,
    pub body: Bytes,
    /// The path under the channel's base URL (the upstream protocol's endpoint).
    pub path: &'static str,
    /// The channel's cool-down is over: it may be tried only as the one probe.
    pub probe: bool,
}

/// What failover needs besides the candidates.
pub struct Env<'a> {
    pub db: &'a Db,
    pub cache: &'a Cache,
    pub directory: &'a Directory,
    pub health: &'a Health,
}

/// A response head from a channel, and the timeouts that apply to its body.
pub struct Sent {
    pub response: reqwest::Response,
    pub idle: Duration,
    pub deadline: Instant,
}

impl Upstream {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let upstream = Self {
            clients: Mutex::new(HashMap::new()),
            allow_private: config.allow_private_upstreams,
            timeouts: Timeouts {
                connect: config.upstream_connect_timeout,
                first_byte: config.upstream_first_byte_timeout,
                idle: config.upstream_idle_timeout,
                total: config.upstream_total_timeout,
            },
            max_retries: config.upstream_max_retries,
            max_attempts: config.upstream_max_attempts,
            max_retry_wait: config.upstream_max_retry_wait,
        };
        upstream.client(config.upstream_connect_timeout)?;
        Ok(upstream)
    }

    fn client(&self, connect: Duration) -> anyhow::Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&connect) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
        if !self.allow_private {
            builder = builder.dns_resolver(ssrf::GuardedResolver);
        }
        let client = builder.build()?;
        clients.insert(connect, client.clone());
        Ok(client)
    }

    /// The channel's headers, then ours: the channel's key (`Authorization: Bearer`, or
    /// Anthropic's `x-api-key` with `anthropic-version`), and the client's beta headers.
    fn headers(route: &Route, key: Option<&RouteKey>, stream: bool, forward: &Forward) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in &route.headers {
            h.insert(name.clone(), value.clone());
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ACCEPT, HeaderValue::from_static(if stream { "text/event-stream" } else { "application/json" }));
        if route.provider == crate::channels::ANTHROPIC {
            if let Some(key) = key
                && let Ok(mut v) = HeaderValue::from_str(key.secret.expose())
            {
                v.set_sensitive(true);
                h.insert("x-api-key", v);
            }
            let version = forward.anthropic_version.clone().unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
            h.insert("anthropic-version", version);
            if let Some(beta) = &forward.anthropic_beta {
                h.insert("anthropic-beta", beta.clone());
            }
            return h;
        }
        if let Some(key) = key
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.secret.expose()))
        {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        if let Some(beta) = &forward.openai_beta {
            h.insert("openai-beta", beta.clone());
        }
        h
    }

    /// One request to `route` with `key`, waiting at most `wait` for the response head.
    #[expect(clippy::too_many_arguments, reason = "one attempt's context")]
    async fn attempt(
        &self,
        route: &Route,
        key: Option<&RouteKey>,
        body: Bytes,
        path: &str,
        stream: bool,
        forward: &Forward,
        timeouts: &Timeouts,
        wait: Duration,
    ) -> (Result<reqwest::Response, UpstreamFailure>, Option<Duration>) {
        let url = endpoint(route, path);
        if let Err(why) = ssrf::check_literal(&url, self.allow_private) {
            return (Err(UpstreamFailure::Connect(why)), None);
        }
        let client = match self.client(timeouts.connect) {
            Ok(c) => c,
            Err(e) => return (Err(UpstreamFailure::Connect(e.to_string())), None),
        };
        let req = client.post(url).headers(Self::headers(route, key, stream, forward)).body(body);
        match tokio::time::timeout(wait, req.send()).await {
            Err(_) if !stream => (Err(UpstreamFailure::Unanswered), None),
            Err(_) => (Err(UpstreamFailure::Timeout), None),
            Ok(Err(e)) if e.is_timeout() => (Err(UpstreamFailure::Timeout), None),
            Ok(Err(e)) => (Err(UpstreamFailure::Connect(error_chain(&e.without_url()))), None),
            Ok(Ok(res)) if res.status().is_success() => (Ok(res), None),
            Ok(Ok(res)) => {
                let status = res.status().as_u16();
                let asked_wait = retry_wait(res.headers(), SystemTime::now());
                let retry_after = asked_wait.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                let body = read_error_body(res).await;
                (Err(UpstreamFailure::Status { status, retry_after, body }), asked_wait)
            }
        }
    }

    /// Sends the request to the candidates in order until one answers with a success head
    /// (see the module doc for failover, retries and their bounds). `last` is set to the
    /// channel of the latest attempt.
    #[expect(clippy::too_many_arguments, reason = "one request's routing context")]
    pub async fn send(
        &self,
        env: &Env<'_>,
        candidates: &[Candidate],
        stream: bool,
        forward: &Forward,
        deadline: Instant,
        attempts: &mut u32,
        last: &mut Option<Arc<Route>>,
    ) -> Result<Sent, UpstreamFailure> {
        let mut queue: VecDeque<usize> = (0..candidates.len()).collect();
        let mut again: Vec<usize> = Vec::new();
        let mut dead_keys: Vec<i64> = Vec::new();
        let mut retries = 0u32;
        let mut failure: Option<UpstreamFailure> = None;
        let mut asked_wait: Option<Duration> = None;
        loop {
            if *attempts >= self.max_attempts || Instant::now() >= deadline {
                return Err(failure.unwrap_or(UpstreamFailure::NoChannel));
            }
            let Some(index) = queue.pop_front() else {
                // Every candidate was tried: retry those that may recover, after a backoff.
                let Some(previous) = failure.take() else { return Err(UpstreamFailure::NoChannel) };
                if again.is_empty() || retries >= self.max_retries {
                    return Err(previous);
                }
                let mut backoff = Duration::from_millis(100 * 3u64.pow(retries));
                if let Some(asked) = asked_wait {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if asked > self.max_retry_wait || asked >= left {
                        tracing::info!(
                            retry_after_ms = asked.as_millis() as u64,
                            "the upstream asks for a longer pause than we wait; passing it on"
                        );
                        return Err(previous);
                    }
                    backoff = backoff.max(asked);
                }
                retries += 1;
                tracing::info!(attempt = retries, backoff_ms = backoff.as_millis() as u64, "retrying the upstream");
                tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
                failure = Some(previous);
                queue.extend(again.drain(..));
                continue;
            };
            let candidate = &candidates[index];
            let route = &candidate.route;
            if candidate.probe && !env.health.try_probe(route.id).await {
                continue;
            }
            let Some(key) = env.directory.next_key(route, &dead_keys) else { continue };
            *attempts += 1;
            *last = Some(Arc::clone(route));
            let timeouts = self.timeouts.for_route(route);
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = timeouts.first_byte.min(left);
            let started = Instant::now();
            let (result, asked) = self
                .attempt(route, key.as_ref(), candidate.body.clone(), candidate.path, stream, forward, &timeouts, wait)
                .await;
            let failed = match result {
                Ok(response) => {
                    observability::upstream_attempt(&route.name, "ok");
                    env.health.success(route.id).await;
                    return Ok(Sent {
                        response,
                        idle: timeouts.idle,
                        deadline: deadline.min(started + timeouts.total),
                    });
                }
                Err(f) => f,
            };
            observability::upstream_attempt(
                &route.name,
                match &failed {
                    UpstreamFailure::Timeout | UpstreamFailure::Unanswered => "timeout",
                    UpstreamFailure::Connect(_) | UpstreamFailure::NoChannel => "unreachable",
                    UpstreamFailure::Status { status: 429, .. } => "rate_limited",
                    UpstreamFailure::Status { status: 401 | 403, .. } => "auth_refused",
                    UpstreamFailure::Status { status, .. } if *status >= 500 => "server_error",
                    UpstreamFailure::Status { .. } => "refused",
                },
            );
            match &failed {
                UpstreamFailure::Unanswered => {
                    env.health.failure(route.id).await;
                    return Err(failed);
                }
                UpstreamFailure::Status { status: status @ (401 | 403), .. } => {
                    if candidate.probe {
                        env.health.release(route.id).await;
                    }
                    let key_id = key.as_ref().map(|k| k.id);
                    if let Some(id) = key_id {
                        dead_keys.push(id);
                    }
                    if let Err(e) = crate::channels::disable_key(env.db, env.cache, route.id, key_id, *status).await {
                        tracing::error!(channel.id = route.id, error = %e, "cannot record a refused channel key");
                    }
                    // Another key of the same channel may still serve.
                    if key_id.is_some() && route.keys.iter().any(|k| !dead_keys.contains(&k.id)) {
                        queue.push_back(index);
                    }
                }
                UpstreamFailure::Status { status, .. } if *status != 429 && *status < 500 => {
                    // The request itself was refused: another channel would refuse it too.
                    if candidate.probe {
                        env.health.release(route.id).await;
                    }
                    return Err(failed);
                }
                UpstreamFailure::Connect(detail) => {
                    tracing::warn!(channel.name = %route.name, error = %detail, "channel unreachable");
                    env.health.failure(route.id).await;
                    again.push(index);
                }
                _ => {
                    env.health.failure(route.id).await;
                    again.push(index);
                }
            }
            asked_wait = asked;
            failure = Some(failed);
        }
    }

    /// One 1-token request to `route` with its first key (a channel test). The status, or
    /// why no answer came.
    pub async fn probe(&self, route: &Route, body: Bytes, path: &str) -> Result<u16, String> {
        let timeouts = self.timeouts.for_route(route);
        let wait = timeouts.first_byte.min(Duration::from_secs(60));
        let forward = Forward::default();
        match self.attempt(route, route.keys.first(), body, path, false, &forward, &timeouts, wait).await.0 {
            Ok(res) => Ok(res.status().as_u16()),
            Err(UpstreamFailure::Status { status, .. }) => Ok(status),
            Err(UpstreamFailure::Timeout | UpstreamFailure::Unanswered) => {
                Err("the upstream did not answer in time".into())
            }
            Err(UpstreamFailure::Connect(why)) => Err(redact(&why)),
            Err(UpstreamFailure::NoChannel) => Err("no usable key".into()),
        }
    }
}

impl Upstream {
    /// One `POST` of `body` to `path` under `route`, with one of its keys and the client's
    /// headers; no failover, no retries (a request nothing is billed for, such as counting tokens).
    pub async fn post_once(
        &self,
        route: &Route,
        key: Option<&RouteKey>,
        body: Bytes,
        path: &str,
        forward: &Forward,
    ) -> Result<reqwest::Response, UpstreamFailure> {
        let timeouts = self.timeouts.for_route(route);
        let wait = timeouts.first_byte;
        self.attempt(route, key, body, path, false, forward, &timeouts, wait).await.0
    }

    /// A request without a body (`GET`, `DELETE`) to `path` under `route`, with one of its keys:
    /// reading or deleting what the channel holds (a stored response). No retries.
    pub async fn fetch(
        &self,
        route: &Route,
        key: Option<&RouteKey>,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::Response, UpstreamFailure> {
        let url = endpoint(route, path);
        ssrf::check_literal(&url, self.allow_private).map_err(UpstreamFailure::Connect)?;
        let timeouts = self.timeouts.for_route(route);
        let client = self.client(timeouts.connect).map_err(|e| UpstreamFailure::Connect(e.to_string()))?;
        let req = client.request(method, url).headers(Self::headers(route, key, false, &Forward::default()));
        match tokio::time::timeout(timeouts.first_byte, req.send()).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(Err(e)) if e.is_timeout() => Err(UpstreamFailure::Timeout),
            Ok(Err(e)) => Err(UpstreamFailure::Connect(error_chain(&e.without_url()))),
            Ok(Ok(res)) => Ok(res),
        }
    }
}

/// The `anthropic-version` sent when the client named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The URL of `path` on `route`: `{base_url}/{path}`; an Anthropic base URL may leave out the
/// `/v1` its API lives under (`https://api.anthropic.com`).
pub fn endpoint(route: &Route, path: &str) -> reqwest::Url {
    if route.provider == crate::channels::ANTHROPIC && !route.base_url.path().trim_end_matches('/').ends_with("/v1") {
        return route.url(&format!("v1/{path}"));
    }
    route.url(path)
}

/// An error and its causes, one line (the SSRF refusal is a cause of the connect error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The pause an error response asks for: `retry-after-ms` (OpenAI's, in milliseconds) when
/// present, else `Retry-After` as delta-seconds or an HTTP-date (a past date means now).
fn retry_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|ms| ms.is_finite()) {
        return Some(Duration::from_secs_f64(ms.clamp(0.0, 86_400_000.0) / 1000.0));
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = UNIX_EPOCH + Duration::from_secs(parse_http_date(value)?);
    Some(at.duration_since(now).unwrap_or_default())
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the
/// form HTTP senders must use.
fn parse_http_date(value: &str) -> Option<u64> {
    let mut parts = value.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), in a year starting in March.
    let (y, mp) = if month > 2 { (year, month - 3) } else { (year - 1, month + 9) };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// The first 8 KiB of an error body, for our logs and a redacted message.
async fn read_error_body(mut res: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(5), res.chunk()).await {
        buf.extend_from_slice(&chunk);
        if buf.len() >= 8192 {
            buf.truncate(8192);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Removes what identifies our upstream account from a message: organisation and project ids and
/// anything shaped like a key.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        // A prefix counts only at the start of a word: `task-` holds no key.
        let at_word_start = |i: usize| i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let hit = ["org-", "proj_", "sk-"]
            .iter()
            .filter_map(|p| rest.match_indices(p).map(|(i, _)| i).find(|i| at_word_start(*i)).map(|i| (i, *p)))
            .min_by_key(|(i, _)| *i);
        let Some((i, prefix)) = hit else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..i]);
        let after = &rest[i + prefix.len()..];
        let len = after.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_').count();
        out.push_str(prefix);
        if len > 0 {
            out.push_str("***");
        }
        rest = &after[len..];
    }
    out
}

/// The `message` of an OpenAI-shaped error body, redacted; a generic text otherwise.
pub fn error_message(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.get("message")).and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "the upstream refused the request".to_owned());
    redact(&msg.chars().take(1000).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_account_identifiers() {
        assert_eq!(
            redact("Rate limit reached for gpt-4 in organization org-AbC123 on tokens; key sk-proj-abcdef012345"),
            "Rate limit reached for gpt-4 in organization org-*** on tokens; key sk-***"
        );
        assert_eq!(redact("project proj_XYZ and task-sk-"), "project proj_*** and task-sk-");
        assert_eq!(error_message(r#"{"error":{"message":"bad org-1"}}"#), "bad org-***");
        assert_eq!(error_message("<html>"), "the upstream refused the request");
    }

    #[test]
    fn reads_every_form_of_retry_after() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let wait = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            retry_wait(&h, now)
        };
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"), Some(1_835_481_599));
        assert_eq!(wait(&[]), None);
        assert_eq!(wait(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]), Some(Duration::from_secs(10)));
        assert_eq!(wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]), Some(Duration::ZERO), "a past date");
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[("retry-after", "7"), ("retry-after-ms", "1500")]), Some(Duration::from_millis(1500)));
    }
}
