//! The inbound protocols, what admission reads from each (the worst case a request can cost),
//! and how a request of one protocol reaches a channel of a provider: natively — the body goes
//! upstream byte for byte except the model name and the output cap — or translated (Anthropic
//! Messages ⇄ OpenAI Chat Completions), or not at all.

use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value};

use super::json_edit;
use super::tokens::{self, PromptCount};
use crate::billing::CacheWrites;
use crate::error::Error;

/// A protocol a client speaks to Tollgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI Chat Completions, `POST /v1/chat/completions`.
    Chat,
    /// Anthropic Messages, `POST /v1/messages`.
    Messages,
    /// OpenAI Responses, `POST /v1/responses`.
    Responses,
    /// OpenAI Embeddings, `POST /v1/embeddings`.
    Embeddings,
    /// OpenAI legacy Completions, `POST /v1/completions`.
    Completions,
}

impl Protocol {
    /// The route's fixed name in logs and metrics.
    pub const fn route(self) -> &'static str {
        match self {
            Self::Chat => "chat_completions",
            Self::Messages => "messages",
            Self::Responses => "responses",
            Self::Embeddings => "embeddings",
            Self::Completions => "completions",
        }
    }

    /// The path under a channel's base URL (OpenAI base URLs end in `/v1`; see
    /// `channels::directory::Route::endpoint` for Anthropic's).
    pub const fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Messages => "messages",
            Self::Responses => "responses",
            Self::Embeddings => "embeddings",
            Self::Completions => "completions",
        }
    }

    /// Whether the protocol's streams are OpenAI-style `data:` chunks ended by `[DONE]`.
    pub const fn openai_chunks(self) -> bool {
        matches!(self, Self::Chat | Self::Completions)
    }
}

/// How a request reaches a channel of some provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The channel speaks the client's protocol: the body passes through.
    Native,
    /// An Anthropic Messages client on an OpenAI-compatible channel (Chat Completions).
    MessagesViaChat,
    /// An OpenAI Chat Completions client on an Anthropic channel (Messages).
    ChatViaMessages,
}

impl Wire {
    /// How `protocol` reaches a channel of `provider`, if it can.
    pub fn between(protocol: Protocol, provider: &str) -> Option<Self> {
        let anthropic = provider == crate::channels::ANTHROPIC;
        match (protocol, anthropic) {
            (Protocol::Messages, true) => Some(Self::Native),
            (Protocol::Messages, false) => Some(Self::MessagesViaChat),
            (Protocol::Chat, true) => Some(Self::ChatViaMessages),
            (_, true) => None,
            (_, false) => Some(Self::Native),
        }
    }

    /// The protocol the channel is spoken to in.
    pub const fn upstream(self, client: Protocol) -> Protocol {
        match self {
            Self::Native => client,
            Self::MessagesViaChat => Protocol::Chat,
            Self::ChatViaMessages => Protocol::Messages,
        }
    }
}

/// The client's headers that are passed upstream.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    pub openai_beta: Option<HeaderValue>,
    pub anthropic_version: Option<HeaderValue>,
    pub anthropic_beta: Option<HeaderValue>,
}

impl Forward {
    pub fn from_headers(h: &reqwest::header::HeaderMap) -> Self {
        Self {
            openai_beta: h.get("openai-beta").cloned(),
            anthropic_version: h.get("anthropic-version").cloned(),
            anthropic_beta: h.get("anthropic-beta").cloned(),
        }
    }
}

