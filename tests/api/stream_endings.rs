//! Every way an Anthropic Messages or OpenAI Responses stream can end, billed as the README's
//! stream-endings table says: the exact charge, the usage row (status and source) and the books
//! invariant. (`message_stop` and `response.completed` are in `protocols`.)

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate::gateway::tokens;

use crate::helpers::{Backend, MAX_OUT, MODEL, TestApp, assert_books_balance, eventually};
use crate::on_all_backends;
use crate::scripted::{Scripted, Step, event, post_json, reservations, setup, wire};

const BALANCE: i64 = 10_000_000;

/// A streamed Messages request (a cached system prompt, no thinking).
fn messages_body() -> Value {
    json!({
        "model": MODEL, "max_tokens": 64, "stream": true,
        "system": [{ "type": "text", "text": "Be brief.", "cache_control": { "type": "ephemeral" } }],
        "messages": [{ "role": "user", "content": "Say hello." }]
    })
}

/// `message_start` with 10 plain input tokens, 1,000 read from the cache and 200 written.
fn message_start() -> Step {
    event(
        "message_start",
        json!({ "type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "upstream-model", "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 1 }
        }}),
    )
}

fn text_start() -> Step {
    event(
        "content_block_start",
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
    )
}

fn text_delta(text: &str) -> Step {
    event(
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } }),
    )
}

/// The charge of the input `message_start` reports and `output` tokens: 10 + 1,000 at 1,
/// 200 cache writes at 1.25, the output at 2.
fn messages_charge(output: i64) -> i64 {
    10 + 1000 + 250 + 2 * output
}

/// Tokens of text the gateway counts as delivered.
fn counted(text: &str) -> i64 {
    tokens::count_text(MODEL, text)
}

/// Sends a streamed request and reads the client's stream to its end.
async fn stream_through(
    app: &TestApp,
    fake: &Scripted,
    path: &str,
    key: &str,
    body: &Value,
    steps: Vec<Step>,
) -> String {
    fake.stream(steps);
    let res = post_json(app, path, key, body, &[]).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    res.text().await.unwrap()
}

/// The usage row of the one request `user` made, once settled: (status, source, cost).
async fn only_row(app: &TestApp, user: i64) -> tollgate::db::entities::usage_logs::Model {
    app.settled(user).await;
    let mut rows = app.usage(user).await;
    assert_eq!(rows.len(), 1, "one request, one row");
    rows.pop().unwrap()
}

async fn a_messages_error_event_bills_the_started_input_and_the_delivered_output(backend: Backend) {
    let (app, fake) = setup(backend, true, false).await;
    let (user, key) = app.customer("overloaded@example.com", BALANCE).await;
    let steps = vec![
        message_start(),
        text_start(),
        event("ping", json!({ "type": "ping" })),
        text_delta("Hello there, how"),
        event("error", json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })),
    ];
    let text = stream_through(&app, &fake, "/v1/messages", &key, &messages_body(), steps.clone()).await;
    assert_eq!(text, wire(&steps), "the upstream's events, its error included, reach the client unchanged");
    let row = only_row(&app, user).await;
    let output = counted("Hello there, how");
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "estimated"), "the output was counted");
    assert_eq!((row.prompt_tokens, row.cache_read_tokens, row.cache_write_tokens), (1210, 1000, 200));
    assert_eq!((row.completion_tokens, row.cost), (output, messages_charge(output)));
    assert_eq!(app.balance(user).await, BALANCE - messages_charge(output));
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(a_messages_error_event_bills_the_started_input_and_the_delivered_output);

