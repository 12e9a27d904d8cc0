//! Protocol translation (Anthropic Messages ⇄ OpenAI Chat Completions): golden files under
//! `tests/fixtures/translate/`, the recorded Claude Code request, refusals, usage arithmetic,
//! stream well-formedness under arbitrary chunking, and a round trip.
//!
//! `TOLLGATE_BLESS=1 cargo test --test translate` rewrites the golden files' `expected` from
//! the current output (review the diff before committing it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tollgate::translate::{
    SseOut, Untranslatable, anthropic_error, anthropic_error_type, chat_to_messages, messages_to_chat,
};

const GOLDEN: &[&str] = &[
    "m2c_request_full",
    "m2c_request_tool_result_image",
    "m2c_response_tools",
    "m2c_response_length",
    "m2c_stream_text",
    "m2c_stream_tools_interleaved",
    "m2c_stream_reasoning",
    "m2c_stream_sequential_tools",
    "c2m_request_full",
    "c2m_response_tools",
    "c2m_response_stop_sequence",
    "c2m_stream_tools",
    "c2m_stream_max_tokens",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

fn events(out: &[SseOut]) -> Value {
    Value::Array(out.iter().map(|e| json!({"event": e.event, "data": e.data})).collect())
}

fn obj(v: &Value) -> &Map<String, Value> {
    v.as_object().expect("an object")
}

/// Runs one golden file and returns (actual, expected).
fn run_golden(name: &str) -> (Value, Value) {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    let mut fixture: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let input = &fixture["input"];
    let actual = match fixture["kind"].as_str().expect("kind") {
        "messages_to_chat.request" => Value::Object(messages_to_chat::request(obj(input)).expect("translatable")),
        "messages_to_chat.response" => messages_to_chat::response(input, "claude-sonnet-4-5"),
        "messages_to_chat.stream" => {
            let mut stream = messages_to_chat::Stream::new("claude-sonnet-4-5", "msg_test");
            let mut out = Vec::new();
            for chunk in input.as_array().expect("chunks") {
                if chunk == "[DONE]" {
                    out.extend(stream.on_done());
                } else {
                    out.extend(stream.on_chunk(chunk));
                }
            }
            let out = events(&out);
            check_anthropic_stream(&out);
            out
        }
        "chat_to_messages.request" => Value::Object(chat_to_messages::request(obj(input)).expect("translatable")),
        "chat_to_messages.response" => chat_to_messages::response_at(input, "gpt-4o-alias", 1_700_000_000),
        "chat_to_messages.stream" => {
            let include_usage = fixture["include_usage"].as_bool().expect("include_usage");
            let mut stream = chat_to_messages::Stream::new("gpt-4o-alias", "chatcmpl-test", include_usage)
                .with_created(1_700_000_000);
            let mut out = Vec::new();
            for e in input.as_array().expect("events") {
                out.extend(stream.on_event(e["event"].as_str().expect("event name"), &e["data"]));
            }
            events(&out)
        }
        other => panic!("unknown kind {other}"),
    };
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        fixture["expected"] = actual.clone();
        let mut text = serde_json::to_string_pretty(&fixture).expect("serialise");
        text.push('\n');
        std::fs::write(&path, text).expect("write fixture");
    }
    let expected = fixture["expected"].clone();
    assert!(!expected.is_null(), "{name}: no expected output recorded");
    (actual, expected)
}

#[test]
fn golden_files_match() {
    for name in GOLDEN {
        let (actual, expected) = run_golden(name);
        assert_eq!(
            actual,
            expected,
            "{name}: actual output was\n{}",
            serde_json::to_string_pretty(&actual).unwrap_or_default()
        );
    }
}

#[test]
fn every_golden_file_is_run() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = GOLDEN.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

