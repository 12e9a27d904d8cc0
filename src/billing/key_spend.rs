//! A key's spend cap: what the key spent in the current period (`key_spend`), taken with a
//! conditional `UPDATE … WHERE spent <= cap - amount` inside the reservation's transaction —
//! the same guarantee as the balance — corrected at settlement and released on void.

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set};
use time::OffsetDateTime;

use crate::db::entities::{key_spend, usage_logs};
use crate::error::Result;

/// Over what a key's spend cap counts. Days and months begin at 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Total,
    Day,
    Month,
}

impl Period {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "total" => Some(Self::Total),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The `key_spend.period` of the period containing `now_ms`: `total`, `d:YYYY-MM-DD` or
    /// `m:YYYY-MM` (UTC).
    pub fn key(self, now_ms: i64) -> String {
        let date =
            OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH).date();
        match self {
            Self::Total => "total".into(),
            Self::Day => format!("d:{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day()),
            Self::Month => format!("m:{:04}-{:02}", date.year(), u8::from(date.month())),
        }
    }

    /// Unix ms of the first instant of the period containing `now_ms`.
    pub fn start(self, now_ms: i64) -> i64 {
        let date =
            OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH).date();
        let first = match self {
            Self::Total => return 0,
            Self::Day => date,
            Self::Month => date.replace_day(1).unwrap_or(date),
        };
        first.midnight().assume_utc().unix_timestamp() * 1000
    }
}

/// A key's cap as the reservation enforces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCap {
    pub key_id: i64,
    pub user_id: i64,
    /// Micro-units per period.
    pub limit: i64,
    pub period: Period,
}

/// Makes sure the period's row exists. A new row starts from what the key was charged in the
/// period before it had one (usage rows), so a cap set midday counts the morning's spending.
pub async fn ensure_row(conn: &impl ConnectionTrait, cap: &KeyCap, period: &str, now: i64) -> Result<()> {
    let exists = key_spend::Entity::find()
        .filter(key_spend::Column::KeyId.eq(cap.key_id))
        .filter(key_spend::Column::Period.eq(period))
        .one(conn)
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let spent: Option<i64> = usage_logs::Entity::find()
        .select_only()
        .column_as(Expr::cust(sum_cost(conn.get_database_backend())), "spent")
        .filter(usage_logs::Column::UserId.eq(cap.user_id))
        .filter(usage_logs::Column::KeyId.eq(cap.key_id))
        .filter(usage_logs::Column::CreatedAt.gte(cap.period.start(now)))
        .into_tuple::<Option<i64>>()
        .one(conn)
        .await?
        .flatten();
    let row = key_spend::ActiveModel {
        key_id: Set(cap.key_id),
        period: Set(period.to_owned()),
        spent: Set(spent.unwrap_or(0)),
        updated_at: Set(now),
    };
    // A concurrent reservation may have created it meanwhile: then that row stands.
    key_spend::Entity::insert(row)
        .on_conflict(
            // A no-op update rather than DO NOTHING, which MySQL/MariaDB do not spell.
            OnConflict::columns([key_spend::Column::KeyId, key_spend::Column::Period])
                .update_column(key_spend::Column::KeyId)
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// `SUM(cost)` as a 64-bit integer on every backend (0 over no rows).
fn sum_cost(backend: sea_orm::DatabaseBackend) -> &'static str {
    match backend {
        sea_orm::DatabaseBackend::MySql => "CAST(COALESCE(SUM(cost), 0) AS SIGNED)",
        sea_orm::DatabaseBackend::Postgres => "CAST(COALESCE(SUM(cost), 0) AS BIGINT)",
        _ => "COALESCE(SUM(cost), 0)",
    }
}

/// Adds `amount` to the period's spending only if it stays within the cap. Returns whether
/// it did. One statement, so concurrent reservations can never both pass on the same room.
pub async fn take_if_within(
    conn: &impl ConnectionTrait,
    cap: &KeyCap,
    period: &str,
    amount: i64,
    now: i64,
) -> Result<bool> {
    let res = key_spend::Entity::update_many()
        .col_expr(key_spend::Column::Spent, Expr::col(key_spend::Column::Spent).add(amount))
        .col_expr(key_spend::Column::UpdatedAt, Expr::value(now))
        .filter(key_spend::Column::KeyId.eq(cap.key_id))
        .filter(key_spend::Column::Period.eq(period))
        .filter(key_spend::Column::Spent.lte(cap.limit.saturating_sub(amount)))
        .exec(conn)
        .await?;
    Ok(res.rows_affected == 1)
}

/// What the key spent in the period (0 without a row).
pub async fn spent(conn: &impl ConnectionTrait, key_id: i64, period: &str) -> Result<i64> {
    Ok(key_spend::Entity::find()
        .filter(key_spend::Column::KeyId.eq(key_id))
        .filter(key_spend::Column::Period.eq(period))
        .one(conn)
        .await?
        .map_or(0, |r| r.spent))
}

/// Adds `delta` (negative: a refund) to the period's spending, unconditionally: settlement
/// corrects the reservation to what was charged, and voiding releases it.
pub async fn adjust(conn: &impl ConnectionTrait, key_id: i64, period: &str, delta: i64, now: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    key_spend::Entity::update_many()
        .col_expr(key_spend::Column::Spent, Expr::col(key_spend::Column::Spent).add(delta))
        .col_expr(key_spend::Column::UpdatedAt, Expr::value(now))
        .filter(key_spend::Column::KeyId.eq(key_id))
        .filter(key_spend::Column::Period.eq(period))
        .exec(conn)
        .await?;
    Ok(())
}

/// Forgets a key's spending rows, so the next reservation counts afresh from the usage rows
/// (a cap newly set, or set over another period).
pub async fn forget(conn: &impl ConnectionTrait, key_id: i64) -> Result<()> {
    key_spend::Entity::delete_many().filter(key_spend::Column::KeyId.eq(key_id)).exec(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_turn_at_midnight_utc() {
        // 2026-12-01T00:00:00Z
        let midnight = 1_796_083_200_000;
        assert_eq!(Period::Day.key(midnight - 1), "d:2026-11-30");
        assert_eq!(Period::Day.key(midnight), "d:2026-12-01");
        assert_eq!(Period::Month.key(midnight - 1), "m:2026-11");
        assert_eq!(Period::Month.key(midnight), "m:2026-12");
        assert_eq!(Period::Total.key(midnight), "total");
        assert_eq!(Period::Day.start(midnight + 5000), midnight);
        assert_eq!(Period::Month.start(midnight + 20 * 86_400_000), midnight);
        assert_eq!(Period::Day.start(midnight - 1), midnight - 86_400_000);
        assert_eq!(Period::Total.start(midnight), 0);
        assert_eq!(Period::parse("week"), None);
    }
}