#[tokio::test]
async fn a_messages_stream_that_breaks_after_message_start_bills_what_was_delivered() {
    let (app, fake) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("broken@example.com", BALANCE).await;
    let steps = vec![message_start(), text_start(), text_delta("Hello there")];
    let text = stream_through(&app, &fake, "/v1/messages", &key, &messages_body(), steps.clone()).await;
    let (relayed, ending) = text.split_at(wire(&steps).len());
    assert_eq!(relayed, wire(&steps));
    assert!(ending.starts_with("event: error\ndata: "), "the client's stream ends with an error event: {ending}");
    let error: Value = serde_json::from_str(ending.trim_end().trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!((error["type"].as_str(), error["error"]["type"].as_str()), (Some("error"), Some("api_error")));
    let row = only_row(&app, user).await;
    let output = counted("Hello there");
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "estimated"));
    assert_eq!((row.prompt_tokens, row.cache_write_tokens, row.completion_tokens), (1210, 200, output));
    assert_eq!(row.cost, messages_charge(output));
    assert_eq!(app.balance(user).await, BALANCE - messages_charge(output));
    assert_books_balance(&app.db, user).await;
}

/// With thinking on, the thinking a Messages stream shows may be a summary of what was billed:
/// a stream that breaks before its final usage is charged the input `message_start` reported
/// and the whole output cap, not the count of what was shown.
#[tokio::test]
async fn a_thinking_messages_stream_that_breaks_is_charged_the_reservation() {
    let (app, fake) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("broken-thinking@example.com", BALANCE).await;
    let mut body = messages_body();
    body["thinking"] = json!({ "type": "enabled", "budget_tokens": 32 });
    let thinking = event(
        "content_block_start",
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "thinking", "thinking": "" } }),
    );
    let summary = event(
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "thinking_delta", "thinking": "Greet." } }),
    );
    let steps = vec![message_start(), thinking, summary];
    let text = stream_through(&app, &fake, "/v1/messages", &key, &body, steps.clone()).await;
    assert!(text.starts_with(&wire(&steps)) && text.contains("event: error\n"), "{text}");
    let row = only_row(&app, user).await;
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "estimated"));
    assert_eq!((row.prompt_tokens, row.completion_tokens, row.cost), (1210, 64, messages_charge(64)));
    assert_eq!(app.balance(user).await, BALANCE - messages_charge(64));
    assert_books_balance(&app.db, user).await;
}

/// Waits until the client has read `marker`, leaves, and lets the upstream go on.
async fn leave_after(app: &TestApp, fake: &Scripted, path: &str, key: &str, body: &Value, marker: &str) {
    let res = post_json(app, path, key, body, &[]).await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(marker) {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    drop(stream);
    // Time for the server to see the connection close before anything more is sent to it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.release();
    eventually(10, "the upstream is read to its end", || async { fake.finished() == 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_messages_client_that_leaves_pays_the_usage_the_upstream_reports_after() {
    let (app, fake) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("gone-messages@example.com", BALANCE).await;
    let mut steps = vec![message_start(), text_start(), text_delta("Hello"), Step::Hold];
    steps.extend((0..8).map(|_| text_delta(" there")));
    steps.extend([
        event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })),
        event(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null }, "usage": { "output_tokens": 50 } }),
        ),
        event("message_stop", json!({ "type": "message_stop" })),
    ]);
    fake.stream(steps);
    leave_after(&app, &fake, "/v1/messages", &key, &messages_body(), "Hello").await;
    let row = only_row(&app, user).await;
    assert_eq!((row.status_code, row.usage_source.as_str()), (499, "upstream"));
    assert_eq!((row.prompt_tokens, row.completion_tokens), (1210, 50), "the upstream's final usage");
    assert_eq!(row.cost, messages_charge(50));
    assert_eq!(app.balance(user).await, BALANCE - messages_charge(50));
    assert_books_balance(&app.db, user).await;
}

fn responses_body(reasoning: bool) -> Value {
    let mut body = json!({ "model": MODEL, "input": "Say hello.", "stream": true });
    if reasoning {
        body["reasoning"] = json!({ "effort": "low" });
    }
    body
}

/// The prompt estimate of a Responses body (billed when no usage arrives).
fn responses_prompt(body: &Value) -> i64 {
    tokens::count_responses_parts("upstream-model", body.as_object().unwrap()).estimate()
}

fn response(status: &str, usage: Value) -> Value {
    json!({ "id": "resp_1", "object": "response", "status": status, "model": "upstream-model", "output": [], "usage": usage })
}

