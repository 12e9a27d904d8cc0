//! A scriptable OpenAI-compatible upstream. It counts its calls, records the raw headers and
//! bodies it received, and misbehaves on request: no usage, usage in every chunk, slow chunks,
//! stalls, mid-stream resets, error statuses, redirects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::{Value, json};

/// How the fake answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// As OpenAI does: JSON with usage, or a stream whose usage chunk comes only when asked.
    Normal,
    /// JSON without `usage`; streams never send usage.
    NoUsage,
    /// Streams repeat the running usage in every chunk.
    UsageEveryChunk,
    /// Streams pause this long before every chunk.
    SlowChunks(Duration),
    /// Streams send `after` chunks, then nothing, forever.
    Stall { after: usize },
    /// Streams send `after` chunks, then cut the connection.
    Reset { after: usize },
    /// Answer with this status and an OpenAI error body (naming an organisation).
    Status(u16),
    /// Fail with `status` for the first `times` calls, then answer normally.
    FailThenOk { status: u16, times: usize },
    /// Wait this long before the response head.
    DelayHead(Duration),
    /// Redirect to `location`.
    Redirect(String),
}

/// The content of the completion: `chunks` pieces of text.
pub const PROMPT_TOKENS: i64 = 17;

#[derive(Debug)]
pub struct Shared {
    pub mode: Mutex<Mode>,
    /// Completion chunks per answer (each counts one completion token).
    pub chunks: Mutex<usize>,
    pub calls: AtomicUsize,
    /// Streams whose reader went away before the end.
    pub cancelled: AtomicUsize,
    /// Streams currently being sent.
    pub open_streams: AtomicUsize,
    pub headers: Mutex<Vec<HeaderMap>>,
    pub bodies: Mutex<Vec<Value>>,
    /// When each call arrived.
    pub call_times: Mutex<Vec<Instant>>,
    /// Keep headers and bodies (off in the benchmark).
    pub record: bool,
    /// The output-cap fields the fake obeys (the smallest one sent wins), as a real upstream
    /// obeys the ones it knows; a field not listed is ignored.
    pub cap_fields: Mutex<Vec<String>>,
    /// Prompt tokens reported in usage.
    pub prompt_tokens: Mutex<i64>,
    /// Hidden reasoning tokens: billed in usage, never sent as text.
    pub reasoning_tokens: Mutex<i64>,
    /// Of the prompt tokens, those reported as read from the prompt cache.
    pub cached_tokens: Mutex<i64>,
    /// A pause before the usage chunk of a stream.
    pub usage_delay: Mutex<Duration>,
    /// Streams that were read to their end (usage chunk and `[DONE]` included).
    pub completed: AtomicUsize,
}

#[derive(Clone, Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

