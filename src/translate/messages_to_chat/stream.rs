//! Chat Completions chunks → Anthropic stream events.
//!
//! Anthropic content blocks are sequential (start, deltas, stop, then the next), while Chat
//! chunks may interleave tool calls by index. Text and reasoning stream live; a tool call
//! streams live when no other call is open (or the open one's arguments are already a whole
//! JSON value, as in the usual one-after-another order), and a tool call whose arguments arrive
//! while another one is still open is buffered and sent whole, as its own block, when the
//! choice finishes. The answer is therefore always a well-formed Anthropic stream, whatever the order
//! of the chunks.
//!
//! Usage arrives in the last chunk (the request asks for it), after `message_start` has gone
//! out: `message_start` carries zero input tokens, and the real input, cache and output counts
//! go in `message_delta`, which is where Claude Code reads them.

use serde_json::{Value, json};

use super::response::{reasoning, stop_reason, usage};
use crate::translate::{SseOut, anthropic_error};

/// Translates one upstream Chat Completions stream into Anthropic events.
pub struct Stream {
    model: String,
    message_id: String,
    started: bool,
    finished: bool,
    next_block: usize,
    open: Option<Open>,
    tools: Vec<Tool>,
    finish_reason: Option<String>,
    usage: Option<Value>,
}

#[derive(Clone, Copy, PartialEq)]
enum Open {
    Text(usize),
    Thinking(usize),
    /// A tool call streaming live: its position in `tools`.
    Tool(usize),
}

struct Tool {
    /// The Chat `index` of the call.
    index: u64,
    id: String,
    name: String,
    state: ToolState,
    /// Arguments received while the call could not be streamed yet.
    pending: String,
    /// Every argument piece received, to tell when the call's JSON is complete.
    arguments: String,
}

#[derive(Clone, Copy, PartialEq)]
enum ToolState {
    Pending,
    Live(usize),
    Closed(usize),
}

impl Stream {
    pub fn new(model: &str, message_id: &str) -> Self {
        Self {
            model: model.to_owned(),
            message_id: message_id.to_owned(),
            started: false,
            finished: false,
            next_block: 0,
            open: None,
            tools: Vec::new(),
            finish_reason: None,
            usage: None,
        }
    }

