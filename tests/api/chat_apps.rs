//! What chat apps call with an API key besides chat: OpenAI's old billing endpoints (the limit
//! is balance + this month's spend; usage in cents over `[start_date, end_date)`) and one model
//! by id — on every backend, never counting anyone else's spend.

use sea_orm::{ActiveModelTrait, Set};
use serde_json::Value;
use time::OffsetDateTime;
use tollgate::clock::day_of;
use tollgate::db::entities::usage_logs;

use crate::helpers::{Backend, MODEL, Mode, TestApp, add_model_named, chat_body, spawn_gateway};
use crate::on_all_backends;

fn row(user: i64, at: i64, cost: i64) -> usage_logs::ActiveModel {
    usage_logs::ActiveModel {
        request_id: Set(format!("req-{}", tollgate::crypto::random_token(8))),
        user_id: Set(user),
        key_id: Set(None),
        model: Set(MODEL.to_owned()),
        prompt_tokens: Set(1),
        completion_tokens: Set(1),
        total_tokens: Set(2),
        cost: Set(cost),
        subscription_tokens: Set(0),
        status_code: Set(200),
        latency_ms: Set(1),
        ttfb_ms: Set(None),
        stream: Set(false),
        usage_source: Set("upstream".into()),
        created_at: Set(at),
        day: Set(day_of(at)),
        ..Default::default()
    }
}

