//! Revenue by day or by month: money charged, tokens, requests and paying users — from the
//! per-model and payer rollups for days that are over, from the usage rows for the rest
//! (grouped in SQL on their `day` column; a month is its first seven characters) — top-ups from
//! the ledger, and a breakdown per model.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QuerySelect};
use time::{Date, Duration, macros::format_description};

use super::int_expr;
use crate::clock::{MS_PER_DAY, day_of, midnight_ms, now_ms};
use crate::db::entities::credit_transactions;
use crate::db::{Backend, Db};
use crate::error::{Error, Result};

/// The longest range one answer covers, per granularity, in days.
const MAX_DAYS: i64 = 366;
const MAX_MONTH_DAYS: i64 = 3660;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
}

impl Granularity {
    pub fn parse(raw: Option<&str>) -> Result<Self> {
        match raw.map(str::trim).filter(|r| !r.is_empty()) {
            None | Some("day") => Ok(Self::Day),
            Some("month") => Ok(Self::Month),
            Some(other) => Err(Error::BadRequest(format!("granularity must be `day` or `month`, not `{other}`"))),
        }
    }

    fn key(self, day: &str) -> String {
        match self {
            Self::Day => day.to_owned(),
            Self::Month => day.chars().take(7).collect(),
        }
    }
}

/// Figures for one period, or for one model over the range. Money in micro-units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub charged: i64,
    pub tokens: i64,
    pub requests: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Period {
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    pub figures: Figures,
    /// Users charged something in the period.
    pub paying_users: i64,
    /// Money added by top-ups and redemption codes in the period.
    pub topups: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revenue {
    pub granularity: Granularity,
    /// The first and last day covered (inclusive).
    pub start: String,
    pub end: String,
    /// Every period of the range, oldest first, empty ones included.
    pub periods: Vec<Period>,
    /// Per model over the whole range, most charged first.
    pub models: Vec<(String, Figures)>,
    pub totals: Figures,
    pub topups: i64,
}

/// A date of the years 2000 to 2200 (so no day arithmetic on it can overflow).
fn parse_day(name: &str, raw: &str) -> Result<Date> {
    Date::parse(raw.trim(), format_description!("[year]-[month]-[day]"))
        .ok()
        .filter(|d| (2000..=2200).contains(&d.year()))
        .ok_or_else(|| {
            Error::BadRequest(format!("{name} must be a date (YYYY-MM-DD) from 2000 to 2200, not `{}`", raw.trim()))
        })
}

fn format_day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The range asked for, or the default: the last 30 days by day, the last 12 months by month.
pub fn range(granularity: Granularity, start: Option<&str>, end: Option<&str>) -> Result<(Date, Date)> {
    let nonempty = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let today = parse_day("today", &day_of(now_ms()))?;
    let end = match nonempty(end) {
        Some(e) => parse_day("end", &e)?,
        None => today,
    };
    let start = match nonempty(start) {
        Some(s) => parse_day("start", &s)?,
        None => match granularity {
            Granularity::Day => end - Duration::days(29),
            Granularity::Month => {
                let first = end.replace_day(1).map_err(|e| Error::Internal(e.into()))?;
                let (mut y, mut m) = (first.year(), u8::from(first.month()));
                for _ in 0..11 {
                    if m == 1 {
                        (y, m) = (y - 1, 12);
                    } else {
                        m -= 1;
                    }
                }
                parse_day("start", &format!("{y:04}-{m:02}-01"))?
            }
        },
    };
    if start > end {
        return Err(Error::BadRequest("start must not be after end".into()));
    }
    let max = if granularity == Granularity::Day { MAX_DAYS } else { MAX_MONTH_DAYS };
    if (end - start).whole_days() >= max {
        return Err(Error::BadRequest(format!("a {granularity:?} report covers at most {max} days").to_lowercase()));
    }
    Ok((start, end))
}

/// The period key of `day` (YYYY-MM-DD) in SQL: the day itself, or its month.
fn period_sql(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::Day => "day",
        Granularity::Month => "SUBSTR(day, 1, 7)",
    }
}

/// Whole UTC days since the epoch of a unix-ms column, in SQL (integer division per engine).
fn epoch_day_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::MySql => "(created_at DIV 86400000)",
        Backend::Postgres | Backend::Sqlite => "(created_at / 86400000)",
    }
}

/// One period's sums for one model.
#[derive(FromQueryResult)]
struct ModelSums {
    period: String,
    model: String,
    charged: i64,
    tokens: i64,
    requests: i64,
}

/// Per period and model, the money charged, tokens and requests in `table` (`usage_logs`, or
/// the per-model rollups in `usage_daily_models`) over the days `[from, to]`.
async fn model_sums(
    db: &Db,
    table: &str,
    requests: &str,
    period: &str,
    from: &str,
    to: &str,
) -> Result<Vec<ModelSums>> {
    let b = db.backend;
    let sum = |c: &str| crate::usage::sum_sql(b, c);
    let (within, values) = crate::usage::rollup::days_condition(b, table, from, to, 1)?;
    let sql = format!(
        "SELECT {period} AS period, model, {charged} AS charged, {tokens} AS tokens, {requests} AS requests \
         FROM {table} WHERE {within} GROUP BY {period}, model",
        charged = sum("cost"),
        tokens = sum("total_tokens"),
        requests = sum(requests),
    );
    Ok(ModelSums::find_by_statement(sea_orm::Statement::from_sql_and_values(
        db.read.get_database_backend(),
        sql,
        values,
    ))
    .all(&db.read)
    .await?)
}

