//! Redemption codes: created by an admin (API or command line), shown once, redeemed exactly
//! once even under a 50-way race, refused cleanly when unknown, used or expired, and failed
//! attempts limited — on every backend.

use std::process::Command;

use reqwest::Method;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tollgate::db::entities::{audit_logs, credit_transactions, redemption_batches, redemption_codes};

use crate::admin::Caller;
use crate::helpers::{Backend, TestApp, assert_books_balance, spawn_app, spawn_app_with};
use crate::on_all_backends;

const ROUTE: &str = "/api/internal/redeem";

/// Creates a batch through the admin API and returns its answer.
async fn create(admin: &Caller, body: Value) -> Value {
    let (status, answer) = admin.send(Method::POST, "/api/admin/redemption-codes", &body).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

fn codes_of(answer: &Value) -> Vec<String> {
    answer["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

async fn redeem(caller: &Caller, code: &str) -> (u16, Value) {
    caller.send(Method::POST, ROUTE, &json!({ "code": code })).await
}

/// Ledger rows, audit rows and balance of `user`: what a refused attempt must leave alone.
async fn state_of(app: &TestApp, user: i64) -> (u64, u64, i64) {
    let ledger =
        credit_transactions::Entity::find().filter(credit_transactions::Column::UserId.eq(user)).count(&app.db.read);
    let audits = audit_logs::Entity::find().count(&app.db.read);
    (ledger.await.unwrap(), audits.await.unwrap(), app.balance(user).await)
}

async fn fifty_concurrent_redeems_of_one_code_credit_it_once(backend: Backend) {
    // The limiter would refuse most of 50 attempts by one user: lift it to race the database.
    let app = spawn_app_with(backend, &[("REDEEM_FAILURE_LIMIT", "1000")]).await;
    let (_, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    let (user, customer) = Caller::signed_in(&app, "racer@example.com", "user").await;
    let answer = create(&admin, json!({ "count": 1, "amount": "10.00", "note": "race" })).await;
    let code = codes_of(&answer).pop().unwrap();

    let attempts = (0..50).map(|_| redeem(&customer, &code));
    let results = futures::future::join_all(attempts).await;
    let ok: Vec<&Value> = results.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b).collect();
    assert_eq!(ok.len(), 1, "exactly one redemption wins: {results:?}");
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 409), "{results:?}");
    assert_eq!(ok[0]["kind"], "money");
    assert_eq!(ok[0]["amount"], "10.00");
    assert_eq!(ok[0]["balance"], "10.00");

    assert_eq!(app.balance(user).await, 10_000_000, "credited once");
    let ledger = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .filter(credit_transactions::Column::Kind.eq("redeem"))
        .all(&app.db.read)
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].amount, 10_000_000);
    let redeemed = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("redemption_code.redeem"))
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(redeemed, 1);
    let row = redemption_codes::Entity::find().one(&app.db.read).await.unwrap().unwrap();
    assert_eq!(row.redeemed_by, Some(user));
    assert!(row.redeemed_at.is_some());
    assert_books_balance(&app.db, user).await;
}

