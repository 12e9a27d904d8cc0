//! An Anthropic Messages client on an OpenAI-compatible channel: the request becomes a Chat
//! Completions request, and the answer (whole or streamed) becomes an Anthropic message.

use serde_json::{Map, Value, json};

use super::{Untranslatable, copy, type_name};

mod response;
mod stream;

pub use response::{response, usage};
pub use stream::Stream;

/// Anthropic request → Chat Completions request. `model` and `max_tokens` are kept as given
/// (the gateway rewrites both); a streamed request also asks for the usage chunk.
pub fn request(body: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    refuse_fields(body)?;
    let mut out = Map::new();
    copy(body, "model", &mut out, "model");

    let mut messages = Vec::new();
    if let Some(system) = body.get("system")
        && let Some(text) = system_text(system)?
    {
        messages.push(json!({"role": "system", "content": text}));
    }
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Untranslatable::new("messages: an array of messages is required"))?;
    for (i, message) in list.iter().enumerate() {
        push_message(i, message, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    copy(body, "max_tokens", &mut out, "max_tokens");
    copy(body, "temperature", &mut out, "temperature");
    copy(body, "top_p", &mut out, "top_p");
    if let Some(stops) = body.get("stop_sequences").and_then(Value::as_array)
        && !stops.is_empty()
    {
        out.insert("stop".into(), Value::Array(stops.clone()));
    }
    match body.get("stream").and_then(Value::as_bool) {
        Some(true) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(false) => {
            out.insert("stream".into(), Value::Bool(false));
        }
        None => {}
    }
    if let Some(user) = body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), Value::String(user.to_owned()));
    }
    tools(body, &mut out)?;
    Ok(out)
}

/// Fields with no Chat Completions equivalent whose loss would change the answer.
fn refuse_fields(body: &Map<String, Value>) -> Result<(), Untranslatable> {
    let non_empty = |key: &str| match body.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if non_empty("mcp_servers") {
        return Err(Untranslatable::new(
            "mcp_servers: remote MCP servers are run by Anthropic and cannot be used on this model's channel",
        ));
    }
    if non_empty("output_format") {
        return Err(Untranslatable::new(
            "output_format: structured outputs cannot be translated for this model's channel",
        ));
    }
    Ok(())
}

/// The system prompt as one string (text blocks joined by newlines; `cache_control` dropped).
fn system_text(system: &Value) -> Result<Option<String>, Untranslatable> {
    let text = match system {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                match (block_type(block), block.get("text").and_then(Value::as_str)) {
                    ("text", Some(text)) => texts.push(text),
                    (kind, _) => {
                        return Err(Untranslatable::new(format!(
                            "system[{j}]: only text blocks can be translated, not {kind:?}"
                        )));
                    }
                }
            }
            texts.join("\n")
        }
        other => {
            return Err(Untranslatable::new(format!(
                "system: expected a string or an array of text blocks, got {}",
                type_name(other)
            )));
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

fn block_type(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The content of a message as a list of blocks (a string is one text block).
fn blocks(i: usize, content: Option<&Value>) -> Result<Vec<Value>, Untranslatable> {
    match content {
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(other) => Err(Untranslatable::new(format!(
            "messages[{i}].content: expected a string or an array of content blocks, got {}",
            type_name(other)
        ))),
        None => Err(Untranslatable::new(format!("messages[{i}].content: field required"))),
    }
}

fn push_message(i: usize, message: &Value, out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let content = blocks(i, message.get("content"))?;
    match message.get("role").and_then(Value::as_str) {
        Some("user") => push_user(i, &content, out),
        Some("assistant") => push_assistant(i, &content, out),
        other => {
            Err(Untranslatable::new(format!("messages[{i}].role: expected \"user\" or \"assistant\", got {other:?}")))
        }
    }
}

/// A user turn: each `tool_result` becomes a `tool` message (they must follow the assistant's
/// tool calls directly), then the rest of the content as one user message.
fn push_user(i: usize, content: &[Value], out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let mut parts = Vec::new();
    for (j, block) in content.iter().enumerate() {
        match block_type(block) {
            "text" => parts.push(text_part(block)),
            "image" => parts.push(image_part(i, j, block)?),
            "tool_result" => {
                let (tool, images) = tool_message(i, j, block)?;
                out.push(tool);
                parts.extend(images);
            }
            // Thinking is the assistant's; it has no place in a user turn and carries nothing
            // the other model could use.
            "thinking" | "redacted_thinking" => {}
            kind => return Err(unsupported_block(i, j, kind)),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [only] if only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(parts),
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// An assistant turn: text blocks joined into `content`, `tool_use` blocks as `tool_calls`,
/// thinking blocks dropped (Chat Completions has no way to send them back).
fn push_assistant(i: usize, content: &[Value], out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in content.iter().enumerate() {
        match block_type(block) {
            "text" => {
                if let Some(t) = block.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    texts.push(t);
                }
            }
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": block.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": input.to_string(),
                    }
                }));
            }
            "thinking" | "redacted_thinking" => {}
            kind => return Err(unsupported_block(i, j, kind)),
        }
    }
    let text = texts.join("\n");
    if text.is_empty() && calls.is_empty() {
        // Nothing left to say (a turn of thinking only, or empty text): an empty assistant
        // message is refused by some OpenAI-compatible servers and tells the model nothing.
        return Ok(());
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message
        .insert("content".into(), if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) });
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(message));
    Ok(())
}