/// The (period, customer) pairs with a charge over the days `[from, to]`: in `usage_logs`
/// (`charged` = `cost > 0`) or in the payers rollup (`charged` = `1 = 1`).
async fn paying_pairs(
    db: &Db,
    table: &str,
    charged: &str,
    period: &str,
    from: &str,
    to: &str,
) -> Result<Vec<(String, i64)>> {
    #[derive(FromQueryResult)]
    struct Pair {
        period: String,
        user_id: i64,
    }
    let (within, values) = crate::usage::rollup::days_condition(db.backend, table, from, to, 1)?;
    let sql = format!(
        "SELECT {period} AS period, user_id FROM {table} WHERE {within} AND {charged} GROUP BY {period}, user_id"
    );
    let pairs =
        Pair::find_by_statement(sea_orm::Statement::from_sql_and_values(db.read.get_database_backend(), sql, values))
            .all(&db.read)
            .await?;
    Ok(pairs.into_iter().map(|p| (p.period, p.user_id)).collect())
}

/// Revenue between `start` and `end` (whole UTC days, inclusive).
pub async fn report(db: &Db, granularity: Granularity, start: Date, end: Date) -> Result<Revenue> {
    let (first, last) = (format_day(start), format_day(end));
    let period = period_sql(granularity);
    // Days already rolled up are read from their per-model sums and payers (models and payers
    // rows a day), the rest from `usage_logs`.
    let done = crate::usage::rollup::rolled_through(db).await?;
    let (rolled, raw) = crate::usage::rollup::split(&first, &last, done.as_deref())?;
    let mut by_model: Vec<ModelSums> = Vec::new();
    let mut payers: HashSet<(String, i64)> = HashSet::new();
    let sources = [
        (("usage_daily_models", "requests"), ("usage_daily_payers", "1 = 1"), rolled),
        (("usage_logs", "request_count"), ("usage_logs", "cost > 0"), raw),
    ];
    for ((sums, requests), (pairs, charged), range) in sources {
        let Some((from, to)) = range else { continue };
        by_model.extend(model_sums(db, sums, requests, period, &from, &to).await?);
        payers.extend(paying_pairs(db, pairs, charged, period, &from, &to).await?);
    }
    let mut paying: HashMap<String, i64> = HashMap::new();
    for (key, _) in payers {
        *paying.entry(key).or_default() += 1;
    }
    let epoch_day = epoch_day_sql(db.backend);
    let topups: Vec<(i64, i64)> = credit_transactions::Entity::find()
        .select_only()
        .column_as(Expr::cust(epoch_day), "epoch_day")
        .column_as(int_expr(db.backend, "SUM(amount)"), "amount")
        .filter(
            // Money customers put in: admin top-ups and redeemed codes, net of the corrections
            // that took some back (sign-up credits are not revenue).
            credit_transactions::Column::Kind.is_in([
                crate::billing::ledger::TOPUP,
                crate::billing::ledger::REDEEM,
                crate::billing::ledger::ADJUSTMENT,
            ]),
        )
        .filter(credit_transactions::Column::CreatedAt.gte(midnight_ms(start)))
        .filter(credit_transactions::Column::CreatedAt.lt(midnight_ms(end) + MS_PER_DAY))
        .group_by(Expr::cust(epoch_day))
        .into_tuple()
        .all(&db.read)
        .await?;

    let mut periods: BTreeMap<String, Period> = BTreeMap::new();
    let mut day = start;
    while day <= end {
        let key = granularity.key(&format_day(day));
        periods.entry(key.clone()).or_insert_with(|| Period { period: key, ..Default::default() });
        day += Duration::days(1);
    }
    let mut models: HashMap<String, Figures> = HashMap::new();
    let mut totals = Figures::default();
    for ModelSums { period: key, model, charged, tokens, requests } in by_model {
        let p = periods.entry(key.clone()).or_insert_with(|| Period { period: key, ..Default::default() });
        for f in [&mut p.figures, models.entry(model).or_default(), &mut totals] {
            f.charged += charged;
            f.tokens += tokens;
            f.requests += requests;
        }
    }
    for (key, n) in paying {
        if let Some(p) = periods.get_mut(&key) {
            p.paying_users = n;
        }
    }
    let mut topup_total = 0;
    for (epoch_day, amount) in topups {
        let key = granularity.key(&day_of(epoch_day * MS_PER_DAY));
        if let Some(p) = periods.get_mut(&key) {
            p.topups += amount;
        }
        topup_total += amount;
    }
    let mut models: Vec<(String, Figures)> = models.into_iter().collect();
    models.sort_by(|a, b| b.1.charged.cmp(&a.1.charged).then_with(|| a.0.cmp(&b.0)));
    Ok(Revenue {
        granularity,
        start: first,
        end: last,
        periods: periods.into_values().collect(),
        models,
        totals,
        topups: topup_total,
    })
}
