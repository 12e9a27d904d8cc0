//! Per-key controls on every backend: allowed models, the spend cap (enforced in the
//! reservation, race included, resetting with its period), expiry and the address allowlist;
//! their validation on the dashboard and admin APIs; and the affordable output cap.

use std::sync::Arc;

use reqwest::Method;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use serde_json::{Value, json};
use tollgate::billing::key_spend::{KeyCap, Period};
use tollgate::billing::reservations::Affordable;
use tollgate::billing::{CacheWrites, FinalState, Prices, ReserveRequest, Resolution, UsageLog, reserve, resolve};
use tollgate::clock::{MS_PER_DAY, now_ms};
use tollgate::db::entities::{api_keys, audit_logs, key_spend};
use tollgate::error::Error;

use crate::admin::Caller;
use crate::fake_oauth::Browser;
use crate::helpers::{
    Backend, MODEL, Mode, TestApp, assert_books_balance, chat_body, fresh_db, spawn_gateway, user_with_balance,
};
use crate::on_all_backends;
use crate::usage_api::signed_in;

const PRICES: Prices = Prices::flat(1_000_000, 2_000_000);

async fn patch(browser: &Browser, url: &str, body: &Value) -> reqwest::Response {
    browser.send(browser.client.patch(url).json(body)).await
}

async fn stored(app: &TestApp, id: i64) -> api_keys::Model {
    api_keys::Entity::find_by_id(id).one(&app.db.read).await.unwrap().unwrap()
}

/// A signed-in customer with a balance and one key made on the dashboard: (user, browser,
/// key URL, key id, plaintext).
async fn customer_with_key(app: &TestApp, email: &str, balance: i64) -> (i64, Browser, String, i64, String) {
    let (me, browser) = signed_in(app, email).await;
    tollgate::billing::ledger::adjust(&app.db, me, balance, "topup", "test", None).await.unwrap();
    let keys_url = format!("{}/api/internal/keys", app.address);
    let created: Value =
        browser.send(browser.client.post(&keys_url).json(&json!({ "name": "ci" }))).await.json().await.unwrap();
    let (id, key) = (created["id"].as_i64().unwrap(), created["key"].as_str().unwrap().to_owned());
    (me, browser, format!("{keys_url}/{id}"), id, key)
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap()["error"].clone())
}

