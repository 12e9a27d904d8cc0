//! Reserve → resolve (settle or void) → sweep: the pre-charge of one request and its end.

use std::cmp::{max, min};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::key_spend::{self, KeyCap};
use super::ledger;
use super::pricing::{CacheWrites, Charge, Prices, charge_for, worst_case};
use super::store::{Close, Store};
use crate::clock::{day_of, now_ms};
use crate::db::Db;
use crate::db::entities::{models, reservations, usage_logs};
use crate::error::{Error, Result};
use crate::gateway::settle::Usage;
use crate::money::format_amount;

pub const PENDING: &str = "pending";
pub const SETTLED: &str = "settled";
pub const VOIDED: &str = "voided";

/// What a request may cost at most.
#[derive(Clone, Debug, Default)]
pub struct ReserveRequest<'a> {
    pub request_id: &'a str,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model_id: Option<i64>,
    /// Tokens of the prompt as counted before sending.
    pub prompt_tokens: i64,
    /// The output cap (clamped to the model's limit by the caller).
    pub max_completion_tokens: i64,
    pub prices: Prices,
    /// The prompt-cache writes the request may cause: whether its prompt is reserved at a
    /// cache-write price.
    pub cache_writes: CacheWrites,
    /// The key's spend cap, when it has one: enforced in the same transaction.
    pub key_cap: Option<KeyCap>,
    /// Set when the client named no output cap: a request that cannot afford
    /// `max_completion_tokens` is reserved with the largest cap its funds cover instead.
    pub affordable: Option<Affordable>,
}

/// How the output cap of a client that named none may be lowered to what its funds cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affordable {
    /// Choices (`n`): the output reserved is the per-choice cap times this.
    pub choices: i64,
    /// The smallest per-choice cap worth sending; below it the request is refused.
    pub min_per_choice: i64,
}

/// A pending pre-charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    /// Money taken from the balance.
    pub amount: i64,
    /// Subscription tokens taken, in total.
    pub tokens: i64,
    /// `(subscription id, tokens)` in the order they were taken.
    pub sources: Vec<(i64, i64)>,
    /// The key-spend period `amount` was also counted in (a key with a spend cap).
    pub key_period: Option<String>,
    /// The per-choice output cap, when the reservation lowered it to what the funds cover.
    pub lowered_cap: Option<i64>,
}

/// Runs `$job` — a future of a `&impl Store` named `$s` — in a write transaction: on SQLite on
/// the writer thread's own connection, elsewhere through sea-orm, in the writer lane of user
/// `$user` when one is named (run again on deadlocks and serialization failures). `$job` may
/// run more than once.
macro_rules! write_store {
    ($db:expr, $user:expr, |$s:ident| $job:expr) => {
        match $db.sqlite_writer() {
            Some(writer) => writer.submit_sql(move |$s| Box::pin($job)).await,
            None => match $user {
                Some(user_id) => $db.write_for(user_id, move |$s| Box::pin($job)).await,
                None => $db.write(move |$s| Box::pin($job)).await,
            },
        }
    };
}

/// Takes the worst case of a request from the user's subscriptions and balance, and records the
/// reservation, in one transaction. `InsufficientBalance` when it cannot be covered; then
/// nothing has changed.
///
/// Lock order, shared with `resolve`: subscriptions, then the balance, then the reservation
/// row — so concurrent reservations and settlements of one user queue instead of deadlocking.
pub async fn reserve(db: &Db, req: &ReserveRequest<'_>) -> Result<Reservation> {
    let owned = OwnedRequest {
        request_id: req.request_id.to_owned(),
        user_id: req.user_id,
        key_id: req.key_id,
        model_id: req.model_id,
        prompt_tokens: req.prompt_tokens,
        max_completion_tokens: req.max_completion_tokens,
        prices: req.prices,
        cache_writes: req.cache_writes,
        key_cap: req.key_cap,
        affordable: req.affordable,
    };
    let outcome = write_store!(db, Some(req.user_id), |s| reserve_in(s, owned.clone()))?;
    match outcome {
        Reserved::Taken(r) => Ok(r),
        Reserved::Refused(Refusal::Balance { needed, available }) => {
            Err(Error::InsufficientBalance { needed: format_amount(needed), available: format_amount(available) })
        }
        Reserved::Refused(Refusal::KeyCap { needed, limit, left, period }) => Err(Error::KeyBudgetExceeded {
            needed: format_amount(needed),
            limit: format_amount(limit),
            left: format_amount(left),
            period: period.as_str(),
        }),
    }
}

