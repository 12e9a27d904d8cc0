//! The two balance statements: a conditional debit and a credit.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::clock::now_ms;
use crate::db::entities::balances;
use crate::error::{Error, Result};

/// Takes `amount` from the balance only if it covers it. Returns whether it did.
///
/// One statement, `UPDATE … SET amount = amount - ? WHERE user_id = ? AND amount >= ?`, so two
/// concurrent debits can never both pass on the same money, on any backend. `updated_at` is in
/// the SET so MySQL's matched-rows count agrees with the others even for a zero amount.
pub async fn debit_if_covered(conn: &impl ConnectionTrait, user_id: i64, amount: i64) -> Result<bool> {
    if amount < 0 {
        return Err(Error::Internal(anyhow::anyhow!("negative debit {amount}")));
    }
    let res = balances::Entity::update_many()
        .col_expr(balances::Column::Amount, Expr::col(balances::Column::Amount).sub(amount))
        .col_expr(balances::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(balances::Column::UserId.eq(user_id))
        .filter(balances::Column::Amount.gte(amount))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Takes up to `wanted` from the balance: all of it when the balance covers it, else what the
/// balance holds. Returns what was taken. The row is locked first (a no-op write: MySQL and
/// PostgreSQL then hold its lock to the end of the transaction; SQLite has one writer anyway),
/// so the amount read is the amount debited and no concurrent reservation can take it between.
pub async fn debit_up_to(conn: &impl ConnectionTrait, user_id: i64, wanted: i64) -> Result<i64> {
    if wanted <= 0 {
        return Ok(0);
    }
    balances::Entity::update_many()
        .col_expr(balances::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(balances::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    let take = std::cmp::min(amount(conn, user_id).await?, wanted);
    if take <= 0 {
        return Ok(0);
    }
    if !debit_if_covered(conn, user_id, take).await? {
        return Err(Error::Internal(anyhow::anyhow!("the balance of user {user_id} changed under its lock")));
    }
    Ok(take)
}

/// Adds `amount` to the balance.
pub async fn credit(conn: &impl ConnectionTrait, user_id: i64, amount: i64) -> Result<()> {
    if amount < 0 {
        return Err(Error::Internal(anyhow::anyhow!("negative credit {amount}")));
    }
    let res = balances::Entity::update_many()
        .col_expr(balances::Column::Amount, Expr::col(balances::Column::Amount).add(amount))
        .col_expr(balances::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(balances::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    if res.rows_affected != 1 {
        return Err(Error::Internal(anyhow::anyhow!("user {user_id} has no balance row")));
    }
    Ok(())
}

/// Adds `amount` to the balance unless that would take it above `money::MAX_AMOUNT` (false:
/// nothing changed). Top-ups use this, so no balance can reach the integer's limit (SQLite
/// would silently turn it into a float).
pub async fn credit_capped(conn: &impl ConnectionTrait, user_id: i64, amount: i64) -> Result<bool> {
    if !(0..=crate::money::MAX_AMOUNT).contains(&amount) {
        return Ok(false);
    }
    let res = balances::Entity::update_many()
        .col_expr(balances::Column::Amount, Expr::col(balances::Column::Amount).add(amount))
        .col_expr(balances::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(balances::Column::UserId.eq(user_id))
        .filter(balances::Column::Amount.lte(crate::money::MAX_AMOUNT - amount))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

/// The current balance in micro-units (0 when the user has no balance row).
pub async fn amount(conn: &impl ConnectionTrait, user_id: i64) -> Result<i64> {
    Ok(balances::Entity::find_by_id(user_id).one(conn).await?.map_or(0, |b| b.amount))
}
