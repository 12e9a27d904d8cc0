//! Property tests: pricing arithmetic, and the billing state machine against a reference model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tollgate::billing::{
    Charge, FinalState, Prices, Resolution, Resolved, UsageLog, charge_for, reserve, resolve, sweep_stale,
};
use tollgate::money::cost;

use crate::helpers::{Backend, assert_books_balance, fresh_db, user_with_balance};

/// The clamp the gateway applies: no request reserves more tokens than this.
const MAX_TOKENS: i64 = 100_000_000;
const MAX_PRICE: i64 = 1_000_000_000_000;

proptest! {
    #[test]
    fn cost_is_a_monotone_non_negative_integer(a in 0..MAX_TOKENS, b in 0..MAX_TOKENS, price in 0..MAX_PRICE) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(cost(lo, price) >= 0);
        prop_assert!(cost(lo, price) <= cost(hi, price));
        // ceil(t * p / 1M), exactly, in 128-bit arithmetic.
        let exact = (i128::from(hi) * i128::from(price) + 999_999) / 1_000_000;
        prop_assert_eq!(i128::from(cost(hi, price)), exact);
    }

    #[test]
    fn charges_never_exceed_the_cap_and_grow_with_usage(
        sub in 0..MAX_TOKENS, p in 0..MAX_TOKENS, c in 0..MAX_TOKENS, dp in 0..1000i64, dc in 0..1000i64,
        input in 0..MAX_PRICE, output in 0..MAX_PRICE,
    ) {
        let prices = Prices::flat(input, output);
        let used = |input, output| tollgate::gateway::settle::Usage { input, output, ..Default::default() };
        let small = charge_for(sub, &used(p, c), &prices);
        let large = charge_for(sub, &used(p + dp, c + dc), &prices);
        prop_assert!(small.amount >= 0 && small.tokens <= sub);
        prop_assert!(small.amount <= large.amount && small.tokens <= large.tokens);
        prop_assert!(small.tokens <= p + c);
    }
}

#[derive(Clone, Debug)]
enum Op {
    TopUp(i64),
    Grant(i64),
    Reserve { prompt: i64, max_out: i64 },
    Settle { pick: usize, prompt: i64, completion: i64 },
    Void { pick: usize },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..20_000i64).prop_map(Op::TopUp),
        (1..3_000i64).prop_map(Op::Grant),
        (0..2_000i64, 0..2_000i64).prop_map(|(prompt, max_out)| Op::Reserve { prompt, max_out }),
        (any::<usize>(), 0..3_000i64, 0..3_000i64).prop_map(|(pick, prompt, completion)| Op::Settle {
            pick,
            prompt,
            completion
        }),
        any::<usize>().prop_map(|pick| Op::Void { pick }),
        Just(Op::Sweep),
    ]
}

const PRICES: Prices = Prices::flat(3_000_000, 7_000_000);

/// (request id, still pending, money reserved, (subscription, tokens) taken)
type ModelReservation = (String, bool, i64, Vec<(i64, i64)>);

/// The reference: what the books must say, computed independently of the database.
#[derive(Default, Debug)]
struct Model {
    balance: i64,
    /// id → remaining tokens (all far from expiry), in consumption order.
    subs: BTreeMap<i64, i64>,
    reservations: Vec<ModelReservation>,
}

fn price(tokens: i64, per_million: i64) -> i64 {
    ((i128::from(tokens) * i128::from(per_million) + 999_999) / 1_000_000) as i64
}

/// Tokens covered by subscription tokens (prompt first), the rest priced.
fn money_for(sub_tokens: i64, prompt: i64, completion: i64) -> (i64, i64) {
    let used = sub_tokens.min(prompt + completion);
    let prompt_paid = prompt - used.min(prompt);
    let completion_paid = completion - (used - used.min(prompt));
    (used, price(prompt_paid, PRICES.input) + price(completion_paid, PRICES.output))
}

