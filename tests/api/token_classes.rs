//! Token classes: cache reads, cache writes and reasoning billed at their own prices, a price per
//! request, the reservation in the most expensive class, defaults for unset cache prices, and
//! the classes on the usage rows and in the customer's history — on every backend.

use reqwest::Method;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tollgate::billing::{
    CacheWrites, Charge, FinalState, Prices, ReserveRequest, Resolution, Resolved, UsageLog, reserve, resolve,
};
use tollgate::db::entities::reservations;
use tollgate::gateway::settle::Usage;
use tollgate::models::ModelChange;

use crate::admin::Caller;
use crate::helpers::{
    Backend, MAX_OUT, MODEL, Mode, TestApp, assert_books_balance, fresh_db, prompt_tokens, reserve_request,
    spawn_gateway, sse_data, user_with_balance,
};
use crate::on_all_backends;

/// Reprices the test model (in the app's cache too, so the gateway sees it at once).
async fn reprice(app: &TestApp, change: ModelChange) {
    tollgate::models::set(&app.db, &app.cache(), MODEL, change, None).await.unwrap();
}

/// A chat body whose prompt the gateway counts as at least `tokens` tokens.
fn long_body(stream: bool, tokens: usize) -> Value {
    let text = "word ".repeat(tokens);
    json!({ "model": MODEL, "stream": stream, "messages": [{ "role": "user", "content": text }] })
}

/// `ceil(Σ tokens × price / 1M)`, written out independently of the product's cost function.
fn expected(classes: &[(i64, i64)]) -> i64 {
    let sum: i128 = classes.iter().map(|&(t, p)| i128::from(t) * i128::from(p)).sum();
    i64::try_from((sum + 999_999) / 1_000_000).unwrap()
}

/// `ceil(a / b)` for positive numbers.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

async fn reserved_amount(app: &TestApp, user: i64) -> Vec<i64> {
    reservations::Entity::find()
        .filter(reservations::Column::UserId.eq(user))
        .order_by_asc(reservations::Column::Id)
        .all(&app.db.read)
        .await
        .unwrap()
        .iter()
        .map(|r| r.amount)
        .collect()
}

async fn cached_and_reasoning_tokens_are_billed_at_their_class_prices(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    // Prices chosen so that rounding shows: micro-units per 1M tokens.
    let (input, cache_read, output, request) = (1_500_001, 333_333, 2_000_003, 7);
    reprice(
        app,
        ModelChange {
            input_price: Some(input),
            output_price: Some(output),
            cache_read_price: Some(Some(cache_read)),
            request_price: Some(request),
            ..Default::default()
        },
    )
    .await;
    // The upstream reports 1000 prompt tokens, 600 of them read from its cache, and 5 tokens of
    // text plus 40 of hidden reasoning (OpenAI counts both in `completion_tokens`).
    g.fake.set_prompt_tokens(1000);
    g.fake.set_cached_tokens(600);
    g.fake.set_reasoning_tokens(40);
    let charge = expected(&[(400, input), (600, cache_read), (45, output)]) + request;
    let (user, key) = app.customer("classes@example.com", 100_000_000).await;

    for stream in [false, true] {
        let body = long_body(stream, 1200);
        let before = app.balance(user).await;
        let res = app.chat(&key, &body).await;
        assert_eq!(res.status(), 200);
        if stream {
            let events = sse_data(res).await;
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            assert!(events.iter().all(|e| !e.contains("\"usage\"")), "the client did not ask for usage");
        } else {
            let answer: Value = res.json().await.unwrap();
            assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 600, "passed through");
        }
        app.settled(user).await;
        assert_eq!(before - app.balance(user).await, charge, "charged to the micro-unit (stream: {stream})");
        let row = app.usage(user).await.pop().unwrap();
        assert_eq!(row.cost, charge);
        assert_eq!((row.prompt_tokens, row.completion_tokens, row.total_tokens), (1000, 45, 1045));
        assert_eq!((row.cache_read_tokens, row.cache_write_tokens, row.reasoning_tokens), (600, 0, 40));
        assert_eq!(row.stream, stream);
        // The reservation priced every counted prompt token at the dearest class a chat request
        // can be billed in: it writes no prompt cache, and its cache reads cost less than input.
        let worst = expected(&[(prompt_tokens(&body), input), (MAX_OUT, output)]) + request;
        assert_eq!(reserved_amount(app, user).await.last().copied(), Some(worst));
    }
    assert_books_balance(&app.db, user).await;

    // The customer's history and export show the classes.
    let (me, customer) = Caller::signed_in(app, "viewer@example.com", "user").await;
    let key = tollgate::keys::create(&app.db.write, me, None).await.unwrap().1;
    tollgate::billing::ledger::adjust(&app.db, me, 10_000_000, "topup", "test top-up", None).await.unwrap();
    assert_eq!(app.chat(&key, &long_body(false, 1200)).await.status(), 200);
    app.settled(me).await;
    let (status, page) = customer.get("/api/internal/usage").await;
    assert_eq!(status, 200, "{page}");
    let row = &page["data"][0];
    assert_eq!((row["cacheReadTokens"].as_i64(), row["reasoningTokens"].as_i64()), (Some(600), Some(40)));
    assert_eq!(row["cacheWriteTokens"], 0);
    let csv = customer.call(Method::GET, "/api/internal/usage/export", None, &[]).await.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let cells: Vec<&str> = lines[1].split(',').collect();
    let col = |name: &str| cells[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!((col("cache_read_tokens"), col("cache_write_tokens"), col("reasoning_tokens")), ("600", "0", "40"));
    assert_books_balance(&app.db, me).await;
}

