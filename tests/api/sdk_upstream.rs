//! A fake upstream that answers what the official SDKs read, in the exact shapes they parse:
//! Anthropic Messages (text or `tool_use`, whole or streamed with every event the SDK's
//! accumulator expects), count_tokens, OpenAI Responses (whole, streamed with output items and
//! content parts, and read back by id), embeddings (float or base64, one vector per input) and
//! streamed chat. It records every call, and each answer's usage is fixed per kind so a test can
//! price exactly what was served.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Responses created, by id, to be read back.
    stored: Arc<Mutex<Vec<Value>>>,
}

/// The fake, serving on loopback until the test ends.
pub struct SdkUpstream {
    pub base: String,
    shared: Shared,
}

impl SdkUpstream {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/responses", post(responses))
            .route("/v1/responses/{id}", get(stored))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, shared }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The ids of the responses created, oldest first.
    pub fn response_ids(&self) -> Vec<String> {
        self.shared.stored.lock().unwrap().iter().map(|r| r["id"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// The calls made to `path`, oldest first.
    pub fn on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

fn record(shared: &Shared, method: Method, path: &str, headers: HeaderMap, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    shared.seen.lock().unwrap().push(Seen { method, path: path.to_owned(), headers, body: body.clone() });
    body
}

fn sse(events: &[Value]) -> Response {
    let body: String = events
        .iter()
        .map(|data| format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap_or("message")))
        .collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

/// The usage of each kind of Messages answer, and what the test model charges for it (1 per
/// input and cache-read token, 1.25 per cache-write token, 2 per output token).
pub mod messages_usage {
    /// A plain answer: 12 input, 100 read from the cache, 40 written to it, 9 out.
    pub const TEXT: i64 = 12 + 100 + 50 + 2 * 9;
    /// A streamed answer: 13 input at `message_start`, 6 out at `message_delta`.
    pub const TEXT_STREAM: i64 = 13 + 2 * 6;
    /// A tool call: 20 input, 15 out.
    pub const TOOL: i64 = 20 + 2 * 15;
    /// A streamed tool call: 21 input, 16 out.
    pub const TOOL_STREAM: i64 = 21 + 2 * 16;
}

/// The usage of each Responses answer and embeddings call, priced as above.
pub mod openai_usage {
    /// A whole response: 30 input of which 10 cached, 10 out of which 4 reasoning.
    pub const RESPONSE: i64 = 20 + 10 + 2 * 10;
    /// A streamed response: 31 input, 11 out.
    pub const RESPONSE_STREAM: i64 = 31 + 2 * 11;
    /// Embeddings: 4 tokens per input.
    pub const EMBEDDING_PER_INPUT: i64 = 4;
    /// A streamed chat answer: 17 prompt, 5 completion tokens.
    pub const CHAT_STREAM: i64 = 17 + 2 * 5;
}

/// What the test model charges for the call `seen` (0 for the free ones).
pub fn charge(seen: &Seen) -> i64 {
    let stream = seen.body["stream"] == true;
    match seen.path.as_str() {
        "/v1/messages" => match (seen.body.get("tools").is_some(), stream) {
            (false, false) => messages_usage::TEXT,
            (false, true) => messages_usage::TEXT_STREAM,
            (true, false) => messages_usage::TOOL,
            (true, true) => messages_usage::TOOL_STREAM,
        },
        "/v1/responses" if stream => openai_usage::RESPONSE_STREAM,
        "/v1/responses" => openai_usage::RESPONSE,
        "/v1/embeddings" => openai_usage::EMBEDDING_PER_INPUT * inputs(&seen.body["input"]).len() as i64,
        "/v1/chat/completions" if stream => openai_usage::CHAT_STREAM,
        _ => 0,
    }
}

const TEXT: &str = "Hello from the fake.";
const TEXT_PIECES: [&str; 3] = ["Hello ", "from the ", "fake."];
const TOOL_INPUT: [&str; 3] = ["{\"city\"", ": \"Par", "is\"}"];

async fn messages(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&shared, Method::POST, "/v1/messages", headers, &body);
    let n = shared.seen.lock().unwrap().len();
    let tool = body.get("tools").is_some();
    let (input, output) = match (tool, body["stream"] == true) {
        (false, false) => (12, 9),
        (false, true) => (13, 6),
        (true, false) => (20, 15),
        (true, true) => (21, 16),
    };
    let mut message = json!({
        "id": format!("msg_sdk{n}"), "type": "message", "role": "assistant", "model": body["model"],
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": input, "output_tokens": output }
    });
    let block = if tool {
        json!({ "type": "tool_use", "id": format!("toolu_sdk{n}"), "name": "get_weather", "input": { "city": "Paris" } })
    } else {
        json!({ "type": "text", "text": TEXT })
    };
    let stop_reason = if tool { "tool_use" } else { "end_turn" };
    if body["stream"] != true {
        message["content"] = json!([block]);
        message["stop_reason"] = json!(stop_reason);
        if !tool {
            message["usage"]["cache_read_input_tokens"] = json!(100);
            message["usage"]["cache_creation_input_tokens"] = json!(40);
        }
        return axum::Json(message).into_response();
    }
    message["usage"]["output_tokens"] = json!(1);
    let (start, deltas): (Value, Vec<Value>) = if tool {
        let mut start = block.clone();
        start["input"] = json!({});
        let deltas = TOOL_INPUT.iter().map(|p| json!({ "type": "input_json_delta", "partial_json": p })).collect();
        (start, deltas)
    } else {
        let deltas = TEXT_PIECES.iter().map(|p| json!({ "type": "text_delta", "text": p })).collect();
        (json!({ "type": "text", "text": "" }), deltas)
    };
    let mut events = vec![
        json!({ "type": "message_start", "message": message }),
        json!({ "type": "content_block_start", "index": 0, "content_block": start }),
        json!({ "type": "ping" }),
    ];
    events.extend(deltas.into_iter().map(|delta| json!({ "type": "content_block_delta", "index": 0, "delta": delta })));
    events.extend([
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason, "stop_sequence": null },
            "usage": { "output_tokens": output }
        }),
        json!({ "type": "message_stop" }),
    ]);
    sse(&events)
}

