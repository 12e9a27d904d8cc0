//! Requests and tokens per minute, per key and per user (admin-set, or the instance defaults):
//! OpenAI's headers and their values, the 429 with `Retry-After`, per-user concurrency, and
//! Redis down (per-instance limits, never an error). Across instances: `multi_instance.rs`.

use reqwest::Method;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::admin::Caller;
use crate::helpers::{
    Backend, FindByHash, MAX_OUT, Mode, assert_books_balance, chat_body, prompt_tokens, spawn_gateway,
};
use crate::on_all_backends;

async fn set_key(app: &crate::helpers::TestApp, key: &str, rpm: Option<i64>, tpm: Option<i64>) {
    let id = tollgate::db::entities::api_keys::Entity::find_by_hash(key, &app.db).await;
    let settings = tollgate::keys::SettingsChange { rpm: Some(rpm), tpm: Some(tpm), ..Default::default() };
    let change = tollgate::keys::KeyChange { settings, ..Default::default() };
    tollgate::keys::update(&app.db, &app.cache(), None, id, change).await.unwrap();
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn minute() -> i64 {
    tollgate::clock::now_ms() / 60_000
}

async fn key_limits_answer_with_openais_headers(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (user, key) = app.customer("headers@example.com", 100_000_000).await;
    let (_, unlimited) = app.customer("free@example.com", 100_000_000).await;
    set_key(app, &key, Some(3), Some(10_000)).await;
    let worst = prompt_tokens(&chat_body(false)) + MAX_OUT; // tokens, not money
    let start = minute();
    let first = app.chat(&key, &chat_body(false)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(header(&first, "x-ratelimit-remaining-requests").as_deref(), Some("2"));
    assert_eq!(header(&first, "x-ratelimit-limit-tokens").as_deref(), Some("10000"));
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), Some((10_000 - worst).to_string()));
    let reset = header(&first, "x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with('s') && reset.len() >= 2, "{reset}");
    app.settled(user).await;
    // Settlement corrected the tokens to what was used.
    let used: i64 = app.usage(user).await.iter().map(|u| u.total_tokens).sum();
    let second = app.chat(&key, &chat_body(false)).await;
    assert_eq!(second.status(), 200);
    if minute() == start {
        assert_eq!(header(&second, "x-ratelimit-remaining-requests").as_deref(), Some("1"));
        assert_eq!(header(&second, "x-ratelimit-remaining-tokens"), Some((10_000 - used - worst).to_string()));
    }
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    let calls = g.fake.calls();
    let refused = app.chat(&key, &chat_body(false)).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(header(&refused, "x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests").as_deref(), Some("0"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("3 requests per minute"), "{body}");
    assert_eq!(g.fake.calls(), calls, "a refused request never reaches the upstream");
    // Another key is not held by this one's limit, and a key without limits sends no headers.
    let other = app.chat(&unlimited, &chat_body(false)).await;
    assert_eq!(other.status(), 200);
    assert!(header(&other, "x-ratelimit-limit-requests").is_none());
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;

    // A request whose worst case is over the key's tokens per minute is refused, whatever the
    // minute: it says so.
    let (_, small) = app.customer("tpm@example.com", 100_000_000).await;
    set_key(app, &small, None, Some(50)).await;
    let res = app.chat(&small, &chat_body(false)).await;
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("50 tokens per minute"), "{body}");
}

async fn user_limits_are_set_by_admins_over_the_defaults(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[("DEFAULT_USER_RPM", "2")]).await;
    let app = &g.app;
    let (_, admin) = Caller::signed_in(app, "root@example.com", "admin").await;
    let (user, key) = app.customer("limited@example.com", 100_000_000).await;
    let (_, second_key) = tollgate::keys::create(&app.db.write, user, None).await.unwrap();
    // The default: 2 per minute for the user, whichever key. (A run that straddles a minute
    // boundary may see the previous minute's share decay: those checks are skipped then.)
    let start = minute();
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(app.chat(&second_key, &chat_body(false)).await.status(), 200);
    let res = app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("this account"), "{body}");

    // Bad values: 400, nothing changes.
    for bad in [json!({ "rpm": 0 }), json!({ "tpm": "many" }), json!({ "maxConcurrent": 100_000 })] {
        let (status, _) = admin.send(Method::PATCH, &format!("/api/admin/users/{user}"), &bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (_, detail) = admin.get(&format!("/api/admin/users/{user}")).await;
    assert_eq!(detail["limits"], json!({ "rpm": null, "tpm": null, "maxConcurrent": null }));

    // Raised for this user: applies at once.
    let (status, body) =
        admin.send(Method::PATCH, &format!("/api/admin/users/{user}"), &json!({ "rpm": 5, "maxConcurrent": 3 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"], json!({ "rpm": 5, "tpm": null, "maxConcurrent": 3 }));
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    let audit = tollgate::db::entities::audit_logs::Entity::find()
        .filter(tollgate::db::entities::audit_logs::Column::Action.eq("user.limits"))
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(audit, 1);
    // Back to the default.
    let (status, body) = admin.send(Method::PATCH, &format!("/api/admin/users/{user}"), &json!({ "rpm": null })).await;
    assert_eq!((status, body["limits"]["rpm"].clone()), (200, Value::Null));
    let last = app.chat(&key, &chat_body(false)).await.status();
    if minute() == start {
        assert_eq!(last, 429);
    }
}

/// With Redis unreachable, limits count per instance at once: admitted up to the limit, then
/// 429 — never a 500.
async fn redis_down_falls_back_to_per_instance_limits(backend: Backend) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let g = spawn_gateway(backend, Mode::Normal, &[("REDIS_URL", &url)]).await;
    let app = &g.app;
    let (user, key) = app.customer("down@example.com", 100_000_000).await;
    set_key(app, &key, Some(2), None).await;
    let statuses = [
        app.chat(&key, &chat_body(false)).await.status().as_u16(),
        app.chat(&key, &chat_body(false)).await.status().as_u16(),
        app.chat(&key, &chat_body(false)).await.status().as_u16(),
    ];
    assert_eq!(statuses, [200, 200, 429]);
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(
    key_limits_answer_with_openais_headers,
    user_limits_are_set_by_admins_over_the_defaults,
    redis_down_falls_back_to_per_instance_limits,
);