    /// One upstream `data:` JSON object. Only the first choice is translated (the request never
    /// asks for more).
    pub fn on_chunk(&mut self, chunk: &Value) -> Vec<SseOut> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = error["message"].as_str().unwrap_or("upstream error");
            return self.on_error("api_error", message);
        }
        self.start(&mut out);
        // Some servers repeat the running usage in every chunk: the last one is the total.
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) =
            chunk["choices"].as_array().and_then(|c| c.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0))
        else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(thinking) = reasoning(delta) {
            self.text(&mut out, true, thinking);
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text(&mut out, false, text);
        }
        if let Some(text) = delta["refusal"].as_str().filter(|t| !t.is_empty()) {
            self.text(&mut out, false, text);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (position, call) in calls.iter().enumerate() {
                self.tool_delta(&mut out, position, call);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
            self.close_all(&mut out);
        }
        out
    }

    /// The upstream's `data: [DONE]` (or a clean end of its stream): closes every block and
    /// sends `message_delta` with the stop reason and the whole usage, then `message_stop`.
    pub fn on_done(&mut self) -> Vec<SseOut> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        self.close_all(&mut out);
        self.finished = true;
        let reason = stop_reason(self.finish_reason.as_deref(), !self.tools.is_empty());
        let usage = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        out.push(SseOut::named(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": null},
                "usage": usage,
            }),
        ));
        out.push(SseOut::named("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// An Anthropic `error` event; the stream ends there (nothing is sent after it).
    pub fn on_error(&mut self, kind: &str, message: &str) -> Vec<SseOut> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        vec![SseOut::named("error", anthropic_error(kind, message))]
    }

    fn start(&mut self, out: &mut Vec<SseOut>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(SseOut::named(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 0,
                    },
                },
            }),
        ));
    }

    fn block(&mut self) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        index
    }

    fn text(&mut self, out: &mut Vec<SseOut>, thinking: bool, text: &str) {
        let index = match self.open {
            Some(Open::Thinking(index)) if thinking => index,
            Some(Open::Text(index)) if !thinking => index,
            _ => {
                self.close_open(out);
                let index = self.block();
                let block = if thinking {
                    json!({"type": "thinking", "thinking": "", "signature": ""})
                } else {
                    json!({"type": "text", "text": ""})
                };
                out.push(block_start(index, block));
                self.open = Some(if thinking { Open::Thinking(index) } else { Open::Text(index) });
                index
            }
        };
        let delta = if thinking {
            json!({"type": "thinking_delta", "thinking": text})
        } else {
            json!({"type": "text_delta", "text": text})
        };
        out.push(block_delta(index, delta));
    }

    fn tool_delta(&mut self, out: &mut Vec<SseOut>, position: usize, call: &Value) {
        let index = call["index"].as_u64().unwrap_or(position as u64);
        let id = call["id"].as_str().filter(|s| !s.is_empty());
        let name = call["function"]["name"].as_str().filter(|s| !s.is_empty());
        let arguments = call["function"]["arguments"].as_str().unwrap_or("");
        // A new id under a known index is a new call (some servers send every call as index 0).
        let known = self
            .tools
            .iter()
            .rposition(|t| t.index == index && (id.is_none() || t.id.is_empty() || Some(t.id.as_str()) == id));
        let slot = match known {
            Some(slot) => slot,
            None => {
                self.tools.push(Tool {
                    index,
                    id: String::new(),
                    name: String::new(),
                    state: ToolState::Pending,
                    pending: String::new(),
                    arguments: String::new(),
                });
                self.tools.len() - 1
            }
        };
        let tool = &mut self.tools[slot];
        if let Some(id) = id.filter(|_| tool.id.is_empty()) {
            tool.id = id.to_owned();
        }
        if let Some(name) = name.filter(|_| tool.name.is_empty()) {
            tool.name = name.to_owned();
        }
        tool.arguments.push_str(arguments);
        match tool.state {
            ToolState::Live(block) | ToolState::Closed(block) => {
                // A closed call only receives more arguments if the upstream sent text in the
                // middle of a call; the delta still names its block, which clients assemble by
                // index.
                if !arguments.is_empty() {
                    out.push(json_delta(block, arguments));
                }
            }
            ToolState::Pending => {
                tool.pending.push_str(arguments);
                let can_go_live = !tool.name.is_empty() && !self.open_tool_busy();
                if can_go_live {
                    self.close_open(out);
                    let block = self.open_tool(out, slot);
                    self.tools[slot].state = ToolState::Live(block);
                    self.open = Some(Open::Tool(slot));
                }
            }
        }
    }

    /// Whether a tool call is open and may still receive arguments. One whose arguments already
    /// form a whole JSON value is done (nothing valid can follow), so the next call can stream
    /// live; this keeps the usual one-after-another order fully live.
    fn open_tool_busy(&self) -> bool {
        match self.open {
            Some(Open::Tool(slot)) => {
                serde_json::from_str::<serde::de::IgnoredAny>(&self.tools[slot].arguments).is_err()
            }
            _ => false,
        }
    }

    /// Sends `content_block_start` for a tool call and any arguments already buffered.
    fn open_tool(&mut self, out: &mut Vec<SseOut>, slot: usize) -> usize {
        let block = self.block();
        let tool = &mut self.tools[slot];
        if tool.id.is_empty() {
            tool.id = format!("toolu_{}_{slot}", self.message_id.trim_start_matches("msg_"));
        }
        out.push(block_start(block, json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}})));
        let pending = std::mem::take(&mut tool.pending);
        if !pending.is_empty() {
            out.push(json_delta(block, &pending));
        }
        block
    }

    fn close_open(&mut self, out: &mut Vec<SseOut>) {
        let index = match self.open.take() {
            None => return,
            Some(Open::Text(index) | Open::Thinking(index)) => index,
            Some(Open::Tool(slot)) => match self.tools[slot].state {
                ToolState::Live(block) => {
                    self.tools[slot].state = ToolState::Closed(block);
                    block
                }
                _ => return,
            },
        };
        out.push(SseOut::named("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    }

    /// Closes the open block and sends every buffered tool call as a whole block, in order.
    fn close_all(&mut self, out: &mut Vec<SseOut>) {
        self.close_open(out);
        for slot in 0..self.tools.len() {
            if self.tools[slot].state == ToolState::Pending {
                let block = self.open_tool(out, slot);
                self.tools[slot].state = ToolState::Live(block);
                self.open = Some(Open::Tool(slot));
                self.close_open(out);
            }
        }
    }
}

fn block_start(index: usize, block: Value) -> SseOut {
    SseOut::named("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": block}))
}

fn block_delta(index: usize, delta: Value) -> SseOut {
    SseOut::named("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
}

fn json_delta(index: usize, partial: &str) -> SseOut {
    block_delta(index, json!({"type": "input_json_delta", "partial_json": partial}))
}