#[derive(Clone, Debug)]
struct OwnedRequest {
    request_id: String,
    user_id: i64,
    key_id: Option<i64>,
    model_id: Option<i64>,
    prompt_tokens: i64,
    max_completion_tokens: i64,
    prices: Prices,
    cache_writes: CacheWrites,
    key_cap: Option<KeyCap>,
    affordable: Option<Affordable>,
}

enum Reserved {
    Taken(Reservation),
    /// Not covered: everything taken was put back.
    Refused(Refusal),
}

#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// Not enough money.
    Balance { needed: i64, available: i64 },
    /// The key's spend cap would be passed.
    KeyCap { needed: i64, limit: i64, left: i64, period: key_spend::Period },
}

async fn reserve_in(txn: &impl Store, req: OwnedRequest) -> Result<Reserved> {
    let now = now_ms();
    let key_period = req.key_cap.map(|cap| cap.period.key(now));
    if let (Some(cap), Some(period)) = (&req.key_cap, &key_period) {
        txn.ensure_key_spend(cap, period, now).await?;
    }
    let refusal = match take(txn, &req, req.max_completion_tokens, key_period.as_deref(), now).await? {
        Reserved::Refused(refusal) => refusal,
        taken => return Ok(taken),
    };
    let Some(affordable) = req.affordable else { return Ok(Reserved::Refused(refusal)) };
    // The client named no cap: reserve the largest one the funds cover, as they stand in this
    // transaction. A concurrent reservation may take them between the reading and the taking;
    // then the request is refused as it would have been without lowering.
    let Some(per_choice) = affordable_cap(txn, &req, affordable, key_period.as_deref(), now).await? else {
        return Ok(Reserved::Refused(refusal));
    };
    match take(txn, &req, per_choice.saturating_mul(affordable.choices), key_period.as_deref(), now).await? {
        Reserved::Taken(r) => Ok(Reserved::Taken(Reservation { lowered_cap: Some(per_choice), ..r })),
        Reserved::Refused(_) => Ok(Reserved::Refused(refusal)),
    }
}

/// The largest per-choice output cap, at least `min_per_choice` and below the one asked for,
/// whose worst case the user's subscription tokens, balance and key cap cover now.
async fn affordable_cap(
    txn: &impl Store,
    req: &OwnedRequest,
    affordable: Affordable,
    key_period: Option<&str>,
    now: i64,
) -> Result<Option<i64>> {
    let choices = max(affordable.choices, 1);
    let full = req.max_completion_tokens / choices;
    let min_cap = max(affordable.min_per_choice, 1);
    if full <= min_cap {
        return Ok(None);
    }
    let tokens: i64 =
        txn.subscriptions(req.user_id, now).await?.iter().fold(0i64, |sum, (_, left)| sum.saturating_add(*left));
    let mut money = txn.balance(req.user_id).await?;
    if let (Some(cap), Some(period)) = (&req.key_cap, key_period) {
        let left = cap.limit.saturating_sub(txn.key_spent(cap.key_id, period).await?);
        money = min(money, left);
    }
    let covers = |per_choice: i64| {
        worst_case(tokens, req.prompt_tokens, per_choice.saturating_mul(choices), &req.prices, req.cache_writes).amount
            <= money
    };
    if !covers(min_cap) {
        return Ok(None);
    }
    // The cost grows with the cap: the largest covered cap in [min_cap, full) by bisection.
    let (mut lo, mut hi) = (min_cap, full - 1);
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if covers(mid) { lo = mid } else { hi = mid - 1 }
    }
    Ok(Some(lo))
}

