//! Reserve → resolve → sweep at the billing layer: once and only once, never negative.

use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tollgate::billing::{
    Charge, FinalState, Prices, ReserveRequest, Resolution, Resolved, UsageLog, balance, reserve, resolve, sweep_stale,
};
use tollgate::db::Db;
use tollgate::db::entities::{reservations, usage_logs};

use crate::helpers::{Backend, assert_books_balance, fresh_db, user_with_balance};
use crate::on_all_backends;

const PRICES: Prices = Prices::flat(2_000_000, 8_000_000);

fn request(id: &str, user: i64, prompt: i64, max_out: i64) -> ReserveRequest<'_> {
    crate::helpers::reserve_request(id, user, prompt, max_out, PRICES)
}

fn log() -> UsageLog {
    UsageLog {
        model: "gpt-test".into(),
        status_code: 200,
        latency_ms: 5,
        ttfb_ms: Some(1),
        stream: true,
        usage_source: "upstream",
    }
}

fn settled(prompt: i64, completion: i64) -> Resolution {
    Resolution {
        state: FinalState::Settled {
            usage: tollgate::gateway::settle::Usage { input: prompt, output: completion, ..Default::default() },
            prices: PRICES,
        },
        log: log(),
    }
}

async fn usage_rows(db: &Db, request_id: &str) -> u64 {
    usage_logs::Entity::find().filter(usage_logs::Column::RequestId.eq(request_id)).count(&db.read).await.unwrap()
}

async fn settlement_refunds_exactly_once(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "once@example.com", 1_000_000).await;
    // Worst case: 1000 * 2 + 4000 * 8 = 34_000 micro-units.
    let r = reserve(db, &request("once", user, 1000, 4000)).await.unwrap();
    assert_eq!(r.amount, 34_000);
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), 966_000);

    let first = resolve(db, "once", &settled(1000, 500)).await.unwrap();
    assert_eq!(first, Resolved::Charged(Charge { tokens: 0, amount: 6_000, ..Default::default() }));
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), 994_000);
    // A duplicate settle, a late void and a sweep all change nothing.
    assert_eq!(resolve(db, "once", &settled(0, 0)).await.unwrap(), Resolved::AlreadyResolved);
    assert_eq!(
        resolve(db, "once", &Resolution { state: FinalState::Voided, log: log() }).await.unwrap(),
        Resolved::AlreadyResolved
    );
    assert_eq!(sweep_stale(db, -1_000_000).await.unwrap(), 0);
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), 994_000);
    assert_eq!(usage_rows(db, "once").await, 1);
    assert_books_balance(db, user).await;
}

async fn concurrent_settlements_resolve_once(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = Arc::new(t.db.clone());
    let user = user_with_balance(&db, "dup@example.com", 1_000_000).await;
    reserve(&db, &request("dup", user, 100, 100)).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let resolution =
                    if i % 2 == 0 { settled(100, 50) } else { Resolution { state: FinalState::Voided, log: log() } };
                resolve(&db, "dup", &resolution).await.unwrap()
            })
        })
        .collect();
    let mut charged = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Resolved::Charged(_)) {
            charged += 1;
        }
    }
    assert_eq!(charged, 1, "exactly one resolution wins");
    assert_eq!(usage_rows(&db, "dup").await, 1);
    assert_books_balance(&db, user).await;
}

