//! Subscriptions: consumed before the balance, earliest expiry first; expiry exactly once.

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tollgate::billing::{Charge, FinalState, Prices, ReserveRequest, Resolution, Resolved, UsageLog, reserve, resolve};
use tollgate::clock::now_ms;
use tollgate::db::Db;
use tollgate::db::entities::{credit_transactions, subscriptions as subs};
use tollgate::subscriptions::{expire_due, expire_one, find_due, grant, renew};

use crate::helpers::{Backend, assert_books_balance, fresh_db, user_with_balance};
use crate::on_all_backends;

const PRICES: Prices = Prices::flat(1_000_000, 1_000_000);

async fn set_expiry(db: &Db, id: i64, expires_at: i64) {
    subs::Entity::update_many()
        .col_expr(subs::Column::ExpiresAt, Expr::value(expires_at))
        .filter(subs::Column::Id.eq(id))
        .exec(&db.write)
        .await
        .unwrap();
}

async fn sub(db: &Db, id: i64) -> subs::Model {
    subs::Entity::find_by_id(id).one(&db.read).await.unwrap().unwrap()
}

async fn expire_entries(db: &Db, user: i64) -> Vec<i64> {
    credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .filter(credit_transactions::Column::Kind.eq("expire"))
        .all(&db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.tokens)
        .collect()
}

fn request(id: &str, user: i64, prompt: i64, max_out: i64) -> ReserveRequest<'_> {
    crate::helpers::reserve_request(id, user, prompt, max_out, PRICES)
}

fn settled(prompt: i64, completion: i64) -> Resolution {
    Resolution {
        state: FinalState::Settled {
            usage: tollgate::gateway::settle::Usage { input: prompt, output: completion, ..Default::default() },
            prices: PRICES,
        },
        log: UsageLog {
            model: "m".into(),
            status_code: 200,
            latency_ms: 1,
            ttfb_ms: None,
            stream: false,
            usage_source: "upstream",
        },
    }
}

async fn subscriptions_are_consumed_first_earliest_expiry_first(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "subs@example.com", 10_000).await;
    let late = grant(db, user, "late", 300, 30, None).await.unwrap();
    let early = grant(db, user, "early", 200, 5, None).await.unwrap();

    // Worst case 600 tokens: 200 from `early`, 300 from `late`, 100 paid from the balance.
    let r = reserve(db, &request("a", user, 100, 500)).await.unwrap();
    assert_eq!(r.sources, vec![(early.id, 200), (late.id, 300)]);
    assert_eq!((r.tokens, r.amount), (500, 100));
    assert_eq!(tollgate::billing::balance::amount(&db.read, user).await.unwrap(), 9_900);

    // Real usage 250 tokens: all from subscriptions (200 early + 50 late); the money and the
    // unused 250 tokens of `late` go back where they came from.
    let out = resolve(db, "a", &settled(100, 150)).await.unwrap();
    assert_eq!(out, Resolved::Charged(Charge { tokens: 250, amount: 0, ..Default::default() }));
    assert_eq!(sub(db, early.id).await.tokens_remaining, 0);
    assert_eq!(sub(db, late.id).await.tokens_remaining, 250);
    assert_eq!(tollgate::billing::balance::amount(&db.read, user).await.unwrap(), 10_000);
    assert_books_balance(db, user).await;

    // An exhausted subscription and an empty balance: 402, never a negative balance.
    let poor = user_with_balance(db, "poor@example.com", 0).await;
    let s = grant(db, poor, "tiny", 10, 5, None).await.unwrap();
    let err = reserve(db, &request("b", poor, 5, 100)).await.unwrap_err();
    assert!(matches!(err, tollgate::error::Error::InsufficientBalance { .. }), "{err:?}");
    assert_eq!(sub(db, s.id).await.tokens_remaining, 10, "a refused reservation changes nothing");
    assert_books_balance(db, poor).await;
}

async fn expiry_zeroes_each_expired_subscription_once(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "exp@example.com", 0).await;
    let mut expired = Vec::new();
    for i in 0..3 {
        let s = grant(db, user, &format!("old-{i}"), 100 + i, 1, None).await.unwrap();
        set_expiry(db, s.id, now_ms() - 10_000).await;
        expired.push(s.id);
    }
    let current = grant(db, user, "current", 50, 2, None).await.unwrap();
    let used_up = grant(db, user, "used-up", 1, 1, None).await.unwrap();
    reserve(db, &request("u", user, 1, 0)).await.unwrap();
    resolve(db, "u", &settled(1, 0)).await.unwrap();
    set_expiry(db, used_up.id, now_ms() - 10_000).await;

    assert_eq!(expire_due(db).await.unwrap(), 3, "three expired subscriptions still held tokens");
    for id in &expired {
        assert_eq!(sub(db, *id).await.tokens_remaining, 0);
    }
    assert_eq!(sub(db, current.id).await.tokens_remaining, 50, "a current subscription is untouched");
    let mut entries = expire_entries(db, user).await;
    entries.sort_unstable();
    assert_eq!(entries, vec![-102, -101, -100]);
    assert_eq!(expire_due(db).await.unwrap(), 0, "a second run changes nothing");
    assert_eq!(expire_entries(db, user).await.len(), 3);
    assert_books_balance(db, user).await;
}

