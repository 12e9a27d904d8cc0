//! The usage API and CSV export: filters, pagination, totals over the whole filtered set, the
//! export limit, and nobody else's rows — on every backend.

use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::Value;
use tollgate::clock::{MS_PER_DAY, day_of};
use tollgate::db::entities::usage_logs;

use crate::fake_oauth::Browser;
use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::on_all_backends;

/// 2025-11-01T00:00:00Z
const NOV_1: i64 = 1_761_955_200_000;

fn row(user: i64, i: i64, model: &str, status: i32, day_offset: i64) -> usage_logs::ActiveModel {
    let at = NOV_1 + day_offset * MS_PER_DAY + i;
    usage_logs::ActiveModel {
        request_id: Set(format!("req-{user}-{i}")),
        user_id: Set(user),
        key_id: Set(None),
        model: Set(model.to_owned()),
        prompt_tokens: Set(10),
        completion_tokens: Set(i),
        total_tokens: Set(10 + i),
        cost: Set(if status == 200 { 100 + i } else { 0 }),
        subscription_tokens: Set(0),
        status_code: Set(status),
        latency_ms: Set(5),
        ttfb_ms: Set(Some(1)),
        stream: Set(i % 2 == 0),
        usage_source: Set("upstream".into()),
        created_at: Set(at),
        day: Set(day_of(at)),
        ..Default::default()
    }
}

/// A user who signs in with a password, and their browser.
pub async fn signed_in(app: &TestApp, email: &str) -> (i64, Browser) {
    let user = crate::helpers::password_user(&app.db, email, "user").await;
    let browser = Browser::new();
    browser
        .post_form(
            &format!("{}/api/auth/signin/password", app.address),
            &[("email", email), ("password", crate::helpers::PASSWORD)],
            None,
        )
        .await;
    assert!(browser.cookie("tollgate_session").is_some());
    (user.id, browser)
}

async fn usage_filters_paginate_and_total_the_whole_set(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (me, browser) = signed_in(&app, "usage@example.com").await;
    let (other, _) = signed_in(&app, "someone@example.com").await;
    // 30 rows of mine over 3 days and two models (every 5th a 402), and 7 of someone else's.
    for i in 0..30 {
        let (model, status) = (if i % 3 == 0 { "gpt-4o" } else { "gpt-4o-mini" }, if i % 5 == 0 { 402 } else { 200 });
        row(me, i, model, status, i % 3).insert(&app.db.write).await.unwrap();
    }
    for i in 0..7 {
        row(other, 100 + i, "gpt-4o", 200, 0).insert(&app.db.write).await.unwrap();
    }
    let get = |q: &str| {
        let url = format!("{}/api/internal/usage{q}", app.address);
        let browser = &browser;
        async move { browser.get(&url).await }
    };

    let all: Value = get("").await.json().await.unwrap();
    let expected_cost: i64 = (0..30).filter(|i| i % 5 != 0).map(|i| 100 + i).sum();
    assert_eq!(all["totalRequestCount"], 30);
    assert_eq!(all["totalTokens"], (0..30).map(|i| 10 + i).sum::<i64>());
    assert_eq!(all["totalCost"], tollgate::money::format_amount(expected_cost));
    assert_eq!(all["data"].as_array().unwrap().len(), 20, "the default page size");
    assert_eq!(all["data"][0]["requestId"], "req-1-29", "newest first");

    let page2: Value = get("?page=2&pageSize=20").await.json().await.unwrap();
    assert_eq!(page2["data"].as_array().unwrap().len(), 10);
    assert_eq!(page2["totalRequestCount"], 30, "totals cover the whole filtered set, not the page");

    let by_model: Value = get("?model=gpt-4o&pageSize=100").await.json().await.unwrap();
    assert_eq!(by_model["totalRequestCount"], 10);
    assert!(by_model["data"].as_array().unwrap().iter().all(|r| r["model"] == "gpt-4o"));

    let refused: Value = get("?statusCode=402").await.json().await.unwrap();
    assert_eq!((refused["totalRequestCount"].as_i64(), refused["totalCost"].as_str()), (Some(6), Some("0.00")));

    let day = day_of(NOV_1 + MS_PER_DAY);
    let one_day: Value = get(&format!("?startDate={day}&endDate={day}")).await.json().await.unwrap();
    assert_eq!(one_day["totalRequestCount"], 10, "end dates include their whole day");
    let none: Value = get("?startDate=2030-01-01").await.json().await.unwrap();
    assert_eq!((none["totalRequestCount"].as_i64(), none["totalCost"].as_str()), (Some(0), Some("0.00")));

    for bad in [
        "?page=0",
        "?pageSize=1000",
        "?statusCode=abc",
        "?startDate=nope",
        "?startDate=2026-11-03&endDate=2026-11-01",
        "?sneaky=1",
    ] {
        let res = get(bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}");
    }

    // CSV: the same filters, a filename, formulas neutralised.
    row(me, 99, "=HYPERLINK(\"http://evil\")", 404, 0).insert(&app.db.write).await.unwrap();
    let res = get("?statusCode=404").await;
    assert_eq!(res.status(), 200);
    let res = browser.get(&format!("{}/api/internal/usage/export?statusCode=404", app.address)).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"tollgate-usage-")
    );
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("request_id,created_at,model,status_code"));
    assert!(lines[1].contains("'=HYPERLINK"), "{csv}");
    let res = browser.get(&format!("{}/api/internal/usage/export?model=gpt-4o", app.address)).await;
    assert_eq!(res.text().await.unwrap().lines().count(), 11, "a header and my 10 rows, none of someone else's");
    assert_eq!(browser.get(&format!("{}/api/internal/usage/export?page=zero", app.address)).await.status(), 400);
}

