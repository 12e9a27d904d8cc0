//! The gateway's money rules, through HTTP: every request reserves, overspend is impossible,
//! bad input costs nothing and reaches no upstream.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, MAX_OUT, MODEL, Mode, assert_books_balance, chat_body, spawn_gateway, worst_case};
use crate::on_all_backends;

async fn m1_concurrent_requests_never_overspend(backend: Backend) {
    // Admitted requests hold their reservation for a while, so refunds cannot free money for
    // the others during the race.
    let g = spawn_gateway(
        backend,
        Mode::DelayHead(Duration::from_millis(2000)),
        &[("MAX_CONCURRENT_REQUESTS_PER_USER", "100")],
    )
    .await;
    let body = chat_body(false);
    let worst = worst_case(&body, MAX_OUT);
    let (user, key) = g.app.customer("m1@example.com", 9 * worst + worst - 1).await;

    let app = Arc::new(g.app);
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (app, barrier, key, body) = (app.clone(), barrier.clone(), key.clone(), body.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                app.chat(&key, &body).await.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (9, 41), "{statuses:?}");
    assert_eq!(g.fake.calls(), 9, "refused requests never reach the upstream");
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
    // Each admitted request was charged exactly the upstream usage: 17 prompt + 5 completion.
    assert_eq!(app.balance(user).await, 9 * worst + worst - 1 - 9 * (17 + 2 * 5));
    // Every authenticated call is in the usage log: one row per admitted call, and the
    // refusals counted in rows of their own (repeats of one minute share a row).
    let refusals = || async {
        let rows = app.usage(user).await;
        assert_eq!(rows.iter().filter(|r| r.status_code == 200).count(), 9);
        assert!(rows.iter().filter(|r| r.status_code == 402).all(|r| r.cost == 0));
        rows.iter().filter(|r| r.status_code == 402).map(|r| r.request_count).sum::<i64>()
    };
    crate::helpers::eventually(10, "41 refusals counted", || async { refusals().await == 41 }).await;
    assert!(app.usage(user).await.len() <= 9 + 2, "refusals share rows");
}

async fn every_request_reserves_however_rich(backend: Backend) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use tollgate::db::entities::reservations;
    let g = spawn_gateway(backend, Mode::DelayHead(Duration::from_millis(1500)), &[]).await;
    let (user, key) = g.app.customer("rich@example.com", 1_000_000_000_000_000).await;
    let app = Arc::new(g.app);
    let call = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { app.chat(&key, &chat_body(false)).await.status() })
    };
    let db = app.db.clone();
    crate::helpers::eventually(5, "a pending reservation while the upstream works", || {
        let db = db.clone();
        async move {
            reservations::Entity::find()
                .filter(reservations::Column::UserId.eq(user))
                .filter(reservations::Column::State.eq("pending"))
                .one(&db.read)
                .await
                .unwrap()
                .is_some_and(|r| r.amount > 0)
        }
    })
    .await;
    assert_eq!(call.await.unwrap(), 200);
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

async fn hostile_output_caps_are_clamped_or_refused(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let body = chat_body(false);
    let worst = worst_case(&body, MAX_OUT);
    let (user, key) = g.app.customer("caps@example.com", 10 * worst).await;

    // Huge caps are clamped to the model's limit, both in the reservation and upstream.
    for cap in [json!(9_223_372_036_854_775_807i64), json!(9_223_372_036_854_775_808u64), json!(1e30)] {
        let mut b = body.clone();
        b["max_tokens"] = cap.clone();
        let res = g.app.chat(&key, &b).await;
        assert_eq!(res.status(), 200, "max_tokens {cap}");
    }
    for sent in g.fake.bodies() {
        // The cap goes in the field the model's upstream honours.
        assert_eq!(sent["max_completion_tokens"], json!(MAX_OUT));
        assert!(sent.get("max_tokens").is_none(), "{sent}");
        assert_eq!(sent["model"], "upstream-model");
    }
    // Nonsense caps are refused before any reservation or upstream call.
    let calls = g.fake.calls();
    for cap in [json!(-1), json!(0), json!(-9_223_372_036_854_775_808i64), json!(1.5), json!("100"), json!(-1e30)] {
        for field in ["max_tokens", "max_completion_tokens"] {
            let mut b = body.clone();
            b[field] = cap.clone();
            let res = g.app.chat(&key, &b).await;
            assert_eq!(res.status(), 400, "{field} {cap}");
            let err: Value = res.json().await.unwrap();
            assert!(err["error"]["message"].as_str().unwrap().contains(field));
        }
    }
    assert_eq!(g.fake.calls(), calls);
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}

