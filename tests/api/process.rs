//! The real binary as a process: a crash mid-stream (kill -9) leaves a reservation that the
//! next start's sweeper resolves exactly once; no secret ever appears in a log line, even at
//! trace level; slow clients are cut off.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::db::entities::{reservations, usage_logs};

use crate::helpers::{
    Backend, CRON_SECRET, FakeUpstream, Mode, UPSTREAM_KEY, add_test_model, assert_books_balance, chat_body,
    eventually, spawn_app_with,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(
    database_url: &str,
    upstream: &str,
    port: u16,
    log: &std::path::Path,
    oauth: &[(&'static str, String)],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .envs(oauth.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENAI_BASE_URL", upstream)
        .env("OPENAI_API_KEY", UPSTREAM_KEY)
        .env("ALLOW_PRIVATE_UPSTREAMS", "true")
        .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
        .env("CRON_SECRET", CRON_SECRET)
        .env("NEXTAUTH_SECRET", "process-test-secret-process-test-secret")
        .env("SWEEP_INTERVAL_SECS", "1")
        .env("RUST_LOG", "trace")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
}

async fn wait_ready(port: u16) {
    eventually(30, "the server answers /healthz", || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_stream_is_swept_once_and_logs_hold_no_secrets() {
    let fake = FakeUpstream::start(Mode::SlowChunks(Duration::from_millis(200))).await.unwrap();
    fake.set_chunks(100);
    // Prepare the database (schema, model, customer) through the library, then hand it over.
    let setup = spawn_app_with(Backend::Sqlite, &[]).await;
    add_test_model(&setup).await;
    let (user, key) = setup.customer("crash@example.com", 1_000_000).await;
    let url = setup.database_url.clone();
    let db = setup.db.clone();
    let _kept = setup.stop().await;
    let db = tollgate::db::Db::connect(&url, 2).await.unwrap_or(db);
    let log = tempfile::NamedTempFile::new().unwrap();

    let oauth = crate::fake_oauth::FakeOAuth::start().await;
    oauth.sign_in_as(crate::fake_oauth::person("99", "logs@example.com"));
    let settings = oauth.settings();
    let port = free_port();
    let mut child = serve(&url, &fake.base_url(), port, log.path(), &settings);
    wait_ready(port).await;

    // A full OAuth sign-in through the process: its code, state, token and session id must not
    // be logged either.
    let browser = crate::fake_oauth::Browser::new();
    let authorize = browser.get(&format!("http://127.0.0.1:{port}/api/auth/signin/github")).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let callback = browser.get(&authorize).await.headers()["location"].to_str().unwrap().to_owned();
    let res = browser.get(&callback).await;
    assert_eq!(res.headers()["location"], "/dashboard");
    let page = browser.get(&format!("http://127.0.0.1:{port}/dashboard")).await.text().await.unwrap();
    let first_key = page.split("id=\"new-key\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    let session_id = browser.cookie("tollgate_session").unwrap();
    let callback_url = url::Url::parse(&callback).unwrap();
    let mut oauth_secrets: Vec<String> = callback_url.query_pairs().map(|(_, v)| v.into_owned()).collect();
    oauth_secrets.extend(oauth.shared.tokens.lock().unwrap().keys().cloned());
    oauth_secrets.extend([first_key, session_id]);
    assert_eq!(oauth_secrets.len(), 5, "code, state, access token, first key, session id");

    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(&key)
        .header("cookie", "tollgate_session=session-cookie-value")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    use futures::StreamExt;
    stream.next().await.unwrap().unwrap();

    child.kill().unwrap(); // SIGKILL: no shutdown, no settlement
    child.wait().unwrap();
    drop(stream);
    let pending =
        reservations::Entity::find().filter(reservations::Column::State.eq("pending")).all(&db.read).await.unwrap();
    assert_eq!(pending.len(), 1, "the crash left the reservation pending");
    let reserved = pending[0].amount;
    // Age it past the maximum request time, then start again: the sweeper charges it, once.
    reservations::Entity::update_many()
        .col_expr(reservations::Column::CreatedAt, Expr::value(0i64))
        .exec(&db.write)
        .await
        .unwrap();
    let port = free_port();
    let mut child = serve(&url, &fake.base_url(), port, log.path(), &settings);
    wait_ready(port).await;
    eventually(15, "the sweeper resolves the stale reservation", || {
        let db = db.clone();
        async move {
            reservations::Entity::find()
                .filter(reservations::Column::State.eq("pending"))
                .all(&db.read)
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // another sweep: must change nothing
    let rows = usage_logs::Entity::find().filter(usage_logs::Column::UserId.eq(user)).all(&db.read).await.unwrap();
    assert_eq!(rows.len(), 1, "resolved exactly once");
    assert_eq!((rows[0].cost, rows[0].usage_source.as_str()), (reserved, "reserved"));
    assert_eq!(tollgate::billing::balance::amount(&db.read, user).await.unwrap(), 1_000_000 - reserved);
    assert_books_balance(&db, user).await;

    // A cron call, so the secret has been presented to the server at least once.
    let res = client
        .get(format!("http://127.0.0.1:{port}/api/cron/expire-subscriptions"))
        .bearer_auth(CRON_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    child.wait().unwrap();

    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.len() > 1000, "trace logging was on");
    let mut secrets = vec![
        key.clone(),
        UPSTREAM_KEY.into(),
        CRON_SECRET.into(),
        "session-cookie-value".into(),
        "process-test-secret".into(),
        "gh-secret".into(),
    ];
    secrets.extend(oauth_secrets);
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {secret}");
    }
    let file = url.trim_start_matches("sqlite://").to_owned();
    let mut raw = std::fs::read(&file).unwrap();
    raw.extend(std::fs::read(format!("{file}-wal")).unwrap_or_default());
    for secret in &secrets {
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret reached the database: {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off() {
    let app =
        spawn_app_with(Backend::Sqlite, &[("HEADER_READ_TIMEOUT_MS", "300"), ("BODY_READ_TIMEOUT_MS", "300")]).await;
    add_test_model(&app).await;
    let (_, key) = app.customer("slow@example.com", 1_000_000).await;
    let addr = app.address.trim_start_matches("http://").to_owned();

    // A request head that never ends: the connection is closed.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server must close a connection whose head never completes");

    // A body that trickles: 408, and nothing reserved.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
