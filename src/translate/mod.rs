//! Protocol translation between Anthropic Messages and OpenAI Chat Completions: pure functions
//! over JSON values (no I/O), used when a client's protocol differs from its channel's.
//!
//! `messages_to_chat` serves an Anthropic Messages client from an OpenAI-compatible channel:
//! the request goes out as Chat Completions, the answer (whole or streamed) comes back as an
//! Anthropic message. `chat_to_messages` is the reverse. What each direction translates, drops
//! and refuses is listed in `docs/translation.md`; a refusal is an [`Untranslatable`] whose
//! message is meant for a 400 in the client's own error shape.

use serde_json::{Map, Value, json};

pub mod chat_to_messages;
pub mod messages_to_chat;

/// A request field that cannot be expressed in the other protocol. The message names the field
/// and is written for the client (it becomes the message of a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untranslatable(pub String);

impl Untranslatable {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One server-sent event to write to the client: `event: NAME` (Anthropic names every event;
/// OpenAI streams have none) and the `data:` payload. A string payload is written as is (the
/// OpenAI `[DONE]` marker); anything else is written as compact JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SseOut {
    pub event: Option<&'static str>,
    pub data: Value,
}

impl SseOut {
    fn named(event: &'static str, data: Value) -> Self {
        Self { event: Some(event), data }
    }

    fn data(data: Value) -> Self {
        Self { event: None, data }
    }

    /// The event as it goes on the wire, ending with the blank line.
    pub fn to_sse(&self) -> String {
        let data = match &self.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.event {
            Some(event) => format!("event: {event}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        }
    }
}

/// The body of an Anthropic error, in a response or as the data of a stream's `error` event.
pub fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The Anthropic error type for an HTTP status (one mapping for the whole service).
pub use crate::error::anthropic_error_type;

/// A non-negative token count from a usage field; absent, negative or non-integer values are 0.
fn tokens(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// Copies `key` from `from` to `to` under `to_key` when present and not null.
fn copy(from: &Map<String, Value>, key: &str, to: &mut Map<String, Value>, to_key: &str) {
    if let Some(v) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(to_key.to_owned(), v.clone());
    }
}

/// A JSON type name for error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Seconds since the Unix epoch, for the `created` field of Chat Completions objects.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
