//! Faults: a database, cache or upstream that fails never costs a customer money they did not
//! spend, and never lets a request through unpaid.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Backend, FindByHash, Mode, UPSTREAM_KEY, assert_books_balance, chat_body, restore_default_channel, spawn_gateway,
};
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
        if status == 401 || status == 403 {
            // A refused key disables the channel's only key, and so the channel: put it back.
            restore_default_channel(&g.app).await;
        }
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
    // A stream's head comes before any generation: a stream that never started is retried
    // and refunded. (A non-streamed request left unanswered is not: see edges.rs.)
    let res = g.app.chat(&key, &chat_body(true)).await;
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

/// A TCP proxy in front of a server (Redis, a database) that the test can hang: while hung it
/// reads what clients send (counting Redis commands) but forwards and answers nothing, as a
/// stopped or partitioned server does. Connections open when it hangs stay open, hung.
struct Proxy {
    addr: std::net::SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    hung: AtomicBool,
    /// Cancelled to close every open connection; replaced by a fresh token each time.
    cut: Mutex<CancellationToken>,
    /// Redis commands that arrived while hung.
    swallowed: AtomicUsize,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            hung: AtomicBool::new(false),
            cut: Mutex::new(CancellationToken::new()),
            swallowed: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                let cut = state.cut.lock().unwrap().clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cut.cancelled() => {}
                        () = relay(client, target, &state) => {}
                    }
                });
            }
        });
        Self { addr, state }
    }

    /// From now on nothing is forwarded or answered, on open connections and new ones.
    fn hang(&self) {
        self.state.hung.store(true, Ordering::SeqCst);
    }

    /// Closes every open connection (as a server that died would).
    fn cut(&self) {
        let mut cut = self.state.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Back to forwarding; the connections that hung are closed, so clients reconnect.
    fn resume(&self) {
        self.state.hung.store(false, Ordering::SeqCst);
        self.cut();
    }

    fn swallowed(&self) -> usize {
        self.state.swallowed.load(Ordering::SeqCst)
    }
}

