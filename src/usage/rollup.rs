//! Daily rollups: the sums of each day's usage rows per customer, key and model, in
//! `usage_daily`, for days that are over, and for the revenue report the sums per model
//! (`usage_daily_models`) and the customers charged (`usage_daily_payers`). The customers'
//! charts and the revenue report read rolled-up days from there and only the last days from
//! `usage_logs`, so their cost grows with days (and a customer's keys and models, or the
//! paying customers), not with requests.
//!
//! A usage row is written on the day it names (`day` is the UTC day of its `created_at`, set
//! when the row is written), so once a day is over its rows never change. Days before
//! yesterday are rolled up (one day of margin for instances whose clocks disagree), oldest
//! first, each once: `usage_daily_days` records the days done, and every day up to the latest
//! one recorded is done, so readers split a range at that day. Several instances may run the
//! job at once: a day's rows and its record are written in one transaction, and one already
//! recorded is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};
use time::{Date, Duration, macros::format_description};

use super::sum_sql as sum;
use crate::clock::{MS_PER_DAY, day_of};
use crate::db::{Backend, Db};
use crate::error::{Error, Result};

/// Days before this many days ago are over and may be rolled up.
pub const OPEN_DAYS: i64 = 2;
/// Rolled-up rows written per INSERT statement.
const ROWS_PER_INSERT: usize = 500;

/// One group of a day's usage rows.
#[derive(Clone, Debug, FromQueryResult)]
struct Group {
    user_id: i64,
    key_id: i64,
    model: String,
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    cost: i64,
}

fn db_backend(backend: Backend) -> DbBackend {
    match backend {
        Backend::Sqlite => DbBackend::Sqlite,
        Backend::MySql => DbBackend::MySql,
        Backend::Postgres => DbBackend::Postgres,
    }
}

/// The `n`-th (1-based) bind placeholder.
pub(crate) fn ph(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::MySql | Backend::Sqlite => "?".to_owned(),
    }
}

fn parse_day(day: &str) -> Result<Date> {
    Date::parse(day, format_description!("[year]-[month]-[day]"))
        .map_err(|e| Error::Internal(anyhow::anyhow!("a usage day `{day}` is not a date: {e}")))
}

fn format_day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Unix milliseconds of the UTC midnight that starts `day` (`YYYY-MM-DD`).
pub fn day_start_ms(day: &str) -> Result<i64> {
    Ok(crate::clock::midnight_ms(parse_day(day)?))
}

/// The condition selecting the whole UTC days `[first, last]` of `table`, its placeholders
/// numbered from `n`, and its two values. The rollups are read by `day`; usage rows by
/// `created_at` (their `day` is its UTC day), which their time indexes serve.
pub(crate) fn days_condition(
    backend: Backend,
    table: &str,
    first: &str,
    last: &str,
    n: usize,
) -> Result<(String, [Value; 2])> {
    let (a, b) = (ph(backend, n), ph(backend, n + 1));
    if table == "usage_logs" {
        let (from, until) = (day_start_ms(first)?, day_start_ms(last)? + MS_PER_DAY);
        Ok((format!("created_at >= {a} AND created_at < {b}"), [from.into(), until.into()]))
    } else {
        Ok((format!("day >= {a} AND day <= {b}"), [first.into(), last.into()]))
    }
}

/// The day after `day` (`YYYY-MM-DD`).
pub fn next_day(day: &str) -> Result<String> {
    Ok(format_day(parse_day(day)? + Duration::days(1)))
}

/// The latest day rolled up; every day up to it is. `None` before the first roll-up.
pub async fn rolled_through(db: &Db) -> Result<Option<String>> {
    #[derive(FromQueryResult)]
    struct Last {
        day: Option<String>,
    }
    let row = Last::find_by_statement(Statement::from_string(
        db_backend(db.backend),
        "SELECT MAX(day) AS day FROM usage_daily_days",
    ))
    .one(&db.read)
    .await?;
    Ok(row.and_then(|r| r.day))
}

