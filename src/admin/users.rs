//! Finding users: search with paging and the figures support asks for first (balance,
//! subscription tokens left, keys, recent spend, last activity), and one user in detail.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Page, Paging, int_expr};
use crate::accounts::{ROLE_ADMIN, ROLE_USER};
use crate::clock::now_ms;
use crate::db::Db;
use crate::db::entities::{api_keys, balances, credit_transactions, subscriptions, usage_logs, users};
use crate::error::{Error, Result};

/// What the user list can be filtered by.
#[derive(Clone, Debug, Default)]
pub struct UserQuery {
    /// Part of the email or name, any case.
    pub q: Option<String>,
    /// `user` or `admin`.
    pub role: Option<String>,
    /// `active` or `disabled`.
    pub status: Option<String>,
    pub paging: Paging,
}

/// One row of the user list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub user: users::Model,
    pub balance: i64,
    /// Tokens left in subscriptions that have not expired.
    pub subscription_tokens: i64,
    /// Keys not revoked.
    pub keys: i64,
    /// Money charged over the recent window (micro-units).
    pub spend_recent: i64,
    /// The latest request (usage row) or key use, unix ms.
    pub last_active: Option<i64>,
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `\` as the escape character.
pub(crate) fn like_pattern(raw: &str) -> String {
    let mut out = String::from("%");
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl UserQuery {
    fn condition(&self) -> Result<Condition> {
        let mut c = Condition::all();
        if let Some(q) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
            if q.chars().count() > 255 {
                return Err(Error::BadRequest("q is at most 255 characters".into()));
            }
            let pattern = like_pattern(&q.to_lowercase());
            c = c.add(
                Condition::any()
                    .add(Expr::col(users::Column::Email).like(LikeExpr::new(pattern.clone()).escape('\\')))
                    .add(
                        Expr::expr(Func::lower(Expr::col(users::Column::Name)))
                            .like(LikeExpr::new(pattern).escape('\\')),
                    ),
            );
        }
        match self.role.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            None => {}
            Some(r @ (ROLE_USER | ROLE_ADMIN)) => c = c.add(users::Column::Role.eq(r)),
            Some(r) => return Err(Error::BadRequest(format!("role must be `user` or `admin`, not `{r}`"))),
        }
        match self.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => {}
            Some("active") => c = c.add(users::Column::Disabled.eq(false)),
            Some("disabled") => c = c.add(users::Column::Disabled.eq(true)),
            Some(s) => return Err(Error::BadRequest(format!("status must be `active` or `disabled`, not `{s}`"))),
        }
        Ok(c)
    }
}

/// The users matching `query`, newest first, one page.
pub async fn search(db: &Db, query: &UserQuery) -> Result<Page<UserSummary>> {
    let condition = query.condition()?;
    let total = users::Entity::find().filter(condition.clone()).count(&db.read).await?;
    let rows = users::Entity::find()
        .filter(condition)
        .order_by_desc(users::Column::Id)
        .offset(query.paging.offset())
        .limit(query.paging.page_size)
        .all(&db.read)
        .await?;
    let rows = summaries(db, rows).await?;
    Ok(Page { rows, total, paging: query.paging })
}

/// The list figures for these users, in a handful of grouped queries.
pub async fn summaries(db: &Db, rows: Vec<users::Model>) -> Result<Vec<UserSummary>> {
    let ids: Vec<i64> = rows.iter().map(|u| u.id).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let conn = &db.read;
    let balances: HashMap<i64, i64> = balances::Entity::find()
        .filter(balances::Column::UserId.is_in(ids.clone()))
        .all(conn)
        .await?
        .into_iter()
        .map(|b| (b.user_id, b.amount))
        .collect();
    let tokens: HashMap<i64, i64> = subscriptions::Entity::find()
        .select_only()
        .column(subscriptions::Column::UserId)
        .column_as(int_expr(db.backend, "SUM(tokens_remaining)"), "tokens")
        .filter(subscriptions::Column::UserId.is_in(ids.clone()))
        .filter(subscriptions::Column::ExpiresAt.gt(now_ms()))
        .group_by(subscriptions::Column::UserId)
        .into_tuple::<(i64, i64)>()
        .all(conn)
        .await?
        .into_iter()
        .collect();
    let keys: Vec<(i64, i64, Option<i64>)> = api_keys::Entity::find()
        .select_only()
        .column(api_keys::Column::UserId)
        .column_as(int_expr(db.backend, "SUM(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END)"), "active")
        .column_as(Expr::col(api_keys::Column::LastUsedAt).max(), "last_used")
        .filter(api_keys::Column::UserId.is_in(ids.clone()))
        .group_by(api_keys::Column::UserId)
        .into_tuple()
        .all(conn)
        .await?;
    let keys: HashMap<i64, (i64, Option<i64>)> = keys.into_iter().map(|(u, n, l)| (u, (n, l))).collect();
    let spend: HashMap<i64, i64> = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::UserId)
        .column_as(int_expr(db.backend, "SUM(cost)"), "spend")
        .filter(usage_logs::Column::UserId.is_in(ids.clone()))
        .filter(usage_logs::Column::CreatedAt.gte(super::recent_start_ms()))
        .group_by(usage_logs::Column::UserId)
        .into_tuple::<(i64, i64)>()
        .all(conn)
        .await?
        .into_iter()
        .collect();
    let last_request: HashMap<i64, Option<i64>> = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::UserId)
        .column_as(Expr::col(usage_logs::Column::CreatedAt).max(), "last")
        .filter(usage_logs::Column::UserId.is_in(ids))
        .group_by(usage_logs::Column::UserId)
        .into_tuple::<(i64, Option<i64>)>()
        .all(conn)
        .await?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|user| {
            let id = user.id;
            let (key_count, key_used) = keys.get(&id).copied().unwrap_or((0, None));
            let last_active = [last_request.get(&id).copied().flatten(), key_used].into_iter().flatten().max();
            UserSummary {
                balance: balances.get(&id).copied().unwrap_or(0),
                subscription_tokens: tokens.get(&id).copied().unwrap_or(0),
                keys: key_count,
                spend_recent: spend.get(&id).copied().unwrap_or(0),
                last_active,
                user,
            }
        })
        .collect())
}

/// How many rows of recent usage and ledger a user's detail shows.
pub const DETAIL_ROWS: u64 = 50;

/// One user in full, for support.
#[derive(Clone, Debug)]
pub struct UserDetail {
    pub summary: UserSummary,
    /// Every key, revoked ones included, newest first.
    pub keys: Vec<api_keys::Model>,
    /// Every subscription, latest expiry first.
    pub subscriptions: Vec<subscriptions::Model>,
    /// The latest usage rows, newest first.
    pub usage: Vec<usage_logs::Model>,
    /// The latest ledger entries, newest first.
    pub ledger: Vec<credit_transactions::Model>,
}

/// The user with this id in detail, or `NotFound`.
pub async fn detail(db: &Db, user_id: i64) -> Result<UserDetail> {
    let user = crate::accounts::require(&db.read, user_id).await?;
    let summary =
        summaries(db, vec![user]).await?.pop().ok_or_else(|| Error::NotFound(format!("no user with id {user_id}")))?;
    let conn = &db.read;
    let keys = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user_id))
        .order_by_desc(api_keys::Column::Id)
        .all(conn)
        .await?;
    let subscriptions = subscriptions::Entity::find()
        .filter(subscriptions::Column::UserId.eq(user_id))
        .order_by_desc(subscriptions::Column::ExpiresAt)
        .order_by_desc(subscriptions::Column::Id)
        .all(conn)
        .await?;
    let usage = usage_logs::Entity::find()
        .filter(usage_logs::Column::UserId.eq(user_id))
        .order_by_desc(usage_logs::Column::Id)
        .limit(DETAIL_ROWS)
        .all(conn)
        .await?;
    let ledger = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user_id))
        .order_by_desc(credit_transactions::Column::Id)
        .limit(DETAIL_ROWS)
        .all(conn)
        .await?;
    Ok(UserDetail { summary, keys, subscriptions, usage, ledger })
}
