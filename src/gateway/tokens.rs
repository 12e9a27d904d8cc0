//! Token counting with OpenAI's tokenizers (`bpe`: tiktoken's counts, compactly): the prompt estimate reserved before a request, and the
//! fallback count when an upstream reports no usage.
//!
//! The prompt count is meant to be an upper bound of what the upstream will bill: every text
//! field of every message and the tool definitions are counted, plus per-message overhead.
//! Media are counted apart (see `media`): inline images by their real dimensions and the
//! provider's formula for the model, everything whose size cannot be known by a conservative
//! allowance — at worst the whole context window, since no upstream bills more prompt than that.

use serde_json::Value;

mod bpe;
mod media;

pub use media::image_tokens;

/// Framing tokens per message (role, separators), generous for every current model family.
const PER_MESSAGE: i64 = 4;
/// Tokens that prime the reply.
const PER_REPLY: i64 = 3;

fn bpe(model: &str) -> &'static bpe::Bpe {
    // o200k for the 4o/4.1/o-series/5 families, cl100k for older ones; o200k when unknown.
    let old = model.starts_with("gpt-3.5")
        || (model.starts_with("gpt-4") && !model.starts_with("gpt-4o") && !model.starts_with("gpt-4.1"));
    if old { bpe::cl100k() } else { bpe::o200k() }
}

/// Tokens of a plain text.
pub fn count_text(model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    i64::try_from(bpe(model).count(text)).unwrap_or(i64::MAX)
}

/// The prompt of a request, counted in parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptCount {
    /// Text, tool definitions and message framing: what the context check uses.
    pub text: i64,
    /// Images, audio and files that could be sized (remote images at their most).
    pub media: i64,
    /// Something could not be sized at all (an uploaded file id).
    pub unsizable: bool,
}

impl PromptCount {
    /// The prompt tokens to reserve: text and media, plus the whole context window for what
    /// cannot be sized. Media are not capped at the context window: some models bill images
    /// at a multiple of their size.
    pub fn reserved(&self, context_window: i64) -> i64 {
        let unsizable = if self.unsizable { context_window.max(0) } else { 0 };
        self.text.saturating_add(self.media).saturating_add(unsizable)
    }

    /// The count billed when the upstream reports no usage: text and sized media.
    pub fn estimate(&self) -> i64 {
        self.text.saturating_add(self.media)
    }
}

/// The prompt estimate of a chat request body (text and media together, uncapped).
pub fn count_prompt(model: &str, body: &serde_json::Map<String, Value>) -> i64 {
    count_prompt_parts(model, body).estimate()
}

/// The prompt estimate of a chat request body, text and media apart.
pub fn count_prompt_parts(model: &str, body: &serde_json::Map<String, Value>) -> PromptCount {
    let mut text = String::new();
    let mut count = PromptCount { text: PER_REPLY, ..PromptCount::default() };
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            count.text = count.text.saturating_add(PER_MESSAGE);
            collect(model, m, &mut text, &mut count);
            text.push('\n');
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(v) = body.get(key) {
            text.push_str(&v.to_string());
            text.push('\n');
        }
    }
    count.text = count.text.saturating_add(count_text(model, &text));
    count
}

/// Anthropic tokenizers produce more tokens than `o200k_base` for the same text; the count of
/// an Anthropic Messages prompt is the `o200k_base` count times this margin (in percent).
pub const ANTHROPIC_TEXT_MARGIN_PERCENT: i64 = 150;
/// Tokens reserved for one image in an Anthropic Messages prompt, whatever its size: the most
/// Anthropic bills for one image at the largest resolution a current Claude model accepts
/// (≈4,784 tokens at 2,576 px on the long edge).
pub const ANTHROPIC_IMAGE_TOKENS: i64 = 4_800;

