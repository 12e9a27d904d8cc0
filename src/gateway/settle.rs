//! The settlement guard of one request. Whatever happens after the reservation — a normal end,
//! an upstream failure, a client that disconnects, a panic — the reservation is resolved
//! exactly once, from a tracked task that outlives the request and is drained at shutdown.

use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use super::tokens::count_text;
use crate::billing::{
    FinalState, Prices, Reservation, Resolution, Resolved, Served, UsageLog, resolve_reservation_served,
};
use crate::cache::{self, Cache};
use crate::db::Db;
use crate::error::Error;
use crate::observability::{self, RequestRecord};

/// Usage as the upstream reported it, normalised across protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens billed at the input price: neither read from nor written to a prompt cache.
    pub input: i64,
    /// Input tokens read from the prompt cache (OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`).
    pub cache_read: i64,
    /// Input tokens written to the prompt cache for 5 minutes (Anthropic `cache_creation_input_tokens`,
    /// or `cache_creation.ephemeral_5m_input_tokens`).
    pub cache_write: i64,
    /// Input tokens written to the prompt cache for 1 hour (`cache_creation.ephemeral_1h_input_tokens`).
    pub cache_write_1h: i64,
    /// Output tokens, reasoning included (both OpenAI and Anthropic bill reasoning as output).
    pub output: i64,
    /// Of `output`, the reasoning tokens (shown separately, not billed twice).
    pub reasoning: i64,
}

impl Usage {
    /// All input tokens, whatever their class.
    pub fn prompt_total(&self) -> i64 {
        self.input.saturating_add(self.cache_read).saturating_add(self.cache_write).saturating_add(self.cache_write_1h)
    }
}

/// The end of a request, as far as billing is concerned.
#[derive(Clone, Copy, Debug)]
pub enum Ending {
    /// Something was (or may have been) generated: charge the usage, or the estimate.
    Delivered { status: i32 },
    /// Nothing was delivered (the upstream failed before its first byte): refund everything.
    Nothing { status: i32 },
    /// What the upstream did cannot be known (no answer to a request it may have served, or a
    /// stream that broke after its client left, before any usage): charge the reservation.
    Unknown { status: i32 },
}

pub struct Settler {
    pub db: Db,
    pub cache: Cache,
    pub tasks: TaskTracker,
    pub reservation: Reservation,
    pub model: String,
    pub prices: Prices,
    pub stream: bool,
    pub started: Instant,
    /// Our prompt estimate, used when the upstream reports no usage.
    pub prompt_estimate: i64,
    /// The last usage block the upstream sent.
    pub usage: Option<Usage>,
    /// Part of `usage` was counted here rather than reported (the output of a Messages stream
    /// that broke before its final usage): the usage row is flagged as estimated.
    pub usage_counted: bool,
    /// Text generated so far and not yet counted, for the estimate when no usage arrives.
    pub completion_text: String,
    /// Tokens of the text already counted (see `bound_text`).
    completion_counted: i64,
    pub ttfb: Option<Duration>,
    /// Set just before the request goes upstream: until then, nothing can have been generated.
    pub upstream_called: bool,
    /// The client went away before the answer was delivered (logged as status 499).
    pub client_gone: bool,
    /// The error label of a request that did not end well (none for a success).
    pub error: Option<&'static str>,
    /// Upstream attempts made, retries and failover included.
    pub attempts: u32,
    /// The request's count in the rate limits, corrected to the tokens charged at the end.
    pub rate: Option<(std::sync::Arc<super::rates::RateLimits>, super::rates::Admitted)>,
    /// The channel that served (or was tried last): id and name.
    pub channel: Option<(i64, String)>,
    /// The route's name in logs (the client's protocol).
    pub route: &'static str,
    /// Responses only: the id of the response the upstream created.
    response_id: Option<String>,
    done: bool,
}

