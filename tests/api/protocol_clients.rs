//! Clients end to end through Tollgate against the scripted upstream: an OpenAI Chat client on an
//! Anthropic channel (translated to Messages and back, every cache class billed), and the
//! recorded Codex request replayed on an OpenAI channel (passed through, its stream relayed
//! unchanged).

use serde_json::{Value, json};

use crate::helpers::{Backend, MAX_OUT, MODEL, assert_books_balance, sse_data};
use crate::protocols::{ANTHROPIC_KEY, OPENAI_KEY};
use crate::scripted::{event, post_json, setup, wire};

const BALANCE: i64 = 10_000_000;

fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL, "stream": stream, "max_tokens": 64, "temperature": 1.5,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "What is the weather in Paris?" }
        ],
        "tools": [{ "type": "function", "function": {
            "name": "get_weather", "description": "The weather of a city",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }
        }}],
        "tool_choice": "auto"
    })
}

/// The Messages body the Anthropic channel must receive for `chat_body(stream)`.
fn translated(stream: bool) -> Value {
    json!({
        "model": "upstream-model", "stream": stream, "max_tokens": 64, "temperature": 1.0,
        "system": "Be brief.",
        "messages": [{ "role": "user", "content": "What is the weather in Paris?" }],
        "tools": [{
            "name": "get_weather", "description": "The weather of a city",
            "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }
        }],
        "tool_choice": { "type": "auto" }
    })
}

/// Every input class: 10 plain, 1,000 read from the cache, 150 written for 5 minutes and 50
/// for an hour; 40 out.
fn anthropic_usage() -> Value {
    json!({
        "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
        "cache_creation": { "ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50 },
        "output_tokens": 40
    })
}

/// Its charge with the test model's prices (input and cache reads 1, 5-minute writes 1.25,
/// 1-hour writes 2, output 2 per token), summed before rounding up:
/// 10 + 1,000 + 187.5 + 100 + 80 = 1,377.5 → 1,378.
const CHARGE: i64 = 1378;

#[tokio::test]
async fn a_chat_client_on_an_anthropic_channel_is_translated_and_billed_every_class() {
    let (app, fake) = setup(Backend::Sqlite, true, false).await;
    let (user, key) = app.customer("chat-on-claude@example.com", BALANCE).await;

    // A whole answer.
    fake.json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "upstream-model",
        "content": [{ "type": "text", "text": "Sunny." }],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": anthropic_usage()
    }));
    let res = post_json(&app, "/v1/chat/completions", &key, &chat_body(false), &[]).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"], json!({ "role": "assistant", "content": "Sunny." }));
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"],
        json!({ "prompt_tokens": 1210, "completion_tokens": 40, "total_tokens": 1250, "prompt_tokens_details": { "cached_tokens": 1000 } })
    );

    // A stream, with the usage chunk the client asked for.
    let message_start = json!({ "type": "message_start", "message": {
        "id": "msg_2", "type": "message", "role": "assistant", "model": "upstream-model", "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
                   "cache_creation": { "ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50 }, "output_tokens": 1 }
    }});
    fake.stream(vec![
        event("message_start", message_start),
        event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Sunny." } }),
        ),
        event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })),
        event(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null }, "usage": { "output_tokens": 40 } }),
        ),
        event("message_stop", json!({ "type": "message_stop" })),
    ]);
    let mut body = chat_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let res = post_json(&app, "/v1/chat/completions", &key, &body, &[]).await;
    assert_eq!(res.status(), 200);
    let data = sse_data(res).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == MODEL), "{chunks:?}");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "Sunny.");
    let finish: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], answer["usage"], "the same usage, streamed or not");

    // Without asking for usage: no usage chunk.
    fake.stream(fake_stream_without_usage_chunk());
    let data = sse_data(post_json(&app, "/v1/chat/completions", &key, &chat_body(true), &[]).await).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{data:?}");

    let seen = fake.on("/v1/messages");
    assert_eq!(seen.len(), 3);
    for (s, stream) in seen.iter().zip([false, true, true]) {
        assert_eq!(s.body, translated(stream), "a Messages body: system, max_tokens and tools translated");
        assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY);
        assert_eq!(s.headers["anthropic-version"], "2023-06-01");
        assert!(s.headers.get("authorization").is_none(), "the customer's key never reaches the upstream");
    }

    app.settled(user).await;
    let rows = app.usage(user).await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!((row.status_code, row.usage_source.as_str()), (200, "upstream"));
        assert_eq!((row.prompt_tokens, row.cache_read_tokens, row.completion_tokens), (1210, 1000, 40));
        assert_eq!(row.cost, CHARGE, "every class at its price");
    }
    assert_eq!(app.balance(user).await, BALANCE - 3 * CHARGE);
    assert_books_balance(&app.db, user).await;
}