async fn settings_are_validated_shown_and_audited(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (_, browser, url, id, _) = customer_with_key(app, "settings@example.com", 1_000_000).await;

    let res = patch(
        &browser,
        &url,
        &json!({
            "allowedModels": [MODEL],
            "spendLimit": "5.00",
            "spendLimitPeriod": "day",
            "expiresAt": "2099-01-31T00:00:00Z",
            "allowedIps": ["10.0.0.0/8", "192.0.2.7"],
            "rpm": 60,
            "tpm": 10000,
        }),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["settings"],
        json!({
            "allowedModels": [MODEL],
            "spendLimit": "5.00",
            "spendLimitPeriod": "day",
            "expiresAt": "2099-01-31T00:00:00Z",
            "allowedIps": ["10.0.0.0/8", "192.0.2.7/32"],
            "rpm": 60,
            "tpm": 10000,
        })
    );
    let listed: Value = browser.get(&format!("{}/api/internal/keys", app.address)).await.json().await.unwrap();
    assert_eq!(listed["data"][0]["settings"], body["settings"]);
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("key.settings"))
        .filter(audit_logs::Column::TargetId.eq(id.to_string()))
        .one(&app.db.read)
        .await
        .unwrap()
        .expect("the change is audited");
    assert!(audit.after.as_deref().is_some_and(|a| a.contains("\"spendLimit\":\"5.00\"")), "{audit:?}");

    // Bad values: 400 in our shape, and nothing changes.
    let before = stored(app, id).await;
    for bad in [
        json!({ "allowedModels": [] }),
        json!({ "allowedModels": "test-model" }),
        json!({ "allowedModels": ["no-such-model"] }),
        json!({ "spendLimit": 5 }),
        json!({ "spendLimit": "-1" }),
        json!({ "spendLimit": "0" }),
        json!({ "spendLimit": "lots" }),
        json!({ "spendLimitPeriod": "week" }),
        json!({ "expiresAt": "tomorrow" }),
        json!({ "expiresAt": "2001-01-01T00:00:00Z" }),
        json!({ "allowedIps": ["10.0.0.0/33"] }),
        json!({ "allowedIps": ["example.com"] }),
        json!({ "rpm": 0 }),
        json!({ "tpm": -5 }),
        json!({ "rpm": "60" }),
        json!({ "rpm": 60, "colour": "red" }),
        json!({}),
    ] {
        let (status, error) = error_of(patch(&browser, &url, &bad).await).await;
        assert_eq!(status, 400, "{bad}");
        assert!(error["message"].is_string() && error["code"].is_string(), "{bad}: {error}");
    }
    assert_eq!(stored(app, id).await, before, "refused changes change nothing");

    // `null` clears one control and leaves the others.
    let res = patch(&browser, &url, &json!({ "allowedIps": null, "spendLimit": null })).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["settings"]["allowedIps"], Value::Null);
    assert_eq!(body["settings"]["spendLimit"], Value::Null);
    assert_eq!(body["settings"]["spendLimitPeriod"], Value::Null, "no period without a cap");
    assert_eq!(body["settings"]["rpm"], 60);

    // Another user's key: 404, unchanged.
    let (_, other) = signed_in(app, "other@example.com").await;
    assert_eq!(patch(&other, &url, &json!({ "rpm": 1 })).await.status(), 404);
    assert_eq!(stored(app, id).await.rpm, Some(60));

    // An administrator changes it too, audited as themselves.
    let (admin_id, admin) = Caller::signed_in(app, "root@example.com", "admin").await;
    let (status, body) =
        admin.send(Method::PATCH, &format!("/api/admin/keys/{id}"), &json!({ "tpm": null, "rpm": 5 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["settings"]["rpm"].as_i64(), body["settings"]["tpm"].as_i64()), (Some(5), None));
    let (status, _) = admin.send(Method::PATCH, &format!("/api/admin/keys/{id}"), &json!({ "rpm": 0 })).await;
    assert_eq!(status, 400);
    let last = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("key.settings"))
        .order_by_desc(audit_logs::Column::Id)
        .one(&app.db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.actor_user_id, Some(admin_id));
    let (status, detail) = admin.get(&format!("/api/admin/users/{}", before.user_id)).await;
    assert_eq!(status, 200);
    assert_eq!(detail["apiKeys"][0]["settings"]["rpm"], 5, "{detail}");
}

async fn allowed_models_fence_the_key(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    crate::helpers::add_model_named(&app.db, "other-model").await;
    let (_, browser, url, _, key) = customer_with_key(app, "models@example.com", 1_000_000).await;
    assert_eq!(
        app.chat(&key, &json!({ "model": "other-model", "messages": [{"role": "user", "content": "hi"}] }))
            .await
            .status(),
        200
    );

    let res = patch(&browser, &url, &json!({ "allowedModels": [MODEL] })).await;
    assert_eq!(res.status(), 200);
    let calls = g.fake.calls();
    let (status, error) = error_of(
        app.chat(&key, &json!({ "model": "other-model", "messages": [{"role": "user", "content": "hi"}] })).await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str(), error["type"].as_str()),
        (403, Some("model_not_allowed"), Some("permission_error"))
    );
    assert_eq!(g.fake.calls(), calls, "a refused model never reaches the upstream");
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);

    let list: Value = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, vec![MODEL], "{list}");
    let one = app.client.get(format!("{}/v1/models/other-model", app.address)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(one.status(), 404);

    // Lifted: every model again, at once.
    patch(&browser, &url, &json!({ "allowedModels": null })).await;
    let list: Value = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["data"].as_array().unwrap().len() >= 2, "{list}");
}

