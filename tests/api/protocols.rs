//! The protocol edges end to end against a recording fake upstream: Anthropic Messages (passed
//! through to an Anthropic channel, translated to an OpenAI one), count_tokens, Responses with
//! stored responses routed to their owner's channel only, embeddings; every token class billed
//! to the micro-unit, errors in each protocol's own shape.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tollgate::audit::Actor;
use tollgate::channels::{self, ModelRoute, NewChannel, Settings};
use tollgate::config::Secret;

use crate::helpers::{Backend, ENCRYPTION_KEY, MODEL, TestApp, add_test_model, assert_books_balance, spawn_app_with};
use crate::on_all_backends;

pub(crate) const ANTHROPIC_KEY: &str = "sk-ant-upstream-test-key";
pub(crate) const OPENAI_KEY: &str = "sk-openai-upstream-test-key";

/// One request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    fn on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

fn record(rec: &Recorder, path: &str, headers: HeaderMap, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    rec.0.lock().unwrap().push(Seen { path: path.to_owned(), headers, body: body.clone() });
    body
}

/// The Anthropic usage the fake reports: 10 plain input tokens, 1,000 read from the cache, 200
/// written to it, 50 out.
fn anthropic_usage() -> Value {
    json!({ "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 50 })
}

/// The charge of that usage with the test model's prices (1 per input and cache-read token,
/// 1.25 per cache-write token by default, 2 per output token).
const ANTHROPIC_CHARGE: i64 = 10 + 1000 + 250 + 100;

fn sse(events: &[(&str, Value)]) -> Response {
    let body: String = events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn messages(State(rec): State<Recorder>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&rec, "/v1/messages", headers, &body);
    let message = json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{ "type": "text", "text": "Hello there" }],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": anthropic_usage()
    });
    if body["stream"] == true {
        let mut start = message.clone();
        start["content"] = json!([]);
        start["usage"] = json!({ "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 1 });
        return sse(&[
            ("message_start", json!({ "type": "message_start", "message": start })),
            (
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
            ),
            ("ping", json!({ "type": "ping" })),
            (
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Hello there" } }),
            ),
            ("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })),
            (
                "message_delta",
                json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null }, "usage": { "output_tokens": 50 } }),
            ),
            ("message_stop", json!({ "type": "message_stop" })),
        ]);
    }
    axum::Json(message).into_response()
}

async fn count_tokens(State(rec): State<Recorder>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    record(&rec, "/v1/messages/count_tokens", headers, &body);
    axum::Json(json!({ "input_tokens": 4242 })).into_response()
}

async fn chat(State(rec): State<Recorder>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&rec, "/v1/chat/completions", headers, &body);
    axum::Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hi from chat" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 30, "completion_tokens": 8, "prompt_tokens_details": { "cached_tokens": 20 } }
    }))
    .into_response()
}

async fn responses(State(rec): State<Recorder>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&rec, "/v1/responses", headers, &body);
    let n = rec.on("/v1/responses").len();
    let response = json!({
        "id": format!("resp_fake{n}"), "object": "response", "status": "completed", "model": body["model"],
        "output": [{ "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": "Hi" }] }],
        "usage": { "input_tokens": 100, "input_tokens_details": { "cached_tokens": 60 }, "output_tokens": 50, "output_tokens_details": { "reasoning_tokens": 30 } }
    });
    if body["stream"] == true {
        let mut created = response.clone();
        created["status"] = json!("in_progress");
        created["usage"] = Value::Null;
        return sse(&[
            ("response.created", json!({ "type": "response.created", "response": created })),
            ("response.output_text.delta", json!({ "type": "response.output_text.delta", "delta": "Hi" })),
            ("response.completed", json!({ "type": "response.completed", "response": response })),
        ]);
    }
    axum::Json(response).into_response()
}

async fn stored(State(rec): State<Recorder>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    record(&rec, &format!("/v1/responses/{id}"), headers, b"null");
    axum::Json(json!({ "id": id, "object": "response", "status": "completed" })).into_response()
}

async fn embeddings(State(rec): State<Recorder>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    record(&rec, "/v1/embeddings", headers, &body);
    axum::Json(json!({
        "object": "list", "data": [{ "object": "embedding", "index": 0, "embedding": [0.1, 0.2] }],
        "model": "upstream-model", "usage": { "prompt_tokens": 7, "total_tokens": 7 }
    }))
    .into_response()
}

/// Starts the fake; answers its base address.
async fn fake() -> (String, Recorder) {
    let rec = Recorder::default();
    let app = axum::Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/responses/{id}", get(stored))
        .route("/v1/embeddings", post(embeddings))
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), rec)
}