fn created() -> Step {
    event("response.created", json!({ "type": "response.created", "response": response("in_progress", Value::Null) }))
}

fn output_delta(text: &str) -> Step {
    event(
        "response.output_text.delta",
        json!({ "type": "response.output_text.delta", "item_id": "msg_1", "delta": text }),
    )
}

/// 100 input tokens of which 60 cached, 50 out of which 30 reasoning.
fn responses_usage() -> Value {
    json!({ "input_tokens": 100, "input_tokens_details": { "cached_tokens": 60 }, "output_tokens": 50, "output_tokens_details": { "reasoning_tokens": 30 } })
}

/// That usage's charge: 40 plain and 60 cached input at 1, 50 out at 2.
const RESPONSES_CHARGE: i64 = 40 + 60 + 100;

#[tokio::test]
async fn a_response_incomplete_bills_the_upstreams_usage() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("incomplete@example.com", BALANCE).await;
    let mut last = response("incomplete", responses_usage());
    last["incomplete_details"] = json!({ "reason": "max_output_tokens" });
    let steps = vec![
        created(),
        output_delta("Hi"),
        event("response.incomplete", json!({ "type": "response.incomplete", "response": last })),
    ];
    let text = stream_through(&app, &fake, "/v1/responses", &key, &responses_body(true), steps.clone()).await;
    assert_eq!(text, wire(&steps));
    let row = only_row(&app, user).await;
    assert_eq!((row.status_code, row.usage_source.as_str()), (200, "upstream"));
    assert_eq!(
        (row.prompt_tokens, row.cache_read_tokens, row.completion_tokens, row.reasoning_tokens),
        (100, 60, 50, 30)
    );
    assert_eq!(row.cost, RESPONSES_CHARGE);
    assert_eq!(app.balance(user).await, BALANCE - RESPONSES_CHARGE);
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn a_response_failed_bills_the_usage_it_reports_as_a_502() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("failed@example.com", BALANCE).await;
    let mut last = response("failed", responses_usage());
    last["error"] = json!({ "code": "server_error", "message": "The model failed." });
    let steps = vec![
        created(),
        output_delta("Hi"),
        event("response.failed", json!({ "type": "response.failed", "response": last })),
    ];
    let text = stream_through(&app, &fake, "/v1/responses", &key, &responses_body(true), steps.clone()).await;
    assert_eq!(text, wire(&steps), "the failure reaches the client as the upstream sent it");
    let row = only_row(&app, user).await;
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "upstream"));
    assert_eq!((row.completion_tokens, row.cost), (50, RESPONSES_CHARGE));
    assert_eq!(app.balance(user).await, BALANCE - RESPONSES_CHARGE);
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn a_response_failed_without_usage_after_hidden_reasoning_is_charged_the_reservation() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("failed-blind@example.com", BALANCE).await;
    let failed =
        event("response.failed", json!({ "type": "response.failed", "response": response("failed", Value::Null) }));
    let steps = vec![created(), output_delta("Hi"), failed];
    let body = responses_body(true);
    let text = stream_through(&app, &fake, "/v1/responses", &key, &body, steps.clone()).await;
    assert_eq!(text, wire(&steps));
    let row = only_row(&app, user).await;
    let reserved = reservations(&app, user).await.pop().unwrap().amount;
    assert_eq!(reserved, responses_prompt(&body) + 2 * MAX_OUT, "the prompt at 1 and the model's cap at 2");
    assert_eq!((row.status_code, row.usage_source.as_str(), row.cost), (502, "reserved", reserved));
    assert_eq!(app.balance(user).await, BALANCE - reserved);
    assert_books_balance(&app.db, user).await;
}

