//! Users: creation with their balance row, lookup, roles and the disabled flag.

pub mod password;

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use serde_json::json;

use crate::audit;
use crate::clock::now_ms;
use crate::db::entities::{balances, credit_transactions, users};
use crate::db::{Db, is_unique_violation};
use crate::error::{Error, Result};

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

/// Lower-cases and checks an email address; the message says what is wrong.
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 255
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid { Ok(email) } else { Err(Error::BadRequest(format!("`{}` is not an email address", raw.trim()))) }
}

/// What a new user starts with.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub role: &'a str,
    pub password_hash: Option<String>,
    /// Money credited at creation (a ledger entry of kind `signup_credit`), micro-units.
    pub signup_credit: i64,
}

/// Creates the user and their balance (and the sign-up credit) in `conn`, which should be a
/// transaction. An email in use is a `Conflict`.
pub async fn create_user(conn: &impl ConnectionTrait, new: NewUser<'_>) -> Result<users::Model> {
    let email = normalize_email(new.email)?;
    if new.role != ROLE_USER && new.role != ROLE_ADMIN {
        return Err(Error::BadRequest(format!("unknown role `{}`", new.role)));
    }
    let now = now_ms();
    let user = users::ActiveModel {
        email: Set(email.clone()),
        name: Set(new.name.map(str::to_owned)),
        role: Set(new.role.to_owned()),
        disabled: Set(false),
        password_hash: Set(new.password_hash),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::Conflict(format!("a user with email {email} already exists"))
        } else {
            Error::Database(e)
        }
    })?;
    balances::ActiveModel { user_id: Set(user.id), amount: Set(new.signup_credit.max(0)), updated_at: Set(now) }
        .insert(conn)
        .await?;
    if new.signup_credit > 0 {
        credit_transactions::ActiveModel {
            user_id: Set(user.id),
            kind: Set("signup_credit".into()),
            amount: Set(new.signup_credit),
            tokens: Set(0),
            subscription_id: Set(None),
            reason: Set("sign-up credit".into()),
            actor_user_id: Set(None),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(conn)
        .await?;
    }
    Ok(user)
}

pub async fn find_by_email(conn: &impl ConnectionTrait, email: &str) -> Result<Option<users::Model>> {
    let email = normalize_email(email)?;
    Ok(users::Entity::find().filter(users::Column::Email.eq(email)).one(conn).await?)
}

/// The user with this email, or `NotFound` naming it.
pub async fn require_by_email(conn: &impl ConnectionTrait, email: &str) -> Result<users::Model> {
    find_by_email(conn, email).await?.ok_or_else(|| Error::NotFound(format!("no user with email {}", email.trim())))
}

/// Disables or re-enables a user, with an audit entry. Keys of a disabled user stop working.
pub async fn set_disabled(db: &Db, email: &str, disabled: bool, actor: Option<i64>) -> Result<users::Model> {
    let txn = db.begin().await?;
    let user = require_by_email(&txn, email).await?;
    users::Entity::update_many()
        .col_expr(users::Column::Disabled, Expr::value(disabled))
        .col_expr(users::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(users::Column::Id.eq(user.id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        audit::Entry {
            actor_user_id: actor,
            action: if disabled { "user.disable" } else { "user.enable" },
            target_type: "user",
            target_id: user.id.to_string(),
            before: Some(json!({ "disabled": user.disabled })),
            after: Some(json!({ "disabled": disabled })),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(users::Model { disabled, ..user })
}
