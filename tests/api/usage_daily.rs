//! The dashboard chart's API, `/api/internal/usage/daily`: zero-filled UTC days ending today,
//! sums that match the rows (across a month boundary), a per-model breakdown, filters, and
//! nobody else's rows — on every backend.

use sea_orm::{ActiveModelTrait, Set};
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tollgate::clock::day_of;
use tollgate::db::entities::usage_logs;

use crate::helpers::{Backend, spawn_app_with};
use crate::on_all_backends;
use crate::usage_api::signed_in;

/// A usage row at `at` (unix ms).
fn row(
    user: i64,
    key: Option<i64>,
    model: &str,
    at: i64,
    tokens: (i64, i64),
    cost: i64,
    count: i64,
) -> usage_logs::ActiveModel {
    usage_logs::ActiveModel {
        request_id: Set(format!("req-{}", tollgate::crypto::random_token(8))),
        user_id: Set(user),
        key_id: Set(key),
        model: Set(model.to_owned()),
        prompt_tokens: Set(tokens.0),
        completion_tokens: Set(tokens.1),
        total_tokens: Set(tokens.0 + tokens.1),
        cost: Set(cost),
        subscription_tokens: Set(0),
        status_code: Set(if cost > 0 { 200 } else { 402 }),
        latency_ms: Set(5),
        ttfb_ms: Set(None),
        stream: Set(false),
        usage_source: Set("upstream".into()),
        created_at: Set(at),
        day: Set(day_of(at)),
        request_count: Set(count),
        ..Default::default()
    }
}

/// Noon (UTC) of the day `back` days before today, in unix ms.
fn noon_days_ago(back: i64) -> i64 {
    let today = OffsetDateTime::now_utc().date();
    ((today - Duration::days(back)).midnight().assume_utc().unix_timestamp() + 12 * 3600) * 1000
}