async fn a_spend_cap_refuses_what_it_does_not_cover(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (me, browser, url, id, key) = customer_with_key(app, "cap@example.com", 1_000_000).await;
    // The worst case of this body is its prompt and 2 × 50 output tokens: more than 100 µ.
    let mut body = chat_body(false);
    body["max_tokens"] = json!(50);
    patch(&browser, &url, &json!({ "spendLimit": "0.0001", "spendLimitPeriod": "month" })).await;
    let calls = g.fake.calls();
    let (status, error) = error_of(app.chat(&key, &body).await).await;
    assert_eq!(status, 402, "{error}");
    assert_eq!(error["code"], "key_budget_exceeded");
    assert_eq!(error["type"], "insufficient_quota");
    assert_eq!((error["limit"].as_str(), error["remaining"].as_str()), (Some("0.0001"), Some("0.0001")), "{error}");
    assert_eq!(error["period"], "month");
    assert_eq!(g.fake.calls(), calls);
    assert_eq!(app.balance(me).await, 1_000_000, "a refusal takes nothing");

    // Raised: served, and what it cost is what the key spent this month.
    patch(&browser, &url, &json!({ "spendLimit": "0.01" })).await;
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    app.settled(me).await;
    let charged: i64 = app.usage(me).await.iter().map(|u| u.cost).sum();
    let period = Period::Month.key(now_ms());
    let row = key_spend::Entity::find_by_id((id, period)).one(&app.db.read).await.unwrap().unwrap();
    assert_eq!(row.spent, charged, "settlement corrects the key's spending to the charge");
    assert_books_balance(&app.db, me).await;
}

async fn expired_keys_and_foreign_addresses_are_refused(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let app = &g.app;
    let (_, browser, url, _, key) = customer_with_key(app, "fence@example.com", 1_000_000).await;

    let soon = tollgate::clock::rfc3339(now_ms() + 1500);
    assert_eq!(patch(&browser, &url, &json!({ "expiresAt": soon })).await.status(), 200);
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200, "usable until it expires");
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let (status, error) = error_of(app.chat(&key, &chat_body(false)).await).await;
    assert_eq!(status, 401);
    assert!(error["message"].as_str().is_some_and(|m| m.contains("expired")), "{error}");
    let later = tollgate::clock::rfc3339(now_ms() + MS_PER_DAY);
    assert_eq!(patch(&browser, &url, &json!({ "expiresAt": later })).await.status(), 200);
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200, "extended");

    // The allowlist is checked against the client's address as the trusted proxy reports it.
    assert_eq!(patch(&browser, &url, &json!({ "allowedIps": ["203.0.113.0/24"] })).await.status(), 200);
    let send = |forwarded: Option<&'static str>| {
        let mut req =
            app.client.post(format!("{}/v1/chat/completions", app.address)).bearer_auth(&key).json(&chat_body(false));
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        req.send()
    };
    let (status, error) = error_of(send(None).await.unwrap()).await;
    assert_eq!(status, 403, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("127.0.0.1")), "{error}");
    assert_eq!(send(Some("203.0.113.9")).await.unwrap().status(), 200);
    assert_eq!(send(Some("198.51.100.1")).await.unwrap().status(), 403);
    let models = app.client.get(format!("{}/v1/models", app.address)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(models.status(), 403, "every /v1 route is fenced");
    assert_eq!(patch(&browser, &url, &json!({ "allowedIps": ["127.0.0.1"] })).await.status(), 200);
    assert_eq!(send(None).await.unwrap().status(), 200);
}

/// A key whose row exists, with a cap of `limit` per `period`.
async fn capped_key(db: &tollgate::db::Db, email: &str, balance: i64, limit: i64, period: Period) -> KeyCap {
    let user = user_with_balance(db, email, balance).await;
    let (key, _) = tollgate::keys::create(&db.write, user, None).await.unwrap();
    KeyCap { key_id: key.id, user_id: user, limit, period }
}

fn capped_request(id: &str, cap: KeyCap, prompt: i64, max_out: i64) -> ReserveRequest<'_> {
    ReserveRequest {
        request_id: id,
        user_id: cap.user_id,
        key_id: Some(cap.key_id),
        prompt_tokens: prompt,
        max_completion_tokens: max_out,
        prices: PRICES,
        key_cap: Some(cap),
        ..ReserveRequest::default()
    }
}