/// Adds a channel of `provider` at `base` with one key, routing every model.
pub(crate) async fn add_channel(app: &TestApp, name: &str, provider: &str, base: &str, key: &str, priority: i32) {
    let mut new = NewChannel::new(name, provider, base, vec![ModelRoute::parse("*")], vec![Secret::new(key)]);
    new.priority = priority;
    let settings =
        Settings { sealer: Some(channels::seal::Sealer::parse(ENCRYPTION_KEY).unwrap()), allow_private: true };
    channels::create(&app.db, &app.cache(), &settings, &Actor::system(), new).await.unwrap();
}

/// An app with the test model and, as asked, an Anthropic channel and an OpenAI one (lower
/// priority) on the same fake.
async fn setup(backend: Backend, anthropic: bool, openai: bool) -> (TestApp, Recorder) {
    let app = spawn_app_with(backend, &[]).await;
    add_test_model(&app).await;
    let (base, rec) = fake().await;
    if anthropic {
        add_channel(&app, "claude", "anthropic", &base, ANTHROPIC_KEY, 10).await;
    }
    if openai {
        add_channel(&app, "openai", "openai", &format!("{base}/v1"), OPENAI_KEY, 0).await;
    }
    (app, rec)
}

fn messages_body(stream: bool) -> Value {
    json!({
        "model": MODEL, "max_tokens": 64, "stream": stream,
        "system": [{ "type": "text", "text": "Be brief.", "cache_control": { "type": "ephemeral" } }],
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Say hello." }] }],
        "thinking": { "type": "enabled", "budget_tokens": 256 },
        "an_unknown_field": { "kept": [1, 2.50, "x"] }
    })
}

