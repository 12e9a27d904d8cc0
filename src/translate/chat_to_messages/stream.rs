//! Anthropic stream events → Chat Completions chunks.
//!
//! `message_start` gives the role chunk and the input usage; text, thinking and tool input
//! deltas become content, `reasoning_content` and `tool_calls` deltas (tool calls numbered in
//! order of appearance); `message_delta` carries the stop reason and the output usage;
//! `message_stop` ends the stream with the finish chunk, the usage chunk when the client asked
//! for it, and `[DONE]`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::response::{finish_reason, usage};
use crate::translate::{SseOut, unix_now};

/// Translates one upstream Anthropic stream into Chat Completions chunks.
pub struct Stream {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    role_sent: bool,
    finished: bool,
    /// Anthropic block index → Chat tool call index.
    tool_blocks: HashMap<u64, usize>,
    stop_reason: Option<String>,
    /// The running Anthropic usage: `message_start`'s, updated by each `message_delta`.
    usage: serde_json::Map<String, Value>,
}

impl Stream {
    pub fn new(model: &str, completion_id: &str, include_usage: bool) -> Self {
        Self {
            id: completion_id.to_owned(),
            model: model.to_owned(),
            created: unix_now(),
            include_usage,
            role_sent: false,
            finished: false,
            tool_blocks: HashMap::new(),
            stop_reason: None,
            usage: serde_json::Map::new(),
        }
    }

    /// Fixes the `created` time of every chunk (it is otherwise the time of `new`).
    pub fn with_created(mut self, created: i64) -> Self {
        self.created = created;
        self
    }

    /// One upstream event: its SSE event name and its data.
    pub fn on_event(&mut self, event: &str, data: &Value) -> Vec<SseOut> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            "message_start" => {
                self.add_usage(&data["message"]["usage"]);
                self.role(&mut out);
            }
            "content_block_start" => self.block_start(&mut out, data),
            "content_block_delta" => self.block_delta(&mut out, data),
            "message_delta" => {
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_owned());
                }
                self.add_usage(&data["usage"]);
            }
            "message_stop" => self.stop(&mut out),
            "error" => {
                self.finished = true;
                let error = &data["error"];
                out.push(SseOut::data(json!({"error": {
                    "message": error["message"].as_str().unwrap_or("upstream error"),
                    "type": error["type"].as_str().unwrap_or("api_error"),
                    "param": null,
                    "code": null,
                }})));
            }
            // ping, content_block_stop and events added later carry nothing for Chat.
            _ => {}
        }
        out
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseOut {
        SseOut::data(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn role(&mut self, out: &mut Vec<SseOut>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    fn add_usage(&mut self, usage: &Value) {
        if let Some(fields) = usage.as_object() {
            for (k, v) in fields {
                if v.is_u64() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn block_start(&mut self, out: &mut Vec<SseOut>, data: &Value) {
        self.role(out);
        let block = &data["content_block"];
        match block["type"].as_str() {
            Some("text") => self.content(out, "content", block["text"].as_str()),
            Some("thinking") => self.content(out, "reasoning_content", block["thinking"].as_str()),
            Some("tool_use") => {
                let index = self.tool_blocks.len();
                if let Some(block_index) = data["index"].as_u64() {
                    self.tool_blocks.insert(block_index, index);
                }
                // The input normally streams as deltas; a proxy that sends it whole here still
                // gets it through.
                let arguments = match &block["input"] {
                    Value::Object(input) if !input.is_empty() => block["input"].to_string(),
                    _ => String::new(),
                };
                let call = json!({
                    "index": index,
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                });
                out.push(self.chunk(json!({"tool_calls": [call]}), None));
            }
            // Redacted thinking and server tool blocks have no Chat form.
            _ => {}
        }
    }

    fn block_delta(&mut self, out: &mut Vec<SseOut>, data: &Value) {
        self.role(out);
        let delta = &data["delta"];
        match delta["type"].as_str() {
            Some("text_delta") => self.content(out, "content", delta["text"].as_str()),
            Some("thinking_delta") => {
                self.content(out, "reasoning_content", delta["thinking"].as_str());
            }
            Some("input_json_delta") => {
                let partial = delta["partial_json"].as_str().unwrap_or("");
                let tool = data["index"].as_u64().and_then(|b| self.tool_blocks.get(&b).copied());
                if let (Some(index), false) = (tool, partial.is_empty()) {
                    let call = json!({"index": index, "function": {"arguments": partial}});
                    out.push(self.chunk(json!({"tool_calls": [call]}), None));
                }
            }
            // signature_delta and citations_delta have no Chat form.
            _ => {}
        }
    }

    fn content(&self, out: &mut Vec<SseOut>, field: &str, text: Option<&str>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            out.push(self.chunk(json!({field: text}), None));
        }
    }

    fn stop(&mut self, out: &mut Vec<SseOut>) {
        self.role(out);
        self.finished = true;
        let finish = finish_reason(self.stop_reason.as_deref());
        out.push(self.chunk(json!({}), Some(finish)));
        if self.include_usage {
            out.push(SseOut::data(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(&Value::Object(self.usage.clone())),
            })));
        }
        out.push(SseOut::data(Value::String("[DONE]".into())));
    }
}
