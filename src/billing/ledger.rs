//! Every change to a balance made by a person or at sign-up (top-up, correction, sign-up
//! credit) goes through `apply`: the balance, its ledger entry and its audit entry commit
//! together or not at all, and a balance never goes below zero.

use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
use serde_json::json;

use super::balance;
use crate::audit;
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::credit_transactions;
use crate::error::{Error, Result};
use crate::money::{self, format_amount};

/// Ledger kinds of money changes.
pub const TOPUP: &str = "topup";
pub const ADJUSTMENT: &str = "adjustment";
pub const SIGNUP_CREDIT: &str = "signup_credit";
/// Money from a redemption code (`redeem`).
pub const REDEEM: &str = "redeem";

/// One ledger line: a money and/or token delta for a user.
pub struct Entry<'a> {
    pub user_id: i64,
    /// `topup`, `adjustment`, `signup_credit`, `grant`, `renew`, `expire`.
    pub kind: &'a str,
    /// Money delta, micro-units.
    pub amount: i64,
    /// Subscription token delta.
    pub tokens: i64,
    pub subscription_id: Option<i64>,
    pub reason: &'a str,
    pub actor_user_id: Option<i64>,
}

/// Writes one ledger entry on `conn`. Money entries go through `apply`, which also moves the
/// balance; this alone is for token entries whose counterpart is a subscription row.
pub async fn entry(conn: &impl ConnectionTrait, e: Entry<'_>) -> Result<()> {
    entry_row(e).insert(conn).await?;
    Ok(())
}

/// The row `e` is written as.
pub fn entry_row(e: Entry<'_>) -> credit_transactions::ActiveModel {
    credit_transactions::ActiveModel {
        user_id: Set(e.user_id),
        kind: Set(e.kind.to_owned()),
        amount: Set(e.amount),
        tokens: Set(e.tokens),
        subscription_id: Set(e.subscription_id),
        reason: Set(e.reason.chars().take(255).collect()),
        actor_user_id: Set(e.actor_user_id),
        created_at: Set(now_ms()),
        ..Default::default()
    }
}

/// Checks a reason given by a person.
pub fn normalize_reason(raw: &str) -> Result<String> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 255 {
        return Err(Error::BadRequest("a reason of 1 to 255 characters is required".into()));
    }
    Ok(reason.to_owned())
}

/// A change to one user's balance.
pub struct Change<'a> {
    pub user_id: i64,
    /// Micro-units; negative to deduct.
    pub delta: i64,
    /// `TOPUP`, `ADJUSTMENT`, `SIGNUP_CREDIT` or `REDEEM`.
    pub kind: &'a str,
    pub reason: &'a str,
    /// The admin who made it; `None` for the command line and sign-up.
    pub actor: Option<i64>,
    /// The address the change was asked from, for the audit log.
    pub ip: Option<String>,
}

/// The balance around a change, micro-units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub before: i64,
    pub after: i64,
}

/// Applies `change` on `conn`, which must be a transaction (the caller commits): the balance
/// moves, a ledger entry and an audit entry are written. A deduction the balance does not cover
/// is `BalanceTooLow` carrying the current balance, and changes nothing.
pub async fn apply(conn: &impl ConnectionTrait, change: Change<'_>) -> Result<Applied> {
    let reason = normalize_reason(change.reason)?;
    let delta = change.delta;
    if delta == 0 {
        return Err(Error::BadRequest("the amount must not be zero".into()));
    }
    if delta.unsigned_abs() > money::MAX_AMOUNT.unsigned_abs() {
        return Err(Error::BadRequest("amount is too large".into()));
    }
    let user_id = change.user_id;
    // The conditional UPDATE comes first: it locks the row (MySQL, PostgreSQL) so the balance
    // read next is the one this change produced, even with reservations running concurrently.
    if delta > 0 {
        if !balance::credit_capped(conn, user_id, delta).await? {
            return Err(Error::Conflict(format!(
                "the balance would exceed {}, the most one account can hold",
                money::format_amount(money::MAX_AMOUNT)
            )));
        }
    } else if !balance::debit_if_covered(conn, user_id, -delta).await? {
        return Err(Error::BalanceTooLow { balance: balance::amount(conn, user_id).await?, delta });
    }
    let after = balance::amount(conn, user_id).await?;
    let before = after - delta;
    entry(
        conn,
        Entry {
            user_id,
            kind: change.kind,
            amount: delta,
            tokens: 0,
            subscription_id: None,
            reason: &reason,
            actor_user_id: change.actor,
        },
    )
    .await?;
    audit::record_from(
        conn,
        audit::Entry {
            actor_user_id: change.actor,
            action: "balance.adjust",
            target_type: "user",
            target_id: user_id.to_string(),
            before: Some(json!({ "balance": format_amount(before) })),
            after: Some(json!({
                "balance": format_amount(after),
                "delta": format_amount(delta),
                "kind": change.kind,
                "reason": reason,
            })),
        },
        change.ip.as_deref(),
    )
    .await?;
    Ok(Applied { before, after })
}

/// `apply` in a transaction of its own. Returns the new balance.
pub async fn adjust(db: &Db, user_id: i64, delta: i64, kind: &str, reason: &str, actor: Option<i64>) -> Result<i64> {
    let txn = db.begin().await?;
    let applied = apply(&txn, Change { user_id, delta, kind, reason, actor, ip: None }).await?;
    txn.commit().await?;
    Ok(applied.after)
}
