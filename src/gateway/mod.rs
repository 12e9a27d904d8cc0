//! The gateway core: key authentication, in-flight limits, the upstream client and exchange,
//! the SSE relay, token counting and settlement. The OpenAI edge (`http::openai`) calls it.

pub mod auth;
pub mod chat;
mod chunks;
pub mod exchange;
pub mod json_edit;
pub mod limits;
pub mod protocol;
pub mod rates;
pub mod refusals;
pub mod relay;
pub mod responses;
pub mod settle;
pub mod sse;
pub mod tokens;
pub mod upstream;
pub mod usage_wire;

use std::sync::Arc;

use self::limits::InFlight;
use self::rates::RateLimits;
use self::refusals::Refusals;
use self::upstream::Upstream;
use crate::config::Config;

/// What the gateway holds across requests.
#[derive(Debug)]
pub struct Gateway {
    pub upstream: Upstream,
    /// The routing directory, channel health and the settings channel changes need.
    pub channels: crate::channels::Runtime,
    pub inflight: Arc<InFlight>,
    /// Requests and tokens per minute, per key and per user.
    pub rates: Arc<RateLimits>,
    /// `DEFAULT_USER_RPM` / `DEFAULT_USER_TPM`: a user's limits when theirs are unset.
    pub default_user_rpm: Option<i64>,
    pub default_user_tpm: Option<i64>,
    pub refusals: Refusals,
    pub max_request_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// The most choices (`n`) one request may ask for.
    pub max_choices: u32,
    /// The smallest output cap a client that named none is lowered to (`MIN_AFFORDABLE_OUTPUT_TOKENS`).
    pub min_affordable_output_tokens: i64,
}

impl Gateway {
    pub fn new(config: &Config, cache: &crate::cache::Cache) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: Upstream::new(config)?,
            channels: crate::channels::Runtime::new(config, cache),
            inflight: InFlight::new(config.max_concurrent_per_user, cache.redis()),
            rates: Arc::new(RateLimits::new(cache.redis())),
            default_user_rpm: config.default_user_rpm,
            default_user_tpm: config.default_user_tpm,
            refusals: Refusals::default(),
            max_request_bytes: config.max_request_bytes,
            body_read_timeout: config.body_read_timeout,
            max_choices: config.max_choices,
            min_affordable_output_tokens: config.min_affordable_output_tokens,
        })
    }
}
