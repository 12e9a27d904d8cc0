//! Usage queries for the dashboard: filters, totals over the whole filtered set, pages, the
//! CSV export, and the per-day chart (`daily`).

mod csv;
pub mod daily;
pub mod rollup;

pub use csv::{CSV_HEADER, csv_record, neutralise};

use std::collections::{BTreeSet, HashMap};

use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, macros::format_description};

use crate::clock::MS_PER_DAY;
use crate::db::entities::{api_keys, usage_logs};
use crate::db::{Backend, Db};
use crate::error::{Error, Result};

/// The most rows one export may hold.
pub const EXPORT_LIMIT: u64 = 10_000;
pub const MAX_PAGE_SIZE: u64 = 100;

/// The query parameters as received (all optional strings, so every mistake gets a message).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawFilter {
    pub model: Option<String>,
    pub key_id: Option<String>,
    pub status_code: Option<String>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub page: Option<String>,
    pub page_size: Option<String>,
}

/// Validated filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub user_id: i64,
    pub model: Option<String>,
    /// One of the user's keys; rows of other users never match whatever the id.
    pub key_id: Option<i64>,
    pub status_code: Option<i32>,
    /// Inclusive lower bound, unix ms.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, unix ms.
    pub until_ms: Option<i64>,
    pub page: u64,
    pub page_size: u64,
}

pub(crate) fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

/// A date (`2026-11-25`, a whole UTC day) or an instant (RFC 3339): (start ms, end ms).
fn parse_when(name: &str, raw: &str) -> Result<(i64, i64)> {
    let raw = raw.trim();
    if let Ok(date) = Date::parse(raw, format_description!("[year]-[month]-[day]")) {
        let start = date.midnight().assume_utc().unix_timestamp() * 1000;
        return Ok((start, start + MS_PER_DAY));
    }
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        let ms =
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad(format!("{name} is out of range")))?;
        return Ok((ms, ms + 1));
    }
    Err(bad(format!("{name} must be a date (YYYY-MM-DD) or an RFC 3339 time, not `{raw}`")))
}

/// The `model` filter: blank is none.
pub(crate) fn model_param(raw: Option<String>) -> Result<Option<String>> {
    match raw.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()) {
        Some(m) if m.len() > 128 => Err(bad("model is at most 128 characters")),
        other => Ok(other),
    }
}

/// The `keyId` filter: blank is none.
pub(crate) fn key_id_param(raw: Option<&str>) -> Result<Option<i64>> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Some(id)),
            _ => Err(bad(format!("keyId must be a key id (a positive whole number), not `{s}`"))),
        },
    }
}

impl RawFilter {
    pub fn validate(self, user_id: i64) -> Result<Filter> {
        let model = model_param(self.model)?;
        let key_id = key_id_param(self.key_id.as_deref())?;
        let status_code = match self.status_code.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match s.parse::<i32>() {
                Ok(c) if (0..=599).contains(&c) => Some(c),
                _ => return Err(bad(format!("statusCode must be an HTTP status code, not `{s}`"))),
            },
        };
        let from_ms = self
            .start_date
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_when("startDate", s))
            .transpose()?
            .map(|r| r.0);
        let until_ms = self
            .end_date
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_when("endDate", s))
            .transpose()?
            .map(|r| r.1);
        if let (Some(f), Some(u)) = (from_ms, until_ms)
            && f >= u
        {
            return Err(bad("startDate must be before endDate"));
        }
        let number = |name: &str, raw: Option<String>, default: u64, max: u64| -> Result<u64> {
            match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(default),
                Some(s) => match s.parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(bad(format!("{name} must be a whole number from 1 to {max}, not `{s}`"))),
                },
            }
        };
        Ok(Filter {
            user_id,
            model,
            key_id,
            status_code,
            from_ms,
            until_ms,
            page: number("page", self.page, 1, 1_000_000)?,
            page_size: number("pageSize", self.page_size, 20, MAX_PAGE_SIZE)?,
        })
    }
}

impl Filter {
    fn condition(&self) -> Condition {
        let mut c = Condition::all().add(usage_logs::Column::UserId.eq(self.user_id));
        if let Some(m) = &self.model {
            c = c.add(usage_logs::Column::Model.eq(m.clone()));
        }
        if let Some(k) = self.key_id {
            c = c.add(usage_logs::Column::KeyId.eq(k));
        }
        if let Some(s) = self.status_code {
            c = c.add(usage_logs::Column::StatusCode.eq(s));
        }
        if let Some(f) = self.from_ms {
            c = c.add(usage_logs::Column::CreatedAt.gte(f));
        }
        if let Some(u) = self.until_ms {
            c = c.add(usage_logs::Column::CreatedAt.lt(u));
        }
        c
    }
}

/// Totals over the whole filtered set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromQueryResult)]
pub struct Totals {
    pub total_cost: i64,
    pub total_tokens: i64,
    pub total_request_count: i64,
}

