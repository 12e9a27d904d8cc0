//! An OpenAI Chat Completions client on an Anthropic channel: the request becomes an Anthropic
//! Messages request, and the answer (whole or streamed) becomes a `chat.completion`.

use serde_json::{Map, Value, json};

use super::{Untranslatable, copy, type_name};

mod response;
mod stream;

pub use response::{response, response_at, usage};
pub use stream::Stream;

/// Chat Completions request → Anthropic request. `model` is kept as given; the output cap is
/// `max_completion_tokens` or `max_tokens` when the client named one (Anthropic requires it, and
/// the gateway always sets the reserved cap).
pub fn request(body: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    refuse_fields(body)?;
    let mut out = Map::new();
    copy(body, "model", &mut out, "model");

    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Untranslatable::new("messages: an array of messages is required"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in list.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(i, message.get("content"))?);
                continue;
            }
            "user" => ("user", user_blocks(i, message.get("content"))?),
            "assistant" => ("assistant", assistant_blocks(i, message)?),
            "tool" => ("user", vec![tool_result(i, message)?]),
            other => {
                return Err(Untranslatable::new(format!(
                    "messages[{i}].role: {other:?} cannot be translated (use system, developer, user, assistant or tool)"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic alternates roles: consecutive turns of one role (several tool results, or
        // tool results followed by the user's text) become one message, in order.
        match turns.last_mut() {
            Some((last, previous)) if *last == role => previous.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    match system.as_slice() {
        [] => {}
        [only] => {
            out.insert("system".into(), only["text"].clone());
        }
        _ => {
            out.insert("system".into(), Value::Array(system));
        }
    }
    let messages = turns.into_iter().map(|(role, blocks)| json!({"role": role, "content": collapse(blocks)})).collect();
    out.insert("messages".into(), Value::Array(messages));

    let cap = ["max_completion_tokens", "max_tokens"].iter().find_map(|k| body.get(*k).filter(|v| !v.is_null()));
    if let Some(cap) = cap {
        out.insert("max_tokens".into(), cap.clone());
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        // OpenAI accepts 0–2, Anthropic 0–1: the top of OpenAI's range is Anthropic's top.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    copy(body, "top_p", &mut out, "top_p");
    match body.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    copy(body, "stream", &mut out, "stream");
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    tools(body, &mut out)?;
    Ok(out)
}

/// Fields whose loss would change the answer and that Anthropic cannot express.
fn refuse_fields(body: &Map<String, Value>) -> Result<(), Untranslatable> {
    let refuse = |m: &str| Err(Untranslatable::new(m.to_owned()));
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return refuse("n: this model's channel returns one choice per request; send n = 1");
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true)
        || body.get("top_logprobs").is_some_and(|v| !v.is_null())
    {
        return refuse("logprobs: log probabilities are not available for this model");
    }
    let audio_out = body.get("modalities").and_then(Value::as_array).is_some_and(|m| m.iter().any(|x| x == "audio"));
    if audio_out || body.get("audio").is_some_and(|v| !v.is_null()) {
        return refuse("audio: audio output is not available for this model");
    }
    if body.get("functions").is_some_and(|v| !v.is_null()) || body.get("function_call").is_some_and(|v| !v.is_null()) {
        return refuse("functions: the legacy functions API cannot be translated; use tools");
    }
    match body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some(kind) => {
            return Err(Untranslatable::new(format!("response_format: {kind:?} cannot be translated for this model")));
        }
    }
    if body.get("logit_bias").and_then(Value::as_object).is_some_and(|b| !b.is_empty()) {
        return refuse("logit_bias: token biases are not available for this model");
    }
    if body.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return refuse("web_search_options: web search cannot be translated for this model");
    }
    Ok(())
}

/// A single text block is sent as a plain string, anything else as blocks.
fn collapse(mut blocks: Vec<Value>) -> Value {
    if blocks.len() == 1 && blocks[0]["type"] == "text" {
        return blocks.swap_remove(0)["text"].take();
    }
    Value::Array(blocks)
}

fn part_type(part: &Value) -> &str {
    part.get("type").and_then(Value::as_str).unwrap_or("")
}

/// System, developer and tool content: a string or text parts, as text blocks (empty ones
/// dropped, since Anthropic refuses empty text blocks).
fn text_blocks(i: usize, content: Option<&Value>) -> Result<Vec<Value>, Untranslatable> {
    let texts: Vec<&str> = match content {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match (part_type(part), part.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => texts.push(t),
                    (kind, _) => {
                        return Err(Untranslatable::new(format!(
                            "messages[{i}].content[{j}]: only text parts can be translated here, not {kind:?}"
                        )));
                    }
                }
            }
            texts
        }
        Some(other) => return Err(bad_content(i, other)),
    };
    Ok(texts.into_iter().filter(|t| !t.is_empty()).map(|t| json!({"type": "text", "text": t})).collect())
}

fn bad_content(i: usize, got: &Value) -> Untranslatable {
    Untranslatable::new(format!(
        "messages[{i}].content: expected a string or an array of content parts, got {}",
        type_name(got)
    ))
}

fn user_blocks(i: usize, content: Option<&Value>) -> Result<Vec<Value>, Untranslatable> {
    let Some(Value::Array(parts)) = content else {
        return text_blocks(i, content);
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part_type(part) {
            "text" => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
            }
            "image_url" => {
                let url = part
                    .pointer("/image_url/url")
                    .or_else(|| part.get("image_url"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                blocks.push(json!({"type": "image", "source": source(i, j, url, "image/")?}));
            }
            "file" => {
                let data = part.pointer("/file/file_data").and_then(Value::as_str);
                let Some(data) = data.filter(|d| d.starts_with("data:application/pdf;base64,")) else {
                    return Err(Untranslatable::new(format!(
                        "messages[{i}].content[{j}]: only PDF files sent inline as file_data can be translated"
                    )));
                };
                blocks.push(json!({"type": "document", "source": source(i, j, data, "application/pdf")?}));
            }
            kind => {
                return Err(Untranslatable::new(format!(
                    "messages[{i}].content[{j}]: {kind:?} parts cannot be sent to this model's channel"
                )));
            }
        }
    }
    Ok(blocks)
}

/// A Chat image or file URL as an Anthropic source: a base64 data URL → `base64`, an http(s)
/// URL → `url`.
fn source(i: usize, j: usize, url: &str, media_prefix: &str) -> Result<Value, Untranslatable> {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media, data)) = rest.split_once(";base64,")
            && media.starts_with(media_prefix)
        {
            return Ok(json!({"type": "base64", "media_type": media, "data": data}));
        }
        return Err(Untranslatable::new(format!(
            "messages[{i}].content[{j}]: a data URL must be base64 with a {media_prefix}… media type"
        )));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(Untranslatable::new(format!("messages[{i}].content[{j}]: expected an http(s) URL or a base64 data URL")))
}