/// What admission reads from a request: how much it can cost at most.
#[derive(Debug)]
pub struct Shape {
    /// Choices generated per request (`n`, or `best_of` for legacy completions).
    pub choices: u32,
    /// The output-cap fields the client sent (chat: each is sent upstream set to the cap).
    pub cap_fields: Vec<&'static str>,
    /// The smallest output cap the client named.
    pub requested_cap: Option<i64>,
    /// The cap used when the client named none, before the model's limit (legacy completions: 16).
    pub default_cap: Option<i64>,
    pub prompt: PromptCount,
    /// Whether the request generates output at all (embeddings do not).
    pub output: bool,
    /// The client asked for the usage chunk at the end of an OpenAI-style stream.
    pub client_wants_usage: bool,
    /// Output the client never sees may be billed (hidden reasoning): when the upstream's usage
    /// never arrives, what was delivered is not what was spent.
    pub hidden_output: bool,
    /// The prompt-cache writes the request asks for: they decide the dearest price its prompt
    /// tokens may be billed at.
    pub cache_writes: CacheWrites,
}

pub fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

/// The checks of a body's required fields that need no catalogue: a malformed request is
/// refused before its model is even looked up.
pub fn precheck(protocol: Protocol, body: &Map<String, Value>) -> Result<(), Error> {
    let (field, array) = match protocol {
        Protocol::Chat | Protocol::Messages => ("messages", true),
        Protocol::Embeddings => ("input", false),
        Protocol::Completions => ("prompt", false),
        Protocol::Responses => return Ok(()),
    };
    match body.get(field) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(()),
        Some(Value::String(_)) if !array => Ok(()),
        _ if array => Err(bad(format!("`{field}` is required and must be a non-empty array"))),
        _ => Err(bad(format!("`{field}` is required"))),
    }
}

/// Reads and checks a request body of `protocol` for admission.
pub fn shape(protocol: Protocol, body: &Map<String, Value>, model: &str, max_choices: u32) -> Result<Shape, Error> {
    match protocol {
        Protocol::Chat => chat_shape(body, model, max_choices),
        Protocol::Messages => messages_shape(body, model),
        Protocol::Responses => responses_shape(body, model),
        Protocol::Embeddings => embeddings_shape(body, model),
        Protocol::Completions => completions_shape(body, model, max_choices),
    }
}

fn chat_shape(body: &Map<String, Value>, model: &str, max_choices: u32) -> Result<Shape, Error> {
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(bad("`messages` is required and must be a non-empty array")),
    }
    let choices = count_field(body, "n", max_choices)?;
    refuse_unpriced_chat(body)?;
    let (cap_fields, requested_cap) = output_caps(body, &crate::models::CAP_FIELDS)?;
    let stream = stream_flag(body)?;
    let client_wants_usage = stream_usage_wanted(body, stream)?;
    Ok(Shape {
        choices,
        cap_fields,
        requested_cap,
        default_cap: None,
        prompt: tokens::count_prompt_parts(model, body),
        output: true,
        client_wants_usage,
        hidden_output: reasoning_hidden(body),
        cache_writes: CacheWrites::None,
    })
}

fn messages_shape(body: &Map<String, Value>, model: &str) -> Result<Shape, Error> {
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(bad("messages: `messages` is required and must be a non-empty array")),
    }
    let (cap_fields, requested_cap) = output_caps(body, &["max_tokens"])?;
    if requested_cap.is_none() {
        return Err(bad("max_tokens: Field required"));
    }
    stream_flag(body)?;
    // Server tools run at the upstream and are billed per use, outside token prices.
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for tool in tools {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("custom");
            if ["web_search", "web_fetch", "code_execution"].iter().any(|p| kind.starts_with(p)) {
                return Err(bad(format!("tools: the server tool `{kind}` is not offered on this service")));
            }
        }
    }
    if body.get("container").is_some_and(|v| !v.is_null()) {
        return Err(bad("container: code execution containers are not offered on this service"));
    }
    match body.get("service_tier") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if matches!(t.as_str(), "auto" | "standard_only") => {}
        Some(other) => return Err(bad(format!("service_tier: {other} is not offered; use auto or standard_only"))),
    }
    Ok(Shape {
        choices: 1,
        cap_fields,
        requested_cap,
        default_cap: None,
        prompt: tokens::count_messages_parts(model, body),
        output: true,
        client_wants_usage: false,
        // Redacted thinking is billed and never shown.
        hidden_output: body.get("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) == Some("enabled"),
        cache_writes: cache_writes(body),
    })
}

