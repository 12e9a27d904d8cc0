//! One upstream exchange and its settlement, in a tracked task of its own: it outlives a client
//! that leaves (the upstream is still read, so the request is billed what the upstream reports)
//! and ends, settled, when shutdown's grace period runs out.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::chunks::Chunk;
use super::limits::Slot;
use super::relay::Relay;
use super::settle::{Ending, Settler};
use super::upstream::{Candidate, Env, Sent, UpstreamFailure, error_message};
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
    /// The upstream body with the catalogue's upstream model name.
    pub body: Bytes,
    /// The same body as fields, for channels that map the model to another upstream name.
    pub wire: serde_json::Map<String, serde_json::Value>,
    /// The catalogue model's upstream name.
    pub upstream_model: String,
    pub stream: bool,
    pub beta: Option<HeaderValue>,
    pub client_wants_usage: bool,
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
            body,
            wire,
            upstream_model,
            stream,
            beta,
            client_wants_usage,
            deadline,
            slot,
        } = self;
        let upstream = &gateway.upstream;
        let (db, cache) = (settler.db.clone(), settler.cache.clone());
        let candidates = match candidates(&gateway, &db, &cache, &settler.model, &upstream_model, body, &wire).await {
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
            r = upstream.send(&env, &candidates, stream, beta.as_ref(), deadline, &mut settler.attempts, &mut last) => r,
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
            let relay = Relay::new(response, settler, client_wants_usage, idle, deadline, hard_stop.clone(), slot);
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
            Ok(body) => match serde_json::from_slice::<Chunk>(&body) {
                Ok(parsed) => {
                    settler.usage = parsed.usage.and_then(|u| u.usage());
                    if settler.usage.is_none() {
                        parsed.collect_text(&mut settler.completion_text);
                    }
                    Ok(body)
                }
                Err(_) => Err(Error::Upstream {
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

/// The channels to try for `model`, in order, each with its body: those of the OpenAI
/// provider serving the model and not cooling down (one whose cool-down is over only as the
/// one probe) — or, when none of them is healthy, all of them: a cool-down steers traffic to
/// healthy channels; it never turns the only upstream into an outage.
async fn candidates(
    gateway: &Gateway,
    db: &crate::db::Db,
    cache: &crate::cache::Cache,
    model: &str,
    upstream_model: &str,
    body: Bytes,
    wire: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Candidate>, Error> {
    let routes = gateway.channels.directory.routes(db, cache).await?;
    let serving: Vec<_> = routes
        .into_iter()
        .filter(|r| r.provider == crate::channels::OPENAI)
        .filter_map(|r| r.upstream_name(model, upstream_model).map(|name| (r, name)))
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
        .map(|((route, name), state)| (route, (name, state == State::HalfOpen && !none_healthy)))
        .collect();
    let mut rng = Rng::seeded();
    let mut bodies: std::collections::HashMap<String, Bytes> = std::collections::HashMap::new();
    bodies.insert(upstream_model.to_owned(), body);
    let mut out = Vec::new();
    for (route, (name, probe)) in order(usable, &mut rng) {
        let body = match bodies.get(&name) {
            Some(b) => b.clone(),
            None => {
                let mut mapped = wire.clone();
                mapped.insert("model".into(), serde_json::Value::String(name.clone()));
                let b = Bytes::from(serde_json::to_vec(&mapped).map_err(|e| Error::Internal(e.into()))?);
                bodies.insert(name, b.clone());
                b
            }
        };
        out.push(Candidate { route, body, probe });
    }
    Ok(out)
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