#[tokio::test]
async fn a_responses_error_event_bills_the_prompt_estimate_and_the_delivered_text() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("error-event@example.com", BALANCE).await;
    let error =
        json!({ "type": "error", "code": "server_error", "message": "The server had an error.", "param": null });
    let steps = vec![created(), output_delta("Hi there, friend"), event("error", error)];
    let body = responses_body(false);
    let text = stream_through(&app, &fake, "/v1/responses", &key, &body, steps.clone()).await;
    assert_eq!(text, wire(&steps));
    let row = only_row(&app, user).await;
    let (prompt, output) = (responses_prompt(&body), counted("Hi there, friend"));
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "estimated"));
    assert_eq!((row.prompt_tokens, row.completion_tokens), (prompt, output));
    assert_eq!(row.cost, prompt + 2 * output);
    assert_eq!(app.balance(user).await, BALANCE - row.cost);
    assert_books_balance(&app.db, user).await;
}

/// The client's stream is the upstream's, then an `error` event of ours.
fn ends_in_our_error(text: &str, steps: &[Step]) {
    let (relayed, ending) = text.split_at(wire(steps).len());
    assert_eq!(relayed, wire(steps));
    let error: Value = serde_json::from_str(ending.trim_end().strip_prefix("event: error\ndata: ").unwrap()).unwrap();
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("upstream.incomplete")),
        "{ending}"
    );
}

#[tokio::test]
async fn a_responses_stream_cut_without_a_final_event_bills_the_estimate() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("cut@example.com", BALANCE).await;
    let steps = vec![created(), output_delta("Hi there")];
    let body = responses_body(false);
    let text = stream_through(&app, &fake, "/v1/responses", &key, &body, steps.clone()).await;
    ends_in_our_error(&text, &steps);
    let row = only_row(&app, user).await;
    let (prompt, output) = (responses_prompt(&body), counted("Hi there"));
    assert_eq!((row.status_code, row.usage_source.as_str()), (502, "estimated"));
    assert_eq!((row.prompt_tokens, row.completion_tokens, row.cost), (prompt, output, prompt + 2 * output));
    assert_eq!(app.balance(user).await, BALANCE - row.cost);
    assert_books_balance(&app.db, user).await;
}

async fn a_responses_stream_cut_after_hidden_reasoning_is_charged_the_reservation(backend: Backend) {
    let (app, fake) = setup(backend, false, true).await;
    let (user, key) = app.customer("cut-reasoning@example.com", BALANCE).await;
    let steps = vec![created(), output_delta("Hi there")];
    let body = responses_body(true);
    let text = stream_through(&app, &fake, "/v1/responses", &key, &body, steps.clone()).await;
    ends_in_our_error(&text, &steps);
    let row = only_row(&app, user).await;
    let reservation = reservations(&app, user).await.pop().unwrap();
    // The reasoning the upstream billed cannot be counted: the whole reservation is charged.
    let reserved = responses_prompt(&body) + 2 * MAX_OUT;
    assert_eq!((reservation.amount, reservation.charged_amount), (reserved, reserved));
    assert_eq!((row.status_code, row.usage_source.as_str(), row.cost), (502, "reserved", reserved));
    assert_eq!(app.balance(user).await, BALANCE - reserved);
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(a_responses_stream_cut_after_hidden_reasoning_is_charged_the_reservation);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_responses_client_that_leaves_pays_the_usage_the_upstream_reports_after() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("gone-responses@example.com", BALANCE).await;
    let mut steps = vec![created(), output_delta("Hi"), Step::Hold];
    steps.extend((0..8).map(|_| output_delta(" there")));
    steps.push(event(
        "response.completed",
        json!({ "type": "response.completed", "response": response("completed", responses_usage()) }),
    ));
    fake.stream(steps);
    leave_after(&app, &fake, "/v1/responses", &key, &responses_body(true), "output_text.delta").await;
    let row = only_row(&app, user).await;
    assert_eq!((row.status_code, row.usage_source.as_str()), (499, "upstream"));
    assert_eq!((row.completion_tokens, row.reasoning_tokens, row.cost), (50, 30, RESPONSES_CHARGE));
    assert_eq!(app.balance(user).await, BALANCE - RESPONSES_CHARGE);
    assert_books_balance(&app.db, user).await;
}