/// `SUM` of a BIGINT is DECIMAL on MySQL and NUMERIC on PostgreSQL: cast it back, per engine.
pub(crate) fn sum_sql(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Postgres => format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT)"),
        Backend::MySql => format!("CAST(COALESCE(SUM({column}), 0) AS SIGNED)"),
        Backend::Sqlite => format!("COALESCE(SUM({column}), 0)"),
    }
}

/// `sum_sql` as an expression for the query builder.
pub(crate) fn sum(backend: Backend, column: &str) -> SimpleExpr {
    Expr::cust(sum_sql(backend, column))
}

/// Totals over the filtered set. Whole days inside the range that are rolled up are read from
/// `usage_daily` (customers × keys × models rows a day, not requests), the rest — the partial
/// days at the ends of the range and the days not rolled up yet — from `usage_logs`; a status
/// filter, which the rollups do not keep, reads `usage_logs` only.
pub async fn totals(db: &Db, filter: &Filter) -> Result<Totals> {
    let rolled = match filter.status_code {
        Some(_) => None,
        None => rolled_days(filter, rollup::rolled_through(db).await?.as_deref()),
    };
    let Some((first, last)) = rolled else { return raw_totals(db, filter.condition()).await };
    let mut t = rolled_totals(db, filter, &first, &last).await?;
    // By time, which the customer's time index serves: `day` is the UTC day of `created_at`.
    let mut parts = vec![usage_logs::Column::CreatedAt.gte(rollup::day_start_ms(&last)? + MS_PER_DAY)];
    if filter.from_ms.is_some() {
        parts.push(usage_logs::Column::CreatedAt.lt(rollup::day_start_ms(&first)?));
    }
    for part in parts {
        let r = raw_totals(db, filter.condition().add(part)).await?;
        t.total_cost += r.total_cost;
        t.total_tokens += r.total_tokens;
        t.total_request_count += r.total_request_count;
    }
    Ok(t)
}

/// The whole UTC days `[first, last]` inside the filter's range that are rolled up (every day
/// up to `rolled_through` is), if any.
fn rolled_days(filter: &Filter, rolled_through: Option<&str>) -> Option<(String, String)> {
    let done = rolled_through?;
    let first = match filter.from_ms {
        // The first midnight at or after `from`.
        Some(from) => crate::clock::day_of((from + MS_PER_DAY - 1).div_euclid(MS_PER_DAY) * MS_PER_DAY),
        None => String::new(),
    };
    let last = match filter.until_ms {
        Some(until) => {
            let before = crate::clock::day_of(until.div_euclid(MS_PER_DAY) * MS_PER_DAY - MS_PER_DAY);
            if before.as_str() < done { before } else { done.to_owned() }
        }
        None => done.to_owned(),
    };
    (first <= last).then_some((first, last))
}

async fn raw_totals(db: &Db, condition: Condition) -> Result<Totals> {
    let row = usage_logs::Entity::find()
        .select_only()
        .column_as(sum(db.backend, "cost"), "total_cost")
        .column_as(sum(db.backend, "total_tokens"), "total_tokens")
        .column_as(sum(db.backend, "request_count"), "total_request_count")
        .filter(condition)
        .into_model::<Totals>()
        .one(&db.read)
        .await?;
    Ok(row.unwrap_or_default())
}

async fn rolled_totals(db: &Db, filter: &Filter, first: &str, last: &str) -> Result<Totals> {
    let b = db.backend;
    let mut values: Vec<sea_orm::Value> = vec![filter.user_id.into(), first.into(), last.into()];
    let mut sql = format!(
        "SELECT {cost} AS total_cost, {tokens} AS total_tokens, {requests} AS total_request_count \
         FROM usage_daily WHERE user_id = {p1} AND day >= {p2} AND day <= {p3}",
        cost = sum_sql(b, "cost"),
        tokens = sum_sql(b, "total_tokens"),
        requests = sum_sql(b, "requests"),
        p1 = rollup::ph(b, 1),
        p2 = rollup::ph(b, 2),
        p3 = rollup::ph(b, 3),
    );
    if let Some(m) = &filter.model {
        values.push(m.clone().into());
        sql.push_str(&format!(" AND model = {}", rollup::ph(b, values.len())));
    }
    if let Some(k) = filter.key_id {
        values.push(k.into());
        sql.push_str(&format!(" AND key_id = {}", rollup::ph(b, values.len())));
    }
    let stmt = sea_orm::Statement::from_sql_and_values(db.read.get_database_backend(), sql, values);
    Ok(Totals::find_by_statement(stmt).one(&db.read).await?.unwrap_or_default())
}

/// Money `user_id` was charged (micro-units) for usage in `[from_ms, until_ms)`; no upper bound
/// when `until_ms` is `None`.
pub async fn spent(db: &Db, user_id: i64, from_ms: i64, until_ms: Option<i64>) -> Result<i64> {
    let filter = Filter {
        user_id,
        model: None,
        key_id: None,
        status_code: None,
        from_ms: Some(from_ms),
        until_ms,
        page: 1,
        page_size: 1,
    };
    Ok(totals(db, &filter).await?.total_cost)
}

