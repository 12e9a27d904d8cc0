//! A whole Chat Completions answer as an Anthropic message, and the usage block both forms share.

use serde_json::{Map, Value, json};

use crate::translate::tokens;

/// `chat.completion` → Anthropic `message`. Reasoning text (DeepSeek's `reasoning_content`)
/// becomes a thinking block without a signature; tool calls become `tool_use` blocks.
pub fn response(chat: &Value, model: &str) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(thinking) = reasoning(message) {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    let text = message_text(message);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for (k, call) in calls.iter().enumerate() {
        let id = match call["id"].as_str() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("toolu_{}_{k}", id_tail(chat)),
        };
        content.push(json!({
            "type": "tool_use",
            "id": id,
            "name": call["function"]["name"].as_str().unwrap_or(""),
            "input": tool_input(call["function"]["arguments"].as_str().unwrap_or("")),
        }));
    }
    json!({
        "id": format!("msg_{}", id_tail(chat)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str(), !calls.is_empty()),
        "stop_sequence": null,
        "usage": usage(&chat["usage"]),
    })
}

/// OpenAI usage → Anthropic usage. OpenAI's `prompt_tokens` includes the cached tokens
/// (`prompt_tokens_details.cached_tokens`, or DeepSeek's `prompt_cache_hit_tokens`);
/// Anthropic's `input_tokens` excludes them, so they move to `cache_read_input_tokens` and the
/// totals agree. OpenAI reports no cache writes.
pub fn usage(chat_usage: &Value) -> Value {
    let prompt = tokens(chat_usage.get("prompt_tokens"));
    let cached = match chat_usage.pointer("/prompt_tokens_details/cached_tokens") {
        Some(v) if !v.is_null() => tokens(Some(v)),
        _ => tokens(chat_usage.get("prompt_cache_hit_tokens")),
    }
    .min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": tokens(chat_usage.get("completion_tokens")),
    })
}

/// `finish_reason` → `stop_reason`. Some OpenAI-compatible servers say `stop` after tool calls;
/// the client runs tools on `tool_use`, so tool calls win.
pub(super) fn stop_reason(finish: Option<&str>, tool_calls: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        Some("tool_calls" | "function_call") => "tool_use",
        _ if tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// Tool call arguments as the `input` object. Arguments that are not a JSON object are kept
/// under `_arguments` so the client's tool validation reports them rather than losing them.
pub(super) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(input)) => Value::Object(input),
        _ => {
            let mut input = Map::new();
            input.insert("_arguments".into(), json!(arguments));
            Value::Object(input)
        }
    }
}

/// Reasoning text of a message or delta: `reasoning_content` (DeepSeek, Qwen, vLLM) or
/// `reasoning` (OpenRouter, Ollama).
pub(super) fn reasoning(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().filter_map(|k| message[*k].as_str()).find(|s| !s.is_empty())
}

/// The text of a Chat message: `content` as a string or text parts, then any `refusal`.
fn message_text(message: &Value) -> String {
    let mut text = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p["text"].as_str().or_else(|| p["refusal"].as_str())).collect()
        }
        _ => String::new(),
    };
    if let Some(refusal) = message["refusal"].as_str() {
        text.push_str(refusal);
    }
    text
}

/// The completion id without OpenAI's `chatcmpl-` prefix, for Anthropic-style ids.
fn id_tail(chat: &Value) -> &str {
    let id = chat["id"].as_str().unwrap_or("");
    id.strip_prefix("chatcmpl-").unwrap_or(id)
}