impl Settler {
    #[expect(clippy::too_many_arguments, reason = "one constructor for one request's billing context")]
    pub fn new(
        db: Db,
        cache: Cache,
        tasks: TaskTracker,
        reservation: Reservation,
        model: String,
        prices: Prices,
        stream: bool,
        started: Instant,
        prompt_estimate: i64,
    ) -> Self {
        observability::reservation_opened();
        Self {
            db,
            cache,
            tasks,
            reservation,
            model,
            prices,
            stream,
            started,
            prompt_estimate,
            usage: None,
            usage_counted: false,
            completion_text: String::new(),
            completion_counted: 0,
            ttfb: None,
            upstream_called: false,
            client_gone: false,
            error: None,
            attempts: 0,
            rate: None,
            channel: None,
            route: "chat_completions",
            response_id: None,
            done: false,
        }
    }

    /// Counts the collected text once it grows past 256 KiB and lets it go, so a long stream
    /// (many choices, no usage yet) holds a bounded amount of text.
    pub fn bound_text(&mut self) {
        if self.completion_text.len() > 256 * 1024 {
            let n = count_text(&self.model, &self.completion_text);
            self.completion_counted = self.completion_counted.saturating_add(n);
            self.completion_text.clear();
        }
    }

    /// Tokens of the output delivered so far, as counted here.
    pub fn delivered_output(&self) -> i64 {
        self.completion_counted.saturating_add(count_text(&self.model, &self.completion_text))
    }

    /// Records which channel created the Responses object `id` and for whom, so that reading
    /// it and continuing from it (`previous_response_id`) reach that channel, for its owner only.
    /// Written at once from a tracked task: the client may continue as soon as it has the id.
    pub fn remember_response(&mut self, id: &str) {
        if self.response_id.as_deref() == Some(id) {
            return;
        }
        self.response_id = Some(id.to_owned());
        let Some((channel_id, _)) = self.channel else { return };
        let (db, id, user_id) = (self.db.clone(), id.to_owned(), self.reservation.user_id);
        self.tasks.spawn(async move {
            if let Err(e) = crate::gateway::responses::remember(&db, &id, user_id, channel_id).await {
                tracing::warn!(error = %e, "cannot record the channel of a response");
            }
        });
    }

    /// The id of the Responses object the upstream created, once known.
    pub fn response_id(&self) -> Option<String> {
        self.response_id.clone()
    }

    /// Notes the id of the Responses object of a whole answer (recorded by the caller).
    pub fn set_response_id(&mut self, id: &str) {
        self.response_id = Some(id.to_owned());
    }

    /// Resolves the reservation (once; later calls do nothing).
    pub fn finish(&mut self, ending: Ending) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        tracing::debug!(request.id = %self.reservation.request_id, ?ending, "settling");
        let ending = match ending {
            Ending::Delivered { status: 200 } if self.client_gone => Ending::Delivered { status: 499 },
            other => other,
        };
        let (state, status, source) = match ending {
            Ending::Nothing { status } => (FinalState::Voided, status, "upstream"),
            Ending::Unknown { status } if self.usage.is_none() => (FinalState::Swept, status, "reserved"),
            Ending::Delivered { status } | Ending::Unknown { status } => {
                let (usage, source) = match self.usage {
                    Some(u) => (u, if self.usage_counted { "estimated" } else { "upstream" }),
                    None => (
                        Usage {
                            input: self.prompt_estimate,
                            output: self
                                .completion_counted
                                .saturating_add(count_text(&self.model, &self.completion_text)),
                            ..Usage::default()
                        },
                        "estimated",
                    ),
                };
                let state = FinalState::Settled { usage, prices: self.prices };
                (state, status, source)
            }
        };
        let resolution = Resolution {
            state,
            log: UsageLog {
                model: self.model.clone(),
                status_code: status,
                latency_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
                ttfb_ms: self.ttfb.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                stream: self.stream,
                usage_source: source,
            },
        };
        let (prompt_tokens, completion_tokens) = match resolution.state {
            FinalState::Settled { usage, .. } => (Some(usage.prompt_total()), Some(usage.output)),
            _ => (None, None),
        };
        let error = match status {
            200 => None,
            499 => Some(self.error.unwrap_or("client.gone")),
            _ => Some(self.error.unwrap_or("upstream.error")),
        };
        let record = RequestRecord {
            request_id: self.reservation.request_id.clone(),
            route: self.route,
            model: self.model.clone(),
            key_id: self.reservation.key_id,
            user_id: Some(self.reservation.user_id),
            status: u16::try_from(status).unwrap_or(0),
            error,
            prompt_tokens,
            completion_tokens,
            cost: None,
            latency: self.started.elapsed(),
            ttfb: self.ttfb,
            channel: self.channel.as_ref().map(|(_, name)| name.clone()),
            attempts: self.attempts,
            stream: self.stream,
        };
        let (db, cache, reservation) = (self.db.clone(), self.cache.clone(), self.reservation.clone());
        // Tokens per minute count what was used: nothing for a void, the worst case for a sweep.
        let used = match resolution.state {
            FinalState::Settled { usage, .. } => Some(usage.prompt_total().saturating_add(usage.output)),
            FinalState::Voided => Some(0),
            FinalState::Swept => None,
        };
        let rate = self.rate.take();
        let served = Served {
            channel_id: self.channel.as_ref().map(|(id, _)| *id),
            attempts: i32::try_from(self.attempts).unwrap_or(i32::MAX),
        };
        self.tasks.spawn(async move {
            if let (Some((rates, mut admitted)), Some(used)) = (rate, used) {
                rates.settle(&mut admitted, used).await;
            }
            settle_with_retries(&db, &cache, &reservation, &resolution, served, record).await;
        });
    }
}