fn assistant_blocks(i: usize, message: &Value) -> Result<Vec<Value>, Untranslatable> {
    if message.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(Untranslatable::new(format!(
            "messages[{i}].function_call: the legacy functions API cannot be translated; use tool_calls"
        )));
    }
    let mut blocks = match message.get("content") {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").or_else(|| p.get("refusal")))
            .filter_map(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(|t| json!({"type": "text", "text": t}))
            .collect(),
        other => text_blocks(i, other)?,
    };
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for (k, call) in calls.into_iter().flatten().enumerate() {
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("");
        let input = if arguments.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(arguments) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(Untranslatable::new(format!(
                        "messages[{i}].tool_calls[{k}].function.arguments: must be a JSON object"
                    )));
                }
            }
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    Ok(blocks)
}

fn tool_result(i: usize, message: &Value) -> Result<Value, Untranslatable> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Untranslatable::new(format!("messages[{i}].tool_call_id: field required")))?;
    let content = match message.get("content") {
        Some(Value::String(s)) => json!(s),
        other => Value::Array(text_blocks(i, other)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// Function tools → Anthropic tools; `tool_choice` and `parallel_tool_calls` → `tool_choice`.
fn tools(body: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), Untranslatable> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(Untranslatable::new(format!("tools: expected an array, got {}", type_name(other))));
        }
    };
    let mut tools = Vec::with_capacity(list.len());
    for (k, tool) in list.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        let function = tool.get("function").and_then(Value::as_object);
        let (Some(function), "function") = (function, kind) else {
            return Err(Untranslatable::new(format!(
                "tools[{k}]: only function tools can be translated, not {kind:?}"
            )));
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Untranslatable::new(format!("tools[{k}].function.name: field required")))?;
        let mut anthropic = Map::new();
        anthropic.insert("name".into(), json!(name));
        copy(function, "description", &mut anthropic, "description");
        let schema = function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        anthropic.insert("input_schema".into(), schema);
        copy(function, "strict", &mut anthropic, "strict");
        tools.push(Value::Object(anthropic));
    }
    if tools.is_empty() {
        return Ok(());
    }
    out.insert("tools".into(), Value::Array(tools));

    let mut choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => {
                return Err(Untranslatable::new(format!(
                    "tool_choice: expected auto, required, none or a function, got {other:?}"
                )));
            }
        }),
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                Some(json!({"type": "tool", "name": name}))
            }
            _ => {
                return Err(Untranslatable::new(
                    "tool_choice: only auto, required, none or {\"type\":\"function\",\"function\":{\"name\":…}} can be translated",
                ));
            }
        },
    };
    if body.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}
