//! A person who can sign in: a customer or an operator (role `admin`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub email: String,
    pub name: Option<String>,
    pub role: String,
    pub disabled: bool,
    /// argon2id PHC string; only for users created with a password.
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Requests per minute; `None`: the instance default (`DEFAULT_USER_RPM`).
    pub rpm: Option<i64>,
    /// Tokens per minute; `None`: the instance default (`DEFAULT_USER_TPM`).
    pub tpm: Option<i64>,
    /// Concurrent requests; `None`: the instance default (`MAX_CONCURRENT_PER_USER`).
    pub max_concurrent: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
