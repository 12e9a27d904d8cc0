//! Token counting with tiktoken: the prompt estimate reserved before a request, and the
//! fallback count when an upstream reports no usage.
//!
//! The prompt count is meant to be an upper bound of what the upstream will bill, because
//! settlement never charges more than was reserved: every text field of every message and the
//! tool definitions are counted, plus per-message overhead; images and audio count a fixed
//! allowance instead of their (base64) bytes.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Framing tokens per message (role, separators), generous for every current model family.
const PER_MESSAGE: i64 = 4;
/// Tokens that prime the reply.
const PER_REPLY: i64 = 3;
/// The allowance for one image part: above the high-detail cost of a 2048×2048 image.
const PER_IMAGE: i64 = 1_600;
/// The allowance for one audio or file part.
const PER_MEDIA: i64 = 4_000;

fn bpe(model: &str) -> &'static CoreBPE {
    // o200k for the 4o/4.1/o-series/5 families, cl100k for older ones; o200k when unknown.
    let old = model.starts_with("gpt-3.5")
        || (model.starts_with("gpt-4") && !model.starts_with("gpt-4o") && !model.starts_with("gpt-4.1"));
    if old { tiktoken_rs::cl100k_base_singleton() } else { tiktoken_rs::o200k_base_singleton() }
}

/// Tokens of a plain text.
pub fn count_text(model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    i64::try_from(bpe(model).encode_ordinary(text).len()).unwrap_or(i64::MAX)
}

/// The prompt estimate of a chat request body.
pub fn count_prompt(model: &str, body: &serde_json::Map<String, Value>) -> i64 {
    let mut text = String::new();
    let mut fixed = PER_REPLY;
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            fixed += PER_MESSAGE;
            collect(m, &mut text, &mut fixed);
            text.push('\n');
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(v) = body.get(key) {
            text.push_str(&v.to_string());
            text.push('\n');
        }
    }
    fixed.saturating_add(count_text(model, &text))
}

/// Gathers the countable text of a message into `text`; media parts add allowances to `fixed`.
fn collect(v: &Value, text: &mut String, fixed: &mut i64) {
    match v {
        Value::String(s) => {
            text.push_str(s);
            text.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, text, fixed)),
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some("image_url" | "image" | "input_image") => *fixed = fixed.saturating_add(PER_IMAGE),
            Some("input_audio" | "audio" | "file" | "input_file") => *fixed = fixed.saturating_add(PER_MEDIA),
            _ => {
                for (k, val) in map {
                    text.push_str(k);
                    text.push(' ');
                    collect(val, text, fixed);
                }
            }
        },
        Value::Number(n) => {
            text.push_str(&n.to_string());
            text.push(' ');
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn counts_are_at_least_the_text_tokens() {
        let b = body(json!({"messages": [{"role": "user", "content": "Hello there, how are you today?"}]}));
        let n = count_prompt("gpt-4o-mini", &b);
        assert!(n >= count_text("gpt-4o-mini", "Hello there, how are you today?") + PER_MESSAGE + PER_REPLY);
        assert!(n < 40, "{n}");
    }

    #[test]
    fn images_count_an_allowance_not_their_bytes() {
        let data = format!("data:image/png;base64,{}", "A".repeat(200_000));
        let b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": data}}
        ]}]}));
        let n = count_prompt("gpt-4o", &b);
        assert!((PER_IMAGE..PER_IMAGE + 50).contains(&n), "{n}");
    }

    #[test]
    fn tools_are_counted() {
        let without = body(json!({"messages": [{"role": "user", "content": "hi"}]}));
        let with = body(
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}),
        );
        assert!(count_prompt("gpt-4o", &with) > count_prompt("gpt-4o", &without) + 10);
    }
}
