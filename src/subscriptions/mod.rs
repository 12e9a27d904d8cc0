//! Token packages: grants, renewals, and the expiry job that zeroes what has run out.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use serde_json::json;

use crate::audit;
use crate::billing::ledger;
use crate::clock::{MS_PER_DAY, now_ms, rfc3339};
use crate::db::Db;
use crate::db::entities::subscriptions;
use crate::error::{Error, Result};

/// The most tokens one grant may carry.
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
/// The longest a grant or renewal may run.
pub const MAX_DAYS: i64 = 3650;

fn check(tokens: i64, days: i64, tokens_may_be_zero: bool) -> Result<()> {
    if tokens < 0 || (tokens == 0 && !tokens_may_be_zero) || tokens > MAX_TOKENS {
        return Err(Error::BadRequest(format!("tokens must be between 1 and {MAX_TOKENS}")));
    }
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(Error::BadRequest(format!("days must be between 1 and {MAX_DAYS}")));
    }
    Ok(())
}

/// Grants `tokens` valid for `days` from now, with a ledger and an audit entry.
pub async fn grant(
    db: &Db,
    user_id: i64,
    name: &str,
    tokens: i64,
    days: i64,
    actor: Option<i64>,
) -> Result<subscriptions::Model> {
    grant_by(db, user_id, name, tokens, days, &audit::Actor { user_id: actor, ip: None }).await
}

/// `grant`, audited with the admin's address.
pub async fn grant_by(
    db: &Db,
    user_id: i64,
    name: &str,
    tokens: i64,
    days: i64,
    by: &audit::Actor,
) -> Result<subscriptions::Model> {
    let txn = db.begin().await?;
    let sub = grant_in(&txn, user_id, name, tokens, days, by).await?;
    txn.commit().await?;
    Ok(sub)
}

/// `grant_by` on `conn`, which must be a transaction (the caller commits): the subscription,
/// its ledger entry and its audit entry.
pub async fn grant_in(
    conn: &impl ConnectionTrait,
    user_id: i64,
    name: &str,
    tokens: i64,
    days: i64,
    by: &audit::Actor,
) -> Result<subscriptions::Model> {
    let actor = by.user_id;
    check(tokens, days, false)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Error::BadRequest("subscription names are 1 to 64 characters".into()));
    }
    let now = now_ms();
    let sub = subscriptions::ActiveModel {
        user_id: Set(user_id),
        name: Set(name.to_owned()),
        tokens_total: Set(tokens),
        tokens_remaining: Set(tokens),
        starts_at: Set(now),
        expires_at: Set(now + days * MS_PER_DAY),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    ledger::entry(
        conn,
        ledger::Entry {
            user_id,
            kind: "grant",
            amount: 0,
            tokens,
            subscription_id: Some(sub.id),
            reason: name,
            actor_user_id: actor,
        },
    )
    .await?;
    audit::record_from(
        conn,
        audit::Entry {
            actor_user_id: actor,
            action: "subscription.grant",
            target_type: "subscription",
            target_id: sub.id.to_string(),
            before: None,
            after: Some(json!({ "user_id": user_id, "tokens": tokens, "expires_at": rfc3339(sub.expires_at) })),
        },
        by.ip.as_deref(),
    )
    .await?;
    Ok(sub)
}

/// Renews a subscription: the expiry moves `days` past its current end (or past now, when it
/// has already ended) and `extra_tokens` are added. Tokens of an ended subscription are expired
/// first, so a renewal never revives them.
pub async fn renew(
    db: &Db,
    subscription_id: i64,
    days: i64,
    extra_tokens: i64,
    actor: Option<i64>,
) -> Result<subscriptions::Model> {
    renew_by(db, subscription_id, days, extra_tokens, &audit::Actor { user_id: actor, ip: None }).await
}

/// `renew`, audited with the admin's address.
pub async fn renew_by(
    db: &Db,
    subscription_id: i64,
    days: i64,
    extra_tokens: i64,
    by: &audit::Actor,
) -> Result<subscriptions::Model> {
    let txn = db.begin().await?;
    let sub = renew_in(&txn, subscription_id, days, extra_tokens, by).await?;
    txn.commit().await?;
    Ok(sub)
}

