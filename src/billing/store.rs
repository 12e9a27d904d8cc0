//! The statements of the hot path — reserving and resolving — once per backend family: on
//! MySQL/MariaDB and PostgreSQL through sea-orm (`Orm`, the functions of `balance`,
//! `key_spend`, `ledger` and `audit`), on SQLite as plain SQL on the writer thread's own
//! connection (`Sqlite`), prepared once and run from the statement cache. The money logic in
//! `reservations` is written once, against `Store`.
//!
//! Rows whose columns grow with the product (reservations, usage rows, ledger and audit
//! entries) are built once as sea-orm active models and inserted from them on both families,
//! so a new column is added in one place.

#![allow(async_fn_in_trait, reason = "used by the crate only; Send-ness is checked at each concrete call")]

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder};

use super::key_spend::{self, KeyCap};
use super::{balance, ledger};
use crate::clock::now_ms;
use crate::db::entities::{reservations, subscriptions, usage_logs};
use crate::db::writer::Sqlite;
use crate::error::{Error, Result};

/// A subscription tokens can be taken from: `(id, tokens remaining)`.
pub type SubTokens = (i64, i64);

/// What a reservation is resolved from, as stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub state: String,
    pub amount: i64,
    pub tokens: i64,
    pub token_sources: String,
    pub key_period: Option<String>,
}

/// How a reservation row is closed.
#[derive(Clone, Copy, Debug)]
pub struct Close<'a> {
    pub id: i64,
    pub state: &'a str,
    pub charged_amount: i64,
    pub charged_tokens: i64,
    pub excess: i64,
    pub shortfall: i64,
    pub now: i64,
}