async fn send(app: &TestApp, path: &str, key: &str, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.post(format!("{}{path}", app.address)).json(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if !extra.iter().any(|(k, _)| *k == "x-api-key") {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

/// The JSON the upstream must have received: the client's, with the model and the cap set.
fn expected_upstream(mut body: Value, cap_field: &str, cap: i64) -> Value {
    body["model"] = json!("upstream-model");
    body[cap_field] = json!(cap);
    body
}

async fn messages_pass_through_and_bill_every_class(backend: Backend) {
    let (app, rec) = setup(backend, true, true).await;
    let (user, key) = app.customer("claude@example.com", 10_000_000).await;
    for stream in [false, true] {
        let before = app.balance(user).await;
        let body = messages_body(stream);
        let res = send(
            &app,
            "/v1/messages?beta=true",
            "",
            &body,
            &[
                ("x-api-key", key.as_str()),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "interleaved-thinking-2025-05-14"),
            ],
        )
        .await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        if stream {
            for event in ["message_start", "content_block_delta", "message_delta", "message_stop", "ping"] {
                assert!(text.contains(&format!("event: {event}\n")), "{event} relayed: {text}");
            }
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["content"][0]["text"], "Hello there", "the fake's answer unchanged");
            assert_eq!(answer["usage"], anthropic_usage());
        }
        let seen = rec.on("/v1/messages").pop().expect("the Anthropic channel was called");
        assert_eq!(seen.body, expected_upstream(body, "max_tokens", 64), "the body passed through");
        assert_eq!(seen.headers["x-api-key"], ANTHROPIC_KEY, "the channel's key, never the customer's");
        assert!(seen.headers.get("authorization").is_none());
        assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
        assert_eq!(seen.headers["anthropic-beta"], "interleaved-thinking-2025-05-14");
        app.settled(user).await;
        assert_eq!(before - app.balance(user).await, ANTHROPIC_CHARGE, "stream={stream}: every class at its price");
        let row = app.usage(user).await.pop().unwrap();
        assert_eq!((row.prompt_tokens, row.cache_read_tokens, row.cache_write_tokens), (1210, 1000, 200));
        assert_eq!((row.completion_tokens, row.cost), (50, ANTHROPIC_CHARGE));
    }
    assert!(rec.on("/v1/chat/completions").is_empty(), "the native channel served");
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(messages_pass_through_and_bill_every_class);

#[tokio::test]
async fn the_recorded_claude_code_request_reaches_the_upstream_unchanged() {
    let (app, rec) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("cc@example.com", 100_000_000).await;
    let recorded: Value =
        serde_json::from_str(include_str!("../fixtures/clients/claude-code-2.1.197-messages.json")).unwrap();
    let mut body = recorded["body"].clone();
    body["model"] = json!(MODEL);
    let beta = recorded["headers"]["anthropic-beta"].as_str().unwrap();
    let res =
        send(&app, "/v1/messages?beta=true", "", &body, &[("x-api-key", key.as_str()), ("anthropic-beta", beta)]).await;
    assert_eq!(res.status(), 200);
    let _ = res.text().await.unwrap();
    let seen = rec.on("/v1/messages").pop().unwrap();
    // The client's cap is above the model's limit: the limit is what was reserved and sent.
    let cap = seen.body["max_tokens"].as_i64().unwrap();
    assert!(cap <= crate::helpers::MAX_OUT, "{cap}");
    assert_eq!(seen.body, expected_upstream(body, "max_tokens", cap), "tools, cache_control, thinking kept");
    assert_eq!(seen.headers["anthropic-beta"], beta);
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn a_messages_client_is_served_by_an_openai_channel_through_translation() {
    let (app, rec) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("translated@example.com", 10_000_000).await;
    let res = send(&app, "/v1/messages", "", &messages_body(false), &[("x-api-key", key.as_str())]).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], "Hi from chat");
    let seen = rec.on("/v1/chat/completions").pop().expect("the OpenAI channel was called");
    assert_eq!(seen.body["messages"][0]["role"], "system");
    assert_eq!(seen.headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    app.settled(user).await;
    // 10 plain input + 20 cached (1 each) + 8 out (2 each).
    assert_eq!(app.usage(user).await.pop().unwrap().cost, 10 + 20 + 16);
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn anthropic_refusals_are_anthropic_shaped_and_change_nothing() {
    let (app, rec) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("refused@example.com", 10_000_000).await;
    let res = send(&app, "/v1/messages", "", &messages_body(false), &[("x-api-key", "sk-not-a-real-key")]).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    let mut no_cap = messages_body(false);
    no_cap.as_object_mut().unwrap().remove("max_tokens");
    let res = send(&app, "/v1/messages", "", &no_cap, &[("x-api-key", key.as_str())]).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let mut server_tool = messages_body(false);
    server_tool["tools"] = json!([{ "type": "web_search_20250305", "name": "web_search" }]);
    let res = send(&app, "/v1/messages", "", &server_tool, &[("x-api-key", key.as_str())]).await;
    assert_eq!(res.status(), 400, "server tools are billed per use: refused");
    let poor = app.customer("poor@example.com", 10).await;
    let res = send(&app, "/v1/messages", "", &messages_body(false), &[("x-api-key", poor.1.as_str())]).await;
    assert_eq!(res.status(), 402);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["type"], "billing_error");
    assert!(rec.on("/v1/messages").is_empty(), "no refused request reached the upstream");
    assert_eq!(app.balance(user).await, 10_000_000);
    assert_eq!(app.balance(poor.0).await, 10);
}

#[tokio::test]
async fn count_tokens_is_the_channels_count_or_ours_and_free() {
    let (app, rec) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("count@example.com", 1_000).await;
    let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Count me, please." }] });
    let res = send(&app, "/v1/messages/count_tokens", "", &body, &[("x-api-key", key.as_str())]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["input_tokens"], 4242, "the channel's exact count");
    assert_eq!(rec.on("/v1/messages/count_tokens").pop().unwrap().body["model"], "upstream-model");

    let (app2, _) = setup(Backend::Sqlite, false, true).await;
    let (_, key2) = app2.customer("count2@example.com", 1_000).await;
    let res = send(&app2, "/v1/messages/count_tokens", "", &body, &[("x-api-key", key2.as_str())]).await;
    assert_eq!(res.status(), 200);
    let ours = res.json::<Value>().await.unwrap()["input_tokens"].as_i64().unwrap();
    let plain = tollgate::gateway::tokens::count_text("upstream-model", "Count me, please.");
    assert!(ours > plain, "our approximation never undercounts: {ours} vs {plain}");
    assert_eq!(app.balance(user).await, 1_000, "counting is free");
}

async fn responses_are_billed_and_stored_ones_reach_their_owner_only(backend: Backend) {
    let (app, rec) = setup(backend, true, true).await;
    let (user, key) = app.customer("codex@example.com", 10_000_000).await;
    let (_, other) = app.customer("other@example.com", 10_000_000).await;
    for stream in [false, true] {
        let before = app.balance(user).await;
        let body = json!({ "model": MODEL, "input": "Say hello.", "stream": stream, "store": true, "reasoning": { "effort": "low" } });
        let res = send(&app, "/v1/responses", &key, &body, &[]).await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        if stream {
            assert!(text.contains("event: response.completed"), "{text}");
        }
        let seen = rec.on("/v1/responses").pop().unwrap();
        assert_eq!(seen.body["model"], "upstream-model");
        assert_eq!(seen.body["reasoning"], json!({ "effort": "low" }));
        assert!(seen.body["max_output_tokens"].as_i64().is_some(), "the reserved cap is always sent");
        app.settled(user).await;
        // 40 plain + 60 cached input (1 each), 50 out of which 30 reasoning (2 each).
        assert_eq!(before - app.balance(user).await, 40 + 60 + 100, "stream={stream}");
        let row = app.usage(user).await.pop().unwrap();
        assert_eq!((row.cache_read_tokens, row.reasoning_tokens, row.completion_tokens), (60, 30, 50));
    }
    let id = "resp_fake1";
    let get = |key: String| {
        let url = format!("{}/v1/responses/{id}", app.address);
        let client = app.client.clone();
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let mine = get(key.clone()).await;
    assert_eq!(mine.status(), 200);
    assert_eq!(mine.json::<Value>().await.unwrap()["id"], id);
    assert_eq!(rec.on(&format!("/v1/responses/{id}")).len(), 1);
    assert_eq!(get(other.clone()).await.status(), 404, "another customer's response is not found");
    assert_eq!(rec.on(&format!("/v1/responses/{id}")).len(), 1, "and never fetched");

    let calls = rec.on("/v1/responses").len();
    let continued = json!({ "model": MODEL, "input": "And again.", "previous_response_id": id });
    assert_eq!(send(&app, "/v1/responses", &other, &continued, &[]).await.status(), 404);
    assert_eq!(rec.on("/v1/responses").len(), calls, "no upstream call for someone else's response");
    assert_eq!(send(&app, "/v1/responses", &key, &continued, &[]).await.status(), 200, "the owner continues");
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(responses_are_billed_and_stored_ones_reach_their_owner_only);

#[tokio::test]
async fn unpriced_responses_features_are_refused() {
    let (app, rec) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("tools@example.com", 10_000_000).await;
    for body in [
        json!({ "model": MODEL, "input": "x", "tools": [{ "type": "web_search_preview" }], "tool_choice": "required" }),
        json!({ "model": MODEL, "input": "x", "tools": [{ "type": "web_search" }], "tool_choice": { "type": "web_search" } }),
        json!({ "model": MODEL, "input": "x", "tools": [{ "type": "namespace", "name": "n", "tools": [{ "type": "file_search" }] }] }),
        json!({ "model": MODEL, "input": "x", "tools": [{ "type": "a_future_tool" }] }),
        json!({ "model": MODEL, "input": "x", "background": true }),
        json!({ "model": MODEL }),
    ] {
        let res = send(&app, "/v1/responses", &key, &body, &[]).await;
        assert_eq!(res.status(), 400, "{body}");
        assert!(res.json::<Value>().await.unwrap()["error"]["message"].is_string());
    }
    assert!(rec.seen().is_empty());
    assert_eq!(app.balance(user).await, 10_000_000);
}

/// Codex offers `web_search` beside its own tools with `tool_choice: "auto"`: the search tool,
/// billed per call outside token prices, is left out and everything else passes through, tool
/// namespaces and client-run tools included.
#[tokio::test]
async fn offered_per_call_tools_are_left_out_and_the_rest_passes_through() {
    let (app, rec) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("codex@example.com", 10_000_000).await;
    let function = json!({ "type": "function", "name": "exec_command", "parameters": { "type": "object" } });
    let namespace =
        json!({ "type": "namespace", "name": "agents", "tools": [{ "type": "function", "name": "spawn" }] });
    let body = json!({
        "model": MODEL, "input": "x", "stream": false, "tool_choice": "auto",
        "tools": [function, { "type": "web_search", "external_web_access": false }, namespace, { "type": "local_shell" }],
    });
    let res = send(&app, "/v1/responses", &key, &body, &[]).await;
    assert_eq!(res.status(), 200);
    let seen = rec.on("/v1/responses").pop().unwrap();
    assert_eq!(seen.body["tools"], json!([function, namespace, { "type": "local_shell" }]));
    assert_eq!(seen.body["tool_choice"], json!("auto"));
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn embeddings_are_billed_on_their_input() {
    let (app, rec) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("rag@example.com", 10_000_000).await;
    let body = json!({ "model": MODEL, "input": ["first passage", [1, 2, 3]], "encoding_format": "float" });
    let res = send(&app, "/api/v1/embeddings", &key, &body, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["data"][0]["embedding"], json!([0.1, 0.2]));
    let seen = rec.on("/v1/embeddings").pop().unwrap();
    assert_eq!(
        seen.body,
        json!({ "model": "upstream-model", "input": ["first passage", [1, 2, 3]], "encoding_format": "float" })
    );
    app.settled(user).await;
    assert_eq!(app.balance(user).await, 10_000_000 - 7, "7 input tokens at 1, no output");
    assert_books_balance(&app.db, user).await;
}
