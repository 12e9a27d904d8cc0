//! One row per authenticated API call, failures included.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Money charged, micro-units.
    pub cost: i64,
    /// Subscription tokens consumed.
    pub subscription_tokens: i64,
    pub status_code: i32,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub stream: bool,
    /// `upstream` or `estimated`.
    pub usage_source: String,
    pub created_at: i64,
    /// `YYYY-MM-DD` in UTC, precomputed because date functions differ between engines.
    pub day: String,
    /// Money the usage cost that could not be collected (non-zero only on a shortfall).
    pub shortfall: i64,
    /// Calls this row stands for: 1, or more for repeated refusals of one key in one minute.
    pub request_count: i64,
    /// The channel that served the call (none when it never went upstream).
    pub channel_id: Option<i64>,
    /// Upstream attempts made, failover and retries included.
    pub attempts: i32,
    /// Of `prompt_tokens`, those read from the prompt cache.
    pub cache_read_tokens: i64,
    /// Of `prompt_tokens`, those written to the prompt cache (5-minute and 1-hour writes).
    pub cache_write_tokens: i64,
    /// Of `completion_tokens`, the reasoning tokens.
    pub reasoning_tokens: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