impl FakeUpstream {
    /// Starts the fake on 127.0.0.1, port 0.
    pub async fn start(mode: Mode) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?, mode, true).await
    }

    pub async fn bind(addr: SocketAddr, mode: Mode, record: bool) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            chunks: Mutex::new(5),
            calls: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            open_streams: AtomicUsize::new(0),
            headers: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            call_times: Mutex::new(Vec::new()),
            record,
            cap_fields: Mutex::new(vec!["max_completion_tokens".into(), "max_tokens".into()]),
            prompt_tokens: Mutex::new(PROMPT_TOKENS),
            reasoning_tokens: Mutex::new(0),
            cached_tokens: Mutex::new(0),
            usage_delay: Mutex::new(Duration::ZERO),
            completed: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/chat/completions", post(completions))
            .route("/elsewhere", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Without TCP_NODELAY, Nagle holds every SSE chunk after the first until the reader's
        // delayed ACK (~40 ms): streams would measure the kernel, not the relay.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The base URL to give Tollgate as `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        if let Ok(mut m) = self.shared.mode.lock() {
            *m = mode;
        }
    }

    pub fn set_chunks(&self, n: usize) {
        if let Ok(mut c) = self.shared.chunks.lock() {
            *c = n;
        }
    }

    /// Obey only these output-cap fields (none: generate `chunks` whatever the request says).
    pub fn obey_caps(&self, fields: &[&str]) {
        if let Ok(mut f) = self.shared.cap_fields.lock() {
            *f = fields.iter().map(|s| (*s).to_owned()).collect();
        }
    }

    pub fn set_prompt_tokens(&self, n: i64) {
        if let Ok(mut p) = self.shared.prompt_tokens.lock() {
            *p = n;
        }
    }

    pub fn set_reasoning_tokens(&self, n: i64) {
        if let Ok(mut r) = self.shared.reasoning_tokens.lock() {
            *r = n;
        }
    }

    pub fn set_cached_tokens(&self, n: i64) {
        if let Ok(mut c) = self.shared.cached_tokens.lock() {
            *c = n;
        }
    }

    pub fn set_usage_delay(&self, d: Duration) {
        if let Ok(mut u) = self.shared.usage_delay.lock() {
            *u = d;
        }
    }

    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    pub fn headers(&self) -> Vec<HeaderMap> {
        self.shared.headers.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.shared.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// When each call arrived, in order.
    pub fn call_times(&self) -> Vec<Instant> {
        self.shared.call_times.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn error_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": {
        "message": format!("fake upstream error {} for organization org-FAKE123 (key sk-fakefakefake1234)", status.as_u16()),
        "type": "server_error",
        "code": null,
    }});
    let mut res = (status, axum::Json(body)).into_response();
    res.headers_mut().insert("openai-organization", HeaderValue::from_static("org-FAKE123"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    res
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let call = shared.calls.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if shared.record {
        if let Ok(mut t) = shared.call_times.lock() {
            t.push(Instant::now());
        }
        if let Ok(mut h) = shared.headers.lock() {
            h.push(headers);
        }
        if let Ok(mut b) = shared.bodies.lock() {
            b.push(request.clone());
        }
    }
    let mode = shared.mode.lock().map(|m| m.clone()).unwrap_or(Mode::Normal);
    match &mode {
        Mode::Status(code) => return error_response(*code),
        Mode::FailThenOk { status, times } if call < *times => return error_response(*status),
        Mode::DelayHead(d) => tokio::time::sleep(*d).await,
        Mode::Redirect(location) => {
            let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            return res;
        }
        _ => {}
    }
    if let Some(name) = request.pointer("/tools/0/function/name").and_then(Value::as_str) {
        return tool_call_response(&request, name);
    }
    let answer = Answer::new(&shared, &request);
    if request.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let asked = request.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
        stream_response(shared, mode, answer, asked)
    } else {
        json_response(&mode, &answer)
    }
}

/// What one answer holds: `tokens` pieces of text per choice, `n` choices, and the usage the
/// fake bills for it.
#[derive(Clone, Debug)]
struct Answer {
    model: String,
    tokens: usize,
    n: usize,
    prompt: i64,
    reasoning: i64,
    cached: i64,
    usage_delay: Duration,
}

impl Answer {
    fn new(shared: &Shared, request: &Value) -> Self {
        let chunks = shared.chunks.lock().map(|c| *c).unwrap_or(5);
        let obeyed = shared.cap_fields.lock().map(|f| f.clone()).unwrap_or_default();
        let cap = obeyed
            .iter()
            .filter_map(|f| request.get(f.as_str()).and_then(Value::as_u64))
            .min()
            .and_then(|c| usize::try_from(c).ok());
        Self {
            model: request.get("model").and_then(Value::as_str).unwrap_or("fake").to_owned(),
            tokens: cap.map_or(chunks, |c| c.min(chunks)),
            n: request.get("n").and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok()).unwrap_or(1).max(1),
            prompt: shared.prompt_tokens.lock().map(|p| *p).unwrap_or(PROMPT_TOKENS),
            reasoning: shared.reasoning_tokens.lock().map(|r| *r).unwrap_or(0),
            cached: shared.cached_tokens.lock().map(|c| *c).unwrap_or(0),
            usage_delay: shared.usage_delay.lock().map(|d| *d).unwrap_or(Duration::ZERO),
        }
    }

    /// The usage block after `generated` pieces per choice.
    fn usage(&self, generated: usize) -> Value {
        let text = i64::try_from(generated.saturating_mul(self.n)).unwrap_or(i64::MAX);
        let completion = text + self.reasoning;
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": completion,
            "total_tokens": self.prompt + completion,
            "prompt_tokens_details": { "cached_tokens": self.cached },
            "completion_tokens_details": { "reasoning_tokens": self.reasoning },
        })
    }
}

