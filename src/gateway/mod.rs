//! The gateway core: key authentication, in-flight limits, the upstream client and exchange,
//! the SSE relay, token counting and settlement. The OpenAI edge (`http::openai`) calls it.

pub mod auth;
pub mod chat;
mod chunks;
pub mod exchange;
pub mod limits;
pub mod refusals;
pub mod relay;
pub mod settle;
pub mod sse;
pub mod tokens;
pub mod upstream;

use std::sync::Arc;

use self::limits::InFlight;
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
    pub refusals: Refusals,
    pub max_request_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// The most choices (`n`) one request may ask for.
    pub max_choices: u32,
}

impl Gateway {
    pub fn new(config: &Config, cache: &crate::cache::Cache) -> anyhow::Result<Self> {
        Ok(Self {
            upstream: Upstream::new(config)?,
            channels: crate::channels::Runtime::new(config, cache),
            inflight: InFlight::new(config.max_concurrent_per_user, cache.redis()),
            refusals: Refusals::default(),
            max_request_bytes: config.max_request_bytes,
            body_read_timeout: config.body_read_timeout,
            max_choices: config.max_choices,
        })
    }
}