/// A short Messages stream with the same usage, for a client that did not ask for it.
fn fake_stream_without_usage_chunk() -> Vec<crate::scripted::Step> {
    vec![
        event(
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": "msg_3", "type": "message", "role": "assistant", "model": "upstream-model", "content": [],
                "usage": { "input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
                           "cache_creation": { "ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50 }, "output_tokens": 1 }
            }}),
        ),
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Sunny." } }),
        ),
        event(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": 40 } }),
        ),
        event("message_stop", json!({ "type": "message_stop" })),
    ]
}

/// The recorded Codex request's headers a replay sends (the transport's own are set by the
/// HTTP client; the key is the customer's).
const NOT_REPLAYED: [&str; 3] = ["host", "content-length", "authorization"];

#[tokio::test]
async fn the_recorded_codex_request_is_passed_through_and_its_stream_relayed_unchanged() {
    let (app, fake) = setup(Backend::Sqlite, false, true).await;
    let (user, key) = app.customer("codex-replay@example.com", BALANCE).await;
    let recorded: Value =
        serde_json::from_str(include_str!("../fixtures/clients/codex-0.171.0-responses.json")).unwrap();
    assert_eq!((recorded["method"].as_str(), recorded["path"].as_str()), (Some("POST"), Some("/v1/responses")));
    let mut body = recorded["body"].clone();
    assert!(body.get("max_output_tokens").is_none(), "Codex names no output cap");
    body["model"] = json!(MODEL);
    let replay = |body: &Value| {
        let mut req = app.client.post(format!("{}/v1/responses", app.address)).bearer_auth(&key);
        for (name, value) in recorded["headers"].as_object().unwrap() {
            if !NOT_REPLAYED.contains(&name.as_str()) {
                req = req.header(name.as_str(), value.as_str().unwrap());
            }
        }
        req.body(serde_json::to_vec(body).unwrap()).send()
    };

    // As recorded, Codex offers its web search tool beside its own; the upstream bills searches
    // per call, so the tool is left out of what the upstream receives, and nothing else is.
    assert!(body["tools"].as_array().unwrap().iter().any(|t| t["type"] == "web_search"));
    assert!(body["tools"].as_array().unwrap().iter().any(|t| t["type"] == "namespace"));

    let usage = json!({ "input_tokens": 5000, "input_tokens_details": { "cached_tokens": 4000 },
                        "output_tokens": 80, "output_tokens_details": { "reasoning_tokens": 50 } });
    let completed = json!({ "id": "resp_codex", "object": "response", "status": "completed", "model": "upstream-model",
                            "output": [{ "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": "Hello!" }] }],
                            "usage": usage });
    let steps = vec![
        event(
            "response.created",
            json!({ "type": "response.created", "sequence_number": 0, "response": { "id": "resp_codex", "object": "response", "status": "in_progress", "usage": null } }),
        ),
        event(
            "response.reasoning_summary_text.delta",
            json!({ "type": "response.reasoning_summary_text.delta", "sequence_number": 1, "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": "Greeting." }),
        ),
        event(
            "response.output_text.delta",
            json!({ "type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 1, "content_index": 0, "delta": "Hello!" }),
        ),
        event(
            "response.completed",
            json!({ "type": "response.completed", "sequence_number": 3, "response": completed }),
        ),
    ];
    fake.stream(steps.clone());

    let res = replay(&body).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(fake.calls(), 1);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(res.text().await.unwrap(), wire(&steps), "the fake's stream, byte for byte");

    let seen = fake.on("/v1/responses").pop().expect("the OpenAI channel was called");
    // Only the model and the output cap differ. Codex names no cap; the gateway always sends
    // the one it reserved (the model's limit), so the upstream cannot bill more.
    let mut expected = body.clone();
    expected["tools"].as_array_mut().unwrap().retain(|t| t["type"] != "web_search");
    expected["model"] = json!("upstream-model");
    expected["max_output_tokens"] = json!(MAX_OUT);
    assert_eq!(seen.body, expected, "tools, reasoning, include, prompt_cache_key and client_metadata kept");
    assert_eq!(seen.headers["authorization"], format!("Bearer {OPENAI_KEY}"), "the channel's key");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["accept"], "text/event-stream");
    assert!(!format!("{:?}", seen.headers).contains(&key), "the customer's key never reaches the upstream");

    app.settled(user).await;
    let row = app.usage(user).await.pop().unwrap();
    // 1,000 plain and 4,000 cached input at 1, 80 out (50 of them reasoning) at 2.
    let charge = 1000 + 4000 + 160;
    assert_eq!((row.status_code, row.usage_source.as_str(), row.stream), (200, "upstream", true));
    assert_eq!(
        (row.prompt_tokens, row.cache_read_tokens, row.completion_tokens, row.reasoning_tokens),
        (5000, 4000, 80, 50)
    );
    assert_eq!(row.cost, charge);
    assert_eq!(app.balance(user).await, BALANCE - charge);
    assert_books_balance(&app.db, user).await;
}