/// The prompt of an Anthropic Messages request (`system`, `messages`, `tools`), counted in parts:
/// text with `ANTHROPIC_TEXT_MARGIN_PERCENT`, images at `ANTHROPIC_IMAGE_TOKENS` each, inline
/// documents by size, documents by URL or file id unsizable.
pub fn count_messages_parts(model: &str, body: &serde_json::Map<String, Value>) -> PromptCount {
    let mut text = String::new();
    let mut count = PromptCount { text: PER_REPLY, ..PromptCount::default() };
    if let Some(system) = body.get("system") {
        count.text = count.text.saturating_add(PER_MESSAGE);
        collect_anthropic(model, system, &mut text, &mut count);
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            count.text = count.text.saturating_add(PER_MESSAGE);
            collect_anthropic(model, m, &mut text, &mut count);
            text.push('\n');
        }
    }
    for key in ["tools", "tool_choice", "output_format"] {
        if let Some(v) = body.get(key) {
            text.push_str(&v.to_string());
            text.push('\n');
        }
    }
    let counted = count_text(model, &text).saturating_mul(ANTHROPIC_TEXT_MARGIN_PERCENT).saturating_add(99) / 100;
    count.text = count.text.saturating_add(counted);
    count
}

fn collect_anthropic(model: &str, v: &Value, text: &mut String, count: &mut PromptCount) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_anthropic(model, i, text, count)),
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            let source = map.get("source").and_then(|s| s.get("type")).and_then(Value::as_str);
            match (kind, source) {
                (Some("image"), _) => count.media = count.media.saturating_add(ANTHROPIC_IMAGE_TOKENS),
                // A plain-text document is text; content blocks are walked.
                (Some("document"), Some("text" | "content")) => {
                    for val in map.values() {
                        collect_anthropic(model, val, text, count);
                    }
                }
                (Some("document"), Some("base64")) => match media::part_tokens(model, map) {
                    Some(Some(n)) => count.media = count.media.saturating_add(n),
                    _ => count.unsizable = true,
                },
                (Some("document"), _) => count.unsizable = true,
                _ => {
                    for (k, val) in map {
                        text.push_str(k);
                        text.push(' ');
                        collect_anthropic(model, val, text, count);
                    }
                }
            }
        }
        other => collect(model, other, text, count),
    }
}

/// The prompt of an OpenAI Responses request (`instructions`, `input`, `tools`, `text`).
pub fn count_responses_parts(model: &str, body: &serde_json::Map<String, Value>) -> PromptCount {
    let mut text = String::new();
    let mut count = PromptCount { text: PER_REPLY, ..PromptCount::default() };
    if let Some(instructions) = body.get("instructions") {
        count.text = count.text.saturating_add(PER_MESSAGE);
        collect(model, instructions, &mut text, &mut count);
    }
    match body.get("input") {
        Some(Value::Array(items)) => {
            for item in items {
                count.text = count.text.saturating_add(PER_MESSAGE);
                collect(model, item, &mut text, &mut count);
                text.push('\n');
            }
        }
        Some(other) => {
            count.text = count.text.saturating_add(PER_MESSAGE);
            collect(model, other, &mut text, &mut count);
        }
        None => {}
    }
    for key in ["tools", "text", "tool_choice"] {
        if let Some(v) = body.get(key) {
            text.push_str(&v.to_string());
            text.push('\n');
        }
    }
    count.text = count.text.saturating_add(count_text(model, &text));
    count
}

/// Gathers the countable text of a message into `text`; media parts add to `count`.
fn collect(model: &str, v: &Value, text: &mut String, count: &mut PromptCount) {
    match v {
        Value::String(s) => {
            text.push_str(s);
            text.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|i| collect(model, i, text, count)),
        Value::Object(map) => match media::part_tokens(model, map) {
            Some(Some(n)) => count.media = count.media.saturating_add(n),
            Some(None) => count.unsizable = true,
            None => {
                for (k, val) in map {
                    text.push_str(k);
                    text.push(' ');
                    collect(model, val, text, count);
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
    fn tools_are_counted() {
        let without = body(json!({"messages": [{"role": "user", "content": "hi"}]}));
        let with = body(
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}),
        );
        assert!(count_prompt("gpt-4o", &with) > count_prompt("gpt-4o", &without) + 10);
    }

    #[test]
    fn unsizable_media_reserve_the_context_window() {
        let b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "summarise"},
            {"type": "file", "file": {"file_id": "file-abc"}}
        ]}]}));
        let c = count_prompt_parts("gpt-4o", &b);
        assert!(c.unsizable);
        assert_eq!(c.reserved(128_000), c.text + 128_000);
        assert_eq!(c.estimate(), c.text);
        assert!(c.text < 40);
    }
}