async fn usage_beyond_the_reservation_is_collected_or_recorded(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    // 10 + 10 tokens reserve 20 + 80 = 100 µ; the upstream then reports 100 + 100 tokens,
    // which cost 200 + 800 = 1,000 µ.
    let rich = user_with_balance(db, "rich@example.com", 100_000).await;
    let r = reserve(db, &request("rich", rich, 10, 10)).await.unwrap();
    assert_eq!(r.amount, 100);
    let out = resolve(db, "rich", &settled(100, 100)).await.unwrap();
    // The balance covers the excess: it is collected, nothing is lost.
    assert_eq!(out, Resolved::Charged(Charge { tokens: 0, amount: 1_000, excess: 900, shortfall: 0 }));
    assert_eq!(balance::amount(&db.read, rich).await.unwrap(), 100_000 - 1_000);
    assert_books_balance(db, rich).await;

    // A balance of 400 µ: 100 reserved, 300 left to take, 600 cannot be collected.
    let poor = user_with_balance(db, "poor@example.com", 400).await;
    reserve(db, &request("poor", poor, 10, 10)).await.unwrap();
    let out = resolve(db, "poor", &settled(100, 100)).await.unwrap();
    assert_eq!(out, Resolved::Charged(Charge { tokens: 0, amount: 400, excess: 300, shortfall: 600 }));
    assert_eq!(balance::amount(&db.read, poor).await.unwrap(), 0);
    let row = usage_logs::Entity::find().filter(usage_logs::Column::RequestId.eq("poor")).one(&db.read).await.unwrap();
    let row = row.unwrap();
    assert_eq!((row.cost, row.shortfall), (400, 600));
    let res = reservations::Entity::find().filter(reservations::Column::RequestId.eq("poor")).one(&db.read).await;
    let res = res.unwrap().unwrap();
    assert_eq!((res.charged_amount, res.excess_amount, res.shortfall), (400, 300, 600));
    // The shortfall is written to the audit log for the operator.
    let audit = tollgate::db::entities::audit_logs::Entity::find()
        .filter(tollgate::db::entities::audit_logs::Column::Action.eq("billing.shortfall"))
        .all(&db.read)
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].target_id, "poor");
    assert!(audit[0].after.as_deref().unwrap_or("").contains("\"shortfall\":600"), "{:?}", audit[0].after);
    let books = tollgate::billing::reconcile::reconcile(&db.read, poor).await.unwrap();
    assert_eq!(books.shortfall, 600);
    assert_books_balance(db, poor).await;
}

async fn hostile_token_counts_never_overflow(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "hostile@example.com", 1_000_000_000).await;
    for (i, max_out) in [i64::MAX, i64::MIN, -1, 1 << 62].into_iter().enumerate() {
        let id = format!("h{i}");
        match reserve(db, &request(&id, user, 10, max_out)).await {
            Ok(r) => {
                assert!(r.amount >= 0);
                resolve(db, &id, &settled(i64::MAX, i64::MIN)).await.unwrap();
            }
            Err(tollgate::error::Error::InsufficientBalance { .. }) => {}
            Err(other) => panic!("unexpected error for max_tokens {max_out}: {other}"),
        }
    }
    assert!(balance::amount(&db.read, user).await.unwrap() >= 0);
    assert_books_balance(db, user).await;
}

async fn voids_refund_everything_and_sweeps_charge_everything(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "sweep@example.com", 1_000_000).await;
    let sub = tollgate::subscriptions::grant(db, user, "s", 100, 3, None).await.unwrap();

    let voided = reserve(db, &request("void", user, 50, 100)).await.unwrap();
    assert_eq!(voided.tokens, 100);
    let out = resolve(db, "void", &Resolution { state: FinalState::Voided, log: log() }).await.unwrap();
    assert_eq!(out, Resolved::Charged(Charge::default()));
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), 1_000_000);
    let s = tollgate::db::entities::subscriptions::Entity::find_by_id(sub.id).one(&db.read).await.unwrap().unwrap();
    assert_eq!(s.tokens_remaining, 100, "voided tokens go back to their subscription");

    // A reservation left pending by a crashed process is charged in full by the sweeper, once.
    let stale = reserve(db, &request("stale", user, 50, 100)).await.unwrap();
    let fresh = reserve(db, &request("fresh", user, 1, 1)).await.unwrap();
    reservations::Entity::update_many()
        .col_expr(reservations::Column::CreatedAt, Expr::value(0i64))
        .filter(reservations::Column::Id.eq(stale.id))
        .exec(&db.write)
        .await
        .unwrap();
    assert_eq!(sweep_stale(db, 60_000).await.unwrap(), 1);
    assert_eq!(sweep_stale(db, 60_000).await.unwrap(), 0);
    let row = reservations::Entity::find_by_id(stale.id).one(&db.read).await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.charged_amount, row.charged_tokens), ("settled", stale.amount, stale.tokens));
    let pending = reservations::Entity::find_by_id(fresh.id).one(&db.read).await.unwrap().unwrap();
    assert_eq!(pending.state, "pending", "a young reservation is left alone");
    let swept_log = usage_logs::Entity::find()
        .filter(usage_logs::Column::RequestId.eq("stale"))
        .one(&db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((swept_log.cost, swept_log.usage_source.as_str()), (stale.amount, "reserved"));
    assert_books_balance(db, user).await;
}

