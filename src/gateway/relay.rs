//! The SSE relay: every upstream event is forwarded as soon as it is complete, usage is read on
//! the way, the usage chunk the client did not ask for is held back, and every way a stream can
//! end — [DONE], upstream failure, stall, client disconnect, shutdown — settles the reservation
//! once. It runs in a task of its own, so a client that leaves does not stop the reading.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::chunks::Chunk;
use super::limits::Slot;
use super::settle::{Ending, Settler};
use super::sse::{self, Event, Parser};
use super::upstream::redact;
use super::usage_wire::{AnthropicEvent, AnthropicUsage, ResponsesEvent};
use crate::error::Error;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub struct Relay {
    upstream: ByteStream,
    parser: Parser,
    out: VecDeque<Bytes>,
    settler: Settler,
    reader: Reader,
    /// Output the client never sees may have been billed (hidden reasoning), up to this cap
    /// per choice: a stream that breaks before its usage is charged the reservation (a
    /// Messages stream: the input it reported and the whole cap).
    hidden_output: Option<i64>,
    idle: std::time::Duration,
    deadline: Instant,
    /// Cancelled when the shutdown grace period is over: the stream is cut where it is.
    hard_stop: CancellationToken,
    /// Set when the stream has ended; settled once its last frames are handed to the client.
    ending: Option<Ending>,
    _slot: Slot,
}

impl Relay {
    #[expect(clippy::too_many_arguments, reason = "one stream's relay context")]
    pub fn new(
        upstream: reqwest::Response,
        settler: Settler,
        reader: Reader,
        hidden_output: Option<i64>,
        idle: std::time::Duration,
        deadline: Instant,
        hard_stop: CancellationToken,
        slot: Slot,
    ) -> Self {
        Self {
            upstream: Box::pin(upstream.bytes_stream()),
            parser: Parser::default(),
            out: VecDeque::new(),
            settler,
            reader,
            hidden_output,
            idle,
            deadline,
            hard_stop,
            ending: None,
            _slot: slot,
        }
    }

    /// Relays the upstream stream to `client` until it ends, and settles. When the client goes
    /// away (its receiver is dropped, or it reads too slowly to finish within the deadline),
    /// frames are no longer sent but the upstream is still read — bounded by the idle and total
    /// timeouts — so the request is billed what the upstream reports for it.
    pub async fn run(mut self, mut client: Option<mpsc::Sender<Bytes>>) {
        loop {
            while let Some(frame) = self.out.pop_front() {
                let Some(tx) = &client else { continue };
                // A client that reads nothing for the idle timeout is let go: the upstream is
                // still read (its usage is the bill), never held up by one slow reader.
                let sent = tokio::select! {
                    biased;
                    r = tx.send(frame) => r.is_ok(),
                    () = tokio::time::sleep(self.idle) => false,
                    () = tokio::time::sleep_until(self.deadline.into()) => false,
                    () = self.hard_stop.cancelled() => false,
                };
                if !sent {
                    client = None;
                    self.settler.client_gone = true;
                }
            }
            if let Some(mut ending) = self.ending {
                // A client whose body was dropped never read the frames still buffered.
                if client.as_ref().is_none_or(mpsc::Sender::is_closed) {
                    self.settler.client_gone = true;
                }
                // The stream broke after its client left and before any usage: what the
                // upstream did cannot be known, so the reservation is charged.
                // So did one whose hidden reasoning was billed and never shown.
                if let Ending::Delivered { status } = ending
                    && status != 200
                    && (self.settler.client_gone || self.hidden_output.is_some())
                    && self.settler.usage.is_none()
                    && !self.hard_stop.is_cancelled()
                {
                    ending = Ending::Unknown { status };
                }
                self.settler.finish(ending);
                return;
            }
            self.pull().await;
        }
    }