async fn exports_beyond_ten_thousand_rows_are_refused(backend: Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app_with(backend, &[]).await;
    let (me, browser) = signed_in(&app, "big@example.com").await;
    // 10,001 rows, inserted in a few multi-row statements.
    for chunk in 0..11 {
        let rows: Vec<String> = (0..1000)
            .map(|i| chunk * 1000 + i)
            .filter(|n| *n <= 10_000)
            .map(|n| {
                format!("('big-{n}', {me}, 'm', 1, 1, 2, 1, 0, 200, 1, 1, 'upstream', {}, '2025-11-01')", NOV_1 + n)
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO usage_logs (request_id, user_id, model, prompt_tokens, completion_tokens, total_tokens, cost, subscription_tokens, status_code, latency_ms, stream, usage_source, created_at, day) VALUES {}",
            rows.join(",")
        );
        let sql = if backend == Backend::Postgres { sql.replace(", 1, 'upstream'", ", true, 'upstream'") } else { sql };
        app.db.write.execute_raw(Statement::from_string(app.db.write.get_database_backend(), sql)).await.unwrap();
    }
    let url = format!("{}/api/internal/usage/export", app.address);
    let res = browser.get(&url).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("10001 rows match"), "{body}");
    // Exactly 10,000 is fine, streamed in full.
    let res = browser.get(&format!("{url}?startDate=2025-11-01T00:00:00.001Z")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().lines().count(), 10_001);
    let totals: Value = browser.get(&format!("{}/api/internal/usage", app.address)).await.json().await.unwrap();
    assert_eq!(totals["totalRequestCount"], 10_001);
    assert_eq!(totals["totalTokens"], 20_002);
    let _ = usage_logs::Entity::find();
}

/// The export reads in keyset batches of 1,000 in the history's order: rows that share a
/// timestamp across a batch boundary are each exported exactly once, newest first.
async fn the_export_keeps_every_row_once_across_batches_with_equal_times(backend: Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app_with(backend, &[]).await;
    let (me, browser) = signed_in(&app, "ties@example.com").await;
    // 2,500 rows on five timestamps (500 each), so both batch boundaries fall inside a tie.
    let rows: Vec<String> = (0..2500)
        .map(|n| {
            format!("('tie-{n}', {me}, 'm', 1, 1, 2, 1, 0, 200, 1, 1, 'upstream', {}, '2025-11-01')", NOV_1 + n / 500)
        })
        .collect();
    for chunk in rows.chunks(1000) {
        let sql = format!(
            "INSERT INTO usage_logs (request_id, user_id, model, prompt_tokens, completion_tokens, total_tokens, cost, subscription_tokens, status_code, latency_ms, stream, usage_source, created_at, day) VALUES {}",
            chunk.join(",")
        );
        let sql = if backend == Backend::Postgres { sql.replace(", 1, 'upstream'", ", true, 'upstream'") } else { sql };
        app.db.write.execute_raw(Statement::from_string(app.db.write.get_database_backend(), sql)).await.unwrap();
    }
    let csv = browser.get(&format!("{}/api/internal/usage/export", app.address)).await.text().await.unwrap();
    let ids: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(ids.len(), 2500);
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 2500, "a row was exported twice or skipped");
    // Newest first: the last timestamp's rows come first, the first timestamp's last.
    let n = |id: &str| id.trim_start_matches("tie-").parse::<u32>().unwrap();
    assert!(ids[..500].iter().all(|id| n(id) >= 2000), "{:?}", &ids[..3]);
    assert!(ids[2000..].iter().all(|id| n(id) < 500));
    assert!(ids.windows(2).all(|w| n(w[0]) / 500 >= n(w[1]) / 500), "not newest first");
}