async fn subscription_codes_grant_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    let (user, customer) = Caller::signed_in(&app, "tokens@example.com", "user").await;
    let answer = create(&admin, json!({ "count": 2, "tokens": 100_000, "days": 30 })).await;
    assert_eq!(answer["kind"], "subscription");
    let codes = codes_of(&answer);
    assert_eq!(codes.len(), 2);
    // Typed in lower case with spaces: the same code.
    let typed = codes[0].to_lowercase().replace('-', " ");
    let (status, body) = redeem(&customer, &typed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "subscription");
    assert_eq!(body["tokens"], 100_000);
    assert_eq!(body["subscription"]["tokensRemaining"], 100_000);
    assert_eq!(body["balance"], "0.00");

    let (status, me) = customer.get("/api/internal/me").await;
    assert_eq!(status, 200);
    let subs = me["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{me}");
    assert_eq!(subs[0]["tokensRemaining"], 100_000);
    let grants = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .filter(credit_transactions::Column::Kind.eq("grant"))
        .all(&app.db.read)
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].tokens, 100_000);
    assert_books_balance(&app.db, user).await;

    // The list shows the batch with one of two redeemed, and codes only by prefix.
    let (status, list) = admin.get("/api/admin/redemption-codes").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["count"], 2);
    assert_eq!(list["data"][0]["redeemed"], 1);
    let batch = answer["batchId"].as_i64().unwrap();
    let (status, listed) = admin.get(&format!("/api/admin/redemption-codes?batch={batch}")).await;
    assert_eq!(status, 200, "{listed}");
    let rows = listed["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows.iter().filter(|r| r["redeemedBy"] == json!(user)).count(), 1);
    for code in &codes {
        assert!(!list.to_string().contains(code.as_str()) && !listed.to_string().contains(code.as_str()));
        assert!(rows.iter().any(|r| code.starts_with(r["prefix"].as_str().unwrap())));
    }
    // Nothing in the database holds a plaintext code.
    let stored = redemption_codes::Entity::find().all(&app.db.read).await.unwrap();
    for c in &stored {
        assert!(codes.iter().all(|p| c.code_hash != *p && !c.code_hash.contains(&p[3..])));
        assert_eq!(c.code_hash.len(), 64);
    }
    let (status, _) = admin.get("/api/admin/redemption-codes?batch=999999").await;
    assert_eq!(status, 404);
    let (status, _) = admin.get("/api/admin/redemption-codes?secret=1").await;
    assert_eq!(status, 400);
}

async fn unknown_used_and_expired_codes_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    let (user, customer) = Caller::signed_in(&app, "careful@example.com", "user").await;
    let (other, someone) = Caller::signed_in(&app, "other@example.com", "user").await;
    let codes = codes_of(&create(&admin, json!({ "count": 2, "amount": "5.00", "expiresInDays": 7 })).await);
    // The second code's batch ran out yesterday.
    let expired_hash = tollgate::crypto::sha256_hex(&codes[1]);
    redemption_codes::Entity::update_many()
        .col_expr(redemption_codes::Column::ExpiresAt, Expr::value(tollgate::clock::now_ms() - 86_400_000))
        .filter(redemption_codes::Column::CodeHash.eq(expired_hash))
        .exec(&app.db.write)
        .await
        .unwrap();

    let (status, body) = redeem(&customer, &codes[0]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance"], "5.00");
    let before = (state_of(&app, user).await, state_of(&app, other).await);

    let unknown = tollgate::redeem::generate().plaintext;
    for (who, caller, code, status) in [
        ("same user", &customer, codes[0].as_str(), 409),
        ("another user", &someone, codes[0].as_str(), 409),
        ("expired", &customer, codes[1].as_str(), 410),
        ("unknown", &customer, unknown.as_str(), 404),
        ("not a code", &customer, "hello", 400),
    ] {
        let (got, body) = redeem(caller, code).await;
        assert_eq!(got, status, "{who}: {body}");
        assert!(body["error"]["message"].is_string() && body["error"]["code"].is_string(), "{body}");
    }
    for bad in [json!({ "code": codes[1], "amount": "100" }), json!({}), json!({ "code": 5 })] {
        let (got, body) = customer.send(Method::POST, ROUTE, &bad).await;
        assert_eq!(got, 400, "{bad}: {body}");
    }
    let (status, _) = redeem(&Caller::anonymous(&app), &codes[1]).await;
    assert_eq!(status, 401);
    assert_eq!((state_of(&app, user).await, state_of(&app, other).await), before, "nothing changed");
    let expired = redemption_codes::Entity::find()
        .filter(redemption_codes::Column::RedeemedAt.is_not_null())
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(expired, 1, "the expired code is still unused");
    assert_books_balance(&app.db, user).await;
    assert_books_balance(&app.db, other).await;
}

