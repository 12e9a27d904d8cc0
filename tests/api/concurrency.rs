//! The conditional balance deduction under contention: no overspend, exact final balance.

use std::sync::Arc;

use tollgate::billing::balance;

use crate::helpers::{Backend, assert_books_balance, fresh_db, user_with_balance};
use crate::on_all_backends;

const DEBIT: i64 = 1_000_000;
const COVERED: i64 = 250;
const ATTEMPTS: usize = 400;

async fn concurrent_deductions_never_overspend(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = Arc::new(t.db.clone());
    // Enough for exactly 250 debits, plus a remainder too small for one more.
    let start = COVERED * DEBIT + DEBIT / 2;
    let user = user_with_balance(&db, "racer@example.com", start).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let tasks: Vec<_> = (0..ATTEMPTS)
        .map(|_| {
            let (db, barrier) = (db.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                balance::debit_if_covered(&db.write, user, DEBIT).await.unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, COVERED, "exactly the covered number of debits must pass");
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), DEBIT / 2);
    // The debits bypassed the ledger on purpose; the reconciliation must notice exactly that.
    let r = tollgate::billing::reconcile::reconcile(&db.read, user).await.unwrap();
    assert_eq!(r.ledger_amount - r.balance, COVERED * DEBIT);
    assert!(r.negatives.is_empty());
}

async fn concurrent_reservations_admit_exactly_what_is_covered(backend: Backend) {
    use tollgate::billing::{Prices, ReserveRequest, reserve};
    let t = fresh_db(backend).await;
    let db = Arc::new(t.db.clone());
    let prices = Prices::flat(1_000_000, 2_000_000);
    // Worst case: 1000 prompt + 1000 output tokens = 0.001 + 0.002 = 3000 micro-units.
    let worst = 3000;
    let user = user_with_balance(&db, "m1@example.com", 9 * worst + worst - 1).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (db, barrier) = (db.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let request_id = format!("req-{i}");
                reserve(
                    &db,
                    &ReserveRequest {
                        request_id: &request_id,
                        user_id: user,
                        key_id: None,
                        model_id: None,
                        prompt_tokens: 1000,
                        max_completion_tokens: 1000,
                        prices,
                        ..ReserveRequest::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.amount, worst);
                admitted += 1;
            }
            Err(tollgate::error::Error::InsufficientBalance { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(admitted, 9);
    assert_eq!(balance::amount(&db.read, user).await.unwrap(), worst - 1);
    assert_books_balance(&db, user).await;
}

on_all_backends!(concurrent_deductions_never_overspend, concurrent_reservations_admit_exactly_what_is_covered);