/// Checks that an Anthropic event sequence is well formed (message_start first; blocks opened
/// in index order, one at a time, deltas only to the open block, every block closed;
/// message_delta then message_stop last) and returns the assembled content, tool inputs parsed.
fn check_anthropic_stream(out: &Value) -> Vec<Value> {
    let events = out.as_array().expect("events");
    assert_eq!(events[0]["event"], "message_start");
    assert_eq!(events[0]["data"]["message"]["usage"]["input_tokens"], 0);
    let mut content: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    let n = events.len();
    for (k, e) in events.iter().enumerate().skip(1) {
        let data = &e["data"];
        assert_eq!(e["event"], data["type"], "event name matches its type");
        match e["event"].as_str().expect("named") {
            "content_block_start" => {
                assert_eq!(open, None, "a block opened while another is open: {e}");
                let index = data["index"].as_u64().expect("index") as usize;
                assert_eq!(index, content.len(), "blocks open in order");
                content.push(data["content_block"].clone());
                json_parts.push(String::new());
                open = Some(index);
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().expect("index") as usize;
                assert_eq!(open, Some(index), "delta to a block that is not open: {e}");
                let d = &data["delta"];
                match d["type"].as_str().expect("delta type") {
                    "text_delta" => {
                        let t = format!(
                            "{}{}",
                            content[index]["text"].as_str().expect("text"),
                            d["text"].as_str().expect("text")
                        );
                        content[index]["text"] = json!(t);
                    }
                    "thinking_delta" => {
                        let t = format!(
                            "{}{}",
                            content[index]["thinking"].as_str().expect("thinking"),
                            d["thinking"].as_str().expect("thinking")
                        );
                        content[index]["thinking"] = json!(t);
                    }
                    "input_json_delta" => json_parts[index].push_str(d["partial_json"].as_str().expect("partial")),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().expect("index") as usize;
                assert_eq!(open, Some(index), "stop of a block that is not open");
                open = None;
            }
            "message_delta" => {
                assert_eq!(open, None, "message_delta with a block open");
                assert_eq!(k, n - 2, "message_delta is second to last");
                assert!(data["delta"]["stop_reason"].is_string());
            }
            "message_stop" => assert_eq!(k, n - 1, "message_stop is last"),
            other => panic!("unexpected event {other}"),
        }
    }
    for (block, parts) in content.iter_mut().zip(json_parts) {
        if block["type"] == "tool_use" {
            block["input"] =
                if parts.is_empty() { json!({}) } else { serde_json::from_str(&parts).expect("tool input is JSON") };
        }
    }
    content
}

#[test]
fn interleaved_tool_calls_assemble_into_both_inputs() {
    let (actual, _) = run_golden("m2c_stream_tools_interleaved");
    let content = check_anthropic_stream(&actual);
    assert_eq!(content[0], json!({"type": "text", "text": "I'll look both up."}));
    assert_eq!(content[1]["id"], "call_a");
    assert_eq!(content[1]["input"], json!({"city": "Paris"}));
    assert_eq!(content[2]["id"], "call_b");
    assert_eq!(content[2]["input"], json!({"tz": "UTC"}));
    let last = actual.as_array().expect("events");
    let delta = &last[last.len() - 2]["data"];
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 44, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 256, "output_tokens": 40})
    );
}

fn claude_code_body() -> Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients/claude-code-2.1.197-messages.json");
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("JSON");
    obj(&recorded["body"]).clone()
}

