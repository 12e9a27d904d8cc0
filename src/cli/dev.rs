//! Tools for measuring Tollgate at scale: `dev seed-usage` fills the database with customers,
//! keys, top-ups and usage rows spread over days; `dev query-times` times the dashboard's and the
//! back office's queries against whatever the database holds. Used by `bench/data-scale.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};

use crate::accounts::{self, NewUser, ROLE_USER};
use crate::admin::revenue::{self, Granularity};
use crate::clock::{MS_PER_DAY, day_of, now_ms};
use crate::db::entities::{usage_logs, users};
use crate::db::{Backend, Db};
use crate::usage::{self, Filter, daily};

/// The domain of seeded customers' addresses (reserved: it can never reach a real mailbox).
pub const SEED_DOMAIN: &str = "seed.invalid";
/// Models the seeded rows name (any catalogue will do: usage rows keep the name as text).
const SEED_MODELS: [&str; 6] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o4-mini", "deepseek-chat", "qwen-plus"];
/// Rows per INSERT statement, and statements per transaction.
const ROWS_PER_STATEMENT: u64 = 1000;
const STATEMENTS_PER_TRANSACTION: u64 = 20;

/// A small deterministic generator (xorshift64*): seeded data is the same on every engine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Creates `users` customers with one key each (those that exist are reused), a top-up per
/// customer, and `rows` usage rows spread evenly over the `days` days ending now, oldest first
/// (as a live table grows). Customers are skewed: a few call a lot, most a little.
pub async fn seed_usage(db: &Db, rows: u64, user_count: u32, days: u32) -> anyhow::Result<String> {
    if user_count == 0 || days == 0 {
        bail!("--users and --days must be at least 1");
    }
    let started = Instant::now();
    let now = now_ms();
    let mut people = Vec::with_capacity(user_count as usize);
    for i in 0..user_count {
        let email = format!("seed-{i:05}@{SEED_DOMAIN}");
        let existing = users::Entity::find()
            .filter(sea_orm::ColumnTrait::eq(&users::Column::Email, email.clone()))
            .one(&db.read)
            .await?;
        let user = match existing {
            Some(u) => u,
            None => {
                let txn = db.write.begin().await?;
                let u = accounts::create_user(
                    &txn,
                    NewUser { email: &email, name: None, role: ROLE_USER, password_hash: None, signup_credit: 0 },
                )
                .await
                .map_err(|e| anyhow::anyhow!("creating {email}: {e}"))?;
                crate::keys::create(&txn, u.id, Some("seed")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                txn.commit().await?;
                u
            }
        };
        let key = crate::db::entities::api_keys::Entity::find()
            .filter(sea_orm::ColumnTrait::eq(&crate::db::entities::api_keys::Column::UserId, user.id))
            .one(&db.read)
            .await?
            .context("a seeded customer has no key")?;
        people.push((user.id, key.id));
    }

    // One top-up per customer at the start of the window, so the revenue report has money in.
    let window_start = now - i64::from(days) * MS_PER_DAY;
    let mut topups = Vec::with_capacity(people.len());
    for (i, (user_id, _)) in people.iter().enumerate() {
        let at = window_start + (i as i64 % i64::from(days)) * MS_PER_DAY + 3_600_000;
        topups.push(format!("({user_id}, 'topup', 50000000, 0, NULL, 'seed', NULL, {at})"));
    }
    for chunk in topups.chunks(ROWS_PER_STATEMENT as usize) {
        db.write
            .execute_unprepared(&format!(
                "INSERT INTO credit_transactions (user_id, kind, amount, tokens, subscription_id, reason, \
                 actor_user_id, created_at) VALUES {}",
                chunk.join(", ")
            ))
            .await?;
    }

    let run = now_ms();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ rows ^ u64::from(user_count));
    let span = (now - window_start) as f64;
    let mut n = 0u64;
    while n < rows {
        let txn = db.write.begin().await?;
        for _ in 0..STATEMENTS_PER_TRANSACTION {
            if n >= rows {
                break;
            }
            let count = ROWS_PER_STATEMENT.min(rows - n);
            let mut values = Vec::with_capacity(count as usize);
            for _ in 0..count {
                // Evenly over the window, oldest first, with a little jitter.
                let at = window_start + (span * (n as f64 + rng.unit()) / rows as f64) as i64;
                // Squaring skews the choice toward the first customers: a few heavy callers.
                let who = ((rng.unit() * rng.unit()) * people.len() as f64) as usize;
                let (user_id, key_id) = people[who.min(people.len() - 1)];
                let model = SEED_MODELS[rng.below(SEED_MODELS.len() as u64) as usize];
                let ok = rng.below(100) < 96;
                let prompt = 50 + rng.below(4000) as i64;
                let completion = if ok { 1 + rng.below(1500) as i64 } else { 0 };
                let cost = if ok { (prompt * 150 + completion * 600) / 1000 } else { 0 };
                let status = if ok { 200 } else { [400, 402, 429, 502][rng.below(4) as usize] };
                let stream = if rng.below(2) == 0 { "TRUE" } else { "FALSE" };
                let latency = 200 + rng.below(8000);
                values.push(format!(
                    "('seed-{run}-{n}', {user_id}, {key_id}, '{model}', {prompt}, {completion}, {total}, {cost}, 0, \
                     {status}, {latency}, NULL, {stream}, 'upstream', {at}, '{day}', 0, 1)",
                    total = prompt + completion,
                    day = day_of(at),
                ));
                n += 1;
            }
            txn.execute_unprepared(&format!(
                "INSERT INTO usage_logs (request_id, user_id, key_id, model, prompt_tokens, completion_tokens, \
                 total_tokens, cost, subscription_tokens, status_code, latency_ms, ttfb_ms, stream, usage_source, \
                 created_at, day, shortfall, request_count) VALUES {}",
                values.join(", ")
            ))
            .await?;
        }
        txn.commit().await?;
        if n % 500_000 < ROWS_PER_STATEMENT * STATEMENTS_PER_TRANSACTION {
            eprintln!("{n} rows ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    // What the hourly job would do on a live server: roll up the days that are over.
    let rolling = Instant::now();
    let days_rolled = crate::usage::rollup::roll_closed_days(db, now_ms()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rolled = format!("; rolled up {days_rolled} closed days in {:.1} s", rolling.elapsed().as_secs_f64());
    if db.backend == Backend::Postgres {
        db.write.execute_unprepared("ANALYZE usage_logs").await?;
    } else if db.backend == Backend::Sqlite {
        db.write.execute_unprepared("ANALYZE").await?;
    } else {
        db.write.execute_unprepared("ANALYZE TABLE usage_logs").await?;
    }
    Ok(format!(
        "seeded {rows} usage rows over {days} days for {user_count} customers in {:.1} s{rolled}",
        started.elapsed().as_secs_f64()
    ))
}

/// The median and the slowest of `runs` timings of `query`, and the size of its answer.
async fn measure<F, Fut>(runs: u32, mut query: F) -> anyhow::Result<(Duration, Duration, usize)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut times = Vec::with_capacity(runs as usize);
    let mut size = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        size = query().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], times[times.len() - 1], size))
}

