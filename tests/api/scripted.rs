//! A scripted upstream for the protocol tests: it answers Anthropic Messages, OpenAI Responses
//! and Chat Completions with whatever the test set — a stream of SSE steps (events, a pause
//! until the test releases it, an end without a final event) or a whole JSON answer — records
//! every request (path, headers, body) and counts the streams it sent to their end.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;

use crate::helpers::{Backend, TestApp, add_test_model, spawn_app_with};
use crate::protocols::{ANTHROPIC_KEY, OPENAI_KEY, add_channel};

/// One step of a scripted stream.
#[derive(Clone, Debug)]
pub enum Step {
    /// An SSE frame: `event: name` (when named) and `data:`.
    Frame { event: Option<String>, data: String },
    /// Waits until the test calls `release` (the frames before it are already sent).
    Hold,
}

/// A named SSE event whose data is `data`.
pub fn event(name: &str, data: Value) -> Step {
    Step::Frame { event: Some(name.to_owned()), data: data.to_string() }
}

impl Step {
    /// The bytes of this step on the wire (nothing for a pause).
    pub fn wire(&self) -> String {
        match self {
            Self::Frame { event: Some(name), data } => format!("event: {name}\ndata: {data}\n\n"),
            Self::Frame { event: None, data } => format!("data: {data}\n\n"),
            Self::Hold => String::new(),
        }
    }
}

/// The bytes of a whole script on the wire.
pub fn wire(steps: &[Step]) -> String {
    steps.iter().map(Step::wire).collect()
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Script {
    stream: Vec<Step>,
    json: Option<Value>,
    seen: Vec<Seen>,
    finished: usize,
}

/// The fake: its base address, what it answers, and what it saw.
#[derive(Clone)]
pub struct Scripted {
    pub base: String,
    state: Arc<Mutex<Script>>,
    release: Arc<Notify>,
}

impl Scripted {
    /// What the next streamed requests are answered with.
    pub fn stream(&self, steps: Vec<Step>) {
        self.state.lock().unwrap().stream = steps;
    }

    /// What the next non-streamed requests are answered with.
    pub fn json(&self, answer: Value) {
        self.state.lock().unwrap().json = Some(answer);
    }

    /// Lets a stream paused at `Step::Hold` go on.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// The requests received on `path`, oldest first.
    pub fn on(&self, path: &str) -> Vec<Seen> {
        self.state.lock().unwrap().seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Every request received.
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Streams sent to their last step (read by the gateway to their end).
    pub fn finished(&self) -> usize {
        self.state.lock().unwrap().finished
    }

    pub async fn start() -> Self {
        let fake = Self {
            base: String::new(),
            state: Arc::new(Mutex::new(Script::default())),
            release: Arc::new(Notify::new()),
        };
        let app = axum::Router::new()
            .route("/v1/messages", post(|s: State<Self>, h: HeaderMap, b: Bytes| answer(s, "/v1/messages", h, b)))
            .route("/v1/responses", post(|s: State<Self>, h: HeaderMap, b: Bytes| answer(s, "/v1/responses", h, b)))
            .route(
                "/v1/chat/completions",
                post(|s: State<Self>, h: HeaderMap, b: Bytes| answer(s, "/v1/chat/completions", h, b)),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://{addr}"), ..fake }
    }
}

async fn answer(State(fake): State<Scripted>, path: &'static str, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = body["stream"] == true;
    let (steps, json) = {
        let mut state = fake.state.lock().unwrap();
        state.seen.push(Seen { path: path.to_owned(), headers, body });
        (state.stream.clone(), state.json.clone())
    };
    if !stream {
        return axum::Json(json.expect("the test set a JSON answer")).into_response();
    }
    let frames = futures::stream::unfold((steps.into_iter(), fake), |(mut steps, fake)| async move {
        loop {
            match steps.next() {
                None => {
                    fake.state.lock().unwrap().finished += 1;
                    return None;
                }
                Some(Step::Hold) => fake.release.notified().await,
                Some(step) => return Some((Ok::<_, Infallible>(Bytes::from(step.wire())), (steps, fake))),
            }
        }
    });
    ([("content-type", "text/event-stream")], axum::body::Body::from_stream(frames)).into_response()
}

/// An app with the test model and, as asked, an Anthropic channel and an OpenAI one (lower
/// priority) on a scripted fake: Messages and Responses clients each reach their own channel
/// natively; a Chat client reaches the Anthropic one when there is one.
pub async fn setup(backend: Backend, anthropic: bool, openai: bool) -> (TestApp, Scripted) {
    let app = spawn_app_with(backend, &[]).await;
    add_test_model(&app).await;
    let fake = Scripted::start().await;
    if anthropic {
        add_channel(&app, "claude", "anthropic", &fake.base, ANTHROPIC_KEY, 10).await;
    }
    if openai {
        add_channel(&app, "openai", "openai", &format!("{}/v1", fake.base), OPENAI_KEY, 0).await;
    }
    (app, fake)
}

/// Sends `body` to `path` with the customer's key as a Bearer token and `extra` headers.
pub async fn post_json(
    app: &TestApp,
    path: &str,
    key: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.post(format!("{}{path}", app.address)).bearer_auth(key).json(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The reservation rows of `user`, oldest first.
pub async fn reservations(app: &TestApp, user: i64) -> Vec<tollgate::db::entities::reservations::Model> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    use tollgate::db::entities::reservations;
    reservations::Entity::find()
        .filter(reservations::Column::UserId.eq(user))
        .order_by_asc(reservations::Column::Id)
        .all(&app.db.read)
        .await
        .unwrap()
}
