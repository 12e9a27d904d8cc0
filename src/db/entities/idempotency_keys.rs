//! The stored answer of an admin write sent with an `Idempotency-Key`: a retry gets it again
//! and changes nothing.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Keys are the admin's own: two admins may use the same one.
    pub actor_user_id: i64,
    pub idem_key: String,
    /// SHA-256 of what was asked (route, target, body): the same key for another request is
    /// refused.
    pub request_hash: String,
    pub status_code: i32,
    /// The JSON answered the first time.
    pub response: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
