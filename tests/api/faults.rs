//! Faults: a database, cache or upstream that fails never costs a customer money they did not
//! spend, and never lets a request through unpaid.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, Mode, UPSTREAM_KEY, assert_books_balance, chat_body, spawn_gateway};
use crate::on_all_backends;

async fn database_down_means_503_and_no_upstream_call(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (_, warm_key) = g.app.customer("warm@example.com", 1_000_000).await;
    let (_, cold_key) = g.app.customer("cold@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&warm_key, &chat_body(false)).await.status(), 200, "the key is now cached");
    let calls = g.fake.calls();
    g.app.db.read.clone().close().await.unwrap();
    g.app.db.write.clone().close().await.unwrap();
    for key in [&warm_key, &cold_key] {
        let res = g.app.chat(key, &chat_body(false)).await;
        assert_eq!(res.status(), 503);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "database.error");
    }
    assert_eq!(g.fake.calls(), calls, "no upstream call without a reservation");
}

async fn upstream_errors_are_retried_then_refunded(backend: Backend) {
    let g = spawn_gateway(backend, Mode::FailThenOk { status: 500, times: 2 }, &[]).await;
    let (user, key) = g.app.customer("retry@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(g.fake.calls(), 3, "two retries, then success");
    g.app.settled(user).await;
    assert_eq!(g.app.usage(user).await.len(), 1, "one reservation and one usage row for the whole exchange");

    for (status, client_status) in [(503, 502), (500, 502), (429, 429), (401, 502), (403, 502), (400, 400)] {
        g.fake.set_mode(Mode::Status(status));
        let before = g.fake.calls();
        let res = g.app.chat(&key, &chat_body(false)).await;
        assert_eq!(res.status().as_u16(), client_status, "upstream {status}");
        if client_status == 429 {
            assert!(res.headers().get("retry-after").is_some());
        }
        assert!(res.headers().get("openai-organization").is_none());
        let text = res.text().await.unwrap();
        assert!(!text.contains("org-FAKE") && !text.contains("sk-fake"), "upstream account details leaked: {text}");
        let retried = status == 429 || status >= 500;
        assert_eq!(g.fake.calls() - before, if retried { 3 } else { 1 }, "upstream {status}");
    }
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, 1_000_000 - 27, "failed requests are refunded in full");
    assert_books_balance(&g.app.db, user).await;
}

async fn upstream_timeouts_and_redirects_end_cleanly(backend: Backend) {
    let g = spawn_gateway(
        backend,
        Mode::DelayHead(Duration::from_secs(3)),
        &[("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "300"), ("UPSTREAM_MAX_RETRIES", "1")],
    )
    .await;
    let (user, key) = g.app.customer("slow@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 504);
    assert_eq!(g.fake.calls(), 2);

    g.fake.set_mode(Mode::Redirect("/elsewhere".into()));
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 502, "a redirect is an upstream error, never followed");
    assert_eq!(g.fake.calls(), 3, "the redirect target was not called");
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, 1_000_000);
    assert_books_balance(&g.app.db, user).await;
}

async fn only_our_credentials_reach_the_upstream(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("hygiene@example.com", 1_000_000).await;
    let res = g
        .app
        .client
        .post(format!("{}/v1/chat/completions", g.app.address))
        .bearer_auth(&key)
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "10.0.0.1")
        .header("openai-organization", "org-client")
        .header("openai-beta", "assistants=v2")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("openai-organization").is_none(), "upstream account headers never reach the client");
    let headers = &g.fake.headers()[0];
    assert_eq!(headers["authorization"], format!("Bearer {UPSTREAM_KEY}").as_str());
    for h in ["cookie", "x-forwarded-for", "openai-organization"] {
        assert!(headers.get(h).is_none(), "{h} was forwarded");
    }
    assert_eq!(headers["openai-beta"], "assistants=v2");
    let raw = format!("{headers:?}");
    assert!(!raw.contains(&key), "the client's key reached the upstream");
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}

async fn redis_down_still_authenticates_and_bills(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let (user, key) = g.app.customer("noredis@example.com", 1_000_000).await;
    for _ in 0..3 {
        assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    }
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, 1_000_000 - 3 * 27);
    assert_books_balance(&g.app.db, user).await;
}

on_all_backends!(
    database_down_means_503_and_no_upstream_call,
    upstream_errors_are_retried_then_refunded,
    upstream_timeouts_and_redirects_end_cleanly,
    only_our_credentials_reach_the_upstream,
    redis_down_still_authenticates_and_bills,
);

/// A Redis server of the test's own, on a free port, that the test can stop and start.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it is on CI machines)");
        Self { port, child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn wait_up(&self) {
        let port = self.port.to_string();
        crate::helpers::eventually(10, "redis-server answers", || {
            let port = port.clone();
            async move {
                std::process::Command::new("redis-cli")
                    .args(["-p", &port, "ping"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            }
        })
        .await;
    }

    fn keys(&self) -> String {
        let out =
            std::process::Command::new("redis-cli").args(["-p", &self.port.to_string(), "--scan"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_that_dies_and_returns_is_used_again_by_itself() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    redis.wait_up().await;
    let g = spawn_gateway(Backend::Sqlite, Mode::Normal, &[("REDIS_URL", &url)]).await;
    let (user, key) = g.app.customer("flaky@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    assert!(redis.keys().contains("key_cache:"), "the key was cached in Redis");

    redis.stop();
    for _ in 0..3 {
        assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200, "Redis down: the database answers");
    }

    let redis = OwnRedis::start(port);
    redis.wait_up().await;
    crate::helpers::eventually(15, "the app writes to Redis again", || {
        let (app, key) = (&g.app, &key);
        let redis = &redis;
        async move {
            tokio::time::sleep(Duration::from_millis(1100)).await; // past the local layer and the retry pause
            app.chat(key, &chat_body(false)).await.status() == 200 && redis.keys().contains("key_cache:")
        }
    })
    .await;
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
}
