//! The service functions the admin API and the command line share: one ledger function for
//! every balance change, and disabling a user as one operation.

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use tollgate::billing::ledger;
use tollgate::db::entities::{audit_logs, credit_transactions, sessions};
use tollgate::error::Error;

use crate::helpers::{Backend, Mode, assert_books_balance, chat_body, spawn_gateway, user_with_balance};
use crate::on_all_backends;

async fn every_balance_change_is_one_ledger_operation(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let db = &g.app.db;
    // Sign-up credit: balance, ledger and audit together.
    let txn = db.begin().await.unwrap();
    let new = tollgate::accounts::NewUser {
        email: "credit@example.com",
        name: None,
        role: "user",
        password_hash: None,
        signup_credit: 1_500_000,
    };
    let user = tollgate::accounts::create_user(&txn, new).await.unwrap().id;
    txn.commit().await.unwrap();
    assert_eq!(g.app.balance(user).await, 1_500_000);

    let change = |delta: i64, kind: &'static str| ledger::Change {
        user_id: user,
        delta,
        kind,
        reason: "support",
        actor: Some(42),
        ip: Some("203.0.113.9".into()),
    };
    let txn = db.begin().await.unwrap();
    let applied = ledger::apply(&txn, change(2_000_000, ledger::TOPUP)).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(applied, ledger::Applied { before: 1_500_000, after: 3_500_000 });
    let txn = db.begin().await.unwrap();
    let applied = ledger::apply(&txn, change(-3_500_000, ledger::ADJUSTMENT)).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(applied, ledger::Applied { before: 3_500_000, after: 0 });

    // Below zero: a typed refusal carrying the balance; nothing written.
    let ledger_rows = credit_transactions::Entity::find().count(&db.read).await.unwrap();
    let audits = audit_logs::Entity::find().count(&db.read).await.unwrap();
    let txn = db.begin().await.unwrap();
    let err = ledger::apply(&txn, change(-1, ledger::ADJUSTMENT)).await.unwrap_err();
    drop(txn);
    assert!(matches!(err, Error::BalanceTooLow { balance: 0, delta: -1 }), "{err:?}");
    for bad in [change(0, ledger::TOPUP), ledger::Change { reason: "  ", ..change(1, ledger::TOPUP) }] {
        let txn = db.begin().await.unwrap();
        assert!(matches!(ledger::apply(&txn, bad).await, Err(Error::BadRequest(_))));
    }
    assert_eq!(credit_transactions::Entity::find().count(&db.read).await.unwrap(), ledger_rows);
    assert_eq!(audit_logs::Entity::find().count(&db.read).await.unwrap(), audits);

    let kinds: Vec<(String, i64)> = credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .order_by_asc(credit_transactions::Column::Id)
        .all(&db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.amount))
        .collect();
    let expected = [("signup_credit", 1_500_000), ("topup", 2_000_000), ("adjustment", -3_500_000)];
    assert_eq!(kinds, expected.map(|(k, a)| (k.to_owned(), a)));
    let audit: Vec<audit_logs::Model> = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("balance.adjust"))
        .filter(audit_logs::Column::TargetId.eq(user.to_string()))
        .order_by_asc(audit_logs::Column::Id)
        .all(&db.read)
        .await
        .unwrap();
    assert_eq!(audit.len(), 3);
    let last = &audit[2];
    assert_eq!((last.actor_user_id, last.ip.as_deref()), (Some(42), Some("203.0.113.9")));
    let before: serde_json::Value = serde_json::from_str(last.before.as_deref().unwrap()).unwrap();
    let after: serde_json::Value = serde_json::from_str(last.after.as_deref().unwrap()).unwrap();
    assert_eq!((before["balance"].as_str(), after["balance"].as_str()), (Some("3.50"), Some("0.00")));
    assert_books_balance(db, user).await;
}