async fn relay(mut client: TcpStream, target: std::net::SocketAddr, state: &ProxyState) {
    let mut server = None;
    if !state.hung.load(Ordering::SeqCst) {
        match TcpStream::connect(target).await {
            Ok(s) => server = Some(s),
            Err(_) => return,
        }
    }
    let (mut from_client, mut to_client) = client.split();
    let mut from_server_buf = [0u8; 16 * 1024];
    let mut from_client_buf = [0u8; 16 * 1024];
    loop {
        let from_server = async {
            match server.as_mut() {
                Some(s) => s.read(&mut from_server_buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = from_client.read(&mut from_client_buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                let data = &from_client_buf[..n];
                if state.hung.load(Ordering::SeqCst) {
                    // Each Redis command starts a line with `*<arguments>`.
                    let commands = data.windows(3).filter(|w| w[0] == b'\n' && w[1] == b'*' && w[2].is_ascii_digit()).count()
                        + usize::from(data.first() == Some(&b'*'));
                    state.swallowed.fetch_add(commands, Ordering::SeqCst);
                } else if let Some(s) = server.as_mut()
                    && s.write_all(data).await.is_err()
                {
                    return;
                }
            }
            n = from_server => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                if !state.hung.load(Ordering::SeqCst) && to_client.write_all(&from_server_buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_redis_is_skipped_after_its_first_timeout() {
    let port = free_port();
    let redis = OwnRedis::start(port);
    redis.wait_up().await;
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let url = format!("redis://{}", proxy.addr);
    let g = spawn_gateway(Backend::Sqlite, Mode::Normal, &[("REDIS_URL", &url)]).await;
    let (user, key) = g.app.customer("hung@example.com", 1_000_000).await;
    let (other, other_key) = g.app.customer("other@example.com", 1_000_000).await;
    let mut cold = Vec::new();
    for i in 0..20 {
        cold.push(g.app.customer(&format!("cold{i}@example.com"), 1_000_000).await);
    }
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    g.app.settled(user).await;
    assert!(redis.keys().contains("key_cache:"), "Redis is in use");

    // Redis stops answering, its connections stay open. Each request with a key not cached here
    // asks Redis first and would wait out the timeout of each cache call; after the first
    // timeout, Redis is skipped and requests run on the database.
    proxy.hang();
    for (_, key) in &cold {
        assert_eq!(g.app.chat(key, &chat_body(false)).await.status(), 200, "a hung Redis fails no request");
    }
    let sent = proxy.swallowed();
    assert!(sent <= 6, "20 requests sent {sent} commands to a Redis that had stopped answering");

    // A revocation while Redis is skipped: refused here at once, and written to Redis once it
    // answers again (other instances then refuse the key without a database lookup).
    let hash = tollgate::keys::hash(&key);
    let id = tollgate::db::entities::api_keys::Entity::find_by_hash(&key, &g.app.db).await;
    tollgate::keys::revoke(&g.app.db, &g.app.cache(), None, id).await.unwrap();
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 401);
    assert!(!redis.keys().contains(&format!("revoked:{hash}")));

    proxy.resume();
    crate::helpers::eventually(20, "the skipped revocation reaches Redis", || {
        let (app, other_key, redis, hash) = (&g.app, &other_key, &redis, &hash);
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            app.chat(other_key, &chat_body(false)).await.status() == 200
                && redis.keys().contains(&format!("revoked:{hash}"))
        }
    })
    .await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 401);
    for u in [user, other].into_iter().chain(cold.iter().map(|(u, _)| *u)) {
        g.app.settled(u).await;
        assert_books_balance(&g.app.db, u).await;
    }
}

/// The database stops answering (its connections are cut and new ones get no answer): requests
/// are refused with 503 within the acquire timeout, before any upstream call, and `/readyz`
/// says so within a second. Server backends only: SQLite's outage is a locked file (below).
async fn database_outage_is_answered_fast(backend: Backend) {
    let test_db = crate::helpers::fresh_db(backend).await;
    let mut url = url::Url::parse(&test_db.url).unwrap();
    let target = tokio::net::lookup_host((url.host_str().unwrap(), url.port_or_known_default().unwrap()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let fake = crate::helpers::FakeUpstream::start(Mode::Normal).await.unwrap();
    let base = fake.base_url();
    let app = crate::helpers::spawn_instance(
        url.as_str(),
        &[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", UPSTREAM_KEY), ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")],
    )
    .await;
    crate::helpers::add_test_model(&app).await;
    let (user, warm_key) = app.customer("warm@example.com", 1_000_000).await;
    let (_, cold_key) = app.customer("cold@example.com", 1_000_000).await;
    assert_eq!(app.chat(&warm_key, &chat_body(false)).await.status(), 200, "the key is now cached");
    app.settled(user).await;
    let calls = fake.calls();

    proxy.hang();
    proxy.cut();
    for key in [&warm_key, &cold_key] {
        // A bound far above the configured 1 s, far below the 10 s requests used to wait.
        let res = tokio::time::timeout(Duration::from_secs(6), app.chat(key, &chat_body(false)))
            .await
            .expect("a database outage is answered within the acquire timeout");
        assert_eq!(res.status(), 503);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "database.error");
    }
    let ready = tokio::time::timeout(Duration::from_secs(3), app.get("/readyz"))
        .await
        .expect("/readyz answers within its own short timeout");
    assert_eq!(ready.status(), 503);
    assert_eq!(fake.calls(), calls, "no upstream call without a reservation");

    proxy.resume();
    crate::helpers::eventually(20, "requests succeed once the database is back", || async {
        app.chat(&warm_key, &chat_body(false)).await.status() == 200
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
    drop(test_db);
}

mod database_outage_is_answered_fast {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(not(tollgate_test_mysql), ignore = "TEST_MYSQL_URL is not set")]
    async fn mysql() {
        if Backend::MySql.available() {
            super::database_outage_is_answered_fast(Backend::MySql).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(not(tollgate_test_postgres), ignore = "TEST_POSTGRES_URL is not set")]
    async fn postgres() {
        if Backend::Postgres.available() {
            super::database_outage_is_answered_fast(Backend::Postgres).await;
        }
    }
}

/// Another process holds SQLite's write lock: requests are refused with 503 after the busy
/// timeout, once (not once per job of the writer's batch), nothing is reserved or charged, and
/// requests succeed again as soon as the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locked_sqlite_is_answered_fast_and_charges_nothing() {
    use sea_orm::sqlx::{Connection, Executor};

    let g = spawn_gateway(Backend::Sqlite, Mode::Normal, &[("DATABASE_ACQUIRE_TIMEOUT_MS", "500")]).await;
    let (user, key) = g.app.customer("locked@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    g.app.settled(user).await;
    let balance = g.app.balance(user).await;
    let calls = g.fake.calls();

    let mut locker = sea_orm::sqlx::SqliteConnection::connect(&g.app.database_url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    // Enough requests at once to fill a write batch: answered together after one busy timeout,
    // not one after the other.
    let body = chat_body(false);
    let requests = (0..30).map(|_| g.app.chat(&key, &body));
    // A bound far above the configured 0.5 s, far below the 20 s requests used to hang (or
    // 30 × 0.5 s, were each job of a failed batch run again alone).
    let answers = tokio::time::timeout(Duration::from_secs(6), futures::future::join_all(requests))
        .await
        .expect("a locked database is answered within the busy timeout");
    for res in answers {
        assert_eq!(res.status(), 503);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "database.error");
    }
    assert_eq!(g.fake.calls(), calls, "no upstream call without a reservation");
    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();

    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, balance, "refused requests cost nothing, now or later");
    assert_eq!(g.app.usage(user).await.iter().filter(|u| u.status_code == 200).count(), 1);
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200, "served again once the lock is gone");
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, balance - 27);
    assert_books_balance(&g.app.db, user).await;
}

/// A 429 whose `Retry-After` is within `UPSTREAM_MAX_RETRY_WAIT_MS` is retried after that
/// pause, not before.
async fn upstream_retry_after_is_waited_out(backend: Backend) {
    let g = spawn_gateway(backend, Mode::FailThenOk { status: 429, times: 1 }, &[]).await;
    let (user, key) = g.app.customer("patient@example.com", 1_000_000).await;
    assert_eq!(g.app.chat(&key, &chat_body(false)).await.status(), 200);
    let times = g.fake.call_times();
    assert_eq!(times.len(), 2, "one retry");
    let pause = times[1] - times[0];
    assert!(pause >= Duration::from_secs(2), "retried {pause:?} after a 429 with Retry-After: 2");
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, 1_000_000 - 27);
    assert_books_balance(&g.app.db, user).await;
}

/// A 429 asking for a longer pause than we wait is passed on at once, with its `Retry-After`.
async fn upstream_retry_after_too_long_is_passed_on(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Status(429), &[("UPSTREAM_MAX_RETRY_WAIT_MS", "1000")]).await;
    let (user, key) = g.app.customer("impatient@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "2");
    assert_eq!(g.fake.calls(), 1, "no retry against the upstream's rate limit");
    g.app.settled(user).await;
    assert_eq!(g.app.balance(user).await, 1_000_000, "refunded in full");
    assert_books_balance(&g.app.db, user).await;
}

on_all_backends!(upstream_retry_after_is_waited_out, upstream_retry_after_too_long_is_passed_on);
