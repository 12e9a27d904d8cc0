//! Request shapes and endings that could make the upstream bill more than was reserved, or the
//! relay collect less than the upstream bills: choices, several cap fields, no cap, images,
//! usage beyond the reservation, shutdown with streams open, and floods of refusals.

use std::time::Duration;

use base64::Engine;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tollgate::db::entities::{audit_logs, reservations};

use crate::helpers::{
    Backend, MAX_OUT, MODEL, Mode, TestApp, assert_books_balance, chat_body, eventually, spawn_gateway, worst_case,
};
use crate::on_all_backends;

/// The one reservation of `user`.
async fn reservation(app: &TestApp, user: i64) -> reservations::Model {
    reservations::Entity::find().filter(reservations::Column::UserId.eq(user)).one(&app.db.read).await.unwrap().unwrap()
}

/// Configures the test model for an upstream that knows `max_tokens`, not OpenAI's field.
async fn upstream_obeys_max_tokens(app: &TestApp) {
    let change = tollgate::models::ModelChange { cap_field: Some("max_tokens".into()), ..Default::default() };
    tollgate::models::set(&app.db, &app.cache(), MODEL, change, None).await.unwrap();
}

async fn every_choice_is_reserved_and_billed(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("choices@example.com", 1_000_000).await;
    g.fake.set_chunks(500);
    g.fake.set_prompt_tokens(5);
    let mut body = chat_body(false);
    body["n"] = json!(4);
    let res = g.app.chat(&key, &body).await;
    assert_eq!(res.status(), 200);
    g.app.settled(user).await;
    // Four choices of the model's 100-token cap: 400 completion tokens, all reserved.
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.completion_tokens, r.cost, r.shortfall), (400, 5 + 2 * 400, 0));
    let res_row = reservation(&g.app, user).await;
    assert!(res_row.amount >= 2 * 400, "the reservation covers every choice: {}", res_row.amount);
    assert_eq!(res_row.excess_amount, 0);
    assert_books_balance(&g.app.db, user).await;

    // More choices than MAX_CHOICES (8) are refused before anything is reserved or sent.
    let calls = g.fake.calls();
    for n in [json!(9), json!(0), json!(-1), json!(1.5), json!("2")] {
        let mut b = chat_body(false);
        b["n"] = n.clone();
        let res = g.app.chat(&key, &b).await;
        assert_eq!(res.status(), 400, "n = {n}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    assert_eq!(g.fake.calls(), calls);
}

async fn fields_billed_outside_the_token_prices_are_refused(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("unpriced@example.com", 1_000_000).await;
    let cases = [
        ("modalities", json!(["text", "audio"])),
        ("audio", json!({ "voice": "alloy", "format": "wav" })),
        ("web_search_options", json!({})),
        ("service_tier", json!("priority")),
        (
            "messages",
            json!([{ "role": "user", "content": [{ "type": "input_audio", "input_audio": { "data": "UklGRg==", "format": "wav" } }] }]),
        ),
    ];
    for (field, value) in cases {
        let mut b = chat_body(false);
        b[field] = value;
        let res = g.app.chat(&key, &b).await;
        assert_eq!(res.status(), 400, "{field}");
    }
    let mut b = chat_body(false);
    b["service_tier"] = json!("flex");
    assert_eq!(g.app.chat(&key, &b).await.status(), 200);
    assert_eq!(g.fake.calls(), 1, "refused requests never reach the upstream");
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}

async fn the_reserved_cap_goes_in_the_field_the_upstream_honours(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("caps2@example.com", 1_000_000).await;
    g.fake.set_chunks(50);
    // Both cap fields sent, the smaller first: the upstream gets the smaller cap, once, in the
    // field its model is configured with (OpenAI's by default).
    g.fake.obey_caps(&["max_completion_tokens"]);
    let mut body = chat_body(false);
    body["max_completion_tokens"] = json!(1);
    body["max_tokens"] = json!(1000);
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    let sent = &g.fake.bodies()[0];
    assert_eq!(sent["max_completion_tokens"], json!(1));
    assert!(sent.get("max_tokens").is_none(), "no second cap the upstream might obey: {sent}");

    // An upstream that knows only `max_tokens`, and a client that sends only the other field:
    // the reserved cap still reaches the upstream in the field it obeys.
    upstream_obeys_max_tokens(&g.app).await;
    g.fake.obey_caps(&["max_tokens"]);
    let mut body = chat_body(false);
    body["max_completion_tokens"] = json!(2.0);
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    let sent = &g.fake.bodies()[1];
    assert_eq!(sent["max_tokens"], json!(2));
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    assert_eq!((rows[0].completion_tokens, rows[0].cost), (1, 17 + 2));
    assert_eq!((rows[1].completion_tokens, rows[1].cost), (2, 17 + 4));
    assert_books_balance(&g.app.db, user).await;
}

async fn a_non_stream_request_left_unanswered_is_not_retried_and_is_charged(backend: Backend) {
    // The upstream answers after 3 s; the first-byte timeout is 1 s. A non-streamed answer
    // comes whole, after generation: the upstream may have done the work.
    let g = spawn_gateway(
        backend,
        Mode::DelayHead(Duration::from_millis(3000)),
        &[("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "1000")],
    )
    .await;
    let (user, key) = g.app.customer("unanswered@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 504);
    g.app.settled(user).await;
    assert_eq!(g.fake.calls(), 1, "never retried: a retry could be billed twice");
    let res_row = reservation(&g.app, user).await;
    assert_eq!(res_row.charged_amount, res_row.amount, "the truth is unknown: the reservation is charged");
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.status_code, r.usage_source.as_str()), (504, "reserved"));
    assert_books_balance(&g.app.db, user).await;
}

async fn the_reserved_cap_is_sent_when_the_client_sends_none(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("nocap@example.com", 1_000_000).await;
    // The upstream would write 500 tokens by default, 5 × the model's cap.
    g.fake.set_chunks(500);
    g.fake.obey_caps(&["max_completion_tokens"]);
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    let sent = &g.fake.bodies()[0];
    assert_eq!(sent["max_completion_tokens"], json!(MAX_OUT));
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    g.app.settled(user).await;
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.completion_tokens, r.cost, r.shortfall), (MAX_OUT, 17 + 2 * MAX_OUT, 0));

    // A model whose upstream knows `max_tokens` gets the cap there.
    upstream_obeys_max_tokens(&g.app).await;
    g.fake.obey_caps(&["max_tokens"]);
    assert_eq!(g.app.chat(&key, &chat_body(true)).await.status(), 200);
    let sent = &g.fake.bodies()[1];
    assert_eq!(sent["max_tokens"], json!(MAX_OUT));
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}

