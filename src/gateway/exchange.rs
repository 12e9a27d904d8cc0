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
use super::upstream::{UpstreamFailure, error_message};
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
    pub body: Bytes,
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
        let Self { gateway, hard_stop, mut settler, body, stream, beta, client_wants_usage, deadline, slot } = self;
        let upstream = &gateway.upstream;
        settler.upstream_called = true;
        let sent = tokio::select! {
            r = upstream.send(body, stream, beta.as_ref(), deadline, &mut settler.attempts) => r,
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
        let response = match sent {
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
            let relay = Relay::new(
                response,
                settler,
                client_wants_usage,
                upstream.timeouts.idle,
                deadline,
                hard_stop.clone(),
                slot,
            );
            relay.run(tx).await;
            return;
        }

        let read = tokio::select! {
            r = read_body(response, upstream.timeouts.idle, deadline, &mut settler) => r,
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
                tracing::error!(upstream.status = status, "the upstream refused our credentials: check OPENAI_API_KEY");
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
