//! Top-ups and adjustments: the balance change, its ledger entry and its audit entry commit
//! together or not at all.

use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
use serde_json::json;

use super::balance;
use crate::audit;
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::credit_transactions;
use crate::error::{Error, Result};
use crate::money::{self, format_amount};

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

/// Writes one ledger entry on `conn`.
pub async fn entry(conn: &impl ConnectionTrait, e: Entry<'_>) -> Result<()> {
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
    .insert(conn)
    .await?;
    Ok(())
}

/// Checks a reason given by a person.
pub fn normalize_reason(raw: &str) -> Result<String> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 255 {
        return Err(Error::BadRequest("a reason of 1 to 255 characters is required".into()));
    }
    Ok(reason.to_owned())
}

/// Adds `delta` micro-units (negative to deduct) to a user's balance, with a ledger entry of
/// `kind` and an audit entry. A deduction larger than the balance is refused and changes
/// nothing. Returns the new balance.
pub async fn adjust(db: &Db, user_id: i64, delta: i64, kind: &str, reason: &str, actor: Option<i64>) -> Result<i64> {
    let reason = normalize_reason(reason)?;
    if delta == 0 {
        return Err(Error::BadRequest("the amount must not be zero".into()));
    }
    if delta.unsigned_abs() > money::MAX_AMOUNT.unsigned_abs() {
        return Err(Error::BadRequest("amount is too large".into()));
    }
    let txn = db.begin().await?;
    let before = balance::amount(&txn, user_id).await?;
    if delta > 0 {
        balance::credit(&txn, user_id, delta).await?;
    } else if !balance::debit_if_covered(&txn, user_id, -delta).await? {
        return Err(Error::BadRequest(format!(
            "cannot deduct {} from a balance of {}",
            format_amount(-delta),
            format_amount(before)
        )));
    }
    let after = before + delta;
    entry(
        &txn,
        Entry { user_id, kind, amount: delta, tokens: 0, subscription_id: None, reason: &reason, actor_user_id: actor },
    )
    .await?;
    audit::record(
        &txn,
        audit::Entry {
            actor_user_id: actor,
            action: "balance.adjust",
            target_type: "user",
            target_id: user_id.to_string(),
            before: Some(json!({ "balance": format_amount(before) })),
            after: Some(json!({ "balance": format_amount(after), "delta": format_amount(delta), "kind": kind, "reason": reason })),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(after)
}