async fn concurrent_expiry_runs_expire_each_subscription_once(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = Arc::new(t.db.clone());
    let user = user_with_balance(&db, "race@example.com", 0).await;
    for i in 0..20 {
        let s = grant(&db, user, &format!("s{i}"), 10, 1, None).await.unwrap();
        set_expiry(&db, s.id, now_ms() - 1).await;
    }
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { expire_due(&db).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for run in runs {
        total += run.await.unwrap();
    }
    assert_eq!(total, 20, "between them the runs expire each subscription exactly once");
    assert_eq!(expire_entries(&db, user).await.len(), 20);
    assert_books_balance(&db, user).await;
}

async fn a_renewal_during_the_run_is_not_expired(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "renew@example.com", 0).await;
    let s = grant(db, user, "monthly", 400, 1, None).await.unwrap();
    let old_end = now_ms() - 5;
    set_expiry(db, s.id, old_end).await;

    // The job has read the subscription as due ...
    let now = now_ms();
    let due = find_due(db, now, 0, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    // ... an operator renews it (an ended subscription renews from now; its stale tokens are
    // expired by the renewal itself, and the new tokens are added) ...
    let renewed = renew(db, s.id, 30, 1000, None).await.unwrap();
    assert_eq!(renewed.tokens_remaining, 1000);
    // ... and the job's compare-and-set misses: the renewed subscription is not zeroed.
    assert!(!expire_one(db, &due[0], now).await.unwrap());
    assert_eq!(sub(db, s.id).await.tokens_remaining, 1000);
    assert_eq!(expire_entries(db, user).await, vec![-400]);

    // Renewing a live subscription extends from its current end date.
    let live = grant(db, user, "live", 10, 10, None).await.unwrap();
    let extended = renew(db, live.id, 5, 0, None).await.unwrap();
    assert_eq!(extended.expires_at, live.expires_at + 5 * tollgate::clock::MS_PER_DAY);
    assert_eq!(extended.tokens_remaining, 10);
    assert_books_balance(db, user).await;

    // Bad input changes nothing.
    for (days, tokens) in [(0, 0), (-1, 0), (5, -3), (4000, 0)] {
        assert!(renew(db, live.id, days, tokens, None).await.is_err());
    }
    assert!(grant(db, user, "zero", 0, 5, None).await.is_err());
    assert!(grant(db, user, "neg-days", 5, -5, None).await.is_err());
    assert_eq!(sub(db, live.id).await, extended);
}

async fn a_reservation_against_an_expired_subscription_never_becomes_money(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "late@example.com", 5_000).await;
    let s = grant(db, user, "ending", 1000, 1, None).await.unwrap();

    // Worst case 1500 tokens: 1000 from the subscription, 500 (= 500 micro-units) from money.
    let r = reserve(db, &request("r", user, 200, 1300)).await.unwrap();
    assert_eq!((r.tokens, r.amount), (1000, 500));

    // The subscription expires while the request runs, and the daily job runs.
    set_expiry(db, s.id, now_ms() - 1).await;
    assert_eq!(expire_due(db).await.unwrap(), 0, "nothing left on it to zero: all reserved");

    // The request used 300 tokens: consumed from the reserved subscription tokens. The 700 unused
    // reserved tokens are not returned to the expired subscription and not turned into money;
    // the 500 reserved money comes back in full.
    let out = resolve(db, "r", &settled(200, 100)).await.unwrap();
    assert_eq!(out, Resolved::Charged(Charge { tokens: 300, amount: 0, ..Default::default() }));
    assert_eq!(sub(db, s.id).await.tokens_remaining, 0);
    assert_eq!(tollgate::billing::balance::amount(&db.read, user).await.unwrap(), 5_000);
    assert_eq!(expire_entries(db, user).await, vec![-700]);
    assert_books_balance(db, user).await;
}

on_all_backends!(
    subscriptions_are_consumed_first_earliest_expiry_first,
    expiry_zeroes_each_expired_subscription_once,
    concurrent_expiry_runs_expire_each_subscription_once,
    a_renewal_during_the_run_is_not_expired,
    a_reservation_against_an_expired_subscription_never_becomes_money,
);
