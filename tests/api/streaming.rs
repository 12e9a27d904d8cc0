//! Streams: chunk by chunk, usage read on the way, every way a stream ends billed once.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{Backend, MODEL, Mode, assert_books_balance, chat_body, eventually, spawn_gateway, sse_data};
use crate::on_all_backends;

fn chunks_of(data: &[String]) -> Vec<Value> {
    data.iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect()
}

async fn usage_is_requested_upstream_and_hidden_unless_asked(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("stream@example.com", 1_000_000).await;

    let res = g.app.chat(&key, &chat_body(true)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(res).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = chunks_of(&data);
    assert_eq!(chunks.len(), 5, "five content chunks and no usage chunk: {data:?}");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let sent = g.fake.bodies();
    assert_eq!(sent[0]["stream_options"]["include_usage"], json!(true), "the gateway asks for usage");

    // Asked for: the usage chunk is passed on.
    let mut body = chat_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let data = sse_data(g.app.chat(&key, &body).await).await;
    let chunks = chunks_of(&data);
    assert_eq!(chunks.len(), 6);
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 5);

    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.cost, r.usage_source.as_str()), (17, 5, 27, "upstream"));
        assert!(r.stream && r.status_code == 200 && r.ttfb_ms.is_some());
    }
    assert_eq!(g.app.balance(user).await, 1_000_000 - 54);
    assert_books_balance(&g.app.db, user).await;
}

async fn usage_repeated_in_every_chunk_counts_once(backend: Backend) {
    let g = spawn_gateway(backend, Mode::UsageEveryChunk, &[]).await;
    let (user, key) = g.app.customer("every@example.com", 1_000_000).await;
    g.fake.set_chunks(8);
    let data = sse_data(g.app.chat(&key, &chat_body(true)).await).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    assert_eq!((rows[0].completion_tokens, rows[0].cost), (8, 17 + 16), "the last running total, never the sum");
    assert_books_balance(&g.app.db, user).await;
}

async fn a_stream_without_usage_is_estimated_and_flagged(backend: Backend) {
    let g = spawn_gateway(backend, Mode::NoUsage, &[]).await;
    let (user, key) = g.app.customer("nousage@example.com", 1_000_000).await;
    let data = sse_data(g.app.chat(&key, &chat_body(true)).await).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 200);
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    let text: String = (0..5).map(tollgate_fake_upstream::piece).collect();
    let completion = tollgate::gateway::tokens::count_text(MODEL, &text);
    let prompt = tollgate::gateway::tokens::count_prompt("upstream-model", chat_body(true).as_object().unwrap());
    for r in &rows {
        assert_eq!(r.usage_source, "estimated");
        assert_eq!((r.prompt_tokens, r.completion_tokens), (prompt, completion));
        assert_eq!(r.cost, prompt + 2 * completion);
    }
    assert_books_balance(&g.app.db, user).await;
}

async fn a_client_that_disconnects_is_billed_what_the_upstream_reports(backend: Backend) {
    let g = spawn_gateway(backend, Mode::SlowChunks(Duration::from_millis(40)), &[]).await;
    let (user, key) = g.app.customer("gone@example.com", 1_000_000).await;
    g.fake.set_chunks(40);
    // Hidden reasoning: billed by the upstream, never seen as text.
    g.fake.set_reasoning_tokens(30);
    let mut body = chat_body(true);
    body["max_tokens"] = json!(100);
    let res = g.app.chat(&key, &body).await;
    let mut stream = res.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    drop(stream);
    // The upstream is read to its end after the client left, usage chunk included.
    eventually(10, "the upstream stream is read to its end", || async { g.fake.completed() == 1 }).await;
    assert_eq!(g.fake.cancelled(), 0);
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.status_code, r.usage_source.as_str()), (499, "upstream"));
    assert_eq!((r.prompt_tokens, r.completion_tokens), (17, 40 + 30));
    assert_eq!(r.cost, 17 + 2 * 70, "what the upstream reports, not what the client saw");
    assert_books_balance(&g.app.db, user).await;
}

async fn a_client_that_closes_just_before_the_usage_chunk_pays_the_reported_usage(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("early-close@example.com", 1_000_000).await;
    g.fake.set_chunks(10);
    g.fake.set_reasoning_tokens(50);
    g.fake.set_usage_delay(Duration::from_millis(300));
    let res = g.app.chat(&key, &chat_body(true)).await;
    let mut stream = res.bytes_stream();
    let mut seen = String::new();
    // All ten content chunks, then the client closes while the usage chunk is on its way.
    while !seen.contains(" w9") {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    drop(stream);
    g.app.settled(user).await;
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.usage_source.as_str(), r.completion_tokens), ("upstream", 60));
    assert_eq!(r.cost, 17 + 2 * 60);
    assert_books_balance(&g.app.db, user).await;
}

