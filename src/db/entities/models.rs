//! A model customers may call, with its upstream name, prices and limits.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "models")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    pub upstream_model: String,
    /// Micro-units per 1M prompt tokens.
    pub input_price: i64,
    /// Micro-units per 1M completion tokens.
    pub output_price: i64,
    /// Micro-units per 1M prompt tokens read from the prompt cache; unset: the input price.
    pub cache_read_price: Option<i64>,
    /// Micro-units per 1M prompt tokens written to the prompt cache (5 minutes); unset: 1.25 ×
    /// the input price. A 1-hour write costs 1.6 × this.
    pub cache_write_price: Option<i64>,
    /// Micro-units per request, on top of the tokens.
    pub request_price: i64,
    pub max_output_tokens: i64,
    pub context_window: i64,
    pub enabled: bool,
    /// The request field that carries the output cap upstream: `max_completion_tokens`
    /// (OpenAI) or `max_tokens` (most other OpenAI-compatible servers).
    pub cap_field: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
