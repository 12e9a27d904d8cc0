//! One redemption code, stored as the SHA-256 of its plaintext, redeemed at most once.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "redemption_codes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub batch_id: i64,
    /// Lower-case hex SHA-256 of the code in its canonical form (`TG-XXXX-XXXX-XXXX-XXXX`).
    pub code_hash: String,
    /// The first group of the code (`TG-XXXX`), to tell codes apart in lists.
    pub prefix: String,
    /// `money` or `subscription`.
    pub kind: String,
    pub amount: i64,
    pub tokens: i64,
    pub days: i64,
    pub expires_at: Option<i64>,
    pub created_by: Option<i64>,
    pub created_at: i64,
    pub redeemed_by: Option<i64>,
    pub redeemed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
