//! Per-day usage for the dashboard's chart: the last N UTC days (zero-filled, oldest first), a
//! per-model breakdown and totals over them, summed in SQL on every engine.

use std::collections::HashMap;

use sea_orm::FromQueryResult;

use super::rollup::ph;
use super::{bad, key_id_param, model_param, sum_sql};
use crate::clock::{MS_PER_DAY, day_of};
use crate::db::Db;
use crate::error::Result;

pub const DEFAULT_DAYS: u32 = 30;
pub const MAX_DAYS: u32 = 90;

/// The query parameters as received.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDailyFilter {
    pub days: Option<String>,
    pub model: Option<String>,
    pub key_id: Option<String>,
}

/// Validated parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyFilter {
    pub user_id: i64,
    pub days: u32,
    pub model: Option<String>,
    pub key_id: Option<i64>,
}

impl RawDailyFilter {
    pub fn validate(self, user_id: i64) -> Result<DailyFilter> {
        let days = match self.days.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => DEFAULT_DAYS,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_DAYS).contains(&n) => n,
                _ => return Err(bad(format!("days must be a whole number from 1 to {MAX_DAYS}, not `{s}`"))),
            },
        };
        Ok(DailyFilter {
            user_id,
            days,
            model: model_param(self.model)?,
            key_id: key_id_param(self.key_id.as_deref())?,
        })
    }
}

/// One UTC day's sums. Money in micro-units.
#[derive(Clone, Debug, Default, PartialEq, Eq, FromQueryResult)]
pub struct DayTotals {
    pub day: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost: i64,
}

/// One day's sums for one model, as the database groups them.
#[derive(Clone, Debug, Default, FromQueryResult)]
struct DayModelTotals {
    day: String,
    model: String,
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    cost: i64,
}

/// One model's sums over the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, FromQueryResult)]
pub struct ModelTotals {
    pub model: String,
    pub requests: i64,
    pub total_tokens: i64,
    pub cost: i64,
}

/// The whole answer: `series` has one entry per day from `from` to `to`, both included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daily {
    pub from: String,
    pub to: String,
    pub series: Vec<DayTotals>,
    pub models: Vec<ModelTotals>,
    pub requests: i64,
    pub total_tokens: i64,
    pub cost: i64,
}

/// The `days` UTC days ending with the day of `now_ms`, oldest first.
fn day_names(now_ms: i64, days: u32) -> Vec<String> {
    (0..i64::from(days)).rev().map(|back| day_of(now_ms - back * MS_PER_DAY)).collect()
}

/// `filter.user_id`'s sums per day and model in `table` (`usage_logs`, or the rollups in
/// `usage_daily`) over the days `[first, last]` (`YYYY-MM-DD`, so text order is date order on
/// every engine).
async fn day_model_groups(
    db: &Db,
    table: &str,
    requests: &str,
    filter: &DailyFilter,
    first: &str,
    last: &str,
) -> Result<Vec<DayModelTotals>> {
    let b = db.backend;
    let (within, [from, to]) = super::rollup::days_condition(b, table, first, last, 2)?;
    let mut values: Vec<sea_orm::Value> = vec![filter.user_id.into(), from, to];
    let mut sql = format!(
        "SELECT day, model, {requests} AS requests, {prompt} AS prompt_tokens, {completion} AS completion_tokens, \
         {total} AS total_tokens, {cost} AS cost FROM {table} WHERE user_id = {p1} AND {within}",
        requests = sum_sql(b, requests),
        prompt = sum_sql(b, "prompt_tokens"),
        completion = sum_sql(b, "completion_tokens"),
        total = sum_sql(b, "total_tokens"),
        cost = sum_sql(b, "cost"),
        p1 = ph(b, 1),
    );
    if let Some(m) = &filter.model {
        values.push(m.clone().into());
        sql.push_str(&format!(" AND model = {}", ph(b, values.len())));
    }
    if let Some(k) = filter.key_id {
        values.push(k.into());
        sql.push_str(&format!(" AND key_id = {}", ph(b, values.len())));
    }
    sql.push_str(" GROUP BY day, model");
    Ok(DayModelTotals::find_by_statement(sea_orm::Statement::from_sql_and_values(
        db.read.get_database_backend(),
        sql,
        values,
    ))
    .all(&db.read)
    .await?)
}