/// Takes the worst case of `req` with `output` tokens reserved for the answer: subscription
/// tokens, then the balance, then the key's cap. Refused: everything taken is put back, so the
/// transaction stays whole for whoever commits it.
async fn take(
    txn: &impl Store,
    req: &OwnedRequest,
    output: i64,
    key_period: Option<&str>,
    now: i64,
) -> Result<Reserved> {
    let worst_tokens = max(req.prompt_tokens, 0).saturating_add(max(output, 0));
    let subs = txn.subscriptions(req.user_id, now).await?;
    let mut sources = Vec::new();
    let mut taken = 0i64;
    for (sub_id, tokens_remaining) in subs {
        let want = min(worst_tokens - taken, tokens_remaining);
        if want <= 0 {
            break;
        }
        // Conditional, like the balance: a concurrent reservation that got there first makes
        // this match nothing, and the rest is paid from the balance instead.
        if txn.take_tokens(sub_id, want, now).await? {
            sources.push((sub_id, want));
            taken += want;
        }
    }

    let amount = worst_case(taken, req.prompt_tokens, output, &req.prices, req.cache_writes).amount;
    if amount > 0 && !txn.debit_if_covered(req.user_id, amount).await? {
        put_back_tokens(txn, &sources, now).await?;
        let available = txn.balance(req.user_id).await?;
        return Ok(Reserved::Refused(Refusal::Balance { needed: amount, available }));
    }
    if let (Some(cap), Some(period)) = (&req.key_cap, key_period)
        && !txn.take_key_spend(cap, period, amount, now).await?
    {
        if amount > 0 {
            txn.credit(req.user_id, amount).await?;
        }
        put_back_tokens(txn, &sources, now).await?;
        let left = max(cap.limit.saturating_sub(txn.key_spent(cap.key_id, period).await?), 0);
        return Ok(Reserved::Refused(Refusal::KeyCap { needed: amount, limit: cap.limit, left, period: cap.period }));
    }

    let row = reservations::ActiveModel {
        request_id: Set(req.request_id.clone()),
        user_id: Set(req.user_id),
        key_id: Set(req.key_id),
        model_id: Set(req.model_id),
        state: Set(PENDING.into()),
        amount: Set(amount),
        tokens: Set(taken),
        token_sources: Set(serde_json::to_string(&sources).map_err(anyhow::Error::from)?),
        charged_amount: Set(0),
        charged_tokens: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        resolved_at: Set(None),
        key_period: Set(key_period.map(str::to_owned)),
        ..Default::default()
    };
    let id = txn.insert_reservation(row).await?;
    Ok(Reserved::Taken(Reservation {
        id,
        request_id: req.request_id.clone(),
        user_id: req.user_id,
        key_id: req.key_id,
        amount,
        tokens: taken,
        sources,
        key_period: key_period.map(str::to_owned),
        lowered_cap: None,
    }))
}

/// Returns subscription tokens a refused reservation took (at `now`, so none has expired since).
async fn put_back_tokens(txn: &impl Store, sources: &[(i64, i64)], now: i64) -> Result<()> {
    for &(sub_id, tokens) in sources {
        txn.return_tokens(sub_id, tokens, now).await?;
    }
    Ok(())
}

/// How a reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalState {
    /// Charge the usage given at these prices, return the rest of the reservation.
    Settled { usage: Usage, prices: Prices },
    /// Nothing was delivered: return everything.
    Voided,
    /// Left pending by a crashed process: charge everything that was reserved.
    Swept,
}

/// The usage-log fields only the caller knows; tokens and cost come from the resolution.
#[derive(Clone, Debug)]
pub struct UsageLog {
    pub model: String,
    pub status_code: i32,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub stream: bool,
    /// `upstream`, `estimated`, or `reserved` for a swept reservation.
    pub usage_source: &'static str,
}

/// Which channel served a call and how many upstream attempts it took, for its usage row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub channel_id: Option<i64>,
    pub attempts: i32,
}

/// One resolution: the end state and the usage row to write with it.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub state: FinalState,
    pub log: UsageLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// This call resolved it and charged this.
    Charged(Charge),
    /// It had already been resolved; nothing changed.
    AlreadyResolved,
}

/// Ends the reservation of `request_id` exactly once, with its refunds and usage log, in one
/// transaction. A second call is a no-op that returns `AlreadyResolved`.
pub async fn resolve(db: &Db, request_id: &str, resolution: &Resolution) -> Result<Resolved> {
    let (request_id, resolution) = (request_id.to_owned(), resolution.clone());
    let outcome = write_store!(db, None::<i64>, |s| resolve_stored(s, request_id.clone(), resolution.clone()));
    match outcome {
        // Another resolution won the guard between our read and our update (a concurrent
        // writer on MySQL/PostgreSQL): our transaction, refunds included, was rolled back.
        Err(Error::Conflict(_)) => Ok(Resolved::AlreadyResolved),
        other => other,
    }
}

/// As `resolve`, for the reservation this process made: no need to read it back; the guard on
/// its state still makes a second resolution a no-op.
pub async fn resolve_reservation(db: &Db, reservation: &Reservation, resolution: &Resolution) -> Result<Resolved> {
    resolve_reservation_served(db, reservation, resolution, Served::default()).await
}

/// As `resolve_reservation`, recording the channel that served and the attempts it took.
pub async fn resolve_reservation_served(
    db: &Db,
    reservation: &Reservation,
    resolution: &Resolution,
    served: Served,
) -> Result<Resolved> {
    let (known, resolution) = (reservation.clone(), resolution.clone());
    let outcome =
        write_store!(db, Some(reservation.user_id), |s| resolve_owned(s, known.clone(), resolution.clone(), served));
    match outcome {
        // Another resolution won the guard between our read and our update (a concurrent
        // writer on MySQL/PostgreSQL): our transaction, refunds included, was rolled back.
        Err(Error::Conflict(_)) => Ok(Resolved::AlreadyResolved),
        other => other,
    }
}