async fn get(app: &TestApp, key: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = app.client.get(format!("{}{path}", app.address));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// Unix ms of 00:00 UTC on the first of this month.
fn month_start() -> i64 {
    let today = OffsetDateTime::now_utc().date();
    today.replace_day(1).unwrap().midnight().assume_utc().unix_timestamp() * 1000
}

async fn the_subscription_limit_is_balance_plus_this_months_spend(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (me, key) = app.customer("chat-app@example.com", 5_000_000).await;
    let (other, other_key) = app.customer("other@example.com", 2_000_000).await;
    let start = month_start();
    for r in [
        row(me, start, 1_000_000),
        row(me, start + 3_600_000, 250_000),
        row(me, start - 1, 700_000),  // last month
        row(other, start, 9_000_000), // someone else
    ] {
        r.insert(&app.db.write).await.unwrap();
    }
    for path in [
        "/v1/dashboard/billing/subscription",
        "/dashboard/billing/subscription",
        "/api/v1/dashboard/billing/subscription",
    ] {
        let (status, body) = get(app, Some(&key), path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["object"], "billing_subscription");
        assert_eq!(body["has_payment_method"], true);
        for field in ["hard_limit_usd", "soft_limit_usd", "system_hard_limit_usd"] {
            assert_eq!(body[field].as_f64(), Some(6.25), "{path} {field}: 5.00 balance + 1.25 spent this month");
        }
        assert!(body["access_until"].as_i64().unwrap() > OffsetDateTime::now_utc().unix_timestamp());
        assert!(body["plan"]["title"].is_string() && body["plan"]["id"].is_string(), "{body}");
    }
    let (_, theirs) = get(app, Some(&other_key), "/v1/dashboard/billing/subscription").await;
    assert_eq!(theirs["hard_limit_usd"].as_f64(), Some(11.0), "2.00 + 9.00, nothing of mine");

    // A real call moves money from the balance to this month's spend: the limit stays.
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    app.settled(me).await;
    assert!(app.balance(me).await < 5_000_000, "the call was charged");
    let (_, after) = get(app, Some(&key), "/v1/dashboard/billing/subscription").await;
    assert_eq!(after["hard_limit_usd"].as_f64(), Some(6.25));

    let (status, body) = get(app, None, "/v1/dashboard/billing/subscription").await;
    assert_eq!((status, body["error"]["type"].as_str()), (401, Some("authentication_error")));
    let (status, _) = get(app, Some("sk-not-a-real-key"), "/dashboard/billing/subscription").await;
    assert_eq!(status, 401);
}

/// 2025-11-30T00:00:00Z and 2025-12-01T00:00:00Z.
const NOV_30: i64 = 1_764_460_800_000;
const DEC_1: i64 = 1_764_547_200_000;
const DAY: i64 = 86_400_000;

async fn usage_is_the_spend_in_cents_over_the_dates(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (me, key) = app.customer("usage@example.com", 1_000_000).await;
    let (other, _) = app.customer("other@example.com", 1_000_000).await;
    assert_eq!((day_of(NOV_30), day_of(DEC_1)), ("2025-11-30".to_owned(), "2025-12-01".to_owned()));
    for r in [
        row(me, NOV_30 - 1, 7_000_000),        // the day before: out
        row(me, NOV_30 + DAY / 2, 123_456),    // in
        row(me, DEC_1, 10_000),                // in, across the month boundary
        row(me, DEC_1 + DAY - 1, 1),           // in
        row(me, DEC_1 + DAY, 5_000_000),       // on end_date: out
        row(other, NOV_30 + DAY / 2, 999_999), // someone else: out
    ] {
        r.insert(&app.db.write).await.unwrap();
    }
    let q = "?start_date=2025-11-30&end_date=2025-12-02";
    for path in ["/v1/dashboard/billing/usage", "/dashboard/billing/usage", "/api/v1/dashboard/billing/usage"] {
        let (status, body) = get(app, Some(&key), &format!("{path}{q}")).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["total_usage"].as_f64(), Some(13.3457), "133,457 micro-units are 13.3457 cents: {body}");
    }
    let (_, one_day) =
        get(app, Some(&key), "/v1/dashboard/billing/usage?start_date=2025-12-01&end_date=2025-12-02").await;
    assert_eq!(one_day["total_usage"].as_f64(), Some(1.0001));
    let (_, none) = get(app, Some(&key), "/v1/dashboard/billing/usage?start_date=2024-01-01&end_date=2024-04-10").await;
    assert_eq!(none["total_usage"].as_f64(), Some(0.0));

    for bad in [
        "",
        "?start_date=2025-11-30",
        "?end_date=2025-12-02",
        "?start_date=30/11/2025&end_date=2025-12-02",
        "?start_date=2025-11-30&end_date=2025-11-30",
        "?start_date=2025-12-02&end_date=2025-11-30",
        "?start_date=2025-01-01&end_date=2025-04-12",
        "?start_date=2025-02-30&end_date=2025-03-02",
    ] {
        let (status, body) = get(app, Some(&key), &format!("/v1/dashboard/billing/usage{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{bad}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _) = get(app, None, &format!("/v1/dashboard/billing/usage{q}")).await;
    assert_eq!(status, 401);
    // Wrong methods and unknown paths here answer in OpenAI's shape, with or without `/v1`.
    for path in ["/dashboard/billing/usage", "/v1/dashboard/billing/subscription"] {
        let res = app.client.post(format!("{}{path}", app.address)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(res.status(), 405, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "request.method_not_allowed", "{path}");
    }
    let (status, body) = get(app, Some(&key), "/dashboard/billing/credit_grants").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("request.not_found")));
}

async fn one_model_by_id(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (_, key) = app.customer("models@example.com", 0).await;
    add_model_named(&app.db, "org/with-slash").await;
    tollgate::models::set(
        &app.db,
        &tollgate::cache::Cache::in_process(),
        "switched-off",
        tollgate::models::ModelChange {
            upstream_model: Some("upstream-model".into()),
            input_price: Some(1),
            output_price: Some(1),
            enabled: Some(false),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let (_, list) = get(app, Some(&key), "/v1/models").await;
    let listed = list["data"].as_array().unwrap();
    for name in [MODEL, "org/with-slash"] {
        let entry = listed.iter().find(|m| m["id"] == name).unwrap();
        for prefix in ["/v1", "/api/v1"] {
            let (status, body) = get(app, Some(&key), &format!("{prefix}/models/{name}")).await;
            assert_eq!(status, 200, "{prefix} {name}: {body}");
            assert_eq!(&body, entry, "the same entry as in the list");
        }
    }
    for missing in ["no-such-model", "switched-off"] {
        let (status, body) = get(app, Some(&key), &format!("/v1/models/{missing}")).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(missing));
    }
    let (status, _) = get(app, None, &format!("/v1/models/{MODEL}")).await;
    assert_eq!(status, 401);
    assert_eq!(g.fake.calls(), 0, "nothing here goes upstream");
}

on_all_backends!(
    the_subscription_limit_is_balance_plus_this_months_spend,
    usage_is_the_spend_in_cents_over_the_dates,
    one_model_by_id
);