async fn disabling_a_user_drops_their_keys_and_sessions_at_once(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("gone@example.com", 1_000_000).await;
    // The key is cached by a first request.
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    g.app.settled(user).await;
    let other = user_with_balance(&g.app.db, "other@example.com", 0).await;
    for (id, owner) in [("a".repeat(64), user), ("b".repeat(64), user), ("c".repeat(64), other)] {
        use sea_orm::{ActiveModelTrait, Set};
        sessions::ActiveModel {
            id: Set(id),
            user_id: Set(Some(owner)),
            data: Set("{}".into()),
            expires_at: Set(i64::MAX),
            created_at: Set(0),
        }
        .insert(&g.app.db.write)
        .await
        .unwrap();
    }
    let (row, ended) = tollgate::accounts::set_disabled(
        &g.app.db,
        &g.app.cache(),
        user,
        true,
        &tollgate::audit::Actor::admin(1, None),
    )
    .await
    .unwrap();
    assert!(row.disabled);
    assert_eq!(ended, 2);
    assert_eq!(sessions::Entity::find().count(&g.app.db.read).await.unwrap(), 1, "only theirs ended");
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 401, "refused at once, not after the cache");
    tollgate::accounts::set_disabled(&g.app.db, &g.app.cache(), user, false, &tollgate::audit::Actor::admin(1, None))
        .await
        .unwrap();
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    g.app.settled(user).await;
    assert!(matches!(
        tollgate::accounts::set_disabled(&g.app.db, &g.app.cache(), 999_999, true, &tollgate::audit::Actor::system())
            .await,
        Err(Error::NotFound(_))
    ));
    assert_books_balance(&g.app.db, user).await;
}

on_all_backends!(every_balance_change_is_one_ledger_operation, disabling_a_user_drops_their_keys_and_sessions_at_once);

async fn old_idempotency_keys_are_purged(backend: Backend) {
    use sea_orm::{ActiveModelTrait, Set};
    use tollgate::db::entities::idempotency_keys;
    let app = crate::helpers::spawn_app(backend).await;
    let now = tollgate::clock::now_ms();
    for (key, at) in [("old", now - tollgate::admin::idempotency::KEEP_MS - 1), ("recent", now - 1000)] {
        idempotency_keys::ActiveModel {
            actor_user_id: Set(1),
            idem_key: Set(key.into()),
            request_hash: Set("h".into()),
            status_code: Set(200),
            response: Set("{}".into()),
            created_at: Set(at),
            ..Default::default()
        }
        .insert(&app.db.write)
        .await
        .unwrap();
    }
    assert_eq!(tollgate::admin::idempotency::purge(&app.db).await.unwrap(), 1);
    let left: Vec<String> =
        idempotency_keys::Entity::find().all(&app.db.read).await.unwrap().into_iter().map(|r| r.idem_key).collect();
    assert_eq!(left, ["recent"]);
}

on_all_backends!(old_idempotency_keys_are_purged);

/// The station always keeps an enabled administrator: the last one cannot be demoted or
/// disabled, and two admins demoting each other at once leave one of them in place.
async fn the_last_administrator_stays(backend: Backend) {
    use tollgate::accounts::{ROLE_ADMIN, ROLE_USER, set_disabled, set_role};
    use tollgate::audit::Actor;
    let app = crate::helpers::spawn_app(backend).await;
    let cache = app.cache();
    let ops = Actor::system();
    let a = crate::helpers::password_user(&app.db, "a@example.com", ROLE_ADMIN).await;
    let b = crate::helpers::password_user(&app.db, "b@example.com", ROLE_ADMIN).await;
    let customer = crate::helpers::password_user(&app.db, "c@example.com", ROLE_USER).await;

    // Racing demotions: exactly one lands.
    let (ra, rb) = tokio::join!(set_role(&app.db, a.id, ROLE_USER, &ops), set_role(&app.db, b.id, ROLE_USER, &ops));
    assert_eq!(u8::from(ra.is_ok()) + u8::from(rb.is_ok()), 1, "{ra:?} {rb:?}");
    let last = if ra.is_ok() { &b } else { &a };
    assert!(matches!(set_role(&app.db, last.id, ROLE_USER, &ops).await, Err(Error::Conflict(_))));
    assert!(matches!(set_disabled(&app.db, &cache, last.id, true, &ops).await, Err(Error::Conflict(_))));
    let admins = tollgate::db::entities::users::Entity::find()
        .filter(tollgate::db::entities::users::Column::Role.eq(ROLE_ADMIN))
        .filter(tollgate::db::entities::users::Column::Disabled.eq(false))
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    // Customers are unaffected, and with a second admin the first may go.
    set_disabled(&app.db, &cache, customer.id, true, &ops).await.unwrap();
    set_role(&app.db, customer.id, ROLE_ADMIN, &ops).await.unwrap();
    set_disabled(&app.db, &cache, customer.id, false, &ops).await.unwrap();
    set_role(&app.db, last.id, ROLE_USER, &ops).await.unwrap();
}

on_all_backends!(the_last_administrator_stays);