#[test]
fn the_recorded_claude_code_request_translates() {
    let body = claude_code_body();
    let chat = messages_to_chat::request(&body).expect("Claude Code's request translates");
    assert_eq!(chat["model"], "claude-sonnet-4-5");
    assert_eq!(chat["max_tokens"], 32000);
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    assert_eq!(chat["user"], body["metadata"]["user_id"]);
    let messages = chat["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    let system = messages[0]["content"].as_str().expect("system text");
    assert!(system.starts_with("x-anthropic-billing-header"));
    assert!(system.contains("You are a Claude agent"));
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(messages[1]["content"].as_array().expect("parts").len(), 4);
    let tools = chat["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), body["tools"].as_array().expect("tools").len());
    for (tool, original) in tools.iter().zip(body["tools"].as_array().expect("tools")) {
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["name"], original["name"]);
        assert_eq!(tool["function"]["parameters"], original["input_schema"]);
    }
    // Anthropic-only settings do not reach an OpenAI-compatible upstream.
    for key in ["thinking", "context_management", "metadata", "system"] {
        assert!(!chat.contains_key(key), "{key} leaked");
    }
    assert!(!Value::Object(chat).to_string().contains("cache_control"));
}

fn m2c_refused(body: Value) -> String {
    match messages_to_chat::request(obj(&body)) {
        Err(Untranslatable(message)) => message,
        Ok(out) => panic!("translated {}", Value::Object(out)),
    }
}

fn c2m_refused(body: Value) -> String {
    match chat_to_messages::request(obj(&body)) {
        Err(Untranslatable(message)) => message,
        Ok(out) => panic!("translated {}", Value::Object(out)),
    }
}

#[test]
fn untranslatable_anthropic_requests_are_refused_with_the_field_named() {
    let with =
        |content: Value| json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]});
    let pdf = json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]);
    assert!(m2c_refused(with(pdf)).contains("messages[0].content[0]: document blocks"));
    let server_tool = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    assert!(m2c_refused(server_tool).contains("tools[0]"));
    let mcp =
        json!({"model": "m", "max_tokens": 5, "messages": [], "mcp_servers": [{"type": "url", "url": "https://x"}]});
    assert!(m2c_refused(mcp).starts_with("mcp_servers"));
    assert!(
        m2c_refused(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}))
            .contains("messages[0].role")
    );
    assert!(m2c_refused(json!({"model": "m"})).starts_with("messages"));
    let file_image = with(json!([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]));
    assert!(m2c_refused(file_image).contains("image source \"file\""));
}

#[test]
fn untranslatable_chat_requests_are_refused_with_the_field_named() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in obj(&extra) {
            body[k] = v.clone();
        }
        body
    };
    assert!(c2m_refused(base(json!({"n": 2}))).starts_with("n:"));
    assert!(c2m_refused(base(json!({"logprobs": true}))).starts_with("logprobs"));
    assert!(c2m_refused(base(json!({"top_logprobs": 3}))).starts_with("logprobs"));
    assert!(c2m_refused(base(json!({"modalities": ["text", "audio"]}))).starts_with("audio"));
    assert!(c2m_refused(base(json!({"response_format": {"type": "json_object"}}))).starts_with("response_format"));
    assert!(c2m_refused(base(json!({"functions": [{"name": "f"}]}))).starts_with("functions"));
    assert!(c2m_refused(base(json!({"logit_bias": {"50256": -100}}))).starts_with("logit_bias"));
    let audio_in = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}]});
    assert!(c2m_refused(audio_in).contains("\"input_audio\" parts"));
    let bad_args = json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
    assert!(c2m_refused(bad_args).contains("tool_calls[0].function.arguments"));
    let custom_tool = base(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}));
    assert!(c2m_refused(custom_tool).starts_with("tools[0]"));
    // n = 1 and response_format text are fine.
    chat_to_messages::request(obj(&base(json!({"n": 1, "response_format": {"type": "text"}})))).expect("fine");
}

#[test]
fn tool_choice_maps_both_ways() {
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    for (anthropic, chat) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (json!({"type": "tool", "name": "f"}), json!({"type": "function", "function": {"name": "f"}})),
    ] {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": anthropic});
        let out = messages_to_chat::request(obj(&body)).expect("translates");
        assert_eq!(out["tool_choice"], chat);
        assert!(!out.contains_key("parallel_tool_calls"));
        let back = chat_to_messages::request(&out).expect("translates back");
        assert_eq!(back["tool_choice"], anthropic);
    }
}