fn settle_log() -> UsageLog {
    UsageLog {
        model: "m".into(),
        status_code: 200,
        latency_ms: 1,
        ttfb_ms: None,
        stream: false,
        usage_source: "upstream",
    }
}

async fn concurrent_reservations_admit_exactly_what_the_key_cap_covers(backend: Backend) {
    let t = fresh_db(backend).await;
    // 50 transactions queue on one key's row: on a loaded machine some wait for a pooled
    // connection longer than the default 2 s.
    let db = Arc::new(match backend {
        Backend::Sqlite => t.db.clone(),
        _ => tollgate::db::Db::connect_with(&t.url, 20, std::time::Duration::from_secs(20)).await.unwrap(),
    });
    // Worst case: 1000 prompt + 1000 output tokens = 3000 µ; the cap covers 9 of them, the
    // balance all 50.
    let worst = 3000;
    let cap = capped_key(&db, "race@example.com", 1_000_000, 10 * worst - 1, Period::Day).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (db, barrier) = (db.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let id = format!("race-{i}");
                reserve(&db, &capped_request(&id, cap, 1000, 1000)).await
            })
        })
        .collect();
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.amount, worst);
                admitted.push(r);
            }
            Err(Error::KeyBudgetExceeded { .. }) => refused += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (9, 41));
    let period = Period::Day.key(now_ms());
    let spent = |db: Arc<tollgate::db::Db>, period: String| async move {
        key_spend::Entity::find_by_id((cap.key_id, period)).one(&db.read).await.unwrap().unwrap().spent
    };
    assert_eq!(spent(db.clone(), period.clone()).await, 9 * worst);
    assert_eq!(tollgate::billing::balance::amount(&db.read, cap.user_id).await.unwrap(), 1_000_000 - 9 * worst);

    // A void releases its share of the cap; a settlement keeps only what was charged.
    let void = Resolution { state: FinalState::Voided, log: settle_log() };
    resolve(&db, &admitted[0].request_id, &void).await.unwrap();
    let settle = Resolution {
        state: FinalState::Settled {
            usage: tollgate::gateway::settle::Usage { input: 100, output: 100, ..Default::default() },
            prices: PRICES,
        },
        log: settle_log(),
    };
    resolve(&db, &admitted[1].request_id, &settle).await.unwrap();
    assert_eq!(spent(db.clone(), period.clone()).await, 7 * worst + 300);
    // The room freed (8699 µ) admits exactly two more worst cases.
    assert!(reserve(&db, &capped_request("after-1", cap, 1000, 1000)).await.is_ok());
    assert!(reserve(&db, &capped_request("after-2", cap, 1000, 1000)).await.is_ok());
    assert!(matches!(
        reserve(&db, &capped_request("after-3", cap, 1000, 1000)).await,
        Err(Error::KeyBudgetExceeded { .. })
    ));
    assert_books_balance(&db, cap.user_id).await;
}

async fn daily_caps_start_afresh_at_midnight_utc(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let cap = capped_key(db, "daily@example.com", 1_000_000, 5000, Period::Day).await;
    // Yesterday the key spent its whole cap (there is no settable clock: the period's row is
    // written as the previous day's).
    let yesterday = Period::Day.key(now_ms() - MS_PER_DAY);
    key_spend::Entity::insert(key_spend::ActiveModel {
        key_id: Set(cap.key_id),
        period: Set(yesterday.clone()),
        spent: Set(5000),
        updated_at: Set(now_ms() - MS_PER_DAY),
    })
    .exec(&db.write)
    .await
    .unwrap();
    let r = reserve(db, &capped_request("today-1", cap, 1000, 1000)).await.unwrap();
    assert_eq!(r.key_period.as_deref(), Some(Period::Day.key(now_ms()).as_str()));
    match reserve(db, &capped_request("today-2", cap, 1000, 1000)).await {
        Err(Error::KeyBudgetExceeded { left, limit, period, .. }) => {
            assert_eq!((left.as_str(), limit.as_str(), period), ("0.002", "0.005", "day"));
        }
        other => panic!("expected the cap to refuse, got {other:?}"),
    }
    // A cap over the key's whole life, new to it, starts from what its usage rows say it was
    // charged: today's settled 3000 µ leave no room under 3000.
    let total = KeyCap { period: Period::Total, limit: 3000, ..cap };
    let settle = Resolution {
        state: FinalState::Settled {
            usage: tollgate::gateway::settle::Usage { input: 1000, output: 1000, ..Default::default() },
            prices: PRICES,
        },
        log: settle_log(),
    };
    resolve(db, "today-1", &settle).await.unwrap();
    assert!(matches!(reserve(db, &capped_request("total-1", total, 0, 1)).await, Err(Error::KeyBudgetExceeded { .. })));
}