/// Rolls up, oldest first, every day that is over (before `OPEN_DAYS` days ago, as of
/// `now_ms`) and not rolled up yet; answers how many days it rolled up.
pub async fn roll_closed_days(db: &Db, now_ms: i64) -> Result<u32> {
    let last_closed = day_of(now_ms - OPEN_DAYS * MS_PER_DAY);
    let mut day = match rolled_through(db).await? {
        Some(done) => next_day(&done)?,
        None => {
            #[derive(FromQueryResult)]
            struct First {
                at: Option<i64>,
            }
            let first = First::find_by_statement(Statement::from_string(
                db_backend(db.backend),
                "SELECT MIN(created_at) AS at FROM usage_logs",
            ))
            .one(&db.read)
            .await?
            .and_then(|r| r.at);
            match first {
                Some(at) => day_of(at),
                None => return Ok(0),
            }
        }
    };
    let mut rolled = 0;
    while day <= last_closed {
        if let Err(err) = roll_day(db, &day).await {
            // Another instance rolling the same day at the same moment makes one of the two
            // fail on the rollup's primary key: the day is done all the same.
            if rolled_through(db).await?.is_none_or(|done| done < day) {
                return Err(err);
            }
        } else {
            rolled += 1;
        }
        day = next_day(&day)?;
    }
    Ok(rolled)
}

/// Rolls up one day that is over: its groups are read outside the write transaction (the
/// day's rows no longer change), then written with the day's record in one transaction.
async fn roll_day(db: &Db, day: &str) -> Result<()> {
    let b = db.backend;
    let (within, values) = days_condition(b, "usage_logs", day, day, 1)?;
    let sql = format!(
        "SELECT user_id, COALESCE(key_id, 0) AS key_id, model, {requests} AS requests, {prompt} AS prompt_tokens, \
         {completion} AS completion_tokens, {total} AS total_tokens, {cost} AS cost FROM usage_logs WHERE {within} \
         GROUP BY user_id, COALESCE(key_id, 0), model",
        requests = sum(b, "request_count"),
        prompt = sum(b, "prompt_tokens"),
        completion = sum(b, "completion_tokens"),
        total = sum(b, "total_tokens"),
        cost = sum(b, "cost"),
    );
    let groups =
        Group::find_by_statement(Statement::from_sql_and_values(db_backend(b), sql, values)).all(&db.read).await?;
    let groups = Arc::new(groups);
    let day = day.to_owned();
    db.write(move |txn| {
        let (groups, day) = (Arc::clone(&groups), day.clone());
        Box::pin(async move { write_day(txn, b, &day, &groups).await })
    })
    .await
}

async fn write_day(txn: &impl ConnectionTrait, b: Backend, day: &str, groups: &[Group]) -> Result<()> {
    let backend = db_backend(b);
    let done = txn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            format!("SELECT day FROM usage_daily_days WHERE day = {}", ph(b, 1)),
            [day.into()],
        ))
        .await?;
    if done.is_some() {
        // Another instance rolled it up meanwhile.
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        format!("DELETE FROM usage_daily WHERE day = {}", ph(b, 1)),
        [day.into()],
    ))
    .await?;
    let rows = groups
        .iter()
        .map(|g| {
            vec![
                day.into(),
                g.user_id.into(),
                g.key_id.into(),
                g.model.clone().into(),
                g.requests.into(),
                g.prompt_tokens.into(),
                g.completion_tokens.into(),
                g.total_tokens.into(),
                g.cost.into(),
            ]
        })
        .collect();
    let target =
        "usage_daily (day, user_id, key_id, model, requests, prompt_tokens, completion_tokens, total_tokens, cost)";
    insert_rows(txn, b, target, rows).await?;
    write_revenue_day(txn, b, day, groups).await?;
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        format!("INSERT INTO usage_daily_days (day, rolled_at) VALUES ({}, {})", ph(b, 1), ph(b, 2)),
        [day.into(), crate::clock::now_ms().into()],
    ))
    .await?;
    Ok(())
}

/// The revenue report's rollups of one day (see migration `m0012`): its sums per model and the
/// customers charged something, from the day's groups.
async fn write_revenue_day(txn: &impl ConnectionTrait, b: Backend, day: &str, groups: &[Group]) -> Result<()> {
    let backend = db_backend(b);
    for table in ["usage_daily_models", "usage_daily_payers"] {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            format!("DELETE FROM {table} WHERE day = {}", ph(b, 1)),
            [day.into()],
        ))
        .await?;
    }
    let mut models: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    let mut payers: BTreeSet<i64> = BTreeSet::new();
    for g in groups {
        let m = models.entry(g.model.as_str()).or_default();
        m.0 += g.requests;
        m.1 += g.total_tokens;
        m.2 += g.cost;
        if g.cost > 0 {
            payers.insert(g.user_id);
        }
    }
    let models: Vec<Vec<Value>> = models
        .into_iter()
        .map(|(model, (requests, tokens, cost))| {
            vec![day.into(), model.into(), requests.into(), tokens.into(), cost.into()]
        })
        .collect();
    insert_rows(txn, b, "usage_daily_models (day, model, requests, total_tokens, cost)", models).await?;
    let payers = payers.into_iter().map(|user| vec![day.into(), user.into()]).collect();
    insert_rows(txn, b, "usage_daily_payers (day, user_id)", payers).await
}

