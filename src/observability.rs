//! Prometheus metrics (one process-wide recorder, rendered at `/metrics`) and the one
//! structured log line every API request leaves. The rules are in docs/LOGGING.md.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// The model label of a request whose model is not in the catalogue (never the name sent).
pub const UNKNOWN_MODEL: &str = "unknown";

/// Buckets for latency and time to first byte, in seconds: streamed answers can take minutes.
const LATENCY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets for database write batch sizes (the writer batches at most a few hundred jobs).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets for database write batch latency, in seconds.
const DB_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The recorder's handle, installing the recorder on the first call. The recorder is
/// process-global, so every application built in this process (tests build many) shares one.
/// `None` when another recorder was installed first: `/metrics` then answers 503.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("tollgate_db_write_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("tollgate_db_write_batch_duration_seconds".into()),
                        DB_BUCKETS,
                    )
                });
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => Some(handle),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "metrics recorder not installed; /metrics is unavailable");
                    None
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics buckets rejected; /metrics is unavailable");
                    None
                }
            }
        })
        .as_ref()
}

/// Keeps histogram memory bounded between scrapes; runs until shutdown.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let Some(handle) = handle() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// `GET /metrics`: the Prometheus text format; a bearer token when `METRICS_TOKEN` is set.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes())) {
            let mut res = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    let Some(handle) = handle() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics are unavailable\n").into_response();
    };
    let mut res = handle.render().into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

/// One finished API request: what its log line and its metrics say. Never a key, prompt,
/// email or cookie: only identifiers, fixed labels and numbers.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub request_id: String,
    /// A fixed route name (`chat_completions`, `models`).
    pub route: &'static str,
    /// A catalogue model name, or `unknown`; empty when the request named none.
    pub model: String,
    pub key_id: Option<i64>,
    pub user_id: Option<i64>,
    pub status: u16,
    /// The fixed error label (`Error::label`), for anything but a success.
    pub error: Option<&'static str>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// Money charged, in micros of the currency.
    pub cost: Option<i64>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// The name of the channel that served (or was tried last), when the request went upstream.
    pub channel: Option<String>,
    /// Upstream attempts made (0 when it never went upstream).
    pub attempts: u32,
    pub stream: bool,
}

impl RequestRecord {
    /// A request refused or answered without going upstream.
    pub fn local(request_id: &str, route: &'static str, latency: Duration, status: u16) -> Self {
        Self {
            request_id: request_id.to_owned(),
            route,
            model: String::new(),
            key_id: None,
            user_id: None,
            status,
            error: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost: None,
            latency,
            ttfb: None,
            channel: None,
            attempts: 0,
            stream: false,
        }
    }

    /// Writes the log line and counts the request.
    pub fn emit(&self) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            request.id = %self.request_id,
            route = self.route,
            model = %self.model,
            key.id = self.key_id,
            user.id = self.user_id,
            status = self.status,
            error = self.error,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            cost = self.cost,
            latency_ms = ms(self.latency),
            ttfb_ms = self.ttfb.map(ms),
            channel = self.channel.as_deref(),
            attempts = self.attempts,
            stream = self.stream,
            "request"
        );
        let model = if self.model.is_empty() { "none".to_owned() } else { self.model.clone() };
        metrics::counter!(
            "tollgate_requests_total",
            "route" => self.route,
            "model" => model.clone(),
            "status" => self.status.to_string(),
            "error" => self.error.unwrap_or("none"),
        )
        .increment(1);
        metrics::histogram!("tollgate_request_duration_seconds", "route" => self.route, "model" => model.clone())
            .record(self.latency.as_secs_f64());
        if let Some(ttfb) = self.ttfb {
            metrics::histogram!("tollgate_request_ttfb_seconds", "route" => self.route, "model" => model.clone())
                .record(ttfb.as_secs_f64());
        }
        if let Some(n) = self.prompt_tokens.filter(|n| *n > 0) {
            metrics::counter!("tollgate_tokens_total", "model" => model.clone(), "kind" => "prompt")
                .increment(n.unsigned_abs());
        }
        if let Some(n) = self.completion_tokens.filter(|n| *n > 0) {
            metrics::counter!("tollgate_tokens_total", "model" => model.clone(), "kind" => "completion")
                .increment(n.unsigned_abs());
        }
        if let Some(cost) = self.cost.filter(|c| *c > 0) {
            metrics::counter!("tollgate_charged_micros_total", "model" => model).increment(cost.unsigned_abs());
        }
    }
}

/// Counts one upstream attempt of `channel` and how it went.
pub fn upstream_attempt(channel: &str, outcome: &'static str) {
    metrics::counter!("tollgate_upstream_attempts_total", "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts a request refused by a rate or concurrency limit.
pub fn rate_limited(limit: &'static str) {
    metrics::counter!("tollgate_rate_limit_refusals_total", "limit" => limit).increment(1);
}

/// Counts a cache lookup.
pub fn cache_lookup(hit: bool) {
    if hit {
        metrics::counter!("tollgate_cache_hits_total").increment(1);
    } else {
        metrics::counter!("tollgate_cache_misses_total").increment(1);
    }
}

/// Records one database write batch: its size and how long it took.
pub fn db_write_batch(jobs: usize, took: Duration) {
    metrics::histogram!("tollgate_db_write_batch_size").record(jobs as f64);
    metrics::histogram!("tollgate_db_write_batch_duration_seconds").record(took.as_secs_f64());
}

/// A reservation this instance opened and has not resolved yet.
pub fn reservation_opened() {
    metrics::gauge!("tollgate_reservations_pending").increment(1.0);
}

/// A reservation this instance opened was resolved (`settled`, `voided`, `already_resolved`,
/// or `left_to_sweeper` when the database stayed unreachable).
pub fn reservation_resolved(outcome: &'static str) {
    metrics::gauge!("tollgate_reservations_pending").decrement(1.0);
    metrics::counter!("tollgate_reservations_resolved_total", "outcome" => outcome).increment(1);
}

/// A stale reservation the sweeper charged in full.
pub fn sweeper_charge() {
    metrics::counter!("tollgate_sweeper_charges_total").increment(1);
}