async fn run_ops(ops: Vec<Op>) {
    let t = fresh_db(Backend::Sqlite).await;
    let db = &t.db;
    let user = user_with_balance(db, "model@example.com", 0).await;
    let mut m = Model::default();
    let log = UsageLog {
        model: "m".into(),
        status_code: 200,
        latency_ms: 0,
        ttfb_ms: None,
        stream: false,
        usage_source: "upstream",
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::TopUp(amount) => {
                tollgate::billing::ledger::adjust(db, user, amount, "topup", "model", None).await.unwrap();
                m.balance += amount;
            }
            Op::Grant(tokens) => {
                let s = tollgate::subscriptions::grant(db, user, "s", tokens, 30, None).await.unwrap();
                m.subs.insert(s.id, tokens);
            }
            Op::Reserve { prompt, max_out } => {
                let id = format!("r{step}");
                // Expected: subscriptions by expiry (grant order here), then money.
                let mut need = prompt + max_out;
                let mut sources = Vec::new();
                for (sid, left) in &m.subs {
                    let take = need.min(*left);
                    if take > 0 {
                        sources.push((*sid, take));
                        need -= take;
                    }
                }
                let taken: i64 = sources.iter().map(|s| s.1).sum();
                let (_, amount) = money_for(taken, prompt, max_out);
                let req = crate::helpers::reserve_request(&id, user, prompt, max_out, PRICES);
                let got = reserve(db, &req).await;
                if amount > m.balance {
                    assert!(
                        matches!(got, Err(tollgate::error::Error::InsufficientBalance { .. })),
                        "step {step}: {got:?}"
                    );
                } else {
                    let r = got.unwrap();
                    assert_eq!((r.amount, r.tokens, &r.sources), (amount, taken, &sources), "step {step}");
                    m.balance -= amount;
                    for (sid, take) in &sources {
                        *m.subs.get_mut(sid).unwrap() -= take;
                    }
                    m.reservations.push((id, true, amount, sources));
                }
            }
            Op::Settle { .. } | Op::Void { .. } if m.reservations.is_empty() => {}
            Op::Settle { pick, prompt, completion } => {
                let idx = pick % m.reservations.len();
                let (id, pending, amount, sources) = m.reservations[idx].clone();
                let res = Resolution {
                    state: FinalState::Settled {
                        usage: tollgate::gateway::settle::Usage {
                            input: prompt,
                            output: completion,
                            ..Default::default()
                        },
                        prices: PRICES,
                    },
                    log: log.clone(),
                };
                let got = resolve(db, &id, &res).await.unwrap();
                if !pending {
                    assert_eq!(got, Resolved::AlreadyResolved, "step {step}: a second settlement changes nothing");
                    continue;
                }
                let taken: i64 = sources.iter().map(|s| s.1).sum();
                let (used, money) = money_for(taken, prompt, completion);
                // Usage beyond the reservation is taken from what the balance still holds
                // after the refund; the rest is a shortfall.
                let covered = money.min(amount);
                let available = m.balance + amount - covered;
                let excess = (money - covered).min(available);
                let charged =
                    Charge { tokens: used, amount: covered + excess, excess, shortfall: money - covered - excess };
                assert_eq!(got, Resolved::Charged(charged), "step {step}");
                m.balance += amount - charged.amount;
                let mut to_use = used;
                for (sid, took) in sources {
                    let u = to_use.min(took);
                    to_use -= u;
                    *m.subs.get_mut(&sid).unwrap() += took - u;
                }
                m.reservations[idx].1 = false;
            }
            Op::Void { pick } => {
                let idx = pick % m.reservations.len();
                let (id, pending, amount, sources) = m.reservations[idx].clone();
                let got = resolve(db, &id, &Resolution { state: FinalState::Voided, log: log.clone() }).await.unwrap();
                if !pending {
                    assert_eq!(got, Resolved::AlreadyResolved, "step {step}");
                    continue;
                }
                assert_eq!(got, Resolved::Charged(Charge::default()));
                m.balance += amount;
                for (sid, took) in sources {
                    *m.subs.get_mut(&sid).unwrap() += took;
                }
                m.reservations[idx].1 = false;
            }
            Op::Sweep => {
                let pending = m.reservations.iter().filter(|r| r.1).count();
                assert_eq!(sweep_stale(db, -10_000).await.unwrap(), pending, "step {step}");
                for r in &mut m.reservations {
                    r.1 = false;
                }
            }
        }
        // The database equals the model after every step.
        assert_eq!(
            tollgate::billing::balance::amount(&db.read, user).await.unwrap(),
            m.balance,
            "balance after step {step}"
        );
        for (sid, left) in &m.subs {
            let s =
                tollgate::db::entities::subscriptions::Entity::find_by_id(*sid).one(&db.read).await.unwrap().unwrap();
            assert_eq!(s.tokens_remaining, *left, "subscription {sid} after step {step}");
        }
        assert_books_balance(db, user).await;
    }
}

use sea_orm::EntityTrait;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn the_database_follows_the_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_ops(ops));
    }
}