/// `resolve_in` for the reservation of `request_id`, read back first.
async fn resolve_stored(txn: &impl Store, request_id: String, resolution: Resolution) -> Result<Resolved> {
    let Some(res) = txn.find_reservation(&request_id).await? else {
        return Err(Error::NotFound(format!("no reservation for request {request_id}")));
    };
    if res.state != PENDING {
        return Ok(Resolved::AlreadyResolved);
    }
    let sources = serde_json::from_str(&res.token_sources).map_err(anyhow::Error::from)?;
    let known = Reservation {
        id: res.id,
        request_id: res.request_id,
        user_id: res.user_id,
        key_id: res.key_id,
        amount: res.amount,
        tokens: res.tokens,
        sources,
        key_period: res.key_period,
        lowered_cap: None,
    };
    resolve_in(txn, &known, &resolution, Served::default()).await
}

async fn resolve_owned(txn: &impl Store, res: Reservation, resolution: Resolution, served: Served) -> Result<Resolved> {
    resolve_in(txn, &res, &resolution, served).await
}

async fn resolve_in(txn: &impl Store, res: &Reservation, resolution: &Resolution, served: Served) -> Result<Resolved> {
    let now = now_ms();
    let (mut charge, state, usage) = match resolution.state {
        FinalState::Settled { usage, prices } => (charge_for(res.tokens, &usage, &prices), SETTLED, usage),
        FinalState::Voided => (Charge::default(), VOIDED, Usage::default()),
        FinalState::Swept => {
            (Charge { tokens: res.tokens, amount: res.amount, ..Charge::default() }, SETTLED, Usage::default())
        }
    };
    let (prompt, completion) = (max(usage.prompt_total(), 0), max(usage.output, 0));
    // The reservation is the worst case, so usage should fit in it. When it does not (an
    // upstream that bills more than it was asked to produce), the rest is taken from the
    // balance, and what the balance cannot cover is recorded as a shortfall — never dropped.
    let covered = min(charge.amount, res.amount);
    let beyond = charge.amount - covered;

    // Refunds first (subscriptions, then the balance: the lock order `reserve` uses), then the
    // guard: of two concurrent resolutions only one changes the reservation row, and the loser's
    // whole transaction, refunds included, is rolled back.
    refund_tokens(txn, res, charge.tokens, now).await?;
    let refund = res.amount - covered;
    if refund > 0 {
        txn.credit(res.user_id, refund).await?;
    }
    if beyond > 0 {
        charge.excess = txn.debit_up_to(res.user_id, beyond).await?;
        charge.shortfall = beyond - charge.excess;
        charge.amount = covered + charge.excess;
    }
    // The key's spending follows the charge: corrected down to it, or released on void.
    if let (Some(key_id), Some(period)) = (res.key_id, &res.key_period) {
        txn.adjust_key_spend(key_id, period, charge.amount - res.amount, now).await?;
    }
    let closed = txn
        .close_reservation(Close {
            id: res.id,
            state,
            charged_amount: charge.amount,
            charged_tokens: charge.tokens,
            excess: charge.excess,
            shortfall: charge.shortfall,
            now,
        })
        .await?;
    if !closed {
        // Returned as an error so that the refunds above are rolled back.
        return Err(Error::Conflict("the reservation was resolved concurrently".into()));
    }
    if charge.shortfall > 0 {
        txn.audit(crate::audit::Entry {
            actor_user_id: None,
            action: "billing.shortfall",
            target_type: "reservation",
            target_id: res.request_id.clone(),
            before: Some(serde_json::json!({ "reserved": res.amount, "reserved_tokens": res.tokens })),
            after: Some(serde_json::json!({
                "user_id": res.user_id,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "charged": charge.amount,
                "excess_collected": charge.excess,
                "shortfall": charge.shortfall,
            })),
        })
        .await?;
    }

    let mut row = usage_row(&res.request_id, res.user_id, res.key_id, &resolution.log, &usage, charge);
    row.channel_id = Set(served.channel_id);
    row.attempts = Set(served.attempts);
    txn.insert_usage(row).await?;
    Ok(Resolved::Charged(charge))
}

