//! An `sk-` key: only its SHA-256 is stored, with a display prefix and the last 4 characters.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    #[sea_orm(unique)]
    pub key_hash: String,
    pub prefix: String,
    pub last4: String,
    pub disabled: bool,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// JSON list of the model names this key may use; `None`: every enabled model.
    pub allowed_models: Option<String>,
    /// The most this key may spend (micro-units) per `spend_limit_period`; `None`: no cap.
    pub spend_limit: Option<i64>,
    /// `total`, `day` or `month` (periods reset at 00:00 UTC).
    pub spend_limit_period: Option<String>,
    /// Unix ms after which the key is refused.
    pub expires_at: Option<i64>,
    /// JSON list of CIDRs the key may be used from; `None`: anywhere.
    pub allowed_ips: Option<String>,
    /// Requests per minute; `None`: the user's limit only.
    pub rpm: Option<i64>,
    /// Tokens per minute; `None`: the user's limit only.
    pub tpm: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
