//! The billing invariant, per user:
//! `balance + pending reserved + settled charges == sum of the ledger`, for money and for
//! subscription tokens alike, and nothing negative. Settled charges include any excess taken
//! from the balance at settlement; shortfalls (usage nobody paid for) are counted apart.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::db::entities::{balances, credit_transactions, reservations, subscriptions};
use crate::error::Result;

/// Both sides of the invariant for one user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    pub balance: i64,
    pub pending_amount: i64,
    pub charged_amount: i64,
    pub ledger_amount: i64,
    pub tokens_remaining: i64,
    pub pending_tokens: i64,
    pub charged_tokens: i64,
    pub ledger_tokens: i64,
    /// What usage cost beyond reservations and balances (counted apart: never collected, so
    /// not in the equation; any non-zero value is a signal for the operator).
    pub shortfall: i64,
    /// Anything negative that must never be (a balance, a subscription, a reservation).
    pub negatives: Vec<String>,
}

impl Reconciliation {
    /// `Ok` when the books balance; otherwise a description of what does not.
    pub fn check(&self) -> Result<(), String> {
        let money = self.balance + self.pending_amount + self.charged_amount;
        let tokens = self.tokens_remaining + self.pending_tokens + self.charged_tokens;
        let mut problems = self.negatives.clone();
        if money != self.ledger_amount {
            problems.push(format!(
                "money: balance {} + pending {} + charged {} = {money} but the ledger says {}",
                self.balance, self.pending_amount, self.charged_amount, self.ledger_amount
            ));
        }
        if tokens != self.ledger_tokens {
            problems.push(format!(
                "tokens: remaining {} + pending {} + charged {} = {tokens} but the ledger says {}",
                self.tokens_remaining, self.pending_tokens, self.charged_tokens, self.ledger_tokens
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

/// Reads both sides of the invariant for `user_id`.
pub async fn reconcile(conn: &impl ConnectionTrait, user_id: i64) -> Result<Reconciliation> {
    let mut r = Reconciliation::default();
    if let Some(b) = balances::Entity::find_by_id(user_id).one(conn).await? {
        r.balance = b.amount;
        if b.amount < 0 {
            r.negatives.push(format!("balance is {}", b.amount));
        }
    }
    for s in subscriptions::Entity::find().filter(subscriptions::Column::UserId.eq(user_id)).all(conn).await? {
        r.tokens_remaining += s.tokens_remaining;
        if s.tokens_remaining < 0 {
            r.negatives.push(format!("subscription {} has {} tokens", s.id, s.tokens_remaining));
        }
    }
    for res in reservations::Entity::find().filter(reservations::Column::UserId.eq(user_id)).all(conn).await? {
        if res.amount < 0 || res.tokens < 0 || res.charged_amount < 0 || res.charged_tokens < 0 {
            r.negatives.push(format!("reservation {} has a negative amount", res.id));
        }
        if res.excess_amount < 0 || res.shortfall < 0 {
            r.negatives.push(format!("reservation {} has a negative excess or shortfall", res.id));
        }
        // Beyond the reservation only the excess taken from the balance may be charged.
        if res.charged_amount > res.amount + res.excess_amount || res.charged_tokens > res.tokens {
            r.negatives.push(format!("reservation {} charged more than it reserved and collected", res.id));
        }
        r.shortfall += res.shortfall;
        match res.state.as_str() {
            super::reservations::PENDING => {
                r.pending_amount += res.amount;
                r.pending_tokens += res.tokens;
            }
            _ => {
                r.charged_amount += res.charged_amount;
                r.charged_tokens += res.charged_tokens;
            }
        }
    }
    for tx in
        credit_transactions::Entity::find().filter(credit_transactions::Column::UserId.eq(user_id)).all(conn).await?
    {
        r.ledger_amount += tx.amount;
        r.ledger_tokens += tx.tokens;
    }
    Ok(r)
}