fn responses_shape(body: &Map<String, Value>, model: &str) -> Result<Shape, Error> {
    if body.get("input").is_none_or(Value::is_null) && body.get("prompt").is_none_or(Value::is_null) {
        return Err(bad("`input` is required"));
    }
    stream_flag(body)?;
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad("background responses are not offered on this service; send `background: false`"));
    }
    responses_tools(body)?;
    match body.get("service_tier") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if matches!(t.as_str(), "auto" | "default" | "flex") => {}
        Some(other) => return Err(bad(format!("service_tier {other} is not offered; use auto, default or flex"))),
    }
    let (cap_fields, requested_cap) = output_caps(body, &["max_output_tokens"])?;
    let mut prompt = tokens::count_responses_parts(model, body);
    // An earlier response, a stored conversation or a prompt template add input we cannot see:
    // the most the upstream can bill for them is the context window.
    for field in ["previous_response_id", "conversation", "prompt"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            prompt.unsizable = true;
        }
    }
    Ok(Shape {
        choices: 1,
        cap_fields,
        requested_cap,
        default_cap: None,
        prompt,
        output: true,
        client_wants_usage: false,
        hidden_output: reasoning_hidden(body) || body.get("reasoning").is_some_and(|v| !v.is_null()),
        cache_writes: CacheWrites::None,
    })
}

/// What a Responses tool costs beyond tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ToolCost {
    /// Run by the client (functions, custom tools, shell, patches, computer use) or billed in
    /// tokens only (remote MCP servers, tool namespaces of those).
    Tokens,
    /// Run by the upstream and billed per call outside token prices (web search, file search,
    /// the code interpreter, image generation).
    PerCall,
}

fn tool_cost(tool: &Value) -> Result<ToolCost, Error> {
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
    match kind {
        "function"
        | "custom"
        | "mcp"
        | "local_shell"
        | "shell"
        | "apply_patch"
        | "computer_use_preview"
        | "computer_use" => Ok(ToolCost::Tokens),
        "namespace" => {
            for inner in tool.get("tools").and_then(Value::as_array).into_iter().flatten() {
                if tool_cost(inner)? == ToolCost::PerCall {
                    return Err(bad(format!("tools: the built-in tool `{kind}` cannot be offered inside a namespace")));
                }
            }
            Ok(ToolCost::Tokens)
        }
        k if k.starts_with("web_search") || matches!(k, "file_search" | "code_interpreter" | "image_generation") => {
            Ok(ToolCost::PerCall)
        }
        other => Err(bad(format!("tools: the tool type `{other}` is not offered on this service"))),
    }
}

/// The Responses tools the upstream is offered: every tool billed in tokens only. Tools billed
/// per call outside token prices are left out when the client only offers them (the model
/// answers without them, as Codex's `web_search` allows); a request that forces one through
/// `tool_choice` is refused. `None` when nothing is left out.
fn responses_tools(body: &Map<String, Value>) -> Result<Option<Vec<Value>>, Error> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else { return Ok(None) };
    let mut kept = Vec::with_capacity(tools.len());
    let mut left_out = Vec::new();
    for tool in tools {
        match tool_cost(tool)? {
            ToolCost::Tokens => kept.push(tool.clone()),
            ToolCost::PerCall => left_out.push(tool.get("type").and_then(Value::as_str).unwrap_or_default()),
        }
    }
    if left_out.is_empty() {
        return Ok(None);
    }
    let forced = match body.get("tool_choice") {
        Some(Value::String(c)) => c == "required" && kept.is_empty(),
        Some(Value::Object(c)) => {
            let kind = c.get("type").and_then(Value::as_str).unwrap_or_default();
            left_out.contains(&kind)
                || (kind == "allowed_tools"
                    && c.get("mode").and_then(Value::as_str) == Some("required")
                    && c.get("tools").and_then(Value::as_array).is_some_and(|allowed| {
                        allowed.iter().all(|t| tool_cost(t).is_ok_and(|c| c == ToolCost::PerCall))
                    }))
        }
        _ => false,
    };
    if forced {
        return Err(bad(format!(
            "tool_choice: the built-in tool `{}` is billed per call and not offered on this service",
            left_out[0]
        )));
    }
    Ok(Some(kept))
}