#[test]
fn stop_reasons_map_both_ways() {
    let chat = |finish: &str| json!({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "x"}}], "usage": {}});
    for (finish, stop) in
        [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")]
    {
        assert_eq!(messages_to_chat::response(&chat(finish), "m")["stop_reason"], stop);
    }
    let msg = |stop: &str| json!({"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop, "usage": {}});
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        assert_eq!(chat_to_messages::response(&msg(stop), "m")["choices"][0]["finish_reason"], finish);
    }
}

#[test]
fn anthropic_errors_have_the_documented_types() {
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ] {
        assert_eq!(anthropic_error_type(status), kind, "status {status}");
    }
    assert_eq!(
        anthropic_error("rate_limit_error", "slow down"),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    );
}

#[test]
fn stream_errors_end_the_stream_in_each_protocol() {
    let mut m2c = messages_to_chat::Stream::new("m", "msg_1");
    let first = m2c.on_chunk(&json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}));
    assert_eq!(first[0].event, Some("message_start"));
    let error = m2c.on_error("overloaded_error", "Overloaded");
    assert_eq!(error.len(), 1);
    assert_eq!(error[0].event, Some("error"));
    assert_eq!(error[0].data, anthropic_error("overloaded_error", "Overloaded"));
    assert!(m2c.on_chunk(&json!({"choices": [{"index": 0, "delta": {"content": "more"}}]})).is_empty());
    assert!(m2c.on_done().is_empty());
    assert_eq!(error[0].to_sse(), format!("event: error\ndata: {}\n\n", error[0].data));

    let mut mid = messages_to_chat::Stream::new("m", "msg_2");
    let out = mid.on_chunk(&json!({"error": {"message": "upstream broke", "type": "server_error"}}));
    assert_eq!(out[0].data["error"]["message"], "upstream broke");

    let mut c2m = chat_to_messages::Stream::new("m", "chatcmpl-1", true);
    let out = c2m.on_event("error", &anthropic_error("overloaded_error", "Overloaded"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event, None);
    assert_eq!(out[0].data["error"]["type"], "overloaded_error");
    assert!(c2m.on_event("message_stop", &json!({"type": "message_stop"})).is_empty());
}

#[test]
fn a_stream_that_ends_without_chunks_is_still_well_formed() {
    let mut stream = messages_to_chat::Stream::new("m", "msg_1");
    let out = events(&stream.on_done());
    check_anthropic_stream(&out);
    assert_eq!(out[1]["data"]["delta"]["stop_reason"], "end_turn");
    let done =
        chat_to_messages::Stream::new("m", "c", false).on_event("message_stop", &json!({"type": "message_stop"}));
    assert_eq!(done.last().map(|e| e.to_sse()), Some("data: [DONE]\n\n".to_owned()));
}