async fn daily_usage_is_zero_filled_summed_in_sql_and_private(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (me, browser) = signed_in(&app, "chart@example.com").await;
    let (other, _) = signed_in(&app, "other@example.com").await;
    let (key, _) = tollgate::keys::create(&app.db.write, me, Some("ci")).await.unwrap();
    let (their_key, _) = tollgate::keys::create(&app.db.write, other, None).await.unwrap();

    // The last day of the previous month and the first of this one (today on the 1st): always
    // within the last 32 days.
    let today = OffsetDateTime::now_utc().date();
    let first = i64::from(today.day()) - 1;
    let (last_of_prev, first_of_this) = (noon_days_ago(first + 1), noon_days_ago(first));
    assert_ne!(&day_of(last_of_prev)[..7], &day_of(first_of_this)[..7], "two months");
    let mine = [
        row(me, Some(key.id), "gpt-4o", last_of_prev, (100, 20), 3_000, 1),
        row(me, None, "gpt-4o-mini", last_of_prev + 60_000, (10, 5), 150, 1),
        row(me, Some(key.id), "gpt-4o", first_of_this, (200, 40), 6_000, 1),
        row(me, Some(key.id), "gpt-4o", first_of_this + 1, (0, 0), 0, 4),
        row(me, None, "gpt-4o-mini", noon_days_ago(0), (30, 30), 600, 1),
        // Outside 40 days, inside 90.
        row(me, None, "gpt-4o-mini", noon_days_ago(60), (1, 1), 10, 1),
    ];
    for r in mine {
        r.insert(&app.db.write).await.unwrap();
    }
    for back in [0, first, first + 1, 60] {
        row(other, Some(their_key.id), "their-model", noon_days_ago(back), (1_000, 1_000), 99_000, 7)
            .insert(&app.db.write)
            .await
            .unwrap();
    }
    let get = |q: String| {
        let url = format!("{}/api/internal/usage/daily{q}", app.address);
        let browser = &browser;
        async move {
            let res = browser.get(&url).await;
            assert_eq!(res.status(), 200, "{url}");
            res.json::<Value>().await.unwrap()
        }
    };

    let d = get("?days=40".into()).await;
    let series = d["series"].as_array().unwrap();
    assert_eq!(series.len(), 40);
    assert_eq!(
        (d["days"].as_i64(), d["currency"].as_str(), d["currencySymbol"].as_str()),
        (Some(40), Some("USD"), Some("$"))
    );
    assert_eq!(d["to"], day_of(noon_days_ago(0)), "ends today");
    assert_eq!(d["from"], day_of(noon_days_ago(39)));
    assert_eq!(
        (series[0]["day"].clone(), series[39]["day"].clone()),
        (d["from"].clone(), d["to"].clone()),
        "oldest first"
    );
    let days: Vec<&str> = series.iter().map(|s| s["day"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..40).rev().map(|b| day_of(noon_days_ago(b))).collect();
    assert_eq!(days, expected, "every day once, consecutive");
    let at = |ms: i64| series.iter().find(|s| s["day"] == day_of(ms)).unwrap();
    let prev = at(last_of_prev);
    assert_eq!(
        (
            prev["requests"].as_i64(),
            prev["promptTokens"].as_i64(),
            prev["completionTokens"].as_i64(),
            prev["totalTokens"].as_i64(),
            prev["cost"].as_str()
        ),
        (Some(2), Some(110), Some(25), Some(135), Some(tollgate::money::format_amount(3_150).as_str()))
    );
    let this = at(first_of_this);
    let today_entry = at(noon_days_ago(0));
    if first == 0 {
        // Today is the 1st: its row and the month's first rows are one day.
        assert_eq!((this["requests"].as_i64(), this["totalTokens"].as_i64()), (Some(6), Some(300)));
    } else {
        assert_eq!(
            (this["requests"].as_i64(), this["totalTokens"].as_i64(), this["cost"].as_str()),
            (Some(5), Some(240), Some("0.006"))
        );
        assert_eq!((today_entry["requests"].as_i64(), today_entry["totalTokens"].as_i64()), (Some(1), Some(60)));
    }
    let busy = [day_of(last_of_prev), day_of(first_of_this), day_of(noon_days_ago(0))];
    for s in series.iter().filter(|s| !busy.contains(&s["day"].as_str().unwrap().to_owned())) {
        assert_eq!(
            (
                s["requests"].as_i64(),
                s["promptTokens"].as_i64(),
                s["completionTokens"].as_i64(),
                s["totalTokens"].as_i64(),
                s["cost"].as_str()
            ),
            (Some(0), Some(0), Some(0), Some(0), Some("0.00")),
            "an empty day is zero: {s}"
        );
    }
    // Totals are the sums of the series, and of my rows in the period.
    let sum = |field: &str| series.iter().map(|s| s[field].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        (d["totals"]["requests"].as_i64(), d["totals"]["totalTokens"].as_i64()),
        (Some(sum("requests")), Some(sum("totalTokens")))
    );
    assert_eq!((sum("requests"), sum("totalTokens")), (8, 435));
    assert_eq!(d["totals"]["cost"], tollgate::money::format_amount(9_750));
    // Models: most expensive first, nobody else's.
    assert_eq!(
        d["models"],
        serde_json::json!([
            { "model": "gpt-4o", "requests": 6, "totalTokens": 360, "cost": tollgate::money::format_amount(9_000) },
            { "model": "gpt-4o-mini", "requests": 2, "totalTokens": 75, "cost": tollgate::money::format_amount(750) },
        ])
    );
    assert!(!d.to_string().contains("their-model"));

    // The default is 30 days; 90 reaches the older row.
    let d30 = get(String::new()).await;
    assert_eq!((d30["days"].as_i64(), d30["series"].as_array().unwrap().len()), (Some(30), 30));
    let d90 = get("?days=90".into()).await;
    assert_eq!(d90["series"].as_array().unwrap().len(), 90);
    assert_eq!(d90["totals"]["requests"], 9);
    assert_eq!(d90["series"][89 - 60]["day"], day_of(noon_days_ago(60)));
    assert_eq!(d90["series"][89 - 60]["requests"], 1);

    // Filters: model, key; someone else's key matches nothing.
    let by_model = get("?days=40&model=gpt-4o-mini".into()).await;
    assert_eq!((by_model["totals"]["requests"].as_i64(), by_model["models"].as_array().unwrap().len()), (Some(2), 1));
    let by_key = get(format!("?days=40&keyId={}", key.id)).await;
    assert_eq!((by_key["totals"]["requests"].as_i64(), by_key["totals"]["totalTokens"].as_i64()), (Some(6), Some(360)));
    let foreign = get(format!("?days=90&keyId={}", their_key.id)).await;
    assert_eq!((foreign["totals"]["requests"].as_i64(), foreign["models"].as_array().unwrap().len()), (Some(0), 0));
    assert_eq!(foreign["series"].as_array().unwrap().len(), 90);

    for bad in ["?days=0", "?days=91", "?days=abc", "?days=-1", "?days=1.5", "?keyId=x", "?days=7&sneaky=1"] {
        let res = browser.get(&format!("{}/api/internal/usage/daily{bad}", app.address)).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
    let res = crate::fake_oauth::Browser::new().get(&format!("{}/api/internal/usage/daily", app.address)).await;
    assert_eq!(res.status(), 401, "signed out");
}

on_all_backends!(daily_usage_is_zero_filled_summed_in_sql_and_private);

/// The daily roll-up is invisible in the answers: the revenue report (by day and by month) and
/// the customers' charts (all, one model, one key) say the same before and after days are
/// rolled up, and today's rows keep counting. Days still open are never rolled up; a second
/// run and two runs at once roll up nothing twice.
async fn rolled_up_days_answer_exactly_as_the_rows_did(backend: Backend) {
    use tollgate::admin::revenue::{Granularity, report};
    use tollgate::usage::daily::{DailyFilter, daily};
    use tollgate::usage::rollup::{roll_closed_days, rolled_through};

    let app = spawn_app_with(backend, &[]).await;
    let db = &app.db;
    let a = crate::helpers::user_with_balance(db, "roll-a@example.com", 0).await;
    let b = crate::helpers::user_with_balance(db, "roll-b@example.com", 0).await;
    let (ka, _) = tollgate::keys::create(&db.write, a, Some("one")).await.unwrap();
    let (kb, _) = tollgate::keys::create(&db.write, a, Some("two")).await.unwrap();
    // 40 days of rows: two customers, two keys, two models, refusals (cost 0, repeated) and a
    // row without a key; some days have nothing.
    let mut n = 0i64;
    for back in 0..40 {
        if back % 7 == 3 {
            continue;
        }
        for (user, key, model) in [
            (a, Some(ka.id), "gpt-4o"),
            (a, Some(kb.id), "gpt-4o-mini"),
            (b, None, "gpt-4o"),
            (a, Some(ka.id), "gpt-4o-mini"),
        ] {
            n += 1;
            let cost = if n % 5 == 0 { 0 } else { n * 1_000 };
            row(user, key, model, noon_days_ago(back) + n, (n, 2 * n), cost, 1 + n % 3)
                .insert(&db.write)
                .await
                .unwrap();
        }
    }
    let today = OffsetDateTime::now_utc().date();
    let views = || async {
        let month = report(db, Granularity::Month, today - Duration::days(60), today).await.unwrap();
        let day = report(db, Granularity::Day, today - Duration::days(45), today).await.unwrap();
        let now = tollgate::clock::now_ms();
        let mut charts = Vec::new();
        for (model, key_id) in [(None, None), (Some("gpt-4o-mini".to_owned()), None), (None, Some(kb.id))] {
            let f = DailyFilter { user_id: a, days: 90, model, key_id };
            charts.push(daily(db, &f, now).await.unwrap());
        }
        charts.push(daily(db, &DailyFilter { user_id: b, days: 30, model: None, key_id: None }, now).await.unwrap());
        // The history's totals: all time, ranges starting and ending mid-day and at midnight,
        // one model, one key, one status.
        let midnight = |back: i64| noon_days_ago(back) - 12 * 3_600_000;
        let mut totals = Vec::new();
        for (from_ms, until_ms, model, key_id, status_code) in [
            (None, None, None, None, None),
            (Some(noon_days_ago(30) + 3_600_000), Some(noon_days_ago(3) - 7), None, None, None),
            (Some(midnight(20)), Some(midnight(4)), None, None, None),
            (Some(midnight(20)), None, Some("gpt-4o-mini".to_owned()), None, None),
            (None, Some(noon_days_ago(10)), None, Some(kb.id), None),
            (Some(noon_days_ago(25)), None, None, None, Some(402)),
            (Some(noon_days_ago(1)), None, None, None, None),
        ] {
            let f = tollgate::usage::Filter {
                user_id: a,
                model,
                key_id,
                status_code,
                from_ms,
                until_ms,
                page: 1,
                page_size: 20,
            };
            totals.push(tollgate::usage::totals(db, &f).await.unwrap());
        }
        (month, day, charts, totals)
    };
    let before = views().await;
    assert!(before.0.totals.charged > 0 && before.0.periods.iter().any(|p| p.paying_users == 2));
    assert!(before.3.iter().all(|t| t.total_request_count > 0), "every totals filter matches rows: {:?}", before.3);

    // Two runs at once: every day from the first row's to the day before yesterday, once.
    let now = tollgate::clock::now_ms();
    let (r1, r2) = tokio::join!(roll_closed_days(db, now), roll_closed_days(db, now));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(r1 + r2 >= 38, "{r1} + {r2} days rolled up");
    let last = rolled_through(db).await.unwrap().unwrap();
    assert_eq!(last, day_of(now - 2 * tollgate::clock::MS_PER_DAY), "yesterday and today stay open");
    assert_eq!(roll_closed_days(db, now).await.unwrap(), 0, "nothing is rolled up twice");
    let after = views().await;
    assert_eq!(after, before, "the roll-up changed an answer");

    // The rolled-up sums are the rows' sums.
    let sums = |table: &str, requests: &str| {
        let sql = format!(
            "SELECT CAST(SUM(cost) AS CHAR(40)) AS c, CAST(SUM({requests}) AS CHAR(40)) AS r, CAST(SUM(total_tokens) AS CHAR(40)) AS t FROM {table} WHERE day <= '{last}'"
        );
        let sql = if backend == Backend::Postgres { sql.replace("AS CHAR(40)", "AS TEXT") } else { sql };
        let sql = if backend == Backend::Sqlite { sql.replace("AS CHAR(40)", "AS TEXT") } else { sql };
        async move {
            use sea_orm::ConnectionTrait;
            let row = db
                .read
                .query_one_raw(sea_orm::Statement::from_string(db.read.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            let get = |c: &str| row.try_get::<String>("", c).unwrap();
            (get("c"), get("r"), get("t"))
        }
    };
    assert_eq!(sums("usage_daily", "requests").await, sums("usage_logs", "request_count").await);
    assert_eq!(sums("usage_daily_models", "requests").await, sums("usage_logs", "request_count").await);

    // Days rolled up before the revenue rollups existed are filled from `usage_daily` by the
    // migration that adds them, to the same answers.
    {
        use sea_orm::ConnectionTrait;
        for table in ["usage_daily_models", "usage_daily_payers"] {
            db.write.execute_unprepared(&format!("DELETE FROM {table}")).await.unwrap();
        }
        let emptied = views().await;
        assert_ne!(emptied.0, before.0, "the revenue report reads its rollups");
        tollgate::usage::rollup::backfill_revenue(&db.write).await.unwrap();
        tollgate::usage::rollup::backfill_revenue(&db.write).await.unwrap();
        assert_eq!(views().await, before, "the backfilled rollups changed an answer");
    }

    // Today's rows count at once, in the report and in the chart.
    row(a, Some(ka.id), "gpt-4o", tollgate::clock::now_ms(), (1, 1), 777_000, 1).insert(&db.write).await.unwrap();
    let later = views().await;
    assert_eq!(later.0.totals.charged, before.0.totals.charged + 777_000);
    assert_eq!(later.2[0].cost, before.2[0].cost + 777_000);
    assert_eq!(later.3[0].total_cost, before.3[0].total_cost + 777_000);
}

on_all_backends!(rolled_up_days_answer_exactly_as_the_rows_did);