fn embeddings_shape(body: &Map<String, Value>, model: &str) -> Result<Shape, Error> {
    let input = body.get("input").ok_or_else(|| bad("`input` is required"))?;
    let text = count_inputs(model, input, "input")?;
    Ok(Shape {
        choices: 1,
        cap_fields: Vec::new(),
        requested_cap: None,
        default_cap: None,
        prompt: PromptCount { text, ..PromptCount::default() },
        output: false,
        client_wants_usage: false,
        hidden_output: false,
        cache_writes: CacheWrites::None,
    })
}

/// The tokens of an embeddings `input` or a completions `prompt`: a string, an array of strings,
/// a token array, or an array of token arrays.
fn count_inputs(model: &str, value: &Value, field: &str) -> Result<i64, Error> {
    let Value::Array(items) = value else {
        return match value {
            Value::String(s) => Ok(count_input_text(model, s)),
            _ => Err(bad(format!("`{field}` must be a non-empty string or array"))),
        };
    };
    if items.is_empty() {
        return Err(bad(format!("`{field}` must be a non-empty string or array")));
    }
    let mut n = 0i64;
    for item in items {
        n = n.saturating_add(match item {
            Value::String(s) => count_input_text(model, s),
            Value::Number(_) => 1,
            Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_number) => {
                i64::try_from(ids.len()).unwrap_or(i64::MAX)
            }
            _ => return Err(bad(format!("`{field}` must be a string, an array of strings, or token arrays"))),
        });
    }
    Ok(n)
}

fn completions_shape(body: &Map<String, Value>, model: &str, max_choices: u32) -> Result<Shape, Error> {
    let prompt = body.get("prompt").ok_or_else(|| bad("`prompt` is required"))?;
    let text = count_inputs(model, prompt, "prompt")?;
    // `best_of` completions are generated (and billed) upstream, `n` of them returned.
    let n = count_field(body, "n", max_choices)?;
    let best_of = count_field(body, "best_of", max_choices)?;
    if best_of < n {
        return Err(bad("`best_of` must be greater than or equal to `n`"));
    }
    let prompts = match prompt {
        Value::Array(items) if items.iter().any(|i| !i.is_number()) => u32::try_from(items.len()).unwrap_or(u32::MAX),
        _ => 1,
    };
    let choices = best_of.saturating_mul(prompts);
    if choices > max_choices {
        return Err(bad(format!("a request may generate at most {max_choices} completions (prompts × best_of)")));
    }
    let (cap_fields, requested_cap) = output_caps(body, &["max_tokens"])?;
    let stream = stream_flag(body)?;
    let client_wants_usage = stream_usage_wanted(body, stream)?;
    let suffix = body.get("suffix").and_then(Value::as_str).map_or(0, |s| count_input_text(model, s));
    Ok(Shape {
        choices,
        cap_fields,
        requested_cap,
        // OpenAI's default for legacy completions.
        default_cap: Some(16),
        prompt: PromptCount {
            text: text.saturating_add(suffix).saturating_mul(i64::from(prompts.max(1))),
            ..PromptCount::default()
        },
        output: true,
        client_wants_usage,
        hidden_output: false,
        cache_writes: CacheWrites::None,
    })
}

