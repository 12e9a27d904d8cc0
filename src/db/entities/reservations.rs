//! The pre-charge of one request: what was taken from which source, until it is settled.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reservations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model_id: Option<i64>,
    /// `pending`, then exactly once `settled` or `voided`.
    pub state: String,
    /// Money taken from the balance, micro-units.
    pub amount: i64,
    /// Subscription tokens taken, in total.
    pub tokens: i64,
    /// JSON `[[subscription_id, tokens], ...]`: where the tokens came from, for refunds.
    pub token_sources: String,
    /// Money actually charged at settlement.
    pub charged_amount: i64,
    /// Subscription tokens actually consumed at settlement.
    pub charged_tokens: i64,
    /// Money taken from the balance at settlement beyond `amount` (included in `charged_amount`).
    pub excess_amount: i64,
    /// Money the upstream's usage cost that could not be collected at all.
    pub shortfall: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub resolved_at: Option<i64>,
    /// The key-spend period (`key_spend.period`) `amount` was also counted in, when the key
    /// has a spend cap.
    pub key_period: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