async fn a_non_stream_client_that_leaves_mid_generation_pays_the_reported_usage(backend: Backend) {
    let g = spawn_gateway(backend, Mode::DelayHead(Duration::from_millis(800)), &[]).await;
    let (user, key) = g.app.customer("impatient@example.com", 1_000_000).await;
    g.fake.set_chunks(40);
    g.fake.set_reasoning_tokens(20);
    let request = {
        let (client, url, key) = (g.app.client.clone(), format!("{}/v1/chat/completions", g.app.address), key.clone());
        tokio::spawn(async move { client.post(url).bearer_auth(key).json(&chat_body(false)).send().await })
    };
    // The client gives up while the upstream is generating.
    eventually(10, "the upstream is called", || async { g.fake.calls() == 1 }).await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled(), "the client gave up before the answer");
    g.app.settled(user).await;
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.status_code, r.usage_source.as_str()), (499, "upstream"));
    assert_eq!(r.cost, 17 + 2 * 60, "what the upstream generated, hidden reasoning included");
    assert_books_balance(&g.app.db, user).await;
}

async fn a_client_that_leaves_before_the_first_byte_is_not_charged_in_full(backend: Backend) {
    let g = spawn_gateway(backend, Mode::DelayHead(Duration::from_millis(1500)), &[]).await;
    let (user, key) = g.app.customer("early@example.com", 1_000_000).await;
    let request = {
        let (client, url, key) = (g.app.client.clone(), format!("{}/v1/chat/completions", g.app.address), key.clone());
        tokio::spawn(async move { client.post(url).bearer_auth(key).json(&chat_body(true)).send().await })
    };
    // The client gives up while its request waits for the upstream's first byte.
    eventually(10, "the upstream is called", || async { g.fake.calls() == 1 }).await;
    request.abort();
    g.app.settled(user).await;
    let rows = g.app.usage(user).await;
    // The upstream still answered: its usage (17 + 5 tokens) is charged, not the 200-token
    // reservation.
    assert_eq!((rows[0].status_code, rows[0].completion_tokens, rows[0].cost), (499, 5, 17 + 2 * 5));
    assert_books_balance(&g.app.db, user).await;
}

async fn an_upstream_that_dies_mid_stream_ends_with_an_error_event(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Reset { after: 3 }, &[]).await;
    let (user, key) = g.app.customer("reset@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(true)).await;
    assert_eq!(res.status(), 200);
    let data = sse_data(res).await;
    assert!(!data.contains(&"[DONE]".to_owned()), "not a clean end: {data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream.error");
    g.app.settled(user).await;
    let r = &g.app.usage(user).await[0];
    assert_eq!((r.status_code, r.usage_source.as_str()), (502, "estimated"));
    assert_eq!(r.completion_tokens, tollgate::gateway::tokens::count_text(MODEL, "Hello w1 w2"));
    assert_books_balance(&g.app.db, user).await;
}

async fn an_upstream_that_stalls_is_cut_by_the_idle_timeout(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Stall { after: 2 }, &[("UPSTREAM_IDLE_TIMEOUT_MS", "500")]).await;
    let (user, key) = g.app.customer("stall@example.com", 1_000_000).await;
    let data = sse_data(g.app.chat(&key, &chat_body(true)).await).await;
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream.timeout");
    eventually(5, "the stalled upstream request is dropped", || async { g.fake.cancelled() == 1 }).await;
    g.app.settled(user).await;
    let r = &g.app.usage(user).await[0];
    assert_eq!(r.status_code, 504);
    assert_eq!(r.completion_tokens, tollgate::gateway::tokens::count_text(MODEL, "Hello w1"));
    assert_books_balance(&g.app.db, user).await;
}

async fn shutdown_drains_open_streams_and_settles_them(backend: Backend) {
    let g = spawn_gateway(backend, Mode::SlowChunks(Duration::from_millis(100)), &[]).await;
    let (user, key) = g.app.customer("drain@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(true)).await;
    let reader = tokio::spawn(sse_data(res));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let url = g.app.database_url.clone();
    let _kept = g.app.stop().await;
    let data = reader.await.unwrap();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the open stream finished");
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    use tollgate::db::entities::reservations;
    let db = tollgate::db::Db::connect(&url, 2).await.unwrap();
    let pending =
        reservations::Entity::find().filter(reservations::Column::State.eq("pending")).count(&db.read).await.unwrap();
    assert_eq!(pending, 0, "every reservation settled before exit");
    assert_books_balance(&db, user).await;
}

on_all_backends!(
    usage_is_requested_upstream_and_hidden_unless_asked,
    usage_repeated_in_every_chunk_counts_once,
    a_stream_without_usage_is_estimated_and_flagged,
    a_client_that_disconnects_is_billed_what_the_upstream_reports,
    a_client_that_closes_just_before_the_usage_chunk_pays_the_reported_usage,
    a_non_stream_client_that_leaves_mid_generation_pays_the_reported_usage,
    a_client_that_leaves_before_the_first_byte_is_not_charged_in_full,
    an_upstream_that_dies_mid_stream_ends_with_an_error_event,
    an_upstream_that_stalls_is_cut_by_the_idle_timeout,
    shutdown_drains_open_streams_and_settles_them,
);