/// Inserts `rows` into `target` (`table (columns)`), `ROWS_PER_INSERT` to a statement.
async fn insert_rows(txn: &impl ConnectionTrait, b: Backend, target: &str, rows: Vec<Vec<Value>>) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.iter().map(Vec::len).sum());
        let mut tuples = Vec::with_capacity(chunk.len());
        for row in chunk {
            let n = values.len();
            tuples.push(format!("({})", (1..=row.len()).map(|i| ph(b, n + i)).collect::<Vec<_>>().join(", ")));
            values.extend(row.iter().cloned());
        }
        txn.execute_raw(Statement::from_sql_and_values(
            db_backend(b),
            format!("INSERT INTO {target} VALUES {}", tuples.join(", ")),
            values,
        ))
        .await?;
    }
    Ok(())
}

/// Fills the revenue rollups of the days in `usage_daily` that have none: the days rolled up
/// before those tables existed (run by migration `m0012`; a day already filled is left alone).
pub async fn backfill_revenue(conn: &impl ConnectionTrait) -> std::result::Result<(), sea_orm::DbErr> {
    let b = match conn.get_database_backend() {
        DbBackend::MySql => Backend::MySql,
        DbBackend::Postgres => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    conn.execute_unprepared(&format!(
        "INSERT INTO usage_daily_models (day, model, requests, total_tokens, cost) \
         SELECT day, model, {requests}, {tokens}, {cost} FROM usage_daily \
         WHERE day NOT IN (SELECT day FROM usage_daily_models) GROUP BY day, model",
        requests = sum(b, "requests"),
        tokens = sum(b, "total_tokens"),
        cost = sum(b, "cost"),
    ))
    .await?;
    conn.execute_unprepared(
        "INSERT INTO usage_daily_payers (day, user_id) SELECT DISTINCT day, user_id FROM usage_daily \
         WHERE cost > 0 AND day NOT IN (SELECT day FROM usage_daily_payers)",
    )
    .await?;
    Ok(())
}

/// A range of days, `(first, last)`, both included.
pub type Days = (String, String);

/// How a day range `[first, last]` splits between the rollups and the usage rows: the
/// rolled-up part (if any) and the part still read from `usage_logs` (if any).
pub fn split(first: &str, last: &str, rolled_through: Option<&str>) -> Result<(Option<Days>, Option<Days>)> {
    match rolled_through {
        Some(done) if done >= first => {
            let rolled_last = if done < last { done.to_owned() } else { last.to_owned() };
            let raw = if done < last { Some((next_day(done)?, last.to_owned())) } else { None };
            Ok((Some((first.to_owned(), rolled_last)), raw))
        }
        _ => Ok((None, Some((first.to_owned(), last.to_owned())))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_splits_at_the_last_rolled_day() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(split("2026-11-01", "2026-11-30", None).unwrap(), (None, Some(s("2026-11-01", "2026-11-30"))));
        assert_eq!(
            split("2026-11-01", "2026-11-30", Some("2026-10-31")).unwrap(),
            (None, Some(s("2026-11-01", "2026-11-30")))
        );
        assert_eq!(
            split("2026-11-01", "2026-11-30", Some("2026-11-28")).unwrap(),
            (Some(s("2026-11-01", "2026-11-28")), Some(s("2026-11-29", "2026-11-30")))
        );
        assert_eq!(
            split("2026-11-01", "2026-11-30", Some("2026-12-02")).unwrap(),
            (Some(s("2026-11-01", "2026-11-30")), None)
        );
        assert_eq!(
            split("2026-12-01", "2026-12-31", Some("2026-12-01")).unwrap(),
            (Some(s("2026-12-01", "2026-12-01")), Some(s("2026-12-02", "2026-12-31")))
        );
        assert_eq!(next_day("2028-02-28").unwrap(), "2028-02-29");
        assert_eq!(next_day("2026-12-31").unwrap(), "2027-01-01");
    }
}