/// A PNG header of the given size: enough for any size probe.
fn png(width: u32, height: u32) -> String {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(v))
}

async fn inline_images_are_reserved_by_their_size(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    tollgate::models::set(
        &g.app.db,
        &g.app.cache(),
        "vision",
        tollgate::models::ModelChange {
            upstream_model: Some("gpt-4.1-nano".into()),
            input_price: Some(1_000_000),
            output_price: Some(2_000_000),
            max_output_tokens: Some(MAX_OUT),
            context_window: Some(100_000),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let (user, key) = g.app.customer("vision@example.com", 1_000_000).await;
    // gpt-4.1-nano bills a 1024 × 1024 image as 1024 patches × 2.46 = 2,520 tokens; the
    // upstream reports them with the text.
    g.fake.set_prompt_tokens(2_520 + 8);
    let body = json!({ "model": "vision", "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "What is in this picture?" },
        { "type": "image_url", "image_url": { "url": png(1024, 1024) } }
    ]}]});
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    g.app.settled(user).await;
    let res = reservation(&g.app, user).await;
    assert!(res.amount >= 2_520 + 2 * MAX_OUT, "the image is reserved by its size: {}", res.amount);
    assert_eq!((res.charged_amount, res.excess_amount, res.shortfall), (2_528 + 2 * 5, 0, 0));
    assert_books_balance(&g.app.db, user).await;
}

async fn usage_beyond_the_reservation_is_collected_then_recorded(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    // An upstream that bills 5,000 prompt tokens for a two-word prompt.
    g.fake.set_prompt_tokens(5_000);
    let body = chat_body(false);
    let cost = 5_000 + 2 * 5;

    let (rich, key) = g.app.customer("excess@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    g.app.settled(rich).await;
    let res = reservation(&g.app, rich).await;
    assert_eq!((res.charged_amount, res.excess_amount, res.shortfall), (cost, cost - res.amount, 0));
    assert_eq!(g.app.balance(rich).await, 1_000_000 - cost, "the excess is collected");
    assert_books_balance(&g.app.db, rich).await;

    // Exactly the worst case: nothing is left to collect the excess from.
    let worst = worst_case(&body, MAX_OUT);
    let (poor, key) = g.app.customer("shortfall@example.com", worst).await;
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    g.app.settled(poor).await;
    let res = reservation(&g.app, poor).await;
    assert_eq!((res.charged_amount, res.excess_amount, res.shortfall), (worst, 0, cost - worst));
    assert_eq!(g.app.balance(poor).await, 0);
    let row = &g.app.usage(poor).await[0];
    assert_eq!((row.cost, row.shortfall), (worst, cost - worst));
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("billing.shortfall"))
        .filter(audit_logs::Column::TargetId.eq(res.request_id.as_str()))
        .count(&g.app.db.read)
        .await
        .unwrap();
    assert_eq!(audit, 1, "the shortfall is in the audit log");
    assert_books_balance(&g.app.db, poor).await;
}

