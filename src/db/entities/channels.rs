//! A channel: one upstream account (provider type, base URL, models, priority, weight).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    /// `openai` or `anthropic`.
    pub provider: String,
    pub base_url: String,
    /// JSON: a list of `{"public": name, "upstream": name?}`; `*` stands for every model.
    pub models: String,
    pub priority: i32,
    pub weight: i32,
    pub enabled: bool,
    /// Extra request headers, encrypted (they may carry credentials); none when there are none.
    pub headers: Option<String>,
    /// The extra headers' names, comma-separated, for display.
    pub header_names: String,
    pub connect_timeout_ms: Option<i64>,
    pub first_byte_timeout_ms: Option<i64>,
    pub idle_timeout_ms: Option<i64>,
    pub total_timeout_ms: Option<i64>,
    /// What the operator pays upstream, micro-units per 1M input / output tokens.
    pub input_cost: Option<i64>,
    pub output_cost: Option<i64>,
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