async fn count_tokens(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    record(&shared, Method::POST, "/v1/messages/count_tokens", headers, &body);
    axum::Json(json!({ "input_tokens": 37 })).into_response()
}

async fn responses(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&shared, Method::POST, "/v1/responses", headers, &body);
    let n = shared.seen.lock().unwrap().len();
    let stream = body["stream"] == true;
    let id = format!("resp_sdk{n}");
    let item_id = format!("msg_sdk{n}");
    let usage = if stream {
        json!({ "input_tokens": 31, "input_tokens_details": { "cached_tokens": 0 }, "output_tokens": 11,
                "output_tokens_details": { "reasoning_tokens": 0 }, "total_tokens": 42 })
    } else {
        json!({ "input_tokens": 30, "input_tokens_details": { "cached_tokens": 10 }, "output_tokens": 10,
                "output_tokens_details": { "reasoning_tokens": 4 }, "total_tokens": 40 })
    };
    let part = json!({ "type": "output_text", "text": TEXT, "annotations": [], "logprobs": [] });
    let item =
        json!({ "type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part] });
    let response = json!({
        "id": id, "object": "response", "created_at": 1_700_000_000, "status": "completed",
        "model": body["model"], "output": [item], "usage": usage,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
        "error": null, "incomplete_details": null, "instructions": null, "metadata": {},
        "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
        "store": true, "text": { "format": { "type": "text" } }
    });
    shared.stored.lock().unwrap().push(response.clone());
    if !stream {
        return axum::Json(response).into_response();
    }
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    added["content"] = json!([]);
    let empty_part = json!({ "type": "output_text", "text": "", "annotations": [], "logprobs": [] });
    let at = json!({ "item_id": item_id, "output_index": 0, "content_index": 0 });
    let with_at = |mut v: Value| {
        for (k, x) in at.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let mut events = vec![
        json!({ "type": "response.created", "response": created }),
        json!({ "type": "response.in_progress", "response": created }),
        json!({ "type": "response.output_item.added", "output_index": 0, "item": added }),
        with_at(json!({ "type": "response.content_part.added", "part": empty_part })),
    ];
    events.extend(
        TEXT_PIECES
            .iter()
            .map(|p| with_at(json!({ "type": "response.output_text.delta", "delta": p, "logprobs": [] }))),
    );
    events.extend([
        with_at(json!({ "type": "response.output_text.done", "text": TEXT, "logprobs": [] })),
        with_at(json!({ "type": "response.content_part.done", "part": part })),
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item }),
        json!({ "type": "response.completed", "response": response }),
    ]);
    for (i, event) in events.iter_mut().enumerate() {
        event["sequence_number"] = json!(i);
    }
    sse(&events)
}

async fn stored(State(shared): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    record(&shared, Method::GET, &format!("/v1/responses/{id}"), headers, b"null");
    let found = shared.stored.lock().unwrap().iter().find(|r| r["id"] == id.as_str()).cloned();
    match found {
        Some(response) => axum::Json(response).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": { "message": "No response found", "type": "invalid_request_error" } })),
        )
            .into_response(),
    }
}

/// The inputs of an embeddings request: a string is one, an array of strings or of token arrays
/// is one per element, an array of numbers is one.
fn inputs(input: &Value) -> Vec<Value> {
    match input {
        Value::Array(items) if items.iter().all(|i| !i.is_number()) => items.clone(),
        other => vec![other.clone()],
    }
}

/// The fake's vector for input `i`.
pub fn vector(i: usize) -> [f32; 3] {
    [i as f32 + 0.5, -0.25, 0.125]
}

async fn embeddings(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&shared, Method::POST, "/v1/embeddings", headers, &body);
    let base64 = body["encoding_format"] == "base64";
    let inputs = inputs(&body["input"]);
    let data: Vec<Value> = (0..inputs.len())
        .map(|i| {
            let v = vector(i);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    let tokens = openai_usage::EMBEDDING_PER_INPUT * inputs.len() as i64;
    axum::Json(json!({
        "object": "list", "data": data, "model": body["model"],
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens }
    }))
    .into_response()
}

/// Streamed chat only (the Node SDK's chat check): text in three chunks, then the usage chunk
/// the gateway always asks for, then `[DONE]`.
async fn chat(State(shared): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body = record(&shared, Method::POST, "/v1/chat/completions", headers, &body);
    if body["stream"] != true {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": { "message": "this fake only streams" } })))
            .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({ "id": "chatcmpl-sdk", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
    };
    let mut chunks = vec![chunk(json!({ "role": "assistant", "content": "" }), Value::Null)];
    chunks.extend(TEXT_PIECES.iter().map(|p| chunk(json!({ "content": p }), Value::Null)));
    chunks.push(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"] == true {
        chunks.push(json!({ "id": "chatcmpl-sdk", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                            "choices": [], "usage": { "prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22 } }));
    }
    let mut text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], text).into_response()
}