/// The usage-log row of one call: who, what was used and charged, and how it went.
pub fn usage_row(
    request_id: &str,
    user_id: i64,
    key_id: Option<i64>,
    log: &UsageLog,
    usage: &Usage,
    charge: Charge,
) -> usage_logs::ActiveModel {
    let now = now_ms();
    let (prompt, completion) = (max(usage.prompt_total(), 0), max(usage.output, 0));
    let cache_write = max(usage.cache_write, 0).saturating_add(max(usage.cache_write_1h, 0));
    usage_logs::ActiveModel {
        request_id: Set(request_id.to_owned()),
        user_id: Set(user_id),
        key_id: Set(key_id),
        model: Set(log.model.chars().take(128).collect()),
        prompt_tokens: Set(prompt),
        completion_tokens: Set(completion),
        total_tokens: Set(prompt.saturating_add(completion)),
        cost: Set(charge.amount),
        subscription_tokens: Set(charge.tokens),
        status_code: Set(log.status_code),
        latency_ms: Set(log.latency_ms),
        ttfb_ms: Set(log.ttfb_ms),
        stream: Set(log.stream),
        usage_source: Set(log.usage_source.to_owned()),
        created_at: Set(now),
        day: Set(day_of(now)),
        shortfall: Set(charge.shortfall),
        request_count: Set(1),
        cache_read_tokens: Set(max(usage.cache_read, 0)),
        cache_write_tokens: Set(cache_write),
        reasoning_tokens: Set(max(usage.reasoning, 0)),
        ..Default::default()
    }
}

/// Returns reserved-but-unused subscription tokens to the subscriptions they came from, in the
/// order they were taken. Tokens of a subscription that has expired meanwhile are not returned
/// (they would be expired tokens) and never become money: they are written off with a ledger
/// entry of kind `expire`.
async fn refund_tokens(txn: &impl Store, res: &Reservation, consumed: i64, now: i64) -> Result<()> {
    let mut to_consume = consumed;
    for &(sub_id, took) in &res.sources {
        let used = min(to_consume, took);
        to_consume -= used;
        let unused = took - used;
        if unused <= 0 {
            continue;
        }
        if !txn.return_tokens(sub_id, unused, now).await? {
            txn.ledger_entry(ledger::Entry {
                user_id: res.user_id,
                kind: "expire",
                amount: 0,
                tokens: -unused,
                subscription_id: Some(sub_id),
                reason: "reserved tokens of a subscription that expired during the request",
                actor_user_id: None,
            })
            .await?;
        }
    }
    Ok(())
}

/// `state = 'pending'` with the state as a literal, not a bound value: only then can SQLite and
/// PostgreSQL use the partial index of pending reservations (migration `m0013`).
fn pending_literal() -> sea_orm::sea_query::SimpleExpr {
    const _: () = assert!(matches!(PENDING.as_bytes(), b"pending"));
    sea_orm::sea_query::Expr::cust("state = 'pending'")
}

/// The sweeper's query: the oldest 200 reservations pending since before `cutoff` (unix ms).
pub fn stale_query(cutoff: i64) -> sea_orm::Select<reservations::Entity> {
    reservations::Entity::find()
        .filter(pending_literal())
        .filter(reservations::Column::CreatedAt.lt(cutoff))
        .order_by_asc(reservations::Column::CreatedAt)
        .limit(200)
}

/// Charges every reservation pending for longer than `max_age_ms` (its process died) for the
/// full amount reserved, once. Returns how many it resolved.
pub async fn sweep_stale(db: &Db, max_age_ms: i64) -> Result<usize> {
    let cutoff = now_ms() - max_age_ms;
    let mut swept = 0;
    loop {
        let stale = stale_query(cutoff).all(&db.read).await?;
        if stale.is_empty() {
            return Ok(swept);
        }
        let batch = stale.len();
        for res in stale {
            let model = match res.model_id {
                Some(id) => models::Entity::find_by_id(id).one(&db.read).await?.map(|m| m.name),
                None => None,
            };
            let resolution = Resolution {
                state: FinalState::Swept,
                log: UsageLog {
                    model: model.unwrap_or_else(|| "unknown".into()),
                    status_code: 0,
                    latency_ms: now_ms() - res.created_at,
                    ttfb_ms: None,
                    stream: false,
                    usage_source: "reserved",
                },
            };
            if let Resolved::Charged(charge) = resolve(db, &res.request_id, &resolution).await? {
                swept += 1;
                crate::observability::sweeper_charge();
                tracing::warn!(
                    reservation.id = res.id,
                    user.id = res.user_id,
                    charged = %format_amount(charge.amount),
                    tokens = charge.tokens,
                    "stale reservation charged in full by the sweeper"
                );
            }
        }
        if batch < 200 {
            return Ok(swept);
        }
    }
}
