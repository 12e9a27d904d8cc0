//! One story over every table, the same on SQLite, MariaDB and PostgreSQL.

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
use tollgate::accounts::{self, NewUser};
use tollgate::billing::{FinalState, Prices, ReserveRequest, Resolution, Resolved, UsageLog, ledger, reserve, resolve};
use tollgate::clock::now_ms;
use tollgate::db::entities::*;
use tollgate::db::is_unique_violation;
use tollgate::error::Error;
use tollgate::{keys, subscriptions};

use crate::helpers::{Backend, assert_books_balance, fresh_db};
use crate::on_all_backends;

async fn storage_story(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let now = now_ms();

    // users + balances
    let txn = db.begin().await.unwrap();
    let user = accounts::create_user(
        &txn,
        NewUser {
            email: " Ada@Example.COM ",
            name: Some("Ada"),
            role: "user",
            password_hash: None,
            signup_credit: 2_000_000,
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(user.email, "ada@example.com");
    let found = accounts::find_by_email(&db.read, "ADA@example.com").await.unwrap().unwrap();
    assert_eq!(found, user);
    assert_eq!(balances::Entity::find_by_id(user.id).one(&db.read).await.unwrap().unwrap().amount, 2_000_000);

    // accounts
    let account = accounts_entity::ActiveModel {
        user_id: Set(user.id),
        provider: Set("github".into()),
        provider_account_id: Set("12345".into()),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&db.write)
    .await
    .unwrap();
    assert_eq!(
        accounts_entity::Entity::find_by_id(account.id).one(&db.read).await.unwrap().unwrap().provider_account_id,
        "12345"
    );

    // sessions
    sessions::ActiveModel {
        id: Set("a".repeat(64)),
        user_id: Set(Some(user.id)),
        data: Set("{}".into()),
        expires_at: Set(now + 1000),
        created_at: Set(now),
    }
    .insert(&db.write)
    .await
    .unwrap();
    assert_eq!(sessions::Entity::find().filter(sessions::Column::UserId.eq(user.id)).count(&db.read).await.unwrap(), 1);

    // api_keys: only the hash is stored
    let (key, plaintext) = keys::create(&db.write, user.id, Some("laptop")).await.unwrap();
    let stored = api_keys::Entity::find_by_id(key.id).one(&db.read).await.unwrap().unwrap();
    assert_eq!(stored.key_hash, keys::hash(&plaintext));
    assert_ne!(stored.key_hash, plaintext);
    assert!(plaintext.starts_with(&stored.prefix) && plaintext.ends_with(&stored.last4));

    // models
    let model = models::ActiveModel {
        name: Set("story-model".into()),
        upstream_model: Set("story-upstream".into()),
        input_price: Set(150_000),
        output_price: Set(600_000),
        max_output_tokens: Set(16_384),
        context_window: Set(128_000),
        enabled: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&db.write)
    .await
    .unwrap();

    // subscriptions + credit_transactions + audit_logs
    let sub = subscriptions::grant(db, user.id, "starter", 500, 30, None).await.unwrap();
    assert_eq!(subscription_tokens(db, sub.id).await, 500);
    ledger::adjust(db, user.id, 10_000_000, "topup", "story top-up", None).await.unwrap();

    // reservations + usage_logs
    let prices = Prices::flat(model.input_price, model.output_price);
    let res = reserve(
        db,
        &ReserveRequest {
            request_id: "story-1",
            user_id: user.id,
            key_id: Some(key.id),
            model_id: Some(model.id),
            prompt_tokens: 400,
            max_completion_tokens: 1000,
            prices,
            ..tollgate::billing::ReserveRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(res.tokens, 500, "the subscription is consumed first");
    assert_eq!(res.amount, 540, "the rest (900 output tokens at 0.6/1M) comes from the balance");
    let outcome = resolve(
        db,
        "story-1",
        &Resolution {
            state: FinalState::Settled {
                usage: tollgate::gateway::settle::Usage { input: 400, output: 300, ..Default::default() },
                prices,
            },
            log: UsageLog {
                model: model.name.clone(),
                status_code: 200,
                latency_ms: 12,
                ttfb_ms: Some(3),
                stream: false,
                usage_source: "upstream",
            },
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Resolved::Charged(tollgate::billing::Charge { tokens: 500, amount: 120, ..Default::default() })
    );
    let log = usage_logs::Entity::find()
        .filter(usage_logs::Column::RequestId.eq("story-1"))
        .one(&db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((log.prompt_tokens, log.completion_tokens, log.total_tokens, log.cost), (400, 300, 700, 120));
    assert_eq!(log.day, tollgate::clock::day_of(log.created_at));
    let reservation = reservations::Entity::find()
        .filter(reservations::Column::RequestId.eq("story-1"))
        .one(&db.read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reservation.state, "settled");

    let kinds: Vec<String> = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user.id))
        .all(&db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .collect();
    assert_eq!(kinds, ["signup_credit", "grant", "topup"]);
    let actions: Vec<String> =
        audit_logs::Entity::find().all(&db.read).await.unwrap().into_iter().map(|a| a.action).collect();
    // The sign-up credit is audited like any other balance change.
    assert_eq!(actions, ["balance.adjust", "subscription.grant", "balance.adjust"]);
    assert_books_balance(db, user.id).await;
}

async fn subscription_tokens(db: &tollgate::db::Db, id: i64) -> i64 {
    subscriptions_entity::Entity::find_by_id(id).one(&db.read).await.unwrap().unwrap().tokens_remaining
}

// `subscriptions` is both our module and an entity module; name the entity explicitly here.
use tollgate::db::entities::{accounts as accounts_entity, subscriptions as subscriptions_entity};

async fn unique_violations_are_clean_errors(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let new = |email| NewUser { email, name: None, role: "user", password_hash: None, signup_credit: 0 };
    let user = accounts::create_user(&db.write, new("dup@example.com")).await.unwrap();
    let err = accounts::create_user(&db.write, new("DUP@example.com")).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(ref m) if m.contains("already exists")), "{err:?}");

    let account = |id: &str| accounts_entity::ActiveModel {
        user_id: Set(user.id),
        provider: Set("google".into()),
        provider_account_id: Set(id.into()),
        created_at: Set(0),
        ..Default::default()
    };
    account("g-1").insert(&db.write).await.unwrap();
    let err = account("g-1").insert(&db.write).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err:?}");
    account("g-2").insert(&db.write).await.unwrap();

    let (key, _) = keys::create(&db.write, user.id, None).await.unwrap();
    let original = stored_key(db, key.id).await;
    let err = api_keys::ActiveModel {
        user_id: Set(user.id),
        name: Set("copy".into()),
        key_hash: Set(original.key_hash.clone()),
        prefix: Set(original.prefix.clone()),
        last4: Set(original.last4.clone()),
        disabled: Set(false),
        revoked_at: Set(None),
        last_used_at: Set(None),
        created_at: Set(0),
        updated_at: Set(0),
        ..Default::default()
    }
    .insert(&db.write)
    .await
    .unwrap_err();
    assert!(is_unique_violation(&err), "a second row with the same key hash must be refused: {err:?}");
    assert_eq!(api_keys::Entity::find().count(&db.read).await.unwrap(), 1);
}

async fn stored_key(db: &tollgate::db::Db, id: i64) -> api_keys::Model {
    api_keys::Entity::find_by_id(id).one(&db.read).await.unwrap().unwrap()
}

async fn amounts_can_never_go_negative(backend: Backend) {
    let t = fresh_db(backend).await;
    let db = &t.db;
    let user = crate::helpers::user_with_balance(db, "neg@example.com", 5).await;
    let res = balances::Entity::update_many()
        .col_expr(balances::Column::Amount, Expr::value(-1i64))
        .filter(balances::Column::UserId.eq(user))
        .exec(&db.write)
        .await;
    assert!(res.is_err(), "the CHECK constraint must refuse a negative balance");
    let sub = subscriptions::grant(db, user, "s", 10, 1, None).await.unwrap();
    let res = subscriptions_entity::Entity::update_many()
        .col_expr(subscriptions_entity::Column::TokensRemaining, Expr::value(-1i64))
        .filter(subscriptions_entity::Column::Id.eq(sub.id))
        .exec(&db.write)
        .await;
    assert!(res.is_err(), "the CHECK constraint must refuse negative tokens");
    assert_eq!(balances::Entity::find_by_id(user).one(&db.read).await.unwrap().unwrap().amount, 5);
    // A deduction larger than the balance is refused and changes nothing.
    let err = ledger::adjust(db, user, -6, "adjustment", "too much", None).await.unwrap_err();
    assert!(matches!(err, Error::BalanceTooLow { balance: 5, delta: -6 }), "{err:?}");
    assert_books_balance(db, user).await;
}

async fn migrations_are_idempotent(backend: Backend) {
    let t = fresh_db(backend).await;
    assert!(t.db.pending_migrations().await.unwrap().is_empty());
    t.db.migrate().await.unwrap();
    assert!(t.db.pending_migrations().await.unwrap().is_empty());
}

on_all_backends!(
    storage_story,
    unique_violations_are_clean_errors,
    amounts_can_never_go_negative,
    migrations_are_idempotent
);
