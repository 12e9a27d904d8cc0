//! The ledger: every top-up, grant, adjustment and expiry, so balances reconcile.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_transactions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    /// `topup`, `adjustment`, `signup_credit`, `grant`, `expire`, ...
    pub kind: String,
    /// Money delta in micro-units (signed).
    pub amount: i64,
    /// Subscription token delta (signed).
    pub tokens: i64,
    pub subscription_id: Option<i64>,
    pub reason: String,
    pub actor_user_id: Option<i64>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