async fn usage_rows_and_the_export_name_their_key(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (me, browser) = signed_in(&app, "keys@example.com").await;
    let (other, _) = signed_in(&app, "other@example.com").await;
    let (laptop, _) = tollgate::keys::create(&app.db.write, me, Some("laptop")).await.unwrap();
    let (formula, _) = tollgate::keys::create(&app.db.write, me, Some("=cmd|calc")).await.unwrap();
    let (old, _) = tollgate::keys::create(&app.db.write, me, Some("old")).await.unwrap();
    tollgate::keys::revoke(&app.db, &app.cache(), Some(me), old.id).await.unwrap();
    let (theirs, _) = tollgate::keys::create(&app.db.write, other, Some("theirs")).await.unwrap();
    // Mine: 3 with laptop, 1 with the formula-named key, 1 with the revoked key, 1 with a key
    // that is gone, 1 without a key; someone else's: 2 with their key.
    let mine =
        [Some(laptop.id), Some(laptop.id), Some(laptop.id), Some(formula.id), Some(old.id), Some(9_999_999), None];
    for (i, key) in (0..).zip(mine) {
        let mut r = row(me, i, "gpt-4o", 200, 0);
        r.key_id = Set(key);
        r.insert(&app.db.write).await.unwrap();
    }
    for i in 0..2 {
        let mut r = row(other, 50 + i, "gpt-4o", 200, 0);
        r.key_id = Set(Some(theirs.id));
        r.insert(&app.db.write).await.unwrap();
    }
    let get = |q: String| {
        let url = format!("{}/api/internal/usage{q}", app.address);
        let browser = &browser;
        async move { browser.get(&url).await.json::<Value>().await.unwrap() }
    };

    let all = get(String::new()).await;
    let rows = all["data"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    let by_request = |id: &str| rows.iter().find(|r| r["requestId"] == id).unwrap();
    let key_of = |r: &Value| (r["keyId"].as_i64(), r["keyName"].as_str().map(str::to_owned));
    assert_eq!(key_of(by_request(&format!("req-{me}-0"))), (Some(laptop.id), Some("laptop".into())));
    assert_eq!(
        key_of(by_request(&format!("req-{me}-4"))),
        (Some(old.id), Some("old".into())),
        "revoked keys keep their name"
    );
    assert_eq!(key_of(by_request(&format!("req-{me}-5"))), (Some(9_999_999), None), "a key that is gone has no name");
    let keyless = by_request(&format!("req-{me}-6"));
    assert!(keyless["keyId"].is_null() && keyless["keyName"].is_null(), "{keyless}");

    let by_key = get(format!("?keyId={}&pageSize=100", laptop.id)).await;
    assert_eq!(by_key["totalRequestCount"], 3);
    assert!(by_key["data"].as_array().unwrap().iter().all(|r| r["keyName"] == "laptop"));
    let foreign = get(format!("?keyId={}", theirs.id)).await;
    assert_eq!((foreign["totalRequestCount"].as_i64(), foreign["data"].as_array().map(Vec::len)), (Some(0), Some(0)));
    for bad in ["?keyId=abc", "?keyId=0", "?keyId=-1", "?keyId=1.5"] {
        let res = browser.get(&format!("{}/api/internal/usage{bad}", app.address)).await;
        assert_eq!(res.status(), 400, "{bad}");
    }

    // The export: a key_name column, neutralised, filtered by key like the page.
    let csv = browser.get(&format!("{}/api/internal/usage/export", app.address)).await.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let at = header.iter().position(|h| h == "key_name").expect("a key_name column");
    let request_at = header.iter().position(|h| h == "request_id").unwrap();
    let names: std::collections::HashMap<String, String> =
        reader.records().map(|r| r.unwrap()).map(|r| (r[request_at].to_owned(), r[at].to_owned())).collect();
    assert_eq!(names.len(), 7, "{csv}");
    assert_eq!(names[&format!("req-{me}-1")], "laptop");
    assert_eq!(names[&format!("req-{me}-3")], "'=cmd|calc", "a formula in a key name is neutralised");
    assert_eq!(names[&format!("req-{me}-5")], "");
    assert_eq!(names[&format!("req-{me}-6")], "");
    let url = format!("{}/api/internal/usage/export?keyId={}", app.address, laptop.id);
    assert_eq!(browser.get(&url).await.text().await.unwrap().lines().count(), 4, "a header and the key's 3 rows");
    let url = format!("{}/api/internal/usage/export?keyId={}", app.address, theirs.id);
    assert_eq!(browser.get(&url).await.text().await.unwrap().lines().count(), 1, "only the header");
}

on_all_backends!(
    usage_filters_paginate_and_total_the_whole_set,
    exports_beyond_ten_thousand_rows_are_refused,
    the_export_keeps_every_row_once_across_batches_with_equal_times,
    usage_rows_and_the_export_name_their_key
);
