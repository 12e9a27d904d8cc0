//! The upstream client: pooled connections, separate timeouts, no redirects, our credentials
//! only, and bounded retries before the first byte that honour the upstream's `Retry-After`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use url::Url;

use crate::config::{Config, Secret};
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

#[derive(Clone, Debug)]
pub struct Upstream {
    client: reqwest::Client,
    completions_url: Url,
    api_key: Option<Secret>,
    pub timeouts: Timeouts,
    max_retries: u32,
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
}

impl Upstream {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.upstream_connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut base = config.openai_base_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            client,
            completions_url: base.join("chat/completions")?,
            api_key: config.openai_api_key.clone(),
            timeouts: Timeouts {
                connect: config.upstream_connect_timeout,
                first_byte: config.upstream_first_byte_timeout,
                idle: config.upstream_idle_timeout,
                total: config.upstream_total_timeout,
            },
            max_retries: config.upstream_max_retries,
            max_retry_wait: config.upstream_max_retry_wait,
        })
    }

    fn headers(&self, stream: bool, beta: Option<&HeaderValue>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ACCEPT, HeaderValue::from_static(if stream { "text/event-stream" } else { "application/json" }));
        if let Some(key) = &self.api_key
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        if let Some(beta) = beta {
            h.insert("openai-beta", beta.clone());
        }
        h
    }

    /// Sends the request, retrying (with the same body and reservation) on connection errors,
    /// timeouts, 429 and 5xx, until a successful response head arrives or retries run out.
    /// A 429 or 5xx that asks for a pause (`Retry-After`, `retry-after-ms`) is retried only
    /// after that pause, and only when it is at most `UPSTREAM_MAX_RETRY_WAIT_MS` and ends
    /// before the deadline; otherwise it is returned at once, with its `Retry-After`, so the
    /// client waits instead of us hammering a rate limit.
    pub async fn send(
        &self,
        body: bytes::Bytes,
        stream: bool,
        beta: Option<&HeaderValue>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<reqwest::Response, UpstreamFailure> {
        let mut attempt = 0;
        loop {
            *attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = self.timeouts.first_byte.min(left);
            let req =
                self.client.post(self.completions_url.clone()).headers(self.headers(stream, beta)).body(body.clone());
            let mut asked_wait = None;
            let failure = match tokio::time::timeout(wait, req.send()).await {
                Err(_) if !stream => UpstreamFailure::Unanswered,
                Err(_) => UpstreamFailure::Timeout,
                Ok(Err(e)) if e.is_timeout() => UpstreamFailure::Timeout,
                Ok(Err(e)) => UpstreamFailure::Connect(e.without_url().to_string()),
                Ok(Ok(res)) if res.status().is_success() => {
                    observability::upstream_attempt("ok");
                    return Ok(res);
                }
                Ok(Ok(res)) => {
                    let status = res.status().as_u16();
                    asked_wait = retry_wait(res.headers(), SystemTime::now());
                    let retry_after = asked_wait.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                    let body = read_error_body(res).await;
                    UpstreamFailure::Status { status, retry_after, body }
                }
            };
            observability::upstream_attempt(match &failure {
                UpstreamFailure::Timeout | UpstreamFailure::Unanswered => "timeout",
                UpstreamFailure::Connect(_) => "unreachable",
                UpstreamFailure::Status { status: 429, .. } => "rate_limited",
                UpstreamFailure::Status { status, .. } if *status >= 500 => "server_error",
                UpstreamFailure::Status { .. } => "refused",
            });
            let retriable = match &failure {
                UpstreamFailure::Timeout | UpstreamFailure::Connect(_) => true,
                UpstreamFailure::Unanswered => false,
                UpstreamFailure::Status { status, .. } => *status == 429 || *status >= 500,
            };
            if !retriable || attempt >= self.max_retries || Instant::now() >= deadline {
                return Err(failure);
            }
            let mut backoff = Duration::from_millis(100 * 3u64.pow(attempt));
            if let Some(asked) = asked_wait {
                let left = deadline.saturating_duration_since(Instant::now());
                if asked > self.max_retry_wait || asked >= left {
                    tracing::info!(
                        retry_after_ms = asked.as_millis() as u64,
                        "the upstream asks for a longer pause than we wait; passing it on"
                    );
                    return Err(failure);
                }
                backoff = backoff.max(asked);
            }
            attempt += 1;
            tracing::info!(attempt, backoff_ms = backoff.as_millis() as u64, "retrying the upstream");
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
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