async fn failed_attempts_are_limited_per_user_and_per_address(backend: Backend) {
    let app = spawn_app_with(backend, &[("REDEEM_FAILURE_LIMIT", "3")]).await;
    let (_, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    let codes = codes_of(&create(&admin, json!({ "count": 3, "amount": "1.00" })).await);
    let (guesser, a) = Caller::signed_in(&app, "guesser@example.com", "user").await;
    let wrong = || tollgate::redeem::generate().plaintext;
    // A success in between gives its slot back.
    assert_eq!(redeem(&a, &wrong()).await.0, 404);
    assert_eq!(redeem(&a, &codes[0]).await.0, 200);
    assert_eq!(redeem(&a, &wrong()).await.0, 404);
    assert_eq!(redeem(&a, "not a code").await.0, 400);
    // Three failures: the fourth attempt is refused before the lookup, even with a good code.
    let res = a.call(Method::POST, ROUTE, Some(&json!({ "code": codes[1] })), &[]).await;
    assert_eq!(res.status().as_u16(), 429);
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "limits.too_many_requests");
    assert_eq!(app.balance(guesser).await, 1_000_000, "the refused good code was not redeemed");

    // The address has 3 × 3 = 9 failures: 3 are used; two more users fail 3 times each.
    for email in ["second@example.com", "third@example.com"] {
        let (_, c) = Caller::signed_in(&app, email, "user").await;
        for _ in 0..3 {
            assert_eq!(redeem(&c, &wrong()).await.0, 404);
        }
    }
    // A fourth user from the same address is refused at once, whatever address it claims: the
    // peer is not a trusted proxy, so its `X-Forwarded-For` is not believed.
    let (fresh, c) = Caller::signed_in(&app, "fourth@example.com", "user").await;
    assert_eq!(redeem(&c, &codes[1]).await.0, 429);
    let spoofed =
        c.call(Method::POST, ROUTE, Some(&json!({ "code": codes[1] })), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(spoofed.status().as_u16(), 429);
    assert_eq!(app.balance(fresh).await, 0);
    let used = redemption_codes::Entity::find()
        .filter(redemption_codes::Column::RedeemedAt.is_not_null())
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(used, 1);
}

async fn batch_creation_checks_its_input_and_is_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_id, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    for bad in [
        json!({ "count": 0, "amount": "1.00" }),
        json!({ "count": 1001, "amount": "1.00" }),
        json!({ "count": 1, "amount": "0" }),
        json!({ "count": 1, "amount": "-1" }),
        json!({ "count": 1, "amount": "abc" }),
        json!({ "count": 1, "amount": "1.00", "tokens": 5, "days": 1 }),
        json!({ "count": 1, "tokens": 5 }),
        json!({ "count": 1, "tokens": 0, "days": 1 }),
        json!({ "count": 1, "tokens": 5, "days": 0 }),
        json!({ "count": 1 }),
        json!({ "count": 1, "amount": "1.00", "expiresInDays": 0 }),
        json!({ "count": 1, "amount": "1.00", "note": "x".repeat(256) }),
        json!({ "count": 1, "amount": "1.00", "redeemedBy": 1 }),
        json!({ "count": "1", "amount": "1.00" }),
    ] {
        let (status, body) = admin.send(Method::POST, "/api/admin/redemption-codes", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(redemption_batches::Entity::find().count(&app.db.read).await.unwrap(), 0);
    assert_eq!(redemption_codes::Entity::find().count(&app.db.read).await.unwrap(), 0);

    let answer = create(&admin, json!({ "count": 1000, "amount": "0.50", "expiresInDays": 30, "note": "promo" })).await;
    let codes = codes_of(&answer);
    assert_eq!(codes.len(), 1000);
    let distinct: std::collections::HashSet<&String> = codes.iter().collect();
    assert_eq!(distinct.len(), 1000);
    assert!(codes.iter().all(|c| tollgate::redeem::canonical(c).as_deref() == Some(c.as_str())));
    assert_eq!(answer["note"], "promo");
    assert!(answer["expiresAt"].is_string());
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("redemption_codes.create"))
        .one(&app.db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(audit.actor_user_id, Some(admin_id));
    assert_eq!(audit.target_id, answer["batchId"].to_string());
    assert!(codes.iter().all(|c| !audit.after.as_deref().unwrap_or_default().contains(&c[3..])));
}

/// Fifty different customers race for one code (as when a code leaks): one gets it, once.
async fn fifty_customers_racing_for_one_code_credit_one_of_them(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut users = Vec::new();
    for i in 0..50 {
        users.push(crate::helpers::user_with_balance(&app.db, &format!("leak{i}@example.com"), 1_000_000).await);
    }
    for value in
        [tollgate::redeem::Value::Money(3_000_000), tollgate::redeem::Value::Subscription { tokens: 700, days: 5 }]
    {
        let new = tollgate::redeem::NewBatch { count: 1, value, expires_in_days: Some(1), note: None };
        let created = tollgate::redeem::create_batch(&app.db, &new, &tollgate::audit::Actor::system()).await.unwrap();
        let code = created.codes[0].clone();
        let attempts = users.iter().map(|u| tollgate::redeem::redeem(&app.db, *u, &code, Some("127.0.0.1")));
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{value:?}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, tollgate::error::Error::Conflict(_)), "{e:?}");
            }
        }
    }
    let mut balances = 0;
    for u in &users {
        balances += app.balance(*u).await;
        assert_books_balance(&app.db, *u).await;
    }
    assert_eq!(balances, 53_000_000, "one customer got the money, once");
    let subs = tollgate::db::entities::subscriptions::Entity::find().all(&app.db.read).await.unwrap();
    assert_eq!(subs.len(), 1, "one customer got the package, once");
    assert_eq!(subs[0].tokens_total, 700);
}

