//! A whole Anthropic message as a `chat.completion`, and the usage block both forms share.

use serde_json::{Map, Value, json};

use crate::translate::{tokens, unix_now};

/// Anthropic `message` → `chat.completion`, created now.
pub fn response(msg: &Value, model: &str) -> Value {
    response_at(msg, model, unix_now())
}

/// Anthropic `message` → `chat.completion` with the given `created` time. Text blocks are
/// joined into `content`, thinking goes to `reasoning_content` (the field DeepSeek-style clients
/// read), `tool_use` blocks become `tool_calls`.
pub fn response_at(msg: &Value, model: &str, created: i64) -> Value {
    let blocks = msg["content"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut text = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("thinking") => thinking.push_str(block["thinking"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {
                    "name": block["name"],
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            // Redacted thinking, server tool blocks and citations have no Chat form.
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message
        .insert("content".into(), if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) });
    if !thinking.is_empty() {
        message.insert("reasoning_content".into(), Value::String(thinking));
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": completion_id(msg["id"].as_str().unwrap_or("")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg["stop_reason"].as_str()),
        }],
        "usage": usage(&msg["usage"]),
    })
}

/// Anthropic usage → OpenAI usage. Anthropic's `input_tokens` excludes cache reads and cache
/// writes; OpenAI's `prompt_tokens` includes every input token, with the cache reads repeated in
/// `prompt_tokens_details.cached_tokens`, so the totals agree.
pub fn usage(anthropic_usage: &Value) -> Value {
    let input = tokens(anthropic_usage.get("input_tokens"));
    let read = tokens(anthropic_usage.get("cache_read_input_tokens"));
    let write = tokens(anthropic_usage.get("cache_creation_input_tokens"));
    let output = tokens(anthropic_usage.get("output_tokens"));
    let prompt = input.saturating_add(read).saturating_add(write);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt.saturating_add(output),
        "prompt_tokens_details": {"cached_tokens": read},
    })
}

/// `stop_reason` → `finish_reason`.
pub(super) fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, or none given.
        _ => "stop",
    }
}

/// A Chat completion id for an Anthropic message id.
fn completion_id(message_id: &str) -> String {
    format!("chatcmpl-{}", message_id.strip_prefix("msg_").unwrap_or(message_id))
}
