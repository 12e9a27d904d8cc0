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
use crate::error::Error;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

pub struct Relay {
    upstream: ByteStream,
    parser: Parser,
    out: VecDeque<Bytes>,
    settler: Settler,
    client_wants_usage: bool,
    idle: std::time::Duration,
    deadline: Instant,
    /// Cancelled when the shutdown grace period is over: the stream is cut where it is.
    hard_stop: CancellationToken,
    /// Set when the stream has ended; settled once its last frames are handed to the client.
    ending: Option<Ending>,
    _slot: Slot,
}

impl Relay {
    pub fn new(
        upstream: reqwest::Response,
        settler: Settler,
        client_wants_usage: bool,
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
            client_wants_usage,
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
                if let Ending::Delivered { status } = ending
                    && status != 200
                    && self.settler.client_gone
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
        if chunk.is_usage_only() && !self.client_wants_usage {
            return;
        }
        self.out.push_back(sse::frame(&event));
    }

    /// Ends the client's stream with an error event (not a clean end) and bills what was
    /// delivered.
    fn fail(&mut self, message: &str, code: &'static str, status: u16) {
        self.settler.error = Some(code);
        tracing::warn!(request.id = %self.settler.reservation.request_id, code, "stream ended by the upstream side");
        // The same body a failed request gets (every status here is a 5xx: `upstream_error`).
        let error = Error::Upstream { status, message: message.to_owned(), label: code };
        self.out.push_back(sse::frame(&Event { event: None, data: error.body().to_string() }));
        self.ending = Some(Ending::Delivered { status: i32::from(status) });
    }
}
