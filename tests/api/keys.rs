//! Keys at the gateway: malformed, unknown and revoked keys are refused alike; revocation and
//! disabling reach every instance within 5 s, with and without Redis.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    Backend, FindByHash, Mode, assert_books_balance, chat_body, eventually, spawn_gateway, spawn_instance,
};
use crate::on_all_backends;

async fn bad_keys_are_refused_alike_and_before_any_lookup(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("keys@example.com", 1_000_000).await;
    let url = format!("{}/v1/chat/completions", g.app.address);
    let res = g.app.client.post(&url).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(res.status(), 401, "no key");

    let revoked = {
        let (_, k) = g.app.customer("other@example.com", 1_000_000).await;
        let row = tollgate::db::entities::api_keys::Entity::find_by_hash(&k, &g.app.db).await;
        tollgate::keys::revoke(&g.app.db, &g.app.cache(), None, row).await.unwrap();
        k
    };
    let unknown = tollgate::keys::generate().plaintext;
    let mut bodies = Vec::new();
    for bad in ["sk-short", "not-a-key", &format!("{key}x"), unknown.as_str(), revoked.as_str()] {
        let res = g.app.client.post(&url).bearer_auth(bad).json(&chat_body(false)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{bad}");
        bodies.push(res.json::<Value>().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "malformed, unknown and revoked keys get one answer: {bodies:?}");
    let res = g
        .app
        .client
        .post(&url)
        .header("authorization", format!("Basic {key}"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(g.fake.calls(), 0);
    assert!(g.app.usage(user).await.is_empty(), "unauthenticated calls are not logged against anyone");
}

/// Revokes, disables a key and disables a user on one instance; the other refuses them within
/// `within_secs`.
async fn revocation_reaches_every_instance(backend: Backend, redis: Option<String>) {
    let prefix = format!("tg-test-{}:", tollgate::crypto::random_token(6));
    let mut extra: Vec<(&str, &str)> = vec![];
    if let Some(url) = &redis {
        extra.push(("REDIS_URL", url));
        extra.push(("REDIS_PREFIX", &prefix));
    }
    let g = spawn_gateway(backend, Mode::Normal, &extra).await;
    let base = g.fake.base_url();
    let mut second_extra = extra.clone();
    second_extra.extend([("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", crate::helpers::UPSTREAM_KEY)]);
    let other = spawn_instance(&g.app.database_url, &second_extra).await;
    let (user_a, key_a) = g.app.customer("a@example.com", 1_000_000).await;
    let (user_b, key_b) = g.app.customer("b@example.com", 1_000_000).await;
    let (user_c, key_c) = g.app.customer("c@example.com", 1_000_000).await;
    // Both instances have every key cached.
    for app in [&g.app, &other] {
        for k in [&key_a, &key_b, &key_c] {
            assert_eq!(app.chat(k, &chat_body(false)).await.status(), 200);
        }
    }

    // Revoke key A the way the CLI and the dashboard do.
    let id = tollgate::db::entities::api_keys::Entity::find_by_hash(&key_a, &g.app.db).await;
    tollgate::keys::revoke(&g.app.db, &g.app.cache(), None, id).await.unwrap();
    assert_eq!(g.app.chat(&key_a, &chat_body(false)).await.status(), 401, "at once on the revoking instance");
    let within = if redis.is_some() { 2 } else { 6 };
    eventually(within, "the other instance refuses the revoked key", || async {
        other.chat(&key_a, &chat_body(false)).await.status() == 401
    })
    .await;

    // Disable user B.
    let email = "b@example.com";
    assert_eq!(tollgate::accounts::require_by_email(&g.app.db.read, email).await.unwrap().id, user_b);
    tollgate::accounts::set_disabled(&g.app.db, &g.app.cache(), user_b, true, &tollgate::audit::Actor::system())
        .await
        .unwrap();
    assert_eq!(g.app.chat(&key_b, &chat_body(false)).await.status(), 401);
    eventually(within, "the other instance refuses the disabled user's key", || async {
        other.chat(&key_b, &chat_body(false)).await.status() == 401
    })
    .await;

    // Disable key C (not revoked: it can come back).
    let id = tollgate::db::entities::api_keys::Entity::find_by_hash(&key_c, &g.app.db).await;
    tollgate::keys::set_disabled(&g.app.db, &g.app.cache(), None, id, true).await.unwrap();
    assert_eq!(g.app.chat(&key_c, &chat_body(false)).await.status(), 401);
    eventually(within, "the other instance refuses the disabled key", || async {
        other.chat(&key_c, &chat_body(false)).await.status() == 401
    })
    .await;
    tollgate::keys::set_disabled(&g.app.db, &g.app.cache(), None, id, false).await.unwrap();
    eventually(within, "an enabled key works again", || async {
        other.chat(&key_c, &chat_body(false)).await.status() == 200
    })
    .await;

    g.app.settled(user_c).await;
    assert_books_balance(&g.app.db, user_c).await;
    g.app.settled(user_a).await;
    g.app.settled(user_b).await;
    assert_books_balance(&g.app.db, user_a).await;
    assert_books_balance(&g.app.db, user_b).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), other.stop()).await;
}

async fn revocation_without_redis(backend: Backend) {
    revocation_reaches_every_instance(backend, None).await;
}

async fn revocation_with_redis(backend: Backend) {
    let url = redis_url();
    revocation_reaches_every_instance(backend, Some(url)).await;
}

/// Set whenever the Redis variants run (they are ignored without it).
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL was set when the tests were built")
}

on_all_backends!(bad_keys_are_refused_alike_and_before_any_lookup, revocation_without_redis);
on_all_backends!(redis: revocation_with_redis);