fn unsupported_block(i: usize, j: usize, kind: &str) -> Untranslatable {
    let what = match kind {
        "document" => "document blocks (PDF and other files)".to_owned(),
        "" => "content blocks without a type".to_owned(),
        other => format!("{other:?} blocks"),
    };
    Untranslatable::new(format!("messages[{i}].content[{j}]: {what} cannot be sent to this model's channel"))
}

fn text_part(block: &Value) -> Value {
    json!({"type": "text", "text": block.get("text").cloned().unwrap_or_else(|| json!(""))})
}

/// An Anthropic image block as a Chat `image_url` part: base64 data becomes a data URL.
fn image_part(i: usize, j: usize, block: &Value) -> Result<Value, Untranslatable> {
    let source = block.get("source");
    let field = |k: &str| source.and_then(|s| s.get(k)).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
            _ => {
                return Err(Untranslatable::new(format!(
                    "messages[{i}].content[{j}].source: a base64 image needs media_type and data"
                )));
            }
        },
        Some("url") => match field("url") {
            Some(url) => url.to_owned(),
            None => {
                return Err(Untranslatable::new(format!("messages[{i}].content[{j}].source.url: field required")));
            }
        },
        other => {
            return Err(Untranslatable::new(format!(
                "messages[{i}].content[{j}].source: image source {:?} cannot be sent to this model's channel",
                other.unwrap_or("")
            )));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` block as a `tool` message whose content is the result's text, plus the
/// result's images as user parts (a `tool` message can only carry text). An error result is
/// marked in the text, since Chat Completions has no flag for it.
fn tool_message(i: usize, j: usize, block: &Value) -> Result<(Value, Vec<Value>), Untranslatable> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Untranslatable::new(format!("messages[{i}].content[{j}].tool_use_id: field required")))?;
    let mut texts = Vec::new();
    let mut images = Vec::new();
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(inner)) => {
            for item in inner {
                match block_type(item) {
                    "text" => texts.push(item.get("text").and_then(Value::as_str).unwrap_or("").to_owned()),
                    "image" => images.push(image_part(i, j, item)?),
                    kind => return Err(unsupported_block(i, j, &format!("tool_result {kind}"))),
                }
            }
        }
        Some(other) => {
            return Err(Untranslatable::new(format!(
                "messages[{i}].content[{j}].content: expected a string or an array of blocks, got {}",
                type_name(other)
            )));
        }
    }
    let mut text = texts.join("\n");
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    Ok((json!({"role": "tool", "tool_call_id": id, "content": text}), images))
}

/// `tools` → function tools; `tool_choice` (with `disable_parallel_tool_use`) → `tool_choice`
/// and `parallel_tool_calls`. Anthropic's server tools (web search, code execution, …) run on
/// Anthropic's side and are refused.
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Untranslatable> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(Untranslatable::new(format!("tools: expected an array, got {}", type_name(other))));
        }
    };
    let mut functions = Vec::with_capacity(list.len());
    for (k, tool) in list.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("custom");
        if kind != "custom" {
            return Err(Untranslatable::new(format!(
                "tools[{k}]: the server tool {kind:?} runs only on Anthropic and cannot be used on this model's channel"
            )));
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Untranslatable::new(format!("tools[{k}].name: field required")))?;
        let mut function = Map::new();
        function.insert("name".into(), json!(name));
        if let Some(t) = tool.get("description") {
            function.insert("description".into(), t.clone());
        }
        function.insert(
            "parameters".into(),
            tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        );
        if let Some(strict) = tool.get("strict").and_then(Value::as_bool) {
            function.insert("strict".into(), json!(strict));
        }
        functions.push(json!({"type": "function", "function": function}));
    }
    if functions.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(functions));

    let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Untranslatable::new("tool_choice.name: field required for type \"tool\""))?;
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(Untranslatable::new(format!(
                "tool_choice.type: expected auto, any, tool or none, got {other:?}"
            )));
        }
    };
    out.insert("tool_choice".into(), mapped);
    if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}