impl Drop for Settler {
    /// The request ended without saying how (client gone, panic, early return): bill what was
    /// generated so far — never the whole reservation; nothing at all when the upstream was
    /// never called.
    fn drop(&mut self) {
        if self.upstream_called {
            self.finish(Ending::Delivered { status: 499 });
        } else {
            self.finish(Ending::Nothing { status: 499 });
        }
    }
}

/// Resolves, retrying while the database is unreachable. If it stays unreachable, the
/// reservation stays pending and the sweeper charges it later.
/// The request's log line is written once the charge is known (or given up on).
async fn settle_with_retries(
    db: &Db,
    cache: &Cache,
    reservation: &Reservation,
    resolution: &Resolution,
    served: Served,
    mut record: RequestRecord,
) {
    let (request_id, user_id) = (reservation.request_id.as_str(), reservation.user_id);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
        match resolve_reservation_served(db, reservation, resolution, served).await {
            Ok(Resolved::Charged(charge)) => {
                tracing::debug!(request.id = request_id, cost = charge.amount, tokens = charge.tokens, "settled");
                if charge.excess > 0 {
                    metrics::counter!("tollgate_billing_excess_micros_total").increment(charge.excess.unsigned_abs());
                }
                if charge.shortfall > 0 {
                    metrics::counter!("tollgate_billing_shortfalls_total").increment(1);
                    metrics::counter!("tollgate_billing_shortfall_micros_total")
                        .increment(charge.shortfall.unsigned_abs());
                    tracing::warn!(
                        request.id = request_id,
                        user.id = user_id,
                        charged = charge.amount,
                        shortfall = charge.shortfall,
                        "usage cost more than was reserved and the balance could cover: recorded as a shortfall"
                    );
                }
                cache.delete(&cache::user_balance(user_id)).await;
                record.cost = Some(charge.amount);
                record.emit();
                let outcome = if matches!(resolution.state, FinalState::Voided) { "voided" } else { "settled" };
                observability::reservation_resolved(outcome);
                return;
            }
            Ok(Resolved::AlreadyResolved) => {
                record.emit();
                observability::reservation_resolved("already_resolved");
                return;
            }
            Err(Error::Database(err)) => {
                tracing::warn!(request.id = request_id, attempt, error = %err, "settlement failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(err) => {
                tracing::error!(request.id = request_id, error = %err, "settlement failed");
                record.emit();
                observability::reservation_resolved("left_to_sweeper");
                return;
            }
        }
    }
    tracing::error!(request.id = request_id, "settlement gave up; the sweeper will resolve the reservation");
    record.emit();
    observability::reservation_resolved("left_to_sweeper");
}