async fn sigterm_cuts_open_streams_and_settles_what_was_delivered(backend: Backend) {
    let g = spawn_gateway(backend, Mode::SlowChunks(Duration::from_millis(200)), &[("SHUTDOWN_GRACE_SECS", "1")]).await;
    let (user, key) = g.app.customer("sigterm@example.com", 1_000_000).await;
    g.fake.set_chunks(100);
    let mut readers = Vec::new();
    for _ in 0..5 {
        let res = g.app.chat(&key, &chat_body(true)).await;
        assert_eq!(res.status(), 200);
        readers.push(tokio::spawn(crate::helpers::sse_data(res)));
    }
    eventually(10, "every stream has sent a chunk", || async { g.fake.open_streams() == 5 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = g.app.database_url.clone();
    // Stops the way SIGTERM does; the streams (20 s each) outlive the one-second grace period.
    let _kept = tokio::time::timeout(Duration::from_secs(30), g.app.stop()).await.expect("shutdown ends");
    for reader in readers {
        let data = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the stream ends").unwrap();
        assert_ne!(data.last().map(String::as_str), Some("[DONE]"), "a cut stream does not end cleanly");
    }
    let db = tollgate::db::Db::connect(&url, 2).await.unwrap();
    let pending =
        reservations::Entity::find().filter(reservations::Column::State.eq("pending")).count(&db.read).await.unwrap();
    assert_eq!(pending, 0, "every reservation settled before exit");
    let rows = tollgate::db::entities::usage_logs::Entity::find()
        .filter(tollgate::db::entities::usage_logs::Column::UserId.eq(user))
        .all(&db.read)
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    let worst = worst_case(&chat_body(true), MAX_OUT);
    for r in rows {
        assert!(r.completion_tokens > 0 && r.completion_tokens < MAX_OUT, "billed what was delivered: {r:?}");
        assert!(r.cost < worst, "never the full reservation: {} of {worst}", r.cost);
    }
    assert_books_balance(&db, user).await;
}

async fn refusals_cannot_flood_the_usage_log(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("broke@example.com", 0).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url, key) = (g.app.client.clone(), format!("{}/v1/chat/completions", g.app.address), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                let res = client.post(&url).bearer_auth(&key).json(&chat_body(false)).send().await.unwrap();
                assert_eq!(res.status(), 402);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Invented model names (404) do not multiply the rows either.
    for i in 0..50 {
        let mut b = chat_body(false);
        b["model"] = json!(format!("no-such-model-{i}"));
        if i % 2 == 0 {
            assert_eq!(g.app.chat(&key, &b).await.status(), 404);
        } else {
            // Malformed as well: refused before the catalogue is even asked.
            b["messages"] = json!([]);
            assert_eq!(g.app.chat(&key, &b).await.status(), 400);
        }
    }
    assert_eq!(g.fake.calls(), 0);
    let app = &g.app;
    eventually(10, "all 350 refusals counted", || async {
        app.usage(user).await.iter().map(|r| r.request_count).sum::<i64>() == 350
    })
    .await;
    // One row per status and minute of refusals, not one per refusal or per invented name.
    assert!(app.usage(user).await.len() <= 6, "{} rows", app.usage(user).await.len());
    // The dashboard's totals count every call.
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(
    every_choice_is_reserved_and_billed,
    fields_billed_outside_the_token_prices_are_refused,
    the_reserved_cap_goes_in_the_field_the_upstream_honours,
    a_non_stream_request_left_unanswered_is_not_retried_and_is_charged,
    the_reserved_cap_is_sent_when_the_client_sends_none,
    inline_images_are_reserved_by_their_size,
    usage_beyond_the_reservation_is_collected_then_recorded,
    sigterm_cuts_open_streams_and_settles_what_was_delivered,
    refusals_cannot_flood_the_usage_log,
);