on_all_backends!(
    fifty_customers_racing_for_one_code_credit_one_of_them,
    fifty_concurrent_redeems_of_one_code_credit_it_once,
    subscription_codes_grant_tokens,
    unknown_used_and_expired_codes_are_refused_and_change_nothing,
    failed_attempts_are_limited_per_user_and_per_address,
    batch_creation_checks_its_input_and_is_audited,
);

async fn codes_made_on_the_command_line_redeem(backend: Backend) {
    let app = spawn_app(backend).await;
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("DATABASE_URL", &app.database_url)
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let csv = run(&["code", "create", "--count", "4", "--amount", "2.50", "--expires-days", "10", "--note", "cli"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("code,amount,tokens,days,expires_at"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let codes: std::collections::HashSet<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(codes.len(), 4, "distinct");
    assert!(rows.iter().all(|r| r[1] == "2.50" && r[2] == "0" && r[3] == "0" && !r[4].is_empty()), "{csv}");

    let (user, customer) = Caller::signed_in(&app, "cli@example.com", "user").await;
    for code in &codes {
        let (status, body) = redeem(&customer, code).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(app.balance(user).await, 10_000_000);
    assert_books_balance(&app.db, user).await;

    let tokens = run(&["code", "create", "--count", "1", "--tokens", "500", "--days", "7"]);
    assert!(tokens.lines().nth(1).unwrap().ends_with(",0.00,500,7,"), "{tokens}");
    let list = run(&["code", "list"]);
    assert!(list.contains("cli") && list.contains("money") && list.contains("subscription"), "{list}");
    let json: Value = serde_json::from_str(&run(&["code", "list", "--json"])).unwrap();
    assert_eq!(json[1]["redeemed"], 4, "{json}");
    assert_eq!(json[0]["redeemed"], 0, "{json}");
    // Bad input fails with a reason and makes nothing.
    for args in [
        &["code", "create", "--count", "0", "--amount", "1"][..],
        &["code", "create", "--count", "1"],
        &["code", "create", "--count", "1", "--amount", "1", "--tokens", "5", "--days", "1"],
        &["code", "create", "--count", "1", "--tokens", "5"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("DATABASE_URL", &app.database_url)
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(!o.status.success() && !o.stderr.is_empty(), "{args:?}");
    }
    assert_eq!(redemption_batches::Entity::find().count(&app.db.read).await.unwrap(), 2);
}

on_all_backends!(codes_made_on_the_command_line_redeem);