fn filter(user_id: i64) -> Filter {
    Filter {
        user_id,
        model: None,
        key_id: None,
        status_code: None,
        from_ms: None,
        until_ms: None,
        page: 1,
        page_size: 20,
    }
}

/// Times each dashboard and back-office query `runs` times for the customer with the most rows
/// (the worst case) and prints a Markdown table.
pub async fn query_times(db: &Db, runs: u32) -> anyhow::Result<String> {
    let total = usage_logs::Entity::find().count(&db.read).await?;
    // The heaviest customer: the seeded distribution puts the most rows on the first one.
    let heavy: Option<(i64,)> = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::UserId)
        .order_by_desc(usage_logs::Column::Id)
        .into_tuple()
        .one(&db.read)
        .await?;
    let Some((mut user_id,)) = heavy else { bail!("usage_logs is empty: run `tollgate dev seed-usage` first") };
    if let Some(first) = users::Entity::find()
        .filter(sea_orm::ColumnTrait::eq(&users::Column::Email, format!("seed-00000@{SEED_DOMAIN}")))
        .one(&db.read)
        .await?
    {
        user_id = first.id;
    }
    let rows_of_user = usage::count(db, &filter(user_id)).await?;
    let now = now_ms();
    let err = |e: crate::error::Error| anyhow::anyhow!("{e}");
    let mut lines = vec![
        format!(
            "usage_logs: {total} rows; the customer measured has {rows_of_user}; {runs} runs each, median / slowest"
        ),
        String::new(),
        "| query | median ms | slowest ms | answer |".to_owned(),
        "|---|---:|---:|---|".to_owned(),
    ];
    let mut push = |name: &str, (median, slowest, size): (Duration, Duration, usize), unit: &str| {
        lines.push(format!(
            "| {name} | {:.1} | {:.1} | {size} {unit} |",
            median.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0
        ));
    };

    let f = filter(user_id);
    push(
        "usage totals (all time)",
        measure(runs, || async { usage::totals(db, &f).await.map_err(err).map(|_| 1) }).await?,
        "row",
    );
    push(
        "usage page 1 (20 rows)",
        measure(runs, || async { Ok(usage::page(db, &f).await.map_err(err)?.len()) }).await?,
        "rows",
    );
    push(
        "usage row count",
        measure(runs, || async { usage::count(db, &f).await.map_err(err).map(|_| 1) }).await?,
        "row",
    );
    let deep = Filter { page: 50, ..f.clone() };
    push(
        "usage page 50",
        measure(runs, || async { Ok(usage::page(db, &deep).await.map_err(err)?.len()) }).await?,
        "rows",
    );
    let month = Filter { from_ms: Some(now - 30 * MS_PER_DAY), model: Some(SEED_MODELS[1].to_owned()), ..f.clone() };
    push(
        "usage page 1, one model, last 30 days",
        measure(runs, || async { Ok(usage::page(db, &month).await.map_err(err)?.len()) }).await?,
        "rows",
    );
    push(
        "CSV export, 10,000 rows",
        measure(runs, || async {
            let mut before = None;
            let mut n = 0usize;
            while (n as u64) < usage::EXPORT_LIMIT {
                let batch = usage::export_batch(db, &f, before, 1000).await.map_err(err)?;
                let Some(last) = batch.last() else { break };
                before = Some(usage::cursor_after(last));
                let names = usage::key_names(db, user_id, batch.iter().filter_map(|r| r.key_id)).await.map_err(err)?;
                for row in &batch {
                    std::hint::black_box(usage::csv_record(
                        row,
                        row.key_id.and_then(|k| names.get(&k)).map(String::as_str),
                    ));
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?,
        "rows",
    );
    for days in [30u32, 90] {
        let df = daily::DailyFilter { user_id, days, model: None, key_id: None };
        push(
            &format!("daily chart, {days} days"),
            measure(runs, || async { Ok(daily::daily(db, &df, now).await.map_err(err)?.series.len()) }).await?,
            "days",
        );
    }
    let today = time::OffsetDateTime::from_unix_timestamp(now / 1000)?.date();
    for (name, granularity, back) in [
        ("admin revenue by month, 90 days", Granularity::Month, 89),
        ("admin revenue by day, 30 days", Granularity::Day, 29),
    ] {
        let start = today - time::Duration::days(back);
        push(
            name,
            measure(runs, || async {
                Ok(revenue::report(db, granularity, start, today).await.map_err(err)?.periods.len())
            })
            .await?,
            "periods",
        );
    }
    Ok(lines.join("\n"))
}
