//! A batch of redemption codes made at once: what each code is worth, until when, and why.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "redemption_batches")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `money` or `subscription`.
    pub kind: String,
    /// Money per code, micro-units (0 for subscription codes).
    pub amount: i64,
    /// Subscription tokens and days per code (0 for money codes).
    pub tokens: i64,
    pub days: i64,
    pub code_count: i64,
    /// Codes cannot be redeemed from this time on; `None` when they never expire.
    pub expires_at: Option<i64>,
    pub note: String,
    /// The admin who made it; `None` for the command line.
    pub created_by: Option<i64>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