async fn bad_requests_get_clear_errors_and_cost_nothing(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[("MAX_REQUEST_BYTES", "4096")]).await;
    let (user, key) = g.app.customer("bad@example.com", 1_000_000).await;
    let url = format!("{}/v1/chat/completions", g.app.address);
    let send = |body: String| {
        let (client, url, key) = (g.app.client.clone(), url.clone(), key.clone());
        async move {
            client
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, u16)> = vec![
        ("{not json".into(), 400),
        ("".into(), 400),
        ("[]".into(), 400),
        (deep, 413),
        (json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(), 400),
        (json!({"model": 5, "messages": []}).to_string(), 400),
        (json!({"model": MODEL, "messages": []}).to_string(), 400),
        (json!({"model": MODEL, "messages": "hi"}).to_string(), 400),
        (json!({"model": MODEL, "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 400),
        (json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 404),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string(), 413),
        (format!("{}1{}", "[".repeat(200), "]".repeat(200)), 400),
    ];
    for (body, status) in &cases {
        let res = send(body.clone()).await;
        assert_eq!(res.status().as_u16(), *status, "body {:.60}", body);
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].is_string() && err["error"]["type"].is_string() && err["error"]["code"].is_string(),
            "{err}"
        );
    }
    assert_eq!(g.fake.calls(), 0);
    assert_eq!(g.app.balance(user).await, 1_000_000);
    assert_books_balance(&g.app.db, user).await;

    // A disabled model is as unknown as a missing one.
    tollgate::models::set(
        &g.app.db,
        &g.app.cache(),
        MODEL,
        tollgate::models::ModelChange { enabled: Some(false), ..Default::default() },
        None,
    )
    .await
    .unwrap();
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 404);
    let err: Value = res.json().await.unwrap();
    assert_eq!(
        (err["error"]["code"].as_str(), err["error"]["type"].as_str()),
        (Some("model_not_found"), Some("invalid_request_error")),
        "OpenAI's answer: {err}"
    );
    assert_eq!(g.fake.calls(), 0);
}

async fn models_are_listed_and_both_prefixes_serve(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("list@example.com", 1_000_000).await;
    for path in ["/v1/models", "/api/v1/models"] {
        let res = g.app.client.get(format!("{}{path}", g.app.address)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let list: Value = res.json().await.unwrap();
        assert_eq!(list["object"], "list");
        let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert!(names.contains(&MODEL) && names.contains(&"gpt-4o-mini"), "{names:?}");
    }
    let res = g.app.client.get(format!("{}/v1/models", g.app.address)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = g
        .app
        .client
        .post(format!("{}/api/v1/chat/completions", g.app.address))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-request-id").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello w1 w2 w3 w4");
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].prompt_tokens, rows[0].completion_tokens, rows[0].cost), (17, 5, 27));
    assert_eq!(rows[0].usage_source, "upstream");
    assert_books_balance(&g.app.db, user).await;
}

async fn subscriptions_pay_before_the_balance(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("sub@example.com", 0).await;
    // No money, no subscription: 402 and no upstream call.
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 402);
    assert_eq!(g.fake.calls(), 0);
    tollgate::subscriptions::grant(&g.app.db, user, "pack", 10_000, 30, None).await.unwrap();
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 200);
    g.app.settled(user).await;
    let sub = tollgate::subscriptions::active(&g.app.db.read, user).await.unwrap();
    assert_eq!(sub[0].tokens_remaining, 10_000 - 22, "17 prompt + 5 completion tokens from the subscription");
    assert_eq!(g.app.balance(user).await, 0);
    assert_books_balance(&g.app.db, user).await;
}

async fn concurrent_requests_per_user_are_limited(backend: Backend) {
    let g = spawn_gateway(
        backend,
        Mode::DelayHead(Duration::from_millis(1500)),
        &[("MAX_CONCURRENT_REQUESTS_PER_USER", "1")],
    )
    .await;
    let (user, key) = g.app.customer("busy@example.com", 1_000_000).await;
    let app = Arc::new(g.app);
    let first = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { app.chat(&key, &chat_body(false)).await.status() })
    };
    // The first request holds its slot while the upstream works on it.
    crate::helpers::eventually(10, "the first request reaches the upstream", || async { g.fake.calls() == 1 }).await;
    let second = app.chat(&key, &chat_body(false)).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200, "the slot is released");
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(
    m1_concurrent_requests_never_overspend,
    every_request_reserves_however_rich,
    hostile_output_caps_are_clamped_or_refused,
    bad_requests_get_clear_errors_and_cost_nothing,
    models_are_listed_and_both_prefixes_serve,
    subscriptions_pay_before_the_balance,
    concurrent_requests_per_user_are_limited,
);
