//! The usage blocks of Anthropic Messages and OpenAI Responses answers and stream events, read
//! into the one usage record (`settle::Usage`), and the generated text of their events for the
//! estimate when no usage arrives. OpenAI Chat chunks are read in `chunks`.

use serde::Deserialize;
use serde_json::Value;

use super::settle::Usage;

/// Anthropic's usage block: `input_tokens` excludes the cache reads and writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<i64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<i64>,
    #[serde(default)]
    pub cache_creation: Option<CacheCreation>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct CacheCreation {
    #[serde(default)]
    pub ephemeral_5m_input_tokens: Option<i64>,
    #[serde(default)]
    pub ephemeral_1h_input_tokens: Option<i64>,
}

impl AnthropicUsage {
    /// A later block (`message_delta`'s, cumulative) over an earlier one (`message_start`'s):
    /// every field it carries replaces the earlier value.
    pub fn merge(&mut self, later: &Self) {
        let pick = |a: &mut Option<i64>, b: Option<i64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(&mut self.output_tokens, later.output_tokens);
        pick(&mut self.cache_read_input_tokens, later.cache_read_input_tokens);
        pick(&mut self.cache_creation_input_tokens, later.cache_creation_input_tokens);
        if later.cache_creation.is_some() {
            self.cache_creation = later.cache_creation;
        }
    }

    /// The usage record; `None` until the output count is known.
    pub fn usage(&self) -> Option<Usage> {
        let output = self.output_tokens?.max(0);
        let creation_total = self.cache_creation_input_tokens.unwrap_or(0).max(0);
        let (write_5m, write_1h) = match self.cache_creation {
            Some(c) => {
                let h1 = c.ephemeral_1h_input_tokens.unwrap_or(0).max(0);
                // Tokens written without a stated duration are billed as 5-minute writes.
                let m5 = c.ephemeral_5m_input_tokens.unwrap_or(0).max(0).max(creation_total - h1);
                (m5, h1)
            }
            None => (creation_total, 0),
        };
        Some(Usage {
            input: self.input_tokens.unwrap_or(0).max(0),
            cache_read: self.cache_read_input_tokens.unwrap_or(0).max(0),
            cache_write: write_5m,
            cache_write_1h: write_1h,
            output,
            reasoning: 0,
        })
    }
}

/// The fields of an Anthropic message (a whole answer) or stream event that billing reads.
#[derive(Debug, Default, Deserialize)]
pub struct AnthropicEvent {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub message: Option<AnthropicMessage>,
    #[serde(default)]
    pub usage: Option<AnthropicUsage>,
    #[serde(default)]
    pub content: Option<Vec<Value>>,
    #[serde(default)]
    pub delta: Option<Value>,
    #[serde(default)]
    pub content_block: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AnthropicMessage {
    #[serde(default)]
    pub usage: Option<AnthropicUsage>,
}

impl AnthropicEvent {
    /// Appends the generated text of this event or message (text, thinking, tool input).
    pub fn collect_text(&self, out: &mut String) {
        for block in self.content.iter().flatten().chain(self.content_block.iter()) {
            for field in ["text", "thinking"] {
                if let Some(s) = block.get(field).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
            if let Some(input) = block.get("input").filter(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
                out.push_str(&input.to_string());
            }
        }
        if let Some(delta) = &self.delta {
            for field in ["text", "thinking", "partial_json"] {
                if let Some(s) = delta.get(field).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
    }
}

/// OpenAI Responses usage: `input_tokens` includes the cached tokens and `output_tokens` the
/// reasoning tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<OutputDetails>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct InputDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct OutputDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

impl ResponsesUsage {
    pub fn usage(&self) -> Option<Usage> {
        let input = self.input_tokens?.max(0);
        let output = self.output_tokens?.max(0);
        let cached = self.input_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).clamp(0, input);
        let reasoning = self.output_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0).clamp(0, output);
        Some(Usage { input: input - cached, cache_read: cached, output, reasoning, ..Usage::default() })
    }
}

/// A Responses object (a whole answer, or the `response` of a stream's lifecycle events).
#[derive(Debug, Default, Deserialize)]
pub struct ResponseObject {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub usage: Option<ResponsesUsage>,
    #[serde(default)]
    pub output: Option<Vec<Value>>,
}

impl ResponseObject {
    /// Appends the generated text of the output items.
    pub fn collect_text(&self, out: &mut String) {
        for item in self.output.iter().flatten() {
            push_strings(item, out);
        }
    }
}

/// A Responses stream event.
#[derive(Debug, Default, Deserialize)]
pub struct ResponsesEvent {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub response: Option<ResponseObject>,
    #[serde(default)]
    pub delta: Option<Value>,
}

impl ResponsesEvent {
    /// Appends the generated text of a delta event (output text, refusals, tool arguments,
    /// reasoning summaries).
    pub fn collect_text(&self, out: &mut String) {
        if self.kind.as_deref().is_some_and(|k| k.ends_with(".delta"))
            && let Some(Value::String(s)) = &self.delta
        {
            out.push_str(s);
        }
    }
}

/// Embeddings usage: the input is all there is.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct EmbeddingsAnswer {
    #[serde(default)]
    pub usage: Option<EmbeddingsUsage>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct EmbeddingsUsage {
    #[serde(default)]
    pub prompt_tokens: Option<i64>,
}

impl EmbeddingsUsage {
    pub fn usage(&self) -> Option<Usage> {
        Some(Usage { input: self.prompt_tokens?.max(0), ..Usage::default() })
    }
}

fn push_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|i| push_strings(i, out)),
        Value::Object(map) => {
            for (k, val) in map {
                // Identifiers and encrypted reasoning are not generated text.
                if !matches!(k.as_str(), "id" | "type" | "status" | "encrypted_content" | "call_id" | "role") {
                    push_strings(val, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn anthropic_cache_classes_are_split() {
        let u: AnthropicUsage = serde_json::from_value(json!({
            "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}
        }))
        .unwrap();
        assert_eq!(
            u.usage().unwrap(),
            Usage { input: 10, cache_read: 1000, cache_write: 100, cache_write_1h: 200, output: 5, reasoning: 0 }
        );
        let plain: AnthropicUsage =
            serde_json::from_value(json!({"input_tokens": 3, "output_tokens": 1, "cache_creation_input_tokens": 40}))
                .unwrap();
        assert_eq!(plain.usage().unwrap().cache_write, 40);
    }

    #[test]
    fn message_delta_overrides_message_start() {
        let mut start: AnthropicUsage =
            serde_json::from_value(json!({"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 7}))
                .unwrap();
        let delta: AnthropicUsage = serde_json::from_value(json!({"output_tokens": 120})).unwrap();
        start.merge(&delta);
        let u = start.usage().unwrap();
        assert_eq!((u.input, u.cache_read, u.output), (25, 7, 120));
    }

    #[test]
    fn responses_cached_and_reasoning_are_split_out() {
        let u: ResponsesUsage = serde_json::from_value(json!({
            "input_tokens": 100, "input_tokens_details": {"cached_tokens": 60},
            "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 30}
        }))
        .unwrap();
        assert_eq!(
            u.usage().unwrap(),
            Usage { input: 40, cache_read: 60, output: 50, reasoning: 30, ..Usage::default() }
        );
    }
}