/// Answers a request that offers tools by calling the first one, streamed or not.
fn tool_call_response(request: &Value, name: &str) -> Response {
    let call = json!({ "id": "call_fake", "type": "function", "function": { "name": name, "arguments": "{\"city\":\"Paris\"}" } });
    if request.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let delta = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "fake",
            "choices": [{ "index": 0, "delta": { "role": "assistant", "tool_calls": [{ "index": 0, "id": "call_fake", "type": "function", "function": { "name": name, "arguments": "{\"city\":\"Paris\"}" } }] }, "finish_reason": null }] });
        let done = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "fake",
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "tool_calls" }] });
        let usage_chunk = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "fake", "choices": [], "usage": usage(9) });
        let body = format!("data: {delta}\n\ndata: {done}\n\ndata: {usage_chunk}\n\ndata: [DONE]\n\n");
        let mut res = Response::new(Body::from(body));
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        return res;
    }
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": null, "tool_calls": [call] }, "finish_reason": "tool_calls" }],
        "usage": usage(9),
    }))
    .into_response()
}

fn usage(completion: usize) -> Value {
    let completion = i64::try_from(completion).unwrap_or(i64::MAX);
    json!({ "prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion })
}

/// The text of chunk `i`: one token each.
pub fn piece(i: usize) -> String {
    if i == 0 { "Hello".to_owned() } else { format!(" w{i}") }
}

fn json_response(mode: &Mode, answer: &Answer) -> Response {
    let text: String = (0..answer.tokens).map(piece).collect();
    let choices: Vec<Value> = (0..answer.n)
        .map(|i| json!({ "index": i, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }))
        .collect();
    let mut body = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": answer.model,
        "choices": choices,
        "usage": answer.usage(answer.tokens),
    });
    if *mode == Mode::NoUsage
        && let Some(o) = body.as_object_mut()
    {
        o.remove("usage");
    }
    let mut res = axum::Json(body).into_response();
    res.headers_mut().insert("openai-organization", HeaderValue::from_static("org-FAKE123"));
    res
}

fn chunk(answer: &Answer, i: usize, usage_value: Option<Value>) -> Bytes {
    let choices: Vec<Value> =
        (0..answer.n).map(|c| json!({ "index": c, "delta": { "content": piece(i) }, "finish_reason": null })).collect();
    let mut c = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": answer.model,
        "choices": choices,
    });
    if let (Some(u), Some(o)) = (usage_value, c.as_object_mut()) {
        o.insert("usage".into(), u);
    }
    Bytes::from(format!("data: {c}\n\n"))
}

/// Counts an open stream and, when dropped before `completed`, a cancelled one.
struct StreamGuard {
    shared: Arc<Shared>,
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.open_streams.fetch_sub(1, Ordering::SeqCst);
        if !self.completed {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn stream_response(shared: Arc<Shared>, mode: Mode, answer: Answer, asked: bool) -> Response {
    shared.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = StreamGuard { shared, completed: false };
    let chunks = answer.tokens;
    let stream = futures_util::stream::unfold((0usize, guard), move |(i, mut guard)| {
        let (mode, answer) = (mode.clone(), answer.clone());
        async move {
            match &mode {
                Mode::SlowChunks(d) => tokio::time::sleep(*d).await,
                Mode::Stall { after } if i == *after => {
                    std::future::pending::<()>().await;
                }
                Mode::Reset { after } if i == *after => {
                    // Let the chunks before flush, so the reset is really mid-stream.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    guard.completed = true;
                    return Some((Err(std::io::Error::other("connection reset")), (i + 1, guard)));
                }
                _ => {}
            }
            if i < chunks {
                let u = (mode == Mode::UsageEveryChunk).then(|| answer.usage(i + 1));
                return Some((Ok(chunk(&answer, i, u)), (i + 1, guard)));
            }
            if i == chunks {
                let final_usage = match mode {
                    Mode::NoUsage => None,
                    _ if asked => {
                        if !answer.usage_delay.is_zero() {
                            tokio::time::sleep(answer.usage_delay).await;
                        }
                        let c = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": answer.model, "choices": [], "usage": answer.usage(chunks) });
                        Some(Bytes::from(format!("data: {c}\n\n")))
                    }
                    _ => None,
                };
                if let Some(b) = final_usage {
                    return Some((Ok(b), (i + 1, guard)));
                }
            }
            if i <= chunks + 1 && !guard.completed {
                guard.completed = true;
                guard.shared.completed.fetch_add(1, Ordering::SeqCst);
                return Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (chunks + 2, guard)));
            }
            None
        }
    });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res
}
