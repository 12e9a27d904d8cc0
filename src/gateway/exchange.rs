//! One upstream exchange and its settlement, in a tracked task of its own: it outlives a client
//! that leaves (the upstream is still read, so the request is billed what the upstream reports)
//! and ends, settled, when shutdown's grace period runs out.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::chunks::Chunk;
use super::limits::Slot;
use super::protocol::{Forward, Outbound, Protocol, Wire};
use super::relay::{Reader, Relay};
use super::settle::{Ending, Settler};
use super::upstream::{Candidate, Env, Sent, UpstreamFailure, error_message};
use super::usage_wire::{AnthropicEvent, EmbeddingsAnswer, ResponseObject};
use crate::channels::directory::{Rng, order};
use crate::channels::health::State;
use crate::error::Error;

/// The largest upstream body read for a non-streamed response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What the exchange tells the handler once the upstream has answered (or failed).
pub enum Head {
    /// Nothing was delivered; the reservation is already voided.
    Failed(Error),
    /// A whole non-streamed answer.
    Json(Bytes),
    /// SSE frames, as they come.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// One upstream call and its settlement, independent of the client's connection.
pub struct Exchange {
    pub gateway: Arc<Gateway>,
    /// Cancelled when shutdown's grace period has run out.
    pub hard_stop: CancellationToken,
    pub settler: Settler,
    /// What each channel's body is built from.
    pub outbound: Outbound,
    /// The catalogue model's upstream name.
    pub upstream_model: String,
    /// The client's headers passed upstream.
    pub forward: Forward,
    pub client_wants_usage: bool,
    /// Output the client never sees may be billed (see `Shape::hidden_output`).
    pub hidden_output: bool,
    /// The only channel that may serve (the one holding `previous_response_id`).
    pub pinned_channel: Option<i64>,
    pub deadline: Instant,
    pub slot: Slot,
}

/// Frames buffered between the upstream and a slow client: beyond this the relay waits for
/// the client (and the upstream's TCP window fills), so memory stays bounded.
const FRAME_BUFFER: usize = 32;

impl Exchange {
    pub async fn run(self, head: tokio::sync::oneshot::Sender<Head>) {
        let Self {
            gateway,
            hard_stop,
            mut settler,
            outbound,
            upstream_model,
            forward,
            client_wants_usage,
            hidden_output,
            pinned_channel,
            deadline,
            slot,
        } = self;
        let (stream, protocol) = (outbound.stream, outbound.protocol);
        let upstream = &gateway.upstream;
        let (db, cache) = (settler.db.clone(), settler.cache.clone());
        let wanted = Wanted { model: &settler.model, upstream_model: &upstream_model, pinned: pinned_channel };
        let candidates = match candidates(&gateway, &db, &cache, wanted, &outbound).await {
            Ok(c) => c,
            Err(error) => {
                // Nothing was sent: the reservation is voided.
                settler.error = Some(error.label());
                settler.finish(Ending::Nothing { status: i32::from(error.status()) });
                let _ = head.send(Head::Failed(error));
                return;
            }
        };
        settler.upstream_called = true;
        let env =
            Env { db: &db, cache: &cache, directory: &gateway.channels.directory, health: &gateway.channels.health };
        let mut last = None;
        let sent = tokio::select! {
            r = upstream.send(&env, &candidates, stream, &forward, deadline, &mut settler.attempts, &mut last) => r,
            () = hard_stop.cancelled() => {
                // Cut by shutdown while the upstream works: bill what was delivered (the prompt).
                settler.error = Some("server.shutdown");
                settler.finish(Ending::Delivered { status: 503 });
                let _ = head.send(Head::Failed(Error::Upstream {
                    status: 503,
                    message: "the server is shutting down".into(),
                    label: "server.shutdown",
                }));
                return;
            }
        };
        // The protocol the serving channel was spoken to in.
        let wire = last.as_ref().and_then(|r| Wire::between(protocol, &r.provider)).unwrap_or(Wire::Native);
        let upstream_protocol = wire.upstream(protocol);
        settler.channel = last.map(|r| (r.id, r.name.clone()));
        let Sent { response, idle, deadline } = match sent {
            Ok(r) => r,
            Err(UpstreamFailure::Unanswered) => {
                // The upstream may have generated and billed the answer: the truth cannot be
                // known, so the reservation is charged.
                let error = upstream_error(UpstreamFailure::Unanswered);
                settler.finish(Ending::Unknown { status: 504 });
                let _ = head.send(Head::Failed(error));
                return;
            }
            Err(failure) => {
                // Nothing was delivered: a full refund. The settlement writes the usage log.
                let error = upstream_error(failure);
                settler.error = Some(error.label());
                settler.finish(Ending::Nothing { status: i32::from(error.status()) });
                let _ = head.send(Head::Failed(error));
                return;
            }
        };

        if stream {
            let (tx, rx) = tokio::sync::mpsc::channel(FRAME_BUFFER);
            // A client already gone gets no frames; the upstream is still read to its end.
            let tx = head.send(Head::Stream(rx)).is_ok().then_some(tx);
            let id = settler.reservation.request_id.trim_start_matches("req_").to_owned();
            let reader = Reader::new(wire, upstream_protocol, client_wants_usage, &settler.model, &id);
            let hidden = hidden_output.then_some(outbound.cap);
            let relay = Relay::new(response, settler, reader, hidden, idle, deadline, hard_stop.clone(), slot);
            relay.run(tx).await;
            return;
        }

        let read = tokio::select! {
            r = read_body(response, idle, deadline, &mut settler) => r,
            () = hard_stop.cancelled() => Err(Error::Upstream {
                status: 503,
                message: "the server is shutting down".into(),
                label: "server.shutdown",
            }),
        };
        drop(slot);
        let outcome = match read {
            Ok(body) => match meter_answer(upstream_protocol, &body, &mut settler) {
                Ok(()) => {
                    if let Some(id) = settler.response_id() {
                        // Recorded before the client has the id, so it can continue at once.
                        if let Some((channel, _)) = settler.channel
                            && let Err(e) =
                                super::responses::remember(&db, &id, settler.reservation.user_id, channel).await
                        {
                            tracing::warn!(error = %e, "cannot record the channel of a response");
                        }
                    }
                    translate_answer(wire, body, &settler.model)
                }
                Err(()) => Err(Error::Upstream {
                    status: 502,
                    message: "the upstream sent an unreadable response".into(),
                    label: "upstream.bad_response",
                }),
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok(body) => {
                if head.send(Head::Json(body)).is_err() {
                    settler.client_gone = true;
                }
                settler.finish(Ending::Delivered { status: 200 });
            }
            Err(error) => {
                // Part of the answer may have been generated: bill the estimate (the prompt).
                settler.error = Some(error.label());
                settler.finish(Ending::Delivered { status: i32::from(error.status()) });
                let _ = head.send(Head::Failed(error));
            }
        }
    }
}

/// Maps an upstream failure before the first byte to what the client gets.
fn upstream_error(failure: UpstreamFailure) -> Error {
    match failure {
        UpstreamFailure::Timeout | UpstreamFailure::Unanswered => Error::Upstream {
            status: 504,
            message: "the upstream did not answer in time".into(),
            label: "upstream.timeout",
        },
        UpstreamFailure::NoChannel => no_channel(),
        UpstreamFailure::Connect(detail) => {
            tracing::warn!(error = %detail, "upstream unreachable");
            Error::Upstream {
                status: 502,
                message: "the upstream could not be reached".into(),
                label: "upstream.unreachable",
            }
        }
        UpstreamFailure::Status { status, retry_after, body } => match status {
            429 => Error::RateLimited {
                message: "the upstream is rate limiting; retry shortly".into(),
                retry_after_secs: retry_after.unwrap_or(1).clamp(1, 600),
            },
            401 | 403 => {
                tracing::error!(upstream.status = status, "the upstream refused the channel's credentials");
                Error::Upstream {
                    status: 502,
                    message: "the upstream refused the relay's credentials".into(),
                    label: "upstream.auth",
                }
            }
            400 | 413 | 422 => Error::Upstream {
                status: if status == 413 { 413 } else { 400 },
                message: error_message(&body),
                label: "upstream.rejected",
            },
            _ => {
                tracing::warn!(upstream.status = status, "upstream error");
                Error::Upstream {
                    status: 502,
                    message: "the upstream failed to answer".into(),
                    label: "upstream.error",
                }
            }
        },
    }
}

fn no_channel() -> Error {
    Error::Upstream {
        status: 503,
        message: "no upstream channel is available for this model; retry shortly".into(),
        label: "no_available_channel",
    }
}

/// What a request asks the directory for.
struct Wanted<'a> {
    /// The catalogue model.
    model: &'a str,
    /// The catalogue model's upstream name.
    upstream_model: &'a str,
    /// The only channel that may serve.
    pinned: Option<i64>,
}

/// The channels to try for the model, in order, each with its body: those whose provider can
/// serve the request's protocol (natively or translated), serving the model and not cooling
/// down (one whose cool-down is over only as the one probe) — or, when none of them is
/// healthy, all of them: a cool-down steers traffic to healthy channels; it never turns the
/// only upstream into an outage.
async fn candidates(
    gateway: &Gateway,
    db: &crate::db::Db,
    cache: &crate::cache::Cache,
    wanted: Wanted<'_>,
    outbound: &Outbound,
) -> Result<Vec<Candidate>, Error> {
    let protocol = outbound.protocol;
    let routes = gateway.channels.directory.routes(db, cache).await?;
    let serving: Vec<_> = routes
        .into_iter()
        .filter(|r| wanted.pinned.is_none_or(|id| r.id == id))
        .filter_map(|r| {
            let wire = Wire::between(protocol, &r.provider)?;
            let name = r.upstream_name(wanted.model, wanted.upstream_model)?;
            Some((r, (name, wire)))
        })
        .collect();
    if serving.is_empty() {
        return Err(no_channel());
    }
    let ids: Vec<i64> = serving.iter().map(|(r, _)| r.id).collect();
    let states = gateway.channels.health.states(&ids).await;
    // With no healthy channel left, every one is tried (no probe needed).
    let none_healthy = states.iter().all(|s| *s != State::Closed);
    let usable: Vec<_> = serving
        .into_iter()
        .zip(states)
        .filter(|(_, state)| none_healthy || *state != State::Open)
        .map(|((route, target), state)| (route, (target, state == State::HalfOpen && !none_healthy)))
        .collect();
    let mut rng = Rng::seeded();
    let mut bodies: Vec<((String, Wire), Bytes)> = Vec::new();
    let mut out = Vec::new();
    for (route, ((name, wire), probe)) in order(usable, &mut rng) {
        let body = match bodies.iter().find(|(k, _)| k.0 == name && k.1 == wire) {
            Some((_, b)) => b.clone(),
            None => {
                let b = outbound.body(wire, &name)?;
                bodies.push(((name, wire), b.clone()));
                b
            }
        };
        out.push(Candidate { route, body, path: wire.upstream(protocol).path(), probe });
    }
    Ok(out)
}

/// A whole answer in the client's protocol.
fn translate_answer(wire: Wire, body: Bytes, model: &str) -> Result<Bytes, Error> {
    let translate = match wire {
        Wire::Native => return Ok(body),
        Wire::MessagesViaChat => crate::translate::messages_to_chat::response,
        Wire::ChatViaMessages => crate::translate::chat_to_messages::response,
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Internal(e.into()))?;
    serde_json::to_vec(&translate(&value, model)).map(Bytes::from).map_err(|e| Error::Internal(e.into()))
}

/// Reads the usage (or, without one, the generated text) of a whole upstream answer of
/// `protocol`; `Err` when the answer cannot be read.
fn meter_answer(protocol: Protocol, body: &[u8], settler: &mut Settler) -> Result<(), ()> {
    match protocol {
        Protocol::Chat | Protocol::Completions => {
            let parsed: Chunk = serde_json::from_slice(body).map_err(drop)?;
            settler.usage = parsed.usage.and_then(|u| u.usage());
            if settler.usage.is_none() {
                parsed.collect_text(&mut settler.completion_text);
            }
        }
        Protocol::Messages => {
            let parsed: AnthropicEvent = serde_json::from_slice(body).map_err(drop)?;
            settler.usage = parsed.usage.and_then(|u| u.usage());
            if settler.usage.is_none() {
                parsed.collect_text(&mut settler.completion_text);
            }
        }
        Protocol::Responses => {
            let parsed: ResponseObject = serde_json::from_slice(body).map_err(drop)?;
            settler.usage = parsed.usage.and_then(|u| u.usage());
            if settler.usage.is_none() {
                parsed.collect_text(&mut settler.completion_text);
            }
            if let Some(id) = &parsed.id {
                settler.set_response_id(id);
            }
        }
        Protocol::Embeddings => {
            let parsed: EmbeddingsAnswer = serde_json::from_slice(body).map_err(drop)?;
            settler.usage = parsed.usage.and_then(|u| u.usage());
        }
    }
    Ok(())
}

/// Reads a non-streamed upstream body within the timeouts and the size bound.
async fn read_body(
    mut response: reqwest::Response,
    idle: std::time::Duration,
    deadline: Instant,
    settler: &mut Settler,
) -> Result<Bytes, Error> {
    let mut buf = bytes::BytesMut::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, response.chunk()).await {
            Err(_) => return Err(upstream_error(UpstreamFailure::Timeout)),
            Ok(Err(_)) => {
                return Err(Error::Upstream {
                    status: 502,
                    message: "the upstream connection failed".into(),
                    label: "upstream.error",
                });
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                if settler.ttfb.is_none() {
                    settler.ttfb = Some(settler.started.elapsed());
                }
                if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Error::Upstream {
                        status: 502,
                        message: "the upstream response is too large".into(),
                        label: "upstream.too_large",
                    });
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}