async fn the_affordable_cap_lowers_only_caps_the_client_did_not_name(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    g.fake.obey_caps(&["max_completion_tokens", "max_tokens"]);
    tollgate::models::set(
        &app.db,
        &tollgate::cache::Cache::in_process(),
        "long-model",
        tollgate::models::ModelChange {
            upstream_model: Some("upstream-model".into()),
            input_price: Some(1_000_000),
            output_price: Some(2_000_000),
            max_output_tokens: Some(4000),
            context_window: Some(100_000),
            enabled: Some(true),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let body = json!({ "model": "long-model", "messages": [{ "role": "user", "content": "Say hello." }] });
    let prompt = tollgate::gateway::tokens::count_prompt("upstream-model", body.as_object().unwrap());
    // 2000 µ cover the prompt at its worst class (a chat request writes no prompt cache: the
    // input price, 1 µ per token) and (2000 - prompt) / 2 output tokens, not 4000.
    let (user, key) = app.customer("afford@example.com", 2000).await;
    let res = app.chat(&key, &body).await;
    assert_eq!(res.status(), 200);
    let expected = (2000 - prompt) / 2;
    assert_eq!(res.headers()["x-tollgate-output-cap"].to_str().unwrap(), expected.to_string());
    let sent = g.fake.bodies().last().cloned().unwrap();
    assert_eq!(sent["max_completion_tokens"], expected, "{sent}");
    app.settled(user).await;
    assert!(app.balance(user).await >= 0);
    assert_books_balance(&app.db, user).await;

    // An explicit cap is never lowered: 402.
    let (_, key2) = app.customer("explicit@example.com", 2000).await;
    let mut explicit = body.clone();
    explicit["max_tokens"] = json!(4000);
    let calls = g.fake.calls();
    let (status, error) = error_of(app.chat(&key2, &explicit).await).await;
    assert_eq!((status, error["code"].as_str()), (402, Some("billing.insufficient_balance")));
    assert_eq!(g.fake.calls(), calls);

    // Below the minimum (256 by default): 402, nothing sent.
    let (_, key3) = app.customer("poor@example.com", 400).await;
    let res = app.chat(&key3, &body).await;
    assert_eq!(res.status(), 402);
    assert!(res.headers().get("x-tollgate-output-cap").is_none());
    assert_eq!(g.fake.calls(), calls);

    // A key cap counts among the funds.
    let (_, browser, url, _, key4) = customer_with_key(app, "keycap@example.com", 1_000_000).await;
    patch(&browser, &url, &json!({ "spendLimit": "0.001" })).await;
    let res = app.chat(&key4, &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-tollgate-output-cap"].to_str().unwrap(), ((1000 - prompt) / 2).to_string());
    // Enough money: the model's full cap, and no header.
    let (_, rich) = app.customer("rich@example.com", 1_000_000).await;
    let res = app.chat(&rich, &body).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-tollgate-output-cap").is_none());
    assert_eq!(g.fake.bodies().last().unwrap()["max_completion_tokens"], 4000);
}

/// One generated situation: the funds, the request, and the floor of a lowered cap.
#[derive(Clone, Debug)]
struct Case {
    balance: i64,
    sub_tokens: i64,
    key_limit: Option<i64>,
    prompt: i64,
    full: i64,
    choices: i64,
    min: i64,
    prices: Prices,
}

/// The affordable cap, at the reservation: whatever the funds, a lowered cap is at least the
/// minimum and below the full cap, the largest the funds cover, and nothing is overspent.
async fn affordable_reservation_holds(db: &tollgate::db::Db, n: usize, case: Case) -> Result<(), String> {
    let Case { balance, sub_tokens, key_limit, prompt, full, choices, min, prices } = case;
    let user = user_with_balance(db, &format!("p{n}@example.com"), balance).await;
    if sub_tokens > 0 {
        tollgate::subscriptions::grant(db, user, "plan", sub_tokens, 30, None).await.unwrap();
    }
    let (key, _) = tollgate::keys::create(&db.write, user, None).await.unwrap();
    let cap = key_limit.map(|limit| KeyCap { key_id: key.id, user_id: user, limit, period: Period::Total });
    let id = format!("prop-{n}");
    let req = ReserveRequest {
        request_id: &id,
        user_id: user,
        key_id: Some(key.id),
        prompt_tokens: prompt,
        max_completion_tokens: full * choices,
        prices,
        key_cap: cap,
        affordable: Some(Affordable { choices, min_per_choice: min }),
        ..ReserveRequest::default()
    };
    let funds = key_limit.map_or(balance, |l| l.min(balance));
    let covers = |per_choice: i64| {
        tollgate::billing::worst_case(sub_tokens, prompt, per_choice * choices, &prices, CacheWrites::None).amount
            <= funds
    };
    match reserve(db, &req).await {
        Ok(r) => {
            if r.amount > balance || key_limit.is_some_and(|l| r.amount > l) {
                return Err(format!("overspent: took {} of {balance} (key limit {key_limit:?})", r.amount));
            }
            match r.lowered_cap {
                None if !covers(full) => return Err("the full cap was reserved without the funds".into()),
                Some(c) if c < min || c >= full => return Err(format!("lowered to {c} (min {min}, full {full})")),
                Some(c) if !covers(c) || (c + 1 < full && covers(c + 1)) => {
                    return Err(format!("{c} is not the largest cap the funds cover"));
                }
                _ => {}
            }
        }
        Err(Error::InsufficientBalance { .. } | Error::KeyBudgetExceeded { .. }) => {
            if covers(full) || (min < full && covers(min)) {
                return Err("refused although the funds cover a cap".into());
            }
        }
        Err(other) => return Err(format!("unexpected: {other}")),
    }
    let stored = tollgate::billing::balance::amount(&db.read, user).await.unwrap();
    if stored < 0 {
        return Err(format!("negative balance {stored}"));
    }
    Ok(())
}

async fn affordable_caps_never_overspend(backend: Backend) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let t = fresh_db(backend).await;
    let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
    let strategy = (
        0..20_000i64,
        prop_oneof![Just(0i64), 0..3_000i64],
        prop_oneof![Just(None), (0..20_000i64).prop_map(Some)],
        0..2_000i64,
        1..5_000i64,
        1..4i64,
        1..600i64,
        (1..5_000_000i64, 1..5_000_000i64),
    );
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |(balance, subs, key, prompt, full, choices, min, (input, output))| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prices = Prices::flat(input, output);
        let case = Case { balance, sub_tokens: subs, key_limit: key, prompt, full, choices, min, prices };
        let db = t.db.clone();
        let outcome = tokio::task::block_in_place(|| handle.block_on(affordable_reservation_holds(&db, n, case)));
        outcome.map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

on_all_backends!(
    settings_are_validated_shown_and_audited,
    allowed_models_fence_the_key,
    a_spend_cap_refuses_what_it_does_not_cover,
    expired_keys_and_foreign_addresses_are_refused,
    concurrent_reservations_admit_exactly_what_the_key_cap_covers,
    daily_caps_start_afresh_at_midnight_utc,
    the_affordable_cap_lowers_only_caps_the_client_did_not_name,
    affordable_caps_never_overspend,
);