fn log() -> UsageLog {
    UsageLog {
        model: "classes".into(),
        status_code: 200,
        latency_ms: 1,
        ttfb_ms: None,
        stream: false,
        usage_source: "upstream",
    }
}

fn settle(usage: Usage, prices: Prices) -> Resolution {
    Resolution { state: FinalState::Settled { usage, prices }, log: log() }
}

async fn the_reservation_covers_a_prompt_of_cache_writes(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "writes@example.com", 1_000_000_000).await;
    // A model whose cache writes cost 3× its input.
    let (input, output) = (1_000_003, 4_000_000);
    let prices = Prices::of_model(input, output, None, Some(3 * input), 0);
    let (prompt, cap) = (10_000, 2_000);
    let write_1h = ceil_div(3 * input * 8, 5);
    for (id, usage, writes, price) in [
        (
            "all-writes",
            Usage { cache_write: prompt, output: cap, ..Usage::default() },
            CacheWrites::FiveMinutes,
            3 * input,
        ),
        (
            "all-1h-writes",
            Usage { cache_write_1h: prompt, output: cap, reasoning: cap / 2, ..Usage::default() },
            CacheWrites::OneHour,
            write_1h,
        ),
    ] {
        let before = tollgate::billing::balance::amount(&db.read, user).await.unwrap();
        let request = ReserveRequest { cache_writes: writes, ..reserve_request(id, user, prompt, cap, prices) };
        let r = reserve(db, &request).await.unwrap();
        assert!(
            i128::from(r.amount) * 1_000_000
                >= i128::from(prompt) * 3 * i128::from(input) + i128::from(cap) * i128::from(output),
            "reserved {} for a prompt of cache writes",
            r.amount
        );
        assert_eq!(r.amount, expected(&[(prompt, price), (cap, output)]), "{id}: the dearest class it may write");
        let Resolved::Charged(charge) = resolve(db, id, &settle(usage, prices)).await.unwrap() else {
            panic!("{id} resolved once")
        };
        assert_eq!(charge.amount, expected(&[(prompt, price), (cap, output)]));
        assert!(charge.amount <= r.amount);
        assert_eq!((charge.excess, charge.shortfall), (0, 0), "the worst case held");
        let after = tollgate::billing::balance::amount(&db.read, user).await.unwrap();
        assert_eq!(before - after, charge.amount);
    }
    assert_books_balance(db, user).await;
}

async fn the_request_price_is_charged_once_and_refunded_on_a_void(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let start = 1_000_000;
    let user = user_with_balance(db, "per-request@example.com", start).await;
    let prices = Prices { request: 5_000, ..Prices::flat(1_000_000, 2_000_000) };
    let r = reserve(db, &reserve_request("paid", user, 100, 50, prices)).await.unwrap();
    assert_eq!(r.amount, 100 + 100 + 5_000);
    let usage = Usage { input: 10, output: 3, ..Usage::default() };
    let first = resolve(db, "paid", &settle(usage, prices)).await.unwrap();
    assert_eq!(first, Resolved::Charged(Charge { amount: 10 + 6 + 5_000, ..Charge::default() }));
    assert_eq!(resolve(db, "paid", &settle(usage, prices)).await.unwrap(), Resolved::AlreadyResolved);
    let balance = || async { tollgate::billing::balance::amount(&db.read, user).await.unwrap() };
    assert_eq!(balance().await, start - 5_016, "charged once");

    // Nothing delivered: the request price goes back with the rest.
    let r = reserve(db, &reserve_request("void", user, 100, 50, prices)).await.unwrap();
    assert_eq!(balance().await, start - 5_016 - r.amount);
    let void = Resolution { state: FinalState::Voided, log: log() };
    assert_eq!(resolve(db, "void", &void).await.unwrap(), Resolved::Charged(Charge::default()));
    assert_eq!(balance().await, start - 5_016);

    // A call that used no tokens still pays its request price.
    let r = reserve(db, &reserve_request("no-money", user, 0, 0, prices)).await.unwrap();
    assert_eq!(r.amount, 5_000);
    resolve(db, "no-money", &settle(Usage::default(), prices)).await.unwrap();
    assert_eq!(balance().await, start - 10_016);
    assert_books_balance(db, user).await;
}

