//! Users: creation with their balance row, lookup, roles and the disabled flag. Disabling a
//! user is one operation: the flag, the audit entry, their cached keys and their sessions.

pub mod password;

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use serde_json::json;

use crate::audit;
use crate::auth::sessions;
use crate::billing::ledger;
use crate::cache::{self, Cache};
use crate::clock::now_ms;
use crate::db::entities::{api_keys, balances, users};
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
    balances::ActiveModel { user_id: Set(user.id), amount: Set(0), updated_at: Set(now) }.insert(conn).await?;
    if new.signup_credit > 0 {
        ledger::apply(
            conn,
            ledger::Change {
                user_id: user.id,
                delta: new.signup_credit,
                kind: ledger::SIGNUP_CREDIT,
                reason: "sign-up credit",
                actor: None,
                ip: None,
            },
        )
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

/// The user with this id, or `NotFound`.
pub async fn require(conn: &impl ConnectionTrait, id: i64) -> Result<users::Model> {
    users::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| Error::NotFound(format!("no user with id {id}")))
}

/// Disables or re-enables a user, with an audit entry. Disabling also drops the cached identity
/// of every key of theirs (locally and in Redis, so the gateway refuses them at once here and
/// within the key cache's lifetime everywhere) and ends every sign-in session of theirs.
/// Returns the user and how many sessions ended.
pub async fn set_disabled(
    db: &Db,
    cache: &Cache,
    user_id: i64,
    disabled: bool,
    actor: &audit::Actor,
) -> Result<(users::Model, u64)> {
    let txn = db.begin().await?;
    lock_admins(&txn).await?;
    let user = require(&txn, user_id).await?;
    if disabled {
        keep_an_admin(&txn, &user).await?;
    }
    users::Entity::update_many()
        .col_expr(users::Column::Disabled, Expr::value(disabled))
        .col_expr(users::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(users::Column::Id.eq(user.id))
        .exec(&txn)
        .await?;
    audit::record_from(
        &txn,
        audit::Entry {
            actor_user_id: actor.user_id,
            action: if disabled { "user.disable" } else { "user.enable" },
            target_type: "user",
            target_id: user.id.to_string(),
            before: Some(json!({ "disabled": user.disabled })),
            after: Some(json!({ "disabled": disabled })),
        },
        actor.ip.as_deref(),
    )
    .await?;
    txn.commit().await?;
    let mut ended = 0;
    if disabled {
        let keys = api_keys::Entity::find().filter(api_keys::Column::UserId.eq(user.id)).all(&db.read).await?;
        for k in keys {
            cache.delete(&cache::key_cache(&k.key_hash)).await;
        }
        ended = sessions::end_all(db, user.id).await?;
    }
    Ok((users::Model { disabled, ..user }, ended))
}

/// Locks the enabled administrators' rows (an UPDATE that changes nothing), so two admins
/// demoting or disabling each other at once are decided one after the other. Call it first in
/// the transaction, before any read (MySQL's snapshot then sees the other's change).
async fn lock_admins(txn: &impl ConnectionTrait) -> Result<()> {
    users::Entity::update_many()
        .col_expr(users::Column::Role, Expr::col(users::Column::Role))
        .filter(users::Column::Role.eq(ROLE_ADMIN))
        .filter(users::Column::Disabled.eq(false))
        .exec(txn)
        .await?;
    Ok(())
}

/// Refuses a change that stops `user` being an enabled administrator when no other one is left.
async fn keep_an_admin(txn: &impl ConnectionTrait, user: &users::Model) -> Result<()> {
    if user.role != ROLE_ADMIN || user.disabled {
        return Ok(());
    }
    let others = users::Entity::find()
        .filter(users::Column::Role.eq(ROLE_ADMIN))
        .filter(users::Column::Disabled.eq(false))
        .filter(users::Column::Id.ne(user.id))
        .count(txn)
        .await?;
    if others == 0 {
        return Err(Error::Conflict("this is the last enabled administrator; make another one first".into()));
    }
    Ok(())
}

/// Changes a user's role (`user` or `admin`), with an audit entry.
pub async fn set_role(db: &Db, user_id: i64, role: &str, actor: &audit::Actor) -> Result<users::Model> {
    if role != ROLE_USER && role != ROLE_ADMIN {
        return Err(Error::BadRequest(format!("the role must be `{ROLE_USER}` or `{ROLE_ADMIN}`")));
    }
    let txn = db.begin().await?;
    lock_admins(&txn).await?;
    let user = require(&txn, user_id).await?;
    if role != ROLE_ADMIN {
        keep_an_admin(&txn, &user).await?;
    }
    if user.role == role {
        txn.commit().await?;
        return Ok(user);
    }
    users::Entity::update_many()
        .col_expr(users::Column::Role, Expr::value(role))
        .col_expr(users::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(users::Column::Id.eq(user.id))
        .exec(&txn)
        .await?;
    audit::record_from(
        &txn,
        audit::Entry {
            actor_user_id: actor.user_id,
            action: "user.role",
            target_type: "user",
            target_id: user.id.to_string(),
            before: Some(json!({ "role": user.role })),
            after: Some(json!({ "role": role })),
        },
        actor.ip.as_deref(),
    )
    .await?;
    txn.commit().await?;
    Ok(users::Model { role: role.to_owned(), ..user })
}

/// Makes the user an admin when their email is in `admin_emails` (`ADMIN_EMAILS`) and they are
/// not one yet; called at every sign-in. The promotion is audited with no actor (the settings).
pub async fn promote_if_listed(db: &Db, user: users::Model, admin_emails: &[String]) -> Result<users::Model> {
    if user.role == ROLE_ADMIN || !admin_emails.contains(&user.email) {
        return Ok(user);
    }
    let promoted = set_role(db, user.id, ROLE_ADMIN, &audit::Actor::system()).await?;
    tracing::info!(user.id = promoted.id, "made an admin by ADMIN_EMAILS");
    Ok(promoted)
}

/// A user's own rate and concurrency limits to change: `None` leaves one as it is,
/// `Some(None)` returns it to the instance default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsChange {
    pub rpm: Option<Option<i64>>,
    pub tpm: Option<Option<i64>>,
    pub max_concurrent: Option<Option<i64>>,
}

/// The most concurrent requests a user may be allowed.
pub const MAX_CONCURRENT_LIMIT: i64 = 10_000;

/// A user's limits as the admin API shows them (`null`: the instance default).
pub fn limits_json(user: &users::Model) -> serde_json::Value {
    json!({ "rpm": user.rpm, "tpm": user.tpm, "maxConcurrent": user.max_concurrent })
}

/// Sets a user's own limits, audited (`user.limits`); their keys' cached identities, which carry
/// them to the gateway, are dropped, so the change holds at once here and within the key
/// cache's lifetime elsewhere. Values out of range are a `BadRequest` and change nothing.
pub async fn set_limits(
    db: &Db,
    cache: &Cache,
    user_id: i64,
    change: LimitsChange,
    actor: &audit::Actor,
) -> Result<users::Model> {
    let check = |name: &str, v: Option<Option<i64>>, max: i64| match v {
        Some(Some(n)) if !(1..=max).contains(&n) => {
            Err(Error::BadRequest(format!("`{name}` must be an integer from 1 to {max}, or null for the default")))
        }
        _ => Ok(()),
    };
    check("rpm", change.rpm, crate::keys::MAX_RATE)?;
    check("tpm", change.tpm, crate::keys::MAX_RATE)?;
    check("maxConcurrent", change.max_concurrent, MAX_CONCURRENT_LIMIT)?;
    let txn = db.begin().await?;
    let user = require(&txn, user_id).await?;
    let updated = users::Model {
        rpm: change.rpm.unwrap_or(user.rpm),
        tpm: change.tpm.unwrap_or(user.tpm),
        max_concurrent: change.max_concurrent.unwrap_or(user.max_concurrent),
        ..user.clone()
    };
    users::Entity::update_many()
        .col_expr(users::Column::Rpm, Expr::value(updated.rpm))
        .col_expr(users::Column::Tpm, Expr::value(updated.tpm))
        .col_expr(users::Column::MaxConcurrent, Expr::value(updated.max_concurrent))
        .col_expr(users::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(users::Column::Id.eq(user.id))
        .exec(&txn)
        .await?;
    audit::record_from(
        &txn,
        audit::Entry {
            actor_user_id: actor.user_id,
            action: "user.limits",
            target_type: "user",
            target_id: user.id.to_string(),
            before: Some(limits_json(&user)),
            after: Some(limits_json(&updated)),
        },
        actor.ip.as_deref(),
    )
    .await?;
    txn.commit().await?;
    crate::gateway::auth::forget_user_keys(db, cache, user.id).await?;
    Ok(updated)
}