/// Anthropic → Chat → Anthropic keeps the system prompt, text, tool calls (ids, names, inputs)
/// and tool results.
#[test]
fn anthropic_to_chat_and_back_keeps_text_tools_and_results() {
    let path = fixtures().join("m2c_request_full.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    let original = obj(&fixture["input"]);
    let chat = messages_to_chat::request(original).expect("there");
    let back = chat_to_messages::request(&chat).expect("and back");
    assert_eq!(back["system"], "You are terse.\nAnswer in English.");
    assert_eq!(back["tools"][0]["input_schema"], original["tools"][0]["input_schema"]);
    assert_eq!(back["stop_sequences"], original["stop_sequences"]);
    assert_eq!(back["metadata"], json!({"user_id": "user-42"}));
    let messages = back["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), original["messages"].as_array().expect("m").len());
    assert_eq!(messages[0]["content"][0], original["messages"][0]["content"][0]);
    assert_eq!(messages[0]["content"][1]["source"], original["messages"][0]["content"][1]["source"]);
    assert_eq!(messages[0]["content"][2]["source"], original["messages"][0]["content"][2]["source"]);
    // Thinking is dropped on the way; the text and both tool calls survive.
    let assistant = &original["messages"][1]["content"];
    assert_eq!(messages[1]["content"], json!([assistant[1], assistant[2], assistant[3]]));
    let results = &messages[2]["content"];
    assert_eq!(results[0], json!({"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C, cloudy"}));
    assert_eq!(results[1]["tool_use_id"], "toolu_02");
    assert_eq!(results[1]["content"], "Error: clock unavailable");
    assert_eq!(results[2], json!({"type": "text", "text": "Thanks."}));
    assert_eq!(messages[3]["content"], "It is 18°C and cloudy in Paris.");
}

/// A chat.completion carried to Anthropic and back keeps its text, tool calls and usage.
#[test]
fn chat_response_to_anthropic_and_back_keeps_content_and_usage() {
    let path = fixtures().join("m2c_response_tools.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    let chat = &fixture["input"];
    let anthropic = messages_to_chat::response(chat, "m");
    let back = chat_to_messages::response_at(&anthropic, "deepseek-reasoner", 1_700_000_000);
    let (was, is) = (&chat["choices"][0]["message"], &back["choices"][0]["message"]);
    assert_eq!(is["content"], was["content"]);
    assert_eq!(is["reasoning_content"], was["reasoning_content"]);
    assert_eq!(is["tool_calls"][0], was["tool_calls"][0]);
    assert_eq!(is["tool_calls"][1]["function"]["arguments"], "{}");
    assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(back["usage"]["prompt_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(back["usage"]["completion_tokens"], chat["usage"]["completion_tokens"]);
    assert_eq!(back["usage"]["prompt_tokens_details"]["cached_tokens"], 1000);
}

proptest! {
    /// Usage totals agree in both directions: OpenAI's prompt tokens (cache reads included) equal
    /// Anthropic's input + cache read + cache write, whatever the numbers.
    #[test]
    fn usage_totals_agree(input in 0u64..1 << 40, read in 0u64..1 << 40, write in 0u64..1 << 40, output in 0u64..1 << 40) {
        let anthropic = json!({"input_tokens": input, "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write, "output_tokens": output});
        let chat = chat_to_messages::usage(&anthropic);
        prop_assert_eq!(chat["prompt_tokens"].as_u64(), Some(input + read + write));
        prop_assert_eq!(chat["total_tokens"].as_u64(), Some(input + read + write + output));
        let back = messages_to_chat::usage(&chat);
        let sum = ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
            .iter().map(|k| back[*k].as_u64().unwrap_or(0)).sum::<u64>();
        prop_assert_eq!(sum, input + read + write);
        prop_assert_eq!(back["cache_read_input_tokens"].as_u64(), Some(read));
        prop_assert_eq!(back["output_tokens"].as_u64(), Some(output));
    }

    /// Cached tokens reported above the prompt (a broken upstream) never make input negative.
    #[test]
    fn cached_above_prompt_is_capped(prompt in 0u64..1000, cached in 0u64..2000) {
        let u = messages_to_chat::usage(&json!({"prompt_tokens": prompt, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": cached}}));
        prop_assert_eq!(u["input_tokens"].as_u64().unwrap_or(u64::MAX) + u["cache_read_input_tokens"].as_u64().unwrap_or(0), prompt);
    }

    /// However two tool calls' arguments are split into pieces and interleaved, and with or
    /// without text before them, the Anthropic stream is well formed and both inputs arrive whole.
    #[test]
    fn tool_call_streams_are_well_formed_under_any_chunking(
        a_cuts in proptest::collection::vec(0usize..40, 0..8),
        b_cuts in proptest::collection::vec(0usize..40, 0..8),
        order in proptest::collection::vec(any::<bool>(), 0..32),
        text_first in any::<bool>(),
    ) {
        let a = json!({"path": "src/main.rs", "lines": [1, 2, 3], "note": "ü"}).to_string();
        let b = json!({"query": "fn main", "limit": 10}).to_string();
        let split = |s: &str, cuts: &[usize]| {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).filter(|c| s.is_char_boundary(*c)).collect();
            at.sort_unstable();
            at.dedup();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in at.into_iter().chain([s.len()]) {
                pieces.push(s[last..c].to_owned());
                last = c;
            }
            pieces
        };
        let (mut pa, mut pb) = (split(&a, &a_cuts).into_iter(), split(&b, &b_cuts).into_iter());
        let chunk = |delta: Value| json!({"id": "chatcmpl-p", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
        let mut chunks = Vec::new();
        if text_first {
            chunks.push(chunk(json!({"content": "On it."})));
        }
        chunks.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "read", "arguments": ""}}]})));
        let mut b_started = false;
        let mut turns = order.into_iter();
        loop {
            let pick_b = turns.next().unwrap_or(false);
            let next = if pick_b { pb.next().map(|p| (1, p)) } else { pa.next().map(|p| (0, p)) }
                .or_else(|| pa.next().map(|p| (0, p)))
                .or_else(|| pb.next().map(|p| (1, p)));
            let Some((index, piece)) = next else { break };
            let mut call = json!({"index": index, "function": {"arguments": piece}});
            if index == 1 && !b_started {
                b_started = true;
                call = json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "grep", "arguments": piece}});
            }
            chunks.push(chunk(json!({"tool_calls": [call]})));
        }
        chunks.push(chunk(json!({})));
        chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}));

        let mut stream = messages_to_chat::Stream::new("m", "msg_p");
        let mut out = Vec::new();
        for c in &chunks {
            out.extend(stream.on_chunk(c));
        }
        out.extend(stream.on_done());
        let content = check_anthropic_stream(&events(&out));
        let tools: Vec<&Value> = content.iter().filter(|b| b["type"] == "tool_use").collect();
        prop_assert_eq!(tools.len(), 2);
        let by_id = |id: &str| tools.iter().find(|t| t["id"] == id).map(|t| t["input"].clone());
        prop_assert_eq!(by_id("call_a"), Some(serde_json::from_str::<Value>(&a).unwrap_or_default()));
        prop_assert_eq!(by_id("call_b"), Some(serde_json::from_str::<Value>(&b).unwrap_or_default()));
        prop_assert_eq!(content[0]["type"].as_str(), Some(if text_first { "text" } else { "tool_use" }));
    }
}

