//! The few fields of upstream responses and stream chunks that billing reads; everything else
//! passes through untouched.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::settle::Usage;

#[derive(Debug, Default, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub choices: Option<Vec<Choice>>,
    #[serde(default)]
    pub usage: Option<UsageBlock>,
    #[serde(default)]
    pub error: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub delta: Option<Message>,
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub reasoning_content: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCall {
    #[serde(default)]
    pub function: Option<Function>,
}

#[derive(Debug, Deserialize)]
pub struct Function {
    #[serde(default)]
    pub name: Option<Value>,
    #[serde(default)]
    pub arguments: Option<Value>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct UsageBlock {
    #[serde(default)]
    pub prompt_tokens: Option<i64>,
    #[serde(default)]
    pub completion_tokens: Option<i64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

impl UsageBlock {
    /// OpenAI Chat usage: `prompt_tokens` includes the cached tokens and `completion_tokens` the
    /// reasoning tokens, so each detail is split out of (never added to) its total.
    pub fn usage(&self) -> Option<Usage> {
        let prompt = self.prompt_tokens?.max(0);
        let output = self.completion_tokens?.max(0);
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).clamp(0, prompt);
        let reasoning = self.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0).clamp(0, output);
        Some(Usage { input: prompt - cached, cache_read: cached, output, reasoning, ..Usage::default() })
    }
}

impl Chunk {
    /// Appends the generated text of this chunk (content, reasoning, refusals, tool calls).
    pub fn collect_text(&self, out: &mut String) {
        for choice in self.choices.iter().flatten() {
            for m in [&choice.delta, &choice.message].into_iter().flatten() {
                for v in [&m.content, &m.reasoning_content, &m.refusal].into_iter().flatten() {
                    push_value(v, out);
                }
                for call in m.tool_calls.iter().flatten() {
                    if let Some(f) = &call.function {
                        for v in [&f.name, &f.arguments].into_iter().flatten() {
                            push_value(v, out);
                        }
                    }
                }
            }
        }
    }

    /// True for the usage-only chunk that ends a stream when usage was requested.
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_none_or(Vec::is_empty)
    }
}

fn push_value(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|i| push_value(i, out)),
        Value::Object(map) => map.values().for_each(|i| push_value(i, out)),
        _ => {}
    }
}
