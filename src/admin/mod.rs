//! What the back office reads: the queries the admin API and the command line share (user
//! search, the audit log, keys for support, revenue, model usage). Changes go through the
//! domain modules (`accounts`, `billing::ledger`, `keys`, `models`, `subscriptions`), never here.

pub mod audit_log;
pub mod idempotency;
pub mod keys;
pub mod revenue;
pub mod users;
pub mod views;

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::clock::{MS_PER_DAY, now_ms};
use crate::db::entities::usage_logs;
use crate::db::{Backend, Db};
use crate::error::{Error, Result};

/// The most rows one page may hold.
pub const MAX_PAGE_SIZE: u64 = 100;
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// The window of "recent" figures (spend, model usage).
pub const RECENT_DAYS: i64 = 30;

/// A validated page request (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub page: u64,
    pub page_size: u64,
}

impl Paging {
    /// From the optional `page` and `pageSize` query values.
    pub fn parse(page: Option<&str>, page_size: Option<&str>) -> Result<Self> {
        let number = |name: &str, raw: Option<&str>, default: u64, max: u64| -> Result<u64> {
            match raw.map(str::trim).filter(|r| !r.is_empty()) {
                None => Ok(default),
                Some(r) => match r.parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(Error::BadRequest(format!("{name} must be a whole number from 1 to {max}, not `{r}`"))),
                },
            }
        };
        Ok(Self {
            page: number("page", page, 1, 1_000_000)?,
            page_size: number("pageSize", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
        })
    }

    pub fn offset(self) -> u64 {
        (self.page - 1) * self.page_size
    }
}

impl Default for Paging {
    fn default() -> Self {
        Self { page: 1, page_size: DEFAULT_PAGE_SIZE }
    }
}

/// One page of results and how many there are in all.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub total: u64,
    pub paging: Paging,
}

/// `SUM`/`COUNT` of BIGINTs come back as DECIMAL on MySQL and NUMERIC on PostgreSQL: cast
/// them back to a 64-bit integer, per engine.
pub(crate) fn int_expr(backend: Backend, aggregate: &str) -> SimpleExpr {
    let sql = match backend {
        Backend::Postgres => format!("CAST(COALESCE({aggregate}, 0) AS BIGINT)"),
        Backend::MySql => format!("CAST(COALESCE({aggregate}, 0) AS SIGNED)"),
        Backend::Sqlite => format!("COALESCE({aggregate}, 0)"),
    };
    Expr::cust(sql)
}

/// The UTC midnight that starts the recent window, in unix milliseconds. Usage rows are read
/// from it by `created_at` (their `day` is its UTC day), which their time
/// indexes serve.
pub fn recent_start_ms() -> i64 {
    (now_ms() - (RECENT_DAYS - 1) * MS_PER_DAY).div_euclid(MS_PER_DAY) * MS_PER_DAY
}

/// Requests per model name over the recent window (refusals counted as the requests they were).
pub async fn model_requests_recent(db: &Db) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::Model)
        .column_as(int_expr(db.backend, "SUM(request_count)"), "requests")
        .filter(usage_logs::Column::CreatedAt.gte(recent_start_ms()))
        .group_by(usage_logs::Column::Model)
        .into_tuple()
        .all(&db.read)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Parses a signed decimal amount (`12.50`, `-3`) into micro-units: a top-up or a correction.
pub fn parse_delta(raw: &str) -> Result<i64> {
    let s = raw.trim();
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if negative && digits.starts_with('+') {
        return Err(Error::BadRequest(format!("amount: `{s}` is not a decimal amount")));
    }
    let micros = crate::money::parse_amount(digits).map_err(|e| Error::BadRequest(format!("amount: {e}")))?;
    if micros == 0 {
        return Err(Error::BadRequest("amount must not be zero".into()));
    }
    Ok(if negative { -micros } else { micros })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_signed_decimal_strings() {
        assert_eq!(parse_delta("12.50").ok(), Some(12_500_000));
        assert_eq!(parse_delta(" -3.00 ").ok(), Some(-3_000_000));
        for bad in ["0", "-0.00", "--1", "-", "1e3", "abc", "", "1.0000001", "-+1"] {
            assert!(parse_delta(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paging_is_bounded() {
        assert_eq!(Paging::parse(None, None).ok(), Some(Paging { page: 1, page_size: DEFAULT_PAGE_SIZE }));
        assert_eq!(Paging::parse(Some("3"), Some("100")).ok(), Some(Paging { page: 3, page_size: 100 }));
        for (p, s) in [(Some("0"), None), (None, Some("101")), (Some("-1"), None), (Some("x"), None)] {
            assert!(Paging::parse(p, s).is_err(), "{p:?} {s:?}");
        }
    }
}