    /// Reads the next upstream chunk and queues the frames it completes.
    async fn pull(&mut self) {
        let wait = self.idle.min(self.deadline.saturating_duration_since(Instant::now()));
        let next = tokio::select! {
            biased;
            () = self.hard_stop.cancelled() => {
                self.fail("the server is shutting down; the stream was cut", "server.shutdown", 503);
                return;
            }
            next = tokio::time::timeout(wait, self.upstream.next()) => next,
        };
        match next {
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
                    if self.ending.is_some() {
                        break;
                    }
                }
                if let Err(err) = parsed
                    && self.ending.is_none()
                {
                    self.fail(&err.to_string(), "upstream.bad_stream", 502);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match &mut self.reader {
            Reader::Chunks { .. } => self.on_chunk(event),
            Reader::Messages { .. } => self.on_message_event(event),
            Reader::Responses => self.on_response_event(event),
            Reader::MessagesViaChat { .. } => self.on_chunk_translated(event),
            Reader::ChatViaMessages { .. } => self.on_message_event_translated(event),
        }
    }

    fn push_translated(&mut self, events: Vec<crate::translate::SseOut>) {
        for e in events {
            self.out.push_back(Bytes::from(e.to_sse()));
        }
    }

    /// Chat chunks from the upstream, Anthropic events for the client.
    fn on_chunk_translated(&mut self, event: Event) {
        let Reader::MessagesViaChat { stream } = &mut self.reader else { return };
        if event.data == "[DONE]" {
            let out = stream.on_done();
            self.push_translated(out);
            self.ending = Some(Ending::Delivered { status: 200 });
            return;
        }
        let value: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
        let chunk: Chunk = serde_json::from_value(value.clone()).unwrap_or_default();
        if chunk.error.is_some() {
            let message =
                value["error"]["message"].as_str().map_or_else(|| "the upstream reported an error".into(), redact);
            let out = stream.on_error("api_error", &message);
            self.push_translated(out);
            self.settler.error = Some("upstream.error");
            self.ending = Some(Ending::Delivered { status: 502 });
            return;
        }
        if let Some(usage) = chunk.usage.and_then(|u| u.usage()) {
            self.settler.usage = Some(usage);
        }
        let out = stream.on_chunk(&value);
        chunk.collect_text(&mut self.settler.completion_text);
        self.settler.bound_text();
        self.push_translated(out);
    }

    /// Anthropic events from the upstream, Chat chunks for the client.
    fn on_message_event_translated(&mut self, event: Event) {
        let value: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
        let parsed: AnthropicEvent = serde_json::from_value(value.clone()).unwrap_or_default();
        let Reader::ChatViaMessages { stream, usage } = &mut self.reader else { return };
        let kind = parsed.kind.clone().unwrap_or_default();
        match kind.as_str() {
            "message_start" => {
                if let Some(u) = parsed.message.as_ref().and_then(|m| m.usage) {
                    *usage = u;
                }
            }
            "message_delta" => {
                if let Some(u) = &parsed.usage {
                    usage.merge(u);
                    self.settler.usage = usage.usage();
                }
            }
            _ => {}
        }
        let name = event.event.clone().unwrap_or_else(|| kind.clone());
        let out = stream.on_event(&name, &value);
        let start = *usage;
        parsed.collect_text(&mut self.settler.completion_text);
        self.settler.bound_text();
        self.push_translated(out);
        match kind.as_str() {
            "message_stop" => self.ending = Some(Ending::Delivered { status: 200 }),
            "error" => self.ended_early(start, "upstream.error", 502),
            _ => {}
        }
    }

    /// OpenAI chat and completion chunks, ended by `[DONE]`.
    fn on_chunk(&mut self, event: Event) {
        if event.data == "[DONE]" {
            self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            self.ending = Some(Ending::Delivered { status: 200 });
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
        self.settler.bound_text();
        let Reader::Chunks { client_wants_usage } = &self.reader else { return };
        let client_wants_usage = *client_wants_usage;
        if chunk.is_usage_only() && !client_wants_usage {
            return;
        }
        self.out.push_back(sse::frame(&event));
    }

    /// Anthropic Messages events, passed through: the input is known at `message_start`, the
    /// output (cumulative) at each `message_delta`; `message_stop` ends the stream.
    fn on_message_event(&mut self, event: Event) {
        let parsed: AnthropicEvent = serde_json::from_str(&event.data).unwrap_or_default();
        let Reader::Messages { usage } = &mut self.reader else { return };
        match parsed.kind.as_deref() {
            Some("message_start") => {
                if let Some(u) = parsed.message.as_ref().and_then(|m| m.usage) {
                    *usage = u;
                }
            }
            Some("message_delta") => {
                if let Some(u) = &parsed.usage {
                    usage.merge(u);
                    self.settler.usage = usage.usage();
                }
            }
            Some("message_stop") => {
                self.out.push_back(sse::frame(&event));
                self.ending = Some(Ending::Delivered { status: 200 });
                return;
            }
            Some("error") => {
                // The upstream's own error event reaches the client as it is.
                let start = *usage;
                self.out.push_back(sse::frame(&event));
                self.ended_early(start, "upstream.error", 502);
                return;
            }
            _ => {}
        }
        parsed.collect_text(&mut self.settler.completion_text);
        self.settler.bound_text();
        self.out.push_back(sse::frame(&event));
    }

    /// OpenAI Responses events, passed through: `response.completed` and `response.incomplete`
    /// end the stream with usage, `response.failed` and `error` end it failed.
    fn on_response_event(&mut self, event: Event) {
        if event.data == "[DONE]" {
            self.out.push_back(sse::frame(&event));
            if self.ending.is_none() {
                self.ending = Some(Ending::Delivered { status: 200 });
            }
            return;
        }
        let parsed: ResponsesEvent = serde_json::from_str(&event.data).unwrap_or_default();
        let kind = parsed.kind.as_deref().unwrap_or_default();
        if let Some(response) = &parsed.response {
            if let Some(u) = response.usage.and_then(|u| u.usage()) {
                self.settler.usage = Some(u);
            }
            if kind == "response.created"
                && let Some(id) = &response.id
            {
                self.settler.remember_response(id);
            }
        }
        parsed.collect_text(&mut self.settler.completion_text);
        self.settler.bound_text();
        self.out.push_back(sse::frame(&event));
        match kind {
            "response.completed" | "response.incomplete" => self.ending = Some(Ending::Delivered { status: 200 }),
            "response.failed" | "error" => {
                self.settler.error = Some("upstream.error");
                self.ending = Some(Ending::Delivered { status: 502 });
            }
            _ => {}
        }
    }

    /// A Messages stream ended before its final usage: the input `message_start` reported and
    /// the output delivered so far (counted here, so the row is flagged as estimated) are billed.
    /// With thinking on, the delivered thinking may be a summary of what was generated and
    /// billed, so the output cannot be counted: the whole output cap is billed instead.
    fn ended_early(&mut self, start: AnthropicUsage, code: &'static str, status: u16) {
        self.settler.error = Some(code);
        if self.settler.usage.is_none()
            && start.input_tokens.is_some()
            && let Some(mut usage) = (AnthropicUsage { output_tokens: Some(0), ..start }).usage()
        {
            usage.output = usage.output.max(self.settler.delivered_output()).max(self.hidden_output.unwrap_or(0));
            self.settler.usage = Some(usage);
            self.settler.usage_counted = true;
        }
        self.ending = Some(Ending::Delivered { status: i32::from(status) });
    }

    /// Ends the client's stream with an error event (not a clean end) and bills what was
    /// delivered.
    fn fail(&mut self, message: &str, code: &'static str, status: u16) {
        self.settler.error = Some(code);
        tracing::warn!(request.id = %self.settler.reservation.request_id, code, "stream ended by the upstream side");
        // The same body a failed request gets (every status here is a 5xx: `upstream_error`),
        // in the stream's own shape.
        let error = Error::Upstream { status, message: message.to_owned(), label: code };
        let frame = match &mut self.reader {
            Reader::Chunks { .. } | Reader::ChatViaMessages { .. } => {
                Event { event: None, data: error.body().to_string() }
            }
            Reader::MessagesViaChat { stream } => {
                let out = stream.on_error(crate::error::anthropic_error_type(status), message);
                self.push_translated(out);
                self.ending = Some(Ending::Delivered { status: i32::from(status) });
                return;
            }
            Reader::Messages { .. } => Event { event: Some("error".into()), data: error.anthropic_body().to_string() },
            Reader::Responses => Event {
                event: Some("error".into()),
                data: serde_json::json!({ "type": "error", "code": code, "message": message, "param": null })
                    .to_string(),
            },
        };
        self.out.push_back(sse::frame(&frame));
        if let Reader::Messages { usage } | Reader::ChatViaMessages { usage, .. } = &self.reader {
            let usage = *usage;
            self.ended_early(usage, code, status);
            return;
        }
        self.ending = Some(Ending::Delivered { status: i32::from(status) });
    }
}

/// How the upstream's stream is read and relayed.
pub enum Reader {
    /// Chat chunks from an OpenAI-compatible channel, translated for an Anthropic Messages client.
    MessagesViaChat { stream: Box<crate::translate::messages_to_chat::Stream> },
    /// Anthropic events from an Anthropic channel, translated for an OpenAI Chat client.
    ChatViaMessages { stream: Box<crate::translate::chat_to_messages::Stream>, usage: AnthropicUsage },
    /// OpenAI-style chunks ended by `[DONE]` (chat, legacy completions); the usage-only chunk
    /// is passed on only when the client asked for it.
    Chunks { client_wants_usage: bool },
    /// Anthropic Messages events, with the usage gathered so far.
    Messages { usage: AnthropicUsage },
    /// OpenAI Responses events.
    Responses,
}

impl Reader {
    /// The reader of a stream of the upstream's `protocol`, for a client reached by `wire`;
    /// `model` and `id` name the translated answer.
    pub fn new(
        wire: super::protocol::Wire,
        protocol: super::protocol::Protocol,
        client_wants_usage: bool,
        model: &str,
        id: &str,
    ) -> Self {
        use super::protocol::Wire;
        match wire {
            Wire::MessagesViaChat => {
                return Self::MessagesViaChat {
                    stream: Box::new(crate::translate::messages_to_chat::Stream::new(model, &format!("msg_{id}"))),
                };
            }
            Wire::ChatViaMessages => {
                return Self::ChatViaMessages {
                    stream: Box::new(crate::translate::chat_to_messages::Stream::new(
                        model,
                        &format!("chatcmpl-{id}"),
                        client_wants_usage,
                    )),
                    usage: AnthropicUsage::default(),
                };
            }
            Wire::Native => {}
        }
        Self::for_protocol(protocol, client_wants_usage)
    }

    pub fn for_protocol(protocol: super::protocol::Protocol, client_wants_usage: bool) -> Self {
        use super::protocol::Protocol;
        match protocol {
            Protocol::Messages => Self::Messages { usage: AnthropicUsage::default() },
            Protocol::Responses => Self::Responses,
            Protocol::Chat | Protocol::Completions | Protocol::Embeddings => Self::Chunks { client_wants_usage },
        }
    }
}
