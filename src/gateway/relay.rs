//! The SSE relay: every upstream event is forwarded as soon as it is complete, usage is read on
//! the way, the usage chunk the client did not ask for is held back, and every way a stream can
//! end — [DONE], upstream failure, stall, client disconnect — settles the reservation once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;

use super::chunks::Chunk;
use super::limits::Slot;
use super::settle::{Ending, Settler};
use super::sse::{self, Event, Parser};
use super::upstream::redact;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub struct Relay {
    upstream: ByteStream,
    parser: Parser,
    out: VecDeque<Bytes>,
    settler: Settler,
    client_wants_usage: bool,
    idle: std::time::Duration,
    deadline: Instant,
    finished: bool,
    _slot: Slot,
}

impl Relay {
    pub fn new(
        upstream: reqwest::Response,
        settler: Settler,
        client_wants_usage: bool,
        idle: std::time::Duration,
        deadline: Instant,
        slot: Slot,
    ) -> Self {
        Self {
            upstream: Box::pin(upstream.bytes_stream()),
            parser: Parser::default(),
            out: VecDeque::new(),
            settler,
            client_wants_usage,
            idle,
            deadline,
            finished: false,
            _slot: slot,
        }
    }

    /// The client-facing body. Dropping it (the client went away) drops the upstream response,
    /// which cancels the upstream request, and the settler bills what was generated.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut relay| async move {
            let frame = relay.next_frame().await?;
            Some((Ok(frame), relay))
        })
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            let wait = self.idle.min(self.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.upstream.next()).await {
                Err(_) => self.fail("the upstream stopped sending; the stream timed out", "upstream.timeout", 504),
                Ok(None) => self.fail("the upstream ended the stream early", "upstream.incomplete", 502),
                Ok(Some(Err(_))) => self.fail("the upstream connection failed mid-stream", "upstream.error", 502),
                Ok(Some(Ok(bytes))) => {
                    if self.settler.ttfb.is_none() {
                        self.settler.ttfb = Some(self.settler.started.elapsed());
                    }
                    let mut events = Vec::new();
                    let parsed = self.parser.feed(&bytes, &mut events);
                    for event in events {
                        self.on_event(event);
                        if self.finished {
                            break;
                        }
                    }
                    if let Err(err) = parsed
                        && !self.finished
                    {
                        self.fail(&err.to_string(), "upstream.bad_stream", 502);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        if event.data == "[DONE]" {
            self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            self.finished = true;
            self.settler.finish(Ending::Delivered { status: 200 });
            return;
        }
        let chunk: Chunk = serde_json::from_str(&event.data).unwrap_or_default();
        if chunk.error.is_some() {
            let message = serde_json::from_str::<serde_json::Value>(&event.data)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(redact))
                .unwrap_or_else(|| "the upstream reported an error".into());
            self.fail(&message, "upstream.error", 502);
            return;
        }
        if let Some(usage) = chunk.usage.and_then(|u| u.usage()) {
            // Some upstreams repeat a running total in every chunk: keep the last, never sum.
            self.settler.usage = Some(usage);
        }
        chunk.collect_text(&mut self.settler.completion_text);
        if chunk.is_usage_only() && !self.client_wants_usage {
            return;
        }
        self.out.push_back(sse::frame(&event));
    }

    /// Ends the client's stream with an error event (not a clean end) and bills what was
    /// delivered.
    fn fail(&mut self, message: &str, code: &str, status: i32) {
        tracing::warn!(request.id = %self.settler.reservation.request_id, code, "stream ended by the upstream side");
        let body = json!({ "error": { "message": message, "type": "upstream_error", "code": code } });
        self.out.push_back(sse::frame(&Event { event: None, data: body.to_string() }));
        self.finished = true;
        self.settler.finish(Ending::Delivered { status });
    }
}