async fn a_void_through_the_gateway_refunds_the_request_price(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    reprice(app, ModelChange { request_price: Some(2_500), ..Default::default() }).await;
    let (user, key) = app.customer("gateway-request@example.com", 10_000_000).await;
    assert_eq!(app.chat(&key, &long_body(false, 10)).await.status(), 200);
    app.settled(user).await;
    let row = app.usage(user).await.pop().unwrap();
    // Test model: 1 micro-unit per input token (cache reads too, by default), 2 per output.
    let tokens_cost = expected(&[(row.prompt_tokens, 1_000_000), (row.completion_tokens, 2_000_000)]);
    assert_eq!(row.cost, tokens_cost + 2_500);
    assert_eq!(app.balance(user).await, 10_000_000 - row.cost);

    g.fake.set_mode(Mode::Status(500));
    assert_eq!(app.chat(&key, &long_body(false, 10)).await.status(), 502);
    app.settled(user).await;
    assert_eq!(app.balance(user).await, 10_000_000 - row.cost, "the failed call cost nothing");
    assert_books_balance(&app.db, user).await;
}

async fn unset_cache_prices_take_their_defaults(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (_, admin) = Caller::signed_in(app, "root@example.com", "admin").await;
    let (status, made) = admin
        .send(
            Method::POST,
            "/api/admin/models",
            &json!({ "name": "defaulted", "inputPrice": "2.000001", "outputPrice": "8" }),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!((made["cacheReadPrice"].clone(), made["cacheWritePrice"].clone()), (Value::Null, Value::Null));
    assert_eq!(made["requestPrice"], "0.00");
    let id = made["id"].as_i64().unwrap();
    let config = tollgate::models::lookup(&app.db, &app.cache(), "defaulted").await.unwrap();
    let p = config.prices();
    assert_eq!((p.cache_read, p.cache_write, p.cache_write_1h), (2_000_001, 2_500_002, 4_000_004));

    // /pricing shows what each class is billed at.
    let page = app.get("/pricing").await.text().await.unwrap();
    for shown in ["$2.000001", "$2.500002", "$4.000004"] {
        assert!(page.contains(shown), "/pricing shows {shown}");
    }

    // Set, then cleared back to the default with null; bad prices change nothing.
    let path = format!("/api/admin/models/{id}");
    let (status, set) = admin
        .send(Method::PATCH, &path, &json!({ "cacheReadPrice": "0.5", "cacheWritePrice": "3", "requestPrice": "0.01" }))
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!((set["cacheReadPrice"].as_str(), set["cacheWritePrice"].as_str()), (Some("0.50"), Some("3.00")));
    assert_eq!(set["requestPrice"], "0.01");
    for bad in [json!({ "cacheReadPrice": "-1" }), json!({ "cacheWritePrice": "abc" }), json!({ "requestPrice": null })]
    {
        let (status, body) = admin.send(Method::PATCH, &path, &bad).await;
        assert!(status == 400 || status == 422, "{bad} → {status} {body}");
    }
    let (status, cleared) = admin.send(Method::PATCH, &path, &json!({ "cacheReadPrice": null })).await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!((cleared["cacheReadPrice"].clone(), cleared["cacheWritePrice"].as_str()), (Value::Null, Some("3.00")));
    let row = tollgate::models::find(&app.db.read, id).await.unwrap();
    assert_eq!((row.cache_read_price, row.cache_write_price, row.request_price), (None, Some(3_000_000), 10_000));

    // Through the gateway: cache reads of a model without a cache-read price cost the input price.
    g.fake.set_prompt_tokens(300);
    g.fake.set_cached_tokens(200);
    let (user, key) = app.customer("defaults@example.com", 100_000_000).await;
    assert_eq!(app.chat(&key, &long_body(false, 400)).await.status(), 200);
    app.settled(user).await;
    let row = app.usage(user).await.pop().unwrap();
    assert_eq!(row.cache_read_tokens, 200);
    assert_eq!(row.cost, expected(&[(300, 1_000_000), (row.completion_tokens, 2_000_000)]));

    // An upstream claiming more cached tokens than prompt tokens: the cache read is clamped to
    // the prompt, never added to it.
    g.fake.set_cached_tokens(1_000);
    let res = app.chat(&key, &long_body(true, 400)).await;
    assert_eq!(res.status(), 200);
    sse_data(res).await;
    app.settled(user).await;
    let row = app.usage(user).await.pop().unwrap();
    assert_eq!((row.prompt_tokens, row.cache_read_tokens), (300, 300));
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(
    cached_and_reasoning_tokens_are_billed_at_their_class_prices,
    the_reservation_covers_a_prompt_of_cache_writes,
    the_request_price_is_charged_once_and_refunded_on_a_void,
    a_void_through_the_gateway_refunds_the_request_price,
    unset_cache_prices_take_their_defaults,
);