/// Tool calls one after the other (the usual order) stream live: the second call's block starts
/// with the chunk that introduces it, not at the end.
#[test]
fn sequential_tool_calls_stream_live() {
    let chunk = |call: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]});
    let mut stream = messages_to_chat::Stream::new("m", "msg_1");
    stream.on_chunk(&chunk(json!({"index": 0, "id": "call_1", "function": {"name": "read", "arguments": "{\"p\":"}})));
    stream.on_chunk(&chunk(json!({"index": 0, "function": {"arguments": "1}"}})));
    let out = stream
        .on_chunk(&chunk(json!({"index": 1, "id": "call_2", "function": {"name": "read", "arguments": "{\"p\""}})));
    let names: Vec<_> = out.iter().map(|e| e.event).collect();
    assert_eq!(names, [Some("content_block_stop"), Some("content_block_start"), Some("content_block_delta")]);
    assert_eq!(out[1].data["content_block"]["id"], "call_2");
    assert_eq!(out[2].data["delta"]["partial_json"], "{\"p\"");
}

#[test]
fn an_assistant_turn_of_thinking_only_is_left_out() {
    let body = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
        {"role": "user", "content": "Again"}]});
    let chat = messages_to_chat::request(obj(&body)).expect("translates");
    assert_eq!(chat["messages"], json!([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}]));
}