/// The hot path's statements, inside a write transaction.
pub trait Store {
    /// The user's subscriptions with tokens left, unexpired at `now`, earliest expiry first.
    async fn subscriptions(&self, user_id: i64, now: i64) -> Result<Vec<SubTokens>>;
    /// Takes `want` tokens from the subscription if it still has them and is unexpired.
    async fn take_tokens(&self, sub_id: i64, want: i64, now: i64) -> Result<bool>;
    /// Gives `tokens` back to the subscription unless it has expired by `now`.
    async fn return_tokens(&self, sub_id: i64, tokens: i64, now: i64) -> Result<bool>;
    /// See `balance::debit_if_covered`.
    async fn debit_if_covered(&self, user_id: i64, amount: i64) -> Result<bool>;
    /// See `balance::debit_up_to`.
    async fn debit_up_to(&self, user_id: i64, wanted: i64) -> Result<i64>;
    /// See `balance::credit`.
    async fn credit(&self, user_id: i64, amount: i64) -> Result<()>;
    /// See `balance::amount`.
    async fn balance(&self, user_id: i64) -> Result<i64>;
    /// See `key_spend::ensure_row`.
    async fn ensure_key_spend(&self, cap: &KeyCap, period: &str, now: i64) -> Result<()>;
    /// See `key_spend::take_if_within`.
    async fn take_key_spend(&self, cap: &KeyCap, period: &str, amount: i64, now: i64) -> Result<bool>;
    /// See `key_spend::spent`.
    async fn key_spent(&self, key_id: i64, period: &str) -> Result<i64>;
    /// See `key_spend::adjust`.
    async fn adjust_key_spend(&self, key_id: i64, period: &str, delta: i64, now: i64) -> Result<()>;
    /// Inserts a reservation; returns its id.
    async fn insert_reservation(&self, row: reservations::ActiveModel) -> Result<i64>;
    /// The reservation of a request.
    async fn find_reservation(&self, request_id: &str) -> Result<Option<Stored>>;
    /// Closes a pending reservation; false when it was not pending any more.
    async fn close_reservation(&self, close: Close<'_>) -> Result<bool>;
    /// Writes a usage row (on SQLite with the batch's others, before the commit).
    async fn insert_usage(&self, row: usage_logs::ActiveModel) -> Result<()>;
    /// Writes a ledger entry.
    async fn ledger_entry(&self, entry: ledger::Entry<'_>) -> Result<()>;
    /// Writes an audit entry.
    async fn audit(&self, entry: crate::audit::Entry<'_>) -> Result<()>;
}

/// The statements on a sea-orm transaction (MySQL/MariaDB, PostgreSQL).
impl Store for DatabaseTransaction {
    async fn subscriptions(&self, user_id: i64, now: i64) -> Result<Vec<SubTokens>> {
        Ok(subscriptions::Entity::find()
            .filter(subscriptions::Column::UserId.eq(user_id))
            .filter(subscriptions::Column::ExpiresAt.gt(now))
            .filter(subscriptions::Column::TokensRemaining.gt(0))
            .order_by_asc(subscriptions::Column::ExpiresAt)
            .order_by_asc(subscriptions::Column::Id)
            .all(self)
            .await?
            .into_iter()
            .map(|s| (s.id, s.tokens_remaining))
            .collect())
    }

    async fn take_tokens(&self, sub_id: i64, want: i64, now: i64) -> Result<bool> {
        let res = subscriptions::Entity::update_many()
            .col_expr(
                subscriptions::Column::TokensRemaining,
                Expr::col(subscriptions::Column::TokensRemaining).sub(want),
            )
            .col_expr(subscriptions::Column::UpdatedAt, Expr::value(now))
            .filter(subscriptions::Column::Id.eq(sub_id))
            .filter(subscriptions::Column::TokensRemaining.gte(want))
            .filter(subscriptions::Column::ExpiresAt.gt(now))
            .exec(self)
            .await?;
        Ok(res.rows_affected == 1)
    }

    async fn return_tokens(&self, sub_id: i64, tokens: i64, now: i64) -> Result<bool> {
        let res = subscriptions::Entity::update_many()
            .col_expr(
                subscriptions::Column::TokensRemaining,
                Expr::col(subscriptions::Column::TokensRemaining).add(tokens),
            )
            .col_expr(subscriptions::Column::UpdatedAt, Expr::value(now))
            .filter(subscriptions::Column::Id.eq(sub_id))
            .filter(subscriptions::Column::ExpiresAt.gt(now))
            .exec(self)
            .await?;
        Ok(res.rows_affected == 1)
    }

    async fn debit_if_covered(&self, user_id: i64, amount: i64) -> Result<bool> {
        balance::debit_if_covered(self, user_id, amount).await
    }

    async fn debit_up_to(&self, user_id: i64, wanted: i64) -> Result<i64> {
        balance::debit_up_to(self, user_id, wanted).await
    }

    async fn credit(&self, user_id: i64, amount: i64) -> Result<()> {
        balance::credit(self, user_id, amount).await
    }

    async fn balance(&self, user_id: i64) -> Result<i64> {
        balance::amount(self, user_id).await
    }

    async fn ensure_key_spend(&self, cap: &KeyCap, period: &str, now: i64) -> Result<()> {
        key_spend::ensure_row(self, cap, period, now).await
    }

    async fn take_key_spend(&self, cap: &KeyCap, period: &str, amount: i64, now: i64) -> Result<bool> {
        key_spend::take_if_within(self, cap, period, amount, now).await
    }

    async fn key_spent(&self, key_id: i64, period: &str) -> Result<i64> {
        key_spend::spent(self, key_id, period).await
    }

    async fn adjust_key_spend(&self, key_id: i64, period: &str, delta: i64, now: i64) -> Result<()> {
        key_spend::adjust(self, key_id, period, delta, now).await
    }

    async fn insert_reservation(&self, row: reservations::ActiveModel) -> Result<i64> {
        // `exec` returns only the new id: no read-back of the row it just wrote.
        Ok(reservations::Entity::insert(row).exec(self).await?.last_insert_id)
    }

    async fn find_reservation(&self, request_id: &str) -> Result<Option<Stored>> {
        Ok(reservations::Entity::find().filter(reservations::Column::RequestId.eq(request_id)).one(self).await?.map(
            |r| Stored {
                id: r.id,
                request_id: r.request_id,
                user_id: r.user_id,
                key_id: r.key_id,
                state: r.state,
                amount: r.amount,
                tokens: r.tokens,
                token_sources: r.token_sources,
                key_period: r.key_period,
            },
        ))
    }

    async fn close_reservation(&self, c: Close<'_>) -> Result<bool> {
        let res = reservations::Entity::update_many()
            .col_expr(reservations::Column::State, Expr::value(c.state))
            .col_expr(reservations::Column::ChargedAmount, Expr::value(c.charged_amount))
            .col_expr(reservations::Column::ChargedTokens, Expr::value(c.charged_tokens))
            .col_expr(reservations::Column::ExcessAmount, Expr::value(c.excess))
            .col_expr(reservations::Column::Shortfall, Expr::value(c.shortfall))
            .col_expr(reservations::Column::ResolvedAt, Expr::value(c.now))
            .col_expr(reservations::Column::UpdatedAt, Expr::value(c.now))
            .filter(reservations::Column::Id.eq(c.id))
            .filter(reservations::Column::State.eq(super::reservations::PENDING))
            .exec(self)
            .await?;
        Ok(res.rows_affected == 1)
    }

    async fn insert_usage(&self, row: usage_logs::ActiveModel) -> Result<()> {
        usage_logs::Entity::insert(row).exec_without_returning(self).await?;
        Ok(())
    }

    async fn ledger_entry(&self, entry: ledger::Entry<'_>) -> Result<()> {
        ledger::entry(self, entry).await
    }

    async fn audit(&self, entry: crate::audit::Entry<'_>) -> Result<()> {
        crate::audit::record(self, entry).await
    }
}

/// The statements on the SQLite writer's own connection. One writer at a time holds the
/// database, so no statement needs a row lock.
impl Store for Sqlite<'_> {
    async fn subscriptions(&self, user_id: i64, now: i64) -> Result<Vec<SubTokens>> {
        self.query_all(
            "SELECT id, tokens_remaining FROM subscriptions WHERE user_id = ?1 AND expires_at > ?2 \
             AND tokens_remaining > 0 ORDER BY expires_at, id",
            (user_id, now),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    async fn take_tokens(&self, sub_id: i64, want: i64, now: i64) -> Result<bool> {
        let n = self.execute(
            "UPDATE subscriptions SET tokens_remaining = tokens_remaining - ?1, updated_at = ?2 \
             WHERE id = ?3 AND tokens_remaining >= ?1 AND expires_at > ?2",
            (want, now, sub_id),
        )?;
        Ok(n == 1)
    }

    async fn return_tokens(&self, sub_id: i64, tokens: i64, now: i64) -> Result<bool> {
        let n = self.execute(
            "UPDATE subscriptions SET tokens_remaining = tokens_remaining + ?1, updated_at = ?2 \
             WHERE id = ?3 AND expires_at > ?2",
            (tokens, now, sub_id),
        )?;
        Ok(n == 1)
    }

    async fn debit_if_covered(&self, user_id: i64, amount: i64) -> Result<bool> {
        if amount < 0 {
            return Err(Error::Internal(anyhow::anyhow!("negative debit {amount}")));
        }
        let n = self.execute(
            "UPDATE balances SET amount = amount - ?1, updated_at = ?2 WHERE user_id = ?3 AND amount >= ?1",
            (amount, now_ms(), user_id),
        )?;
        Ok(n == 1)
    }

    async fn debit_up_to(&self, user_id: i64, wanted: i64) -> Result<i64> {
        if wanted <= 0 {
            return Ok(0);
        }
        let take = std::cmp::min(wanted, self.balance(user_id).await?);
        if take <= 0 {
            return Ok(0);
        }
        if !self.debit_if_covered(user_id, take).await? {
            return Err(Error::Internal(anyhow::anyhow!("the balance of user {user_id} changed under its lock")));
        }
        Ok(take)
    }

    async fn credit(&self, user_id: i64, amount: i64) -> Result<()> {
        if amount < 0 {
            return Err(Error::Internal(anyhow::anyhow!("negative credit {amount}")));
        }
        let n = self.execute(
            "UPDATE balances SET amount = amount + ?1, updated_at = ?2 WHERE user_id = ?3",
            (amount, now_ms(), user_id),
        )?;
        if n != 1 {
            return Err(Error::Internal(anyhow::anyhow!("user {user_id} has no balance row")));
        }
        Ok(())
    }

    async fn balance(&self, user_id: i64) -> Result<i64> {
        Ok(self.query_row("SELECT amount FROM balances WHERE user_id = ?1", [user_id], |r| r.get(0))?.unwrap_or(0))
    }

    async fn ensure_key_spend(&self, cap: &KeyCap, period: &str, now: i64) -> Result<()> {
        let exists =
            self.query_row("SELECT 1 FROM key_spend WHERE key_id = ?1 AND period = ?2", (cap.key_id, period), |_| {
                Ok(())
            })?;
        if exists.is_some() {
            return Ok(());
        }
        let spent: i64 = self
            .query_row(
                "SELECT COALESCE(SUM(cost), 0) FROM usage_logs WHERE user_id = ?1 AND key_id = ?2 AND created_at >= ?3",
                (cap.user_id, cap.key_id, cap.period.start(now)),
                |r| r.get(0),
            )?
            .unwrap_or(0);
        self.execute(
            "INSERT INTO key_spend (key_id, period, spent, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (key_id, period) DO NOTHING",
            (cap.key_id, period, spent, now),
        )?;
        Ok(())
    }

    async fn take_key_spend(&self, cap: &KeyCap, period: &str, amount: i64, now: i64) -> Result<bool> {
        let n = self.execute(
            "UPDATE key_spend SET spent = spent + ?1, updated_at = ?2 WHERE key_id = ?3 AND period = ?4 AND spent <= ?5",
            (amount, now, cap.key_id, period, cap.limit.saturating_sub(amount)),
        )?;
        Ok(n == 1)
    }

    async fn key_spent(&self, key_id: i64, period: &str) -> Result<i64> {
        Ok(self
            .query_row("SELECT spent FROM key_spend WHERE key_id = ?1 AND period = ?2", (key_id, period), |r| r.get(0))?
            .unwrap_or(0))
    }

    async fn adjust_key_spend(&self, key_id: i64, period: &str, delta: i64, now: i64) -> Result<()> {
        if delta != 0 {
            self.execute(
                "UPDATE key_spend SET spent = spent + ?1, updated_at = ?2 WHERE key_id = ?3 AND period = ?4",
                (delta, now, key_id, period),
            )?;
        }
        Ok(())
    }

    async fn insert_reservation(&self, row: reservations::ActiveModel) -> Result<i64> {
        self.insert(&row)
    }

    async fn find_reservation(&self, request_id: &str) -> Result<Option<Stored>> {
        self.query_row(
            "SELECT id, request_id, user_id, key_id, state, amount, tokens, token_sources, key_period \
             FROM reservations WHERE request_id = ?1",
            [request_id],
            |r| {
                Ok(Stored {
                    id: r.get(0)?,
                    request_id: r.get(1)?,
                    user_id: r.get(2)?,
                    key_id: r.get(3)?,
                    state: r.get(4)?,
                    amount: r.get(5)?,
                    tokens: r.get(6)?,
                    token_sources: r.get(7)?,
                    key_period: r.get(8)?,
                })
            },
        )
    }

    async fn close_reservation(&self, c: Close<'_>) -> Result<bool> {
        let n = self.execute(
            "UPDATE reservations SET state = ?1, charged_amount = ?2, charged_tokens = ?3, excess_amount = ?4, \
             shortfall = ?5, resolved_at = ?6, updated_at = ?6 WHERE id = ?7 AND state = ?8",
            (
                c.state,
                c.charged_amount,
                c.charged_tokens,
                c.excess,
                c.shortfall,
                c.now,
                c.id,
                super::reservations::PENDING,
            ),
        )?;
        Ok(n == 1)
    }

    async fn insert_usage(&self, row: usage_logs::ActiveModel) -> Result<()> {
        self.insert_later(&row)
    }

    async fn ledger_entry(&self, entry: ledger::Entry<'_>) -> Result<()> {
        self.insert(&ledger::entry_row(entry)).map(|_| ())
    }

    async fn audit(&self, entry: crate::audit::Entry<'_>) -> Result<()> {
        self.insert(&crate::audit::row(entry, None)).map(|_| ())
    }
}
