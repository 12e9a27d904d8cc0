//! What a request holds while the upstream works: its prompt at a cache-write price only when
//! it is an Anthropic Messages request that asks for cache writes (`cache_control`), at the
//! 1-hour price only when one asks for an hour; every other request at the input price.

use serde_json::{Value, json};
use tollgate::gateway::tokens;

use crate::helpers::{Backend, MODEL, TestApp, assert_books_balance};
use crate::on_all_backends;
use crate::scripted::{Scripted, Step, event, post_json, reservations, setup};

const BALANCE: i64 = 10_000_000;
/// The output cap every request here names: 64 tokens at 2.
const OUTPUT: i64 = 2 * 64;

/// A Messages stream held before its first event.
fn held_messages() -> Vec<Step> {
    vec![
        Step::Hold,
        event(
            "message_start",
            json!({ "type": "message_start", "message": { "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                    "usage": { "input_tokens": 5, "output_tokens": 1 } } }),
        ),
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Hi" } }),
        ),
        event(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": 2 } }),
        ),
        event("message_stop", json!({ "type": "message_stop" })),
    ]
}

/// A Responses stream held before its first event.
fn held_responses() -> Vec<Step> {
    vec![
        Step::Hold,
        event(
            "response.created",
            json!({ "type": "response.created", "response": { "id": "resp_1", "status": "in_progress" } }),
        ),
        event(
            "response.completed",
            json!({ "type": "response.completed", "response": { "id": "resp_1", "status": "completed",
                    "usage": { "input_tokens": 5, "output_tokens": 2 } } }),
        ),
    ]
}

/// Sends a streamed request whose upstream holds its answer; answers what the customer's
/// balance held meanwhile (checked against the pending reservation), then lets it finish.
async fn held(app: &TestApp, fake: &Scripted, user: i64, key: &str, path: &str, body: &Value) -> i64 {
    fake.stream(if path == "/v1/responses" { held_responses() } else { held_messages() });
    let before = app.balance(user).await;
    let res = post_json(app, path, key, body, &[]).await;
    assert_eq!(res.status(), 200);
    let held = before - app.balance(user).await;
    let pending = reservations(app, user).await.pop().unwrap();
    assert_eq!((pending.state.as_str(), pending.amount), ("pending", held), "the balance holds the reservation");
    fake.release();
    let _ = res.text().await.unwrap();
    app.settled(user).await;
    held
}

fn messages(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL, "max_tokens": 64, "stream": true,
        "system": [{ "type": "text", "text": "You are a careful assistant. Answer in one short sentence." }],
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": "What is the capital of France?" }] }],
        "tools": [{ "name": "lookup", "description": "Looks a fact up.", "input_schema": { "type": "object", "properties": {} } }]
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The prompt the gateway reserves for a Messages body, tokens.
fn messages_prompt(body: &Value) -> i64 {
    tokens::count_messages_parts("upstream-model", body.as_object().unwrap()).reserved(100_000)
}

async fn only_messages_that_ask_for_cache_writes_reserve_them(backend: Backend) {
    let (app, fake) = setup(backend, true, true).await;
    let (user, key) = app.customer("cache-writes@example.com", BALANCE).await;
    let five_minutes = json!({ "type": "ephemeral" });
    let one_hour = json!({ "type": "ephemeral", "ttl": "1h" });

    // No cache_control: every prompt token at the input price (1).
    let plain = messages(json!({}));
    let prompt = messages_prompt(&plain);
    assert_eq!(held(&app, &fake, user, &key, "/v1/messages", &plain).await, prompt + OUTPUT);

    // 5-minute writes, wherever the breakpoint is: 1.25 per prompt token, rounded up once.
    let on_system = messages(json!({ "system": [{ "type": "text",
        "text": "You are a careful assistant. Answer in one short sentence.", "cache_control": five_minutes }] }));
    let on_content = messages(json!({ "messages": [{ "role": "user", "content": [{ "type": "text",
        "text": "What is the capital of France?", "cache_control": { "type": "ephemeral", "ttl": "5m" } }] }] }));
    let top_level = messages(json!({ "cache_control": five_minutes }));
    for body in [on_system, on_content, top_level] {
        let prompt = messages_prompt(&body);
        let expected = (prompt * 1_250_000 + 999_999) / 1_000_000 + OUTPUT;
        assert_eq!(held(&app, &fake, user, &key, "/v1/messages", &body).await, expected, "{body}");
    }

    // One 1-hour breakpoint (here on a tool; the others 5 minutes): 2 per prompt token.
    let mixed = messages(json!({
        "system": [{ "type": "text", "text": "You are a careful assistant. Answer in one short sentence.", "cache_control": five_minutes }],
        "tools": [{ "name": "lookup", "description": "Looks a fact up.", "input_schema": { "type": "object", "properties": {} },
                    "cache_control": one_hour }]
    }));
    assert_eq!(held(&app, &fake, user, &key, "/v1/messages", &mixed).await, 2 * messages_prompt(&mixed) + OUTPUT);
    // A 1-hour breakpoint inside a tool result's content counts too.
    let nested = messages(json!({ "messages": [
        { "role": "user", "content": "Look it up." },
        { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "lookup", "input": {} }] },
        { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "t1",
            "content": [{ "type": "text", "text": "Paris", "cache_control": one_hour }] }] }
    ] }));
    assert_eq!(held(&app, &fake, user, &key, "/v1/messages", &nested).await, 2 * messages_prompt(&nested) + OUTPUT);

    // OpenAI protocols never report cache writes: the input price, even for a chat part that
    // carries a `cache_control` (dropped on the way to an Anthropic channel).
    let chat = json!({ "model": MODEL, "max_tokens": 64, "stream": true, "messages": [
        { "role": "user", "content": [{ "type": "text", "text": "What is the capital of France?", "cache_control": one_hour }] }
    ] });
    let chat_prompt = tokens::count_prompt("upstream-model", chat.as_object().unwrap());
    assert_eq!(held(&app, &fake, user, &key, "/v1/chat/completions", &chat).await, chat_prompt + OUTPUT);
    let sent = fake.on("/v1/messages").pop().unwrap().body;
    assert!(!sent.to_string().contains("cache_control"), "no cache write can be asked for: {sent}");
    let responses =
        json!({ "model": MODEL, "max_output_tokens": 64, "stream": true, "input": "What is the capital of France?" });
    let responses_prompt = tokens::count_responses_parts("upstream-model", responses.as_object().unwrap()).estimate();
    assert_eq!(held(&app, &fake, user, &key, "/v1/responses", &responses).await, responses_prompt + OUTPUT);

    assert_books_balance(&app.db, user).await;
}

on_all_backends!(only_messages_that_ask_for_cache_writes_reserve_them);