/// The cache writes an Anthropic Messages request asks for: none without a `cache_control`,
/// 1-hour ones when some `cache_control` has `"ttl": "1h"`, else 5-minute ones. Breakpoints may
/// sit at the top level, on system blocks, on tools and on content blocks at any depth (tool
/// results hold blocks of their own), so the whole body is searched; a false match only
/// reserves more.
fn cache_writes(body: &Map<String, Value>) -> CacheWrites {
    fn in_map(map: &Map<String, Value>, found: &mut CacheWrites) {
        for (key, value) in map {
            match value {
                Value::Object(control) if key == "cache_control" => {
                    let ttl = control.get("ttl").and_then(Value::as_str);
                    *found =
                        (*found).max(if ttl == Some("1h") { CacheWrites::OneHour } else { CacheWrites::FiveMinutes });
                }
                other => in_value(other, found),
            }
        }
    }
    fn in_value(value: &Value, found: &mut CacheWrites) {
        match value {
            Value::Object(map) => in_map(map, found),
            Value::Array(items) => items.iter().for_each(|v| in_value(v, found)),
            _ => {}
        }
    }
    let mut found = CacheWrites::None;
    in_map(body, &mut found);
    found
}

/// Tokens of one input text, with the per-input framing.
fn count_input_text(model: &str, s: &str) -> i64 {
    tokens::count_text(model, s).saturating_add(1)
}

fn reasoning_hidden(body: &Map<String, Value>) -> bool {
    body.get("reasoning_effort").is_some_and(|v| !v.is_null() && v != "none")
}

fn stream_flag(body: &Map<String, Value>) -> Result<bool, Error> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad("`stream` must be a boolean")),
    }
}

fn stream_usage_wanted(body: &Map<String, Value>, stream: bool) -> Result<bool, Error> {
    match body.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(o)) => Ok(stream && o.get("include_usage").and_then(Value::as_bool).unwrap_or(false)),
        Some(_) => Err(bad("`stream_options` must be an object")),
    }
}

/// A count field (`n`, `best_of`): 1 when absent; 400 outside 1..=max.
fn count_field(wire: &Map<String, Value>, field: &str, max: u32) -> Result<u32, Error> {
    match wire.get(field) {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(bad(format!("`{field}` must be an integer between 1 and {max}"))),
        },
        Some(_) => Err(bad(format!("`{field}` must be an integer between 1 and {max}"))),
    }
}

/// Refuses what the upstream would bill outside the model's token prices — audio in or out,
/// web search calls, and service tiers that cost more — so nothing is served below its cost.
fn refuse_unpriced_chat(wire: &Map<String, Value>) -> Result<(), Error> {
    let audio_out = wire.get("audio").is_some_and(|v| !v.is_null())
        || wire.get("modalities").and_then(Value::as_array).is_some_and(|m| m.iter().any(|v| v == "audio"));
    if audio_out {
        return Err(bad("audio output is not offered on this service"));
    }
    let audio_in = wire.get("messages").and_then(Value::as_array).is_some_and(|messages| {
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .any(|piece| matches!(piece.get("type").and_then(Value::as_str), Some("input_audio" | "audio")))
    });
    if audio_in {
        return Err(bad("audio input is not offered on this service"));
    }
    if wire.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return Err(bad("web search is not offered on this service"));
    }
    match wire.get("service_tier") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(t)) if matches!(t.as_str(), "auto" | "default" | "flex") => Ok(()),
        Some(other) => Err(bad(format!("service_tier {other} is not offered; use auto, default or flex"))),
    }
}