/// Usage of `filter.user_id` per day for the `filter.days` days ending today (`now_ms`), by the
/// precomputed UTC `day` of each row.
pub async fn daily(db: &Db, filter: &DailyFilter, now_ms: i64) -> Result<Daily> {
    let names = day_names(now_ms, filter.days);
    let (from, to) = match (names.first(), names.last()) {
        (Some(f), Some(t)) => (f.clone(), t.clone()),
        _ => return Err(bad("days must be at least 1")),
    };
    // Days already rolled up are read from `usage_daily`, the rest from `usage_logs`; each in
    // one pass by day and model (at most days × models groups). The per-day series and the
    // per-model breakdown are both sums of these.
    let done = super::rollup::rolled_through(db).await?;
    let (rolled, raw) = super::rollup::split(&from, &to, done.as_deref())?;
    let mut groups: Vec<DayModelTotals> = Vec::new();
    for (table, requests, range) in [("usage_daily", "requests", rolled), ("usage_logs", "request_count", raw)] {
        if let Some((first, last)) = range {
            groups.extend(day_model_groups(db, table, requests, filter, &first, &last).await?);
        }
    }
    let mut per_day: HashMap<String, DayTotals> = HashMap::new();
    let mut per_model: HashMap<String, ModelTotals> = HashMap::new();
    for g in groups {
        let d = per_day.entry(g.day.clone()).or_insert_with(|| DayTotals { day: g.day.clone(), ..Default::default() });
        d.requests += g.requests;
        d.prompt_tokens += g.prompt_tokens;
        d.completion_tokens += g.completion_tokens;
        d.total_tokens += g.total_tokens;
        d.cost += g.cost;
        let m = per_model
            .entry(g.model.clone())
            .or_insert_with(|| ModelTotals { model: g.model.clone(), ..Default::default() });
        m.requests += g.requests;
        m.total_tokens += g.total_tokens;
        m.cost += g.cost;
    }
    let mut models: Vec<ModelTotals> = per_model.into_values().collect();
    models.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.model.cmp(&b.model)));
    let series: Vec<DayTotals> =
        names.into_iter().map(|day| per_day.remove(&day).unwrap_or(DayTotals { day, ..Default::default() })).collect();
    Ok(Daily {
        from,
        to,
        requests: series.iter().map(|d| d.requests).sum(),
        total_tokens: series.iter().map(|d| d.total_tokens).sum(),
        cost: series.iter().map(|d| d.cost).sum(),
        series,
        models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn raw(days: Option<&str>, model: Option<&str>, key_id: Option<&str>) -> RawDailyFilter {
        RawDailyFilter {
            days: days.map(str::to_owned),
            model: model.map(str::to_owned),
            key_id: key_id.map(str::to_owned),
        }
    }

    #[test]
    fn days_are_one_to_ninety_and_default_to_thirty() {
        assert_eq!(raw(None, None, None).validate(1).unwrap().days, 30);
        assert_eq!(raw(Some("1"), None, None).validate(1).unwrap().days, 1);
        assert_eq!(
            raw(Some("90"), Some(" gpt-4o "), Some("7")).validate(1).unwrap(),
            DailyFilter { user_id: 1, days: 90, model: Some("gpt-4o".into()), key_id: Some(7) }
        );
        for bad in [
            raw(Some("0"), None, None),
            raw(Some("91"), None, None),
            raw(Some("abc"), None, None),
            raw(Some("-1"), None, None),
            raw(Some("2.5"), None, None),
            raw(None, None, Some("x")),
            raw(None, Some(&"m".repeat(129)), None),
        ] {
            assert!(matches!(bad.validate(1), Err(Error::BadRequest(_))));
        }
    }

    #[test]
    fn the_days_end_today_oldest_first_across_months() {
        // 2026-12-02T10:00:00Z
        let now = 1_796_205_600_000;
        assert_eq!(day_of(now), "2026-12-02");
        assert_eq!(day_names(now, 4), ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02"]);
        assert_eq!(day_names(now, 1), ["2026-12-02"]);
        assert_eq!(day_names(now, 90).len(), 90);
    }
}