/// The sweeper finds pending reservations through an index that holds only them (SQLite,
/// PostgreSQL) or through `(state, created_at)` (MySQL), never by reading the whole history:
/// the query names the state as a literal, which a partial index needs.
async fn the_sweeper_reads_the_pending_index(backend: Backend) {
    use sea_orm::{ConnectionTrait, QueryTrait};
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = user_with_balance(db, "plan@example.com", 1_000_000).await;
    for i in 0..50 {
        let id = format!("plan-{i}");
        let r = reserve(db, &request(&id, user, 1, 1)).await.unwrap();
        if i % 10 != 0 {
            tollgate::billing::resolve_reservation(db, &r, &Resolution { state: FinalState::Voided, log: log() })
                .await
                .unwrap();
        }
    }
    let select = tollgate::billing::reservations::stale_query(i64::MAX).build(db.read.get_database_backend());
    let sql = select.to_string();
    assert!(sql.contains("state = 'pending'"), "{sql}");
    let text = match backend {
        Backend::Sqlite => plan_text(&db.read, format!("EXPLAIN QUERY PLAN {sql}")).await,
        Backend::MySql => plan_text(&db.read, format!("EXPLAIN {sql}")).await,
        Backend::Postgres => {
            // A table this small is read whole unless told otherwise: what matters is that the
            // index can serve the query at all.
            use sea_orm::TransactionTrait;
            let txn = db.read.begin().await.unwrap();
            txn.execute_unprepared("SET LOCAL enable_seqscan = off").await.unwrap();
            let text = plan_text(&txn, format!("EXPLAIN {sql}")).await;
            txn.rollback().await.unwrap();
            text
        }
    };
    let index = if backend == Backend::MySql { "ix_reservations_state_age" } else { "ix_reservations_pending" };
    assert!(text.contains(index), "{backend:?} plan of the sweeper's query does not name {index}:\n{text}");
    assert_eq!(stale_query_len(db).await, 5, "the sweeper's query finds the pending reservations");
}

/// Every text cell of the rows `explain` answers, a line per row.
async fn plan_text(conn: &impl sea_orm::ConnectionTrait, explain: String) -> String {
    let rows = conn.query_all_raw(sea_orm::Statement::from_string(conn.get_database_backend(), explain)).await.unwrap();
    let mut text = String::new();
    for row in rows {
        for col in row.column_names() {
            if let Ok(Some(v)) = row.try_get::<Option<String>>("", &col) {
                text.push_str(&v);
                text.push(' ');
            }
        }
        text.push('\n');
    }
    text
}

async fn stale_query_len(db: &Db) -> usize {
    tollgate::billing::reservations::stale_query(i64::MAX).all(&db.read).await.unwrap().len()
}

on_all_backends!(
    the_sweeper_reads_the_pending_index,
    settlement_refunds_exactly_once,
    concurrent_settlements_resolve_once,
    usage_beyond_the_reservation_is_collected_or_recorded,
    hostile_token_counts_never_overflow,
    voids_refund_everything_and_sweeps_charge_everything,
);