/// The output-cap fields among `fields` the client sent, and the smallest cap among them
/// (`None` when it sent none).
fn output_caps(wire: &Map<String, Value>, fields: &[&'static str]) -> Result<(Vec<&'static str>, Option<i64>), Error> {
    let mut sent = Vec::new();
    let mut smallest: Option<i64> = None;
    for &field in fields {
        match wire.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => {
                let value = if let Some(v) = n.as_i64() {
                    v
                } else if n.as_u64().is_some() {
                    i64::MAX
                } else {
                    match n.as_f64() {
                        // An integral float is its value (saturating at i64::MAX).
                        Some(f) if f.fract() == 0.0 && f > 0.0 => f as i64,
                        _ => return Err(bad(format!("`{field}` must be a positive integer"))),
                    }
                };
                if value < 1 {
                    return Err(bad(format!("`{field}` must be a positive integer")));
                }
                sent.push(field);
                smallest = Some(smallest.map_or(value, |s| s.min(value)));
            }
            Some(_) => return Err(bad(format!("`{field}` must be a positive integer"))),
        }
    }
    Ok((sent, smallest))
}

/// What the upstream body is built from.
pub struct Outbound {
    pub protocol: Protocol,
    /// The client's body as it came.
    pub raw: Bytes,
    /// The same body as fields (for chat: with the stream's usage option already asked for).
    pub wire: Map<String, Value>,
    pub cap_fields: Vec<&'static str>,
    /// The reserved output cap per choice (0 for embeddings).
    pub cap: i64,
    pub stream: bool,
    /// The catalogue model's cap field for OpenAI chat upstreams.
    pub chat_cap_field: String,
}

impl Outbound {
    /// The body for a channel reached by `wire`, naming the model `upstream_name`.
    pub fn body(&self, wire: Wire, upstream_name: &str) -> Result<Bytes, Error> {
        let model = Value::String(upstream_name.to_owned());
        let cap = Value::from(self.cap);
        match (wire, self.protocol) {
            (Wire::Native, Protocol::Chat | Protocol::Completions) => {
                let mut map = self.wire.clone();
                map.insert("model".into(), model);
                for field in &self.cap_fields {
                    map.remove(*field);
                }
                let field = if self.protocol == Protocol::Chat { self.chat_cap_field.as_str() } else { "max_tokens" };
                map.insert(field.to_owned(), cap);
                serialise(&map)
            }
            (Wire::Native, protocol) => {
                let mut set = vec![("model", model.to_string())];
                match protocol {
                    Protocol::Messages => set.push(("max_tokens", cap.to_string())),
                    Protocol::Responses => {
                        set.push(("max_output_tokens", cap.to_string()));
                        if let Some(kept) = responses_tools(&self.wire)? {
                            set.push(("tools", Value::Array(kept).to_string()));
                        }
                    }
                    _ => {}
                }
                match json_edit::set_members(&self.raw, &set) {
                    Some(b) => Ok(Bytes::from(b)),
                    None => {
                        let mut map = self.wire.clone();
                        for (k, v) in set {
                            map.insert(k.to_owned(), serde_json::from_str(&v).map_err(|e| Error::Internal(e.into()))?);
                        }
                        serialise(&map)
                    }
                }
            }
            (Wire::MessagesViaChat, _) => {
                let mut map = crate::translate::messages_to_chat::request(&self.wire).map_err(untranslatable)?;
                map.insert("model".into(), model);
                for field in crate::models::CAP_FIELDS {
                    map.remove(field);
                }
                map.insert(self.chat_cap_field.clone(), cap);
                if self.stream {
                    map.insert("stream".into(), Value::Bool(true));
                    map.insert("stream_options".into(), serde_json::json!({ "include_usage": true }));
                }
                serialise(&map)
            }
            (Wire::ChatViaMessages, _) => {
                let mut map = crate::translate::chat_to_messages::request(&self.wire).map_err(untranslatable)?;
                map.insert("model".into(), model);
                map.insert("max_tokens".into(), cap);
                if self.stream {
                    map.insert("stream".into(), Value::Bool(true));
                }
                serialise(&map)
            }
        }
    }
}

fn untranslatable(e: crate::translate::Untranslatable) -> Error {
    bad(e.0)
}

fn serialise(map: &Map<String, Value>) -> Result<Bytes, Error> {
    serde_json::to_vec(map).map(Bytes::from).map_err(|e| Error::Internal(e.into()))
}