/// The customer's rows that `filter` selects. MySQL/MariaDB are told not to read them through
/// the index of everyone's rows by time (others ignore the hint): for `ORDER BY created_at DESC,
/// id DESC LIMIT n` their optimizer prefers walking everyone's rows newest first, skipping other
/// customers', to the customer's own `(user_id, created_at)` index (at 5M rows, page 50 of a
/// heavy customer took 208 ms that way).
fn customer_rows(filter: &Filter) -> sea_orm::Select<usage_logs::Entity> {
    use sea_orm::QueryTrait;
    use sea_orm::sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
    let mut q = usage_logs::Entity::find().filter(filter.condition());
    QueryTrait::query(&mut q).ignore_index(sea_orm::sea_query::Alias::new("ix_usage_time"), IndexHintScope::All);
    q
}

/// One page of rows, newest first.
pub async fn page(db: &Db, filter: &Filter) -> Result<Vec<usage_logs::Model>> {
    Ok(customer_rows(filter)
        .order_by_desc(usage_logs::Column::CreatedAt)
        .order_by_desc(usage_logs::Column::Id)
        .offset((filter.page - 1) * filter.page_size)
        .limit(filter.page_size)
        .all(&db.read)
        .await?)
}

/// How many rows match.
pub async fn count(db: &Db, filter: &Filter) -> Result<u64> {
    Ok(usage_logs::Entity::find().filter(filter.condition()).count(&db.read).await?)
}

/// Where an export batch ends: the last row's `(created_at, id)`; the next batch starts after it.
pub type ExportCursor = (i64, i64);

/// Rows for the export, newest first in the history's order (`created_at`, then `id`), `batch`
/// at a time after `after` (keyset: each batch is read from the `(user_id, created_at)` index,
/// never sorted, however many rows the customer has).
pub async fn export_batch(
    db: &Db,
    filter: &Filter,
    after: Option<ExportCursor>,
    batch: u64,
) -> Result<Vec<usage_logs::Model>> {
    let mut q = customer_rows(filter);
    if let Some((created_at, id)) = after {
        // The bound on its own as well: an optimizer that takes no range from the `OR` below
        // still starts at the cursor, not at the customer's newest row, in every batch.
        q = q.filter(usage_logs::Column::CreatedAt.lte(created_at));
        q = q.filter(Condition::any().add(usage_logs::Column::CreatedAt.lt(created_at)).add(
            Condition::all().add(usage_logs::Column::CreatedAt.eq(created_at)).add(usage_logs::Column::Id.lt(id)),
        ));
    }
    Ok(q.order_by_desc(usage_logs::Column::CreatedAt)
        .order_by_desc(usage_logs::Column::Id)
        .limit(batch)
        .all(&db.read)
        .await?)
}

/// The cursor after `row`.
pub fn cursor_after(row: &usage_logs::Model) -> ExportCursor {
    (row.created_at, row.id)
}

/// The names of `user_id`'s keys among `ids` (revoked ones included; a key that is gone, or
/// someone else's, has none).
pub async fn key_names(db: &Db, user_id: i64, ids: impl IntoIterator<Item = i64>) -> Result<HashMap<i64, String>> {
    let ids: BTreeSet<i64> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user_id))
        .filter(api_keys::Column::Id.is_in(ids))
        .all(&db.read)
        .await?;
    Ok(rows.into_iter().map(|k| (k.id, k.name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawFilter {
        let mut r = RawFilter::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "model" => r.model = v,
                "keyId" => r.key_id = v,
                "statusCode" => r.status_code = v,
                "startDate" => r.start_date = v,
                "endDate" => r.end_date = v,
                "page" => r.page = v,
                "pageSize" => r.page_size = v,
                _ => unreachable!(),
            }
        }
        r
    }

    #[test]
    fn filters_are_validated_with_messages() {
        let f =
            raw(&[("startDate", "2026-11-01"), ("endDate", "2026-11-01"), ("statusCode", "402")]).validate(7).unwrap();
        assert_eq!(f.until_ms.unwrap() - f.from_ms.unwrap(), MS_PER_DAY, "end dates are inclusive days");
        assert_eq!((f.page, f.page_size, f.status_code, f.key_id), (1, 20, Some(402), None));
        assert_eq!(raw(&[("keyId", " 12 ")]).validate(7).unwrap().key_id, Some(12));
        for bad in [
            raw(&[("page", "0")]),
            raw(&[("pageSize", "101")]),
            raw(&[("pageSize", "ten")]),
            raw(&[("statusCode", "abc")]),
            raw(&[("statusCode", "1000")]),
            raw(&[("startDate", "yesterday")]),
            raw(&[("startDate", "2026-11-02"), ("endDate", "2026-11-01")]),
            raw(&[("model", &"m".repeat(129))]),
            raw(&[("keyId", "0")]),
            raw(&[("keyId", "-3")]),
            raw(&[("keyId", "abc")]),
        ] {
            assert!(matches!(bad.validate(1), Err(Error::BadRequest(_))));
        }
    }
}
