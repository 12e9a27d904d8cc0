//! The cron endpoint: only the exact bearer secret runs the job; without a usable secret it is off.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tollgate::clock::now_ms;
use tollgate::db::entities::subscriptions as subs;

use crate::helpers::{Backend, CRON_SECRET, TestApp, spawn_app, spawn_app_with, user_with_balance};
use crate::on_all_backends;

/// Grants a subscription and moves its expiry into the past.
async fn expired_subscription(app: &TestApp, email: &str) -> i64 {
    let user = user_with_balance(&app.db, email, 0).await;
    let sub = tollgate::subscriptions::grant(&app.db, user, "old", 700, 1, None).await.unwrap();
    subs::Entity::update_many()
        .col_expr(subs::Column::ExpiresAt, Expr::value(now_ms() - 1000))
        .filter(subs::Column::Id.eq(sub.id))
        .exec(&app.db.write)
        .await
        .unwrap();
    sub.id
}

async fn remaining(app: &TestApp, id: i64) -> i64 {
    subs::Entity::find_by_id(id).one(&app.db.read).await.unwrap().unwrap().tokens_remaining
}

async fn cron_endpoint_requires_the_exact_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let sub = expired_subscription(&app, "cron@example.com").await;
    let wrong_secret = format!("Bearer {CRON_SECRET}x");
    let basic = format!("Basic {CRON_SECRET}");
    let token = format!("Token {CRON_SECRET}");
    let prefix = format!("Bearer {}", &CRON_SECRET[..CRON_SECRET.len() - 1]);
    let bad: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some(&wrong_secret),
        Some(&prefix),
        Some(&basic),
        Some(&token),
        Some(CRON_SECRET),
    ];
    for header in bad {
        let res = app.cron(header).await;
        assert_eq!(res.status(), 401, "header {header:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["error"]["message"].is_string());
        assert_eq!(remaining(&app, sub).await, 700, "the job must not run for header {header:?}");
    }

    let res = app.cron(Some(&format!("Bearer {CRON_SECRET}"))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap(), serde_json::json!({ "affected": 1 }));
    assert_eq!(remaining(&app, sub).await, 0);
    // Idempotent: a second call changes nothing.
    let res = app.cron(Some(&format!("bearer {CRON_SECRET}"))).await;
    assert_eq!(res.json::<serde_json::Value>().await.unwrap(), serde_json::json!({ "affected": 0 }));
    app.stop().await;
}

async fn cron_endpoint_is_off_without_a_usable_secret(backend: Backend) {
    for secret in ["", "short-secret"] {
        let app = spawn_app_with(backend, &[("CRON_SECRET", secret)]).await;
        let sub = expired_subscription(&app, "off@example.com").await;
        for header in [None, Some("Bearer "), Some("Bearer short-secret")] {
            let res = app.cron(header).await;
            assert_eq!(res.status(), 503, "secret {secret:?}, header {header:?}");
            assert_eq!(remaining(&app, sub).await, 700);
        }
        app.stop().await;
    }
}

on_all_backends!(cron_endpoint_requires_the_exact_secret, cron_endpoint_is_off_without_a_usable_secret);
