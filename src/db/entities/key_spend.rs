//! What a key with a spend cap spent in one period (`total`, `d:YYYY-MM-DD` or `m:YYYY-MM`),
//! reserved amounts included: the cap is checked against this row in the reservation.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_spend")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub period: String,
    /// Micro-units: settled charges plus pending reservations.
    pub spent: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