/// `renew_by` on `txn` (the caller commits): the new end date and tokens, their ledger entries
/// and the audit entry.
pub async fn renew_in(
    txn: &impl ConnectionTrait,
    subscription_id: i64,
    days: i64,
    extra_tokens: i64,
    by: &audit::Actor,
) -> Result<subscriptions::Model> {
    let actor = by.user_id;
    check(extra_tokens, days, true)?;
    let now = now_ms();
    let sub = subscriptions::Entity::find_by_id(subscription_id)
        .one(txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no subscription with id {subscription_id}")))?;
    let ended = sub.expires_at <= now;
    let forfeited = if ended { sub.tokens_remaining } else { 0 };
    let expires_at = std::cmp::max(sub.expires_at, now) + days * MS_PER_DAY;
    let res = subscriptions::Entity::update_many()
        .col_expr(subscriptions::Column::ExpiresAt, Expr::value(expires_at))
        .col_expr(
            subscriptions::Column::TokensRemaining,
            Expr::col(subscriptions::Column::TokensRemaining).sub(forfeited).add(extra_tokens),
        )
        .col_expr(subscriptions::Column::TokensTotal, Expr::col(subscriptions::Column::TokensTotal).add(extra_tokens))
        .col_expr(subscriptions::Column::UpdatedAt, Expr::value(now))
        .filter(subscriptions::Column::Id.eq(sub.id))
        .filter(subscriptions::Column::ExpiresAt.eq(sub.expires_at))
        .filter(subscriptions::Column::TokensRemaining.eq(sub.tokens_remaining))
        .exec(txn)
        .await?;
    if res.rows_affected != 1 {
        return Err(Error::Conflict("the subscription changed meanwhile; try again".into()));
    }
    if forfeited > 0 {
        ledger::entry(txn, expire_entry(sub.user_id, sub.id, forfeited)).await?;
    }
    if extra_tokens > 0 {
        ledger::entry(
            txn,
            ledger::Entry {
                user_id: sub.user_id,
                kind: "renew",
                amount: 0,
                tokens: extra_tokens,
                subscription_id: Some(sub.id),
                reason: "renewal",
                actor_user_id: actor,
            },
        )
        .await?;
    }
    audit::record_from(
        txn,
        audit::Entry {
            actor_user_id: actor,
            action: "subscription.renew",
            target_type: "subscription",
            target_id: sub.id.to_string(),
            before: Some(json!({ "tokens_remaining": sub.tokens_remaining, "expires_at": rfc3339(sub.expires_at) })),
            after: Some(json!({ "tokens_remaining": sub.tokens_remaining - forfeited + extra_tokens, "expires_at": rfc3339(expires_at) })),
        },
        by.ip.as_deref(),
    )
    .await?;
    Ok(subscriptions::Model {
        tokens_total: sub.tokens_total + extra_tokens,
        tokens_remaining: sub.tokens_remaining - forfeited + extra_tokens,
        expires_at,
        updated_at: now,
        ..sub
    })
}

fn expire_entry(user_id: i64, subscription_id: i64, tokens: i64) -> ledger::Entry<'static> {
    ledger::Entry {
        user_id,
        kind: "expire",
        amount: 0,
        tokens: -tokens,
        subscription_id: Some(subscription_id),
        reason: "subscription expired",
        actor_user_id: None,
    }
}

/// A user's subscriptions that still hold tokens and have not expired, earliest expiry first:
/// the order the gateway consumes them in.
pub async fn active(conn: &impl ConnectionTrait, user_id: i64) -> Result<Vec<subscriptions::Model>> {
    Ok(subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user_id))
        .filter(subscriptions::Column::ExpiresAt.gt(now_ms()))
        .filter(subscriptions::Column::TokensRemaining.gt(0))
        .order_by_asc(subscriptions::Column::ExpiresAt)
        .order_by_asc(subscriptions::Column::Id)
        .all(conn)
        .await?)
}

/// Zeroes the tokens of every subscription that expired before now and records what was removed
/// (a ledger entry of kind `expire`). Returns how many subscriptions this run zeroed.
///
/// Safe to run twice at once and on several instances: each subscription is zeroed with a
/// compare-and-set on its expiry and remaining tokens (`expire_one`), so exactly one run wins
/// it, and a subscription renewed meanwhile (a new expiry) is left alone.
pub async fn expire_due(db: &Db) -> Result<u64> {
    let now = now_ms();
    let mut affected = 0;
    let mut after_id = 0;
    loop {
        let due = find_due(db, now, after_id, 500).await?;
        let Some(last) = due.last() else {
            return Ok(affected);
        };
        after_id = last.id;
        for sub in &due {
            if expire_one(db, sub, now).await? {
                affected += 1;
            }
        }
    }
}

/// Subscriptions with tokens left that expired before `now`, by id, after `after_id`.
pub async fn find_due(db: &Db, now: i64, after_id: i64, limit: u64) -> Result<Vec<subscriptions::Model>> {
    Ok(subscriptions::Entity::find()
        .filter(subscriptions::Column::ExpiresAt.lt(now))
        .filter(subscriptions::Column::TokensRemaining.gt(0))
        .filter(subscriptions::Column::Id.gt(after_id))
        .order_by_asc(subscriptions::Column::Id)
        .limit(limit)
        .all(&db.read)
        .await?)
}

/// Zeroes `seen` if it is still exactly as seen (same expiry, same tokens) and expired before
/// `now`, with its ledger entry, in one transaction. Returns whether this call zeroed it.
pub async fn expire_one(db: &Db, seen: &subscriptions::Model, now: i64) -> Result<bool> {
    let txn = db.begin().await?;
    let res = subscriptions::Entity::update_many()
        .col_expr(subscriptions::Column::TokensRemaining, Expr::value(0i64))
        .col_expr(subscriptions::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(subscriptions::Column::Id.eq(seen.id))
        .filter(subscriptions::Column::ExpiresAt.eq(seen.expires_at))
        .filter(subscriptions::Column::ExpiresAt.lt(now))
        .filter(subscriptions::Column::TokensRemaining.eq(seen.tokens_remaining))
        .filter(subscriptions::Column::TokensRemaining.gt(0))
        .exec(&txn)
        .await?;
    if res.rows_affected != 1 {
        txn.rollback().await?;
        return Ok(false);
    }
    ledger::entry(&txn, expire_entry(seen.user_id, seen.id, seen.tokens_remaining)).await?;
    txn.commit().await?;
    Ok(true)
}
