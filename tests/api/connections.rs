//! Connection-level limits: idle and handshake timeouts, the cap on open connections, body read
//! timeouts on every route, and the shutdown cut. Not database tests: SQLite is enough.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, Mode, PASSWORD, chat_body, eventually, password_user, spawn_app_with, spawn_gateway};

/// The longest any test here waits for the server to act; far above every configured timeout.
const BOUND: Duration = Duration::from_secs(20);

async fn connect(address: &str) -> TcpStream {
    TcpStream::connect(address.trim_start_matches("http://")).await.unwrap()
}

/// Reads (and discards) until the server closes the connection (EOF or reset). False when it is
/// still open after `BOUND`.
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let read_to_end = async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(BOUND, read_to_end).await.is_ok()
}

/// Reads one HTTP/1 response with a `content-length` and returns its status and body.
async fn read_response(socket: &mut TcpStream) -> (u16, String) {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                if data.len() >= end + 4 + length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string());
                }
            }
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before a whole response: {}", String::from_utf8_lossy(&data));
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("no response from the server")
}

/// A client without a connection pool: every request opens a new connection.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(Backend::Sqlite, &[("IDLE_CONNECTION_TIMEOUT_MS", "300")]).await;
    let mut silent = connect(&app.address).await;
    assert!(closed_by_server(&mut silent).await, "a silent connection is held open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_that_sends_only_the_http2_preface_is_closed() {
    let app = spawn_app_with(Backend::Sqlite, &[("IDLE_CONNECTION_TIMEOUT_MS", "300")]).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let empty_settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut h2 = connect(&app.address).await;
    h2.write_all(preface).await.unwrap();
    h2.write_all(&empty_settings).await.unwrap();
    // Part of the preface only: the server is still guessing the protocol.
    let mut partial = connect(&app.address).await;
    partial.write_all(&preface[..16]).await.unwrap();
    assert!(closed_by_server(&mut h2).await, "an HTTP/2 connection without streams is held open");
    assert!(closed_by_server(&mut partial).await, "a half-sent HTTP/2 preface is held open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_head_that_never_ends_is_cut() {
    let app = spawn_app_with(Backend::Sqlite, &[("HEADER_READ_TIMEOUT_MS", "300")]).await;
    // Idle timeout at its default (60 s): only the header read timeout can close these.
    let mut first = connect(&app.address).await;
    first.write_all(b"GET /healthz HT").await.unwrap();
    assert!(closed_by_server(&mut first).await, "a partial first request line is held open");
    let mut second = connect(&app.address).await;
    second.write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut second).await.0, 200);
    second.write_all(b"GET /healthz HTTP/1.1\r\nHost: tol").await.unwrap();
    assert!(closed_by_server(&mut second).await, "a partial second request head is held open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_keep_alive_connection_is_closed_but_not_one_with_a_stream_in_progress() {
    let g = spawn_gateway(
        Backend::Sqlite,
        Mode::SlowChunks(Duration::from_millis(100)),
        // hyper's header read timeout also runs between requests: keep it out of the way.
        &[("IDLE_CONNECTION_TIMEOUT_MS", "300"), ("HEADER_READ_TIMEOUT_MS", "60000")],
    )
    .await;
    let mut keep_alive = connect(&g.app.address).await;
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut keep_alive).await.0, 200);
    assert!(closed_by_server(&mut keep_alive).await, "an idle keep-alive connection is held open");

    // A stream of about 1.5 s, five times the idle timeout, over HTTP/1 and HTTP/2.
    g.fake.set_chunks(15);
    let (_, key) = g.app.customer("long@example.com", 1_000_000).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for client in [fresh_client(), h2] {
        let res = client
            .post(format!("{}/v1/chat/completions", g.app.address))
            .bearer_auth(&key)
            .json(&chat_body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.expect("the stream was cut");
        assert!(text.trim_end().ends_with("data: [DONE]"), "the stream did not end normally: {text}");
        assert_eq!(text.matches("chat.completion.chunk").count(), 15, "every chunk arrived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_connections_beyond_the_cap_are_closed_until_some_close() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAX_CONNECTIONS", "16")]).await;
    let healthz = || async {
        fresh_client().get(format!("{}/healthz", app.address)).send().await.is_ok_and(|r| r.status() == 200)
    };
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(connect(&app.address).await);
    }
    // Below the cap a request is answered: asked on one of these connections, which stays open
    // (a connection of its own, closed after, might not be counted out before the next ones
    // come, and the last of them would be the one refused).
    idle[0].write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut idle[0]).await.0, 200, "below the cap, /healthz answers");
    for _ in 0..4 {
        idle.push(connect(&app.address).await);
    }
    // The server accepts in order: these 16 are in, the next is over the cap.
    let res = fresh_client().get(format!("{}/healthz", app.address)).send().await;
    assert!(res.is_err(), "a connection over the cap was served: {res:?}");
    drop(idle);
    eventually(10, "/healthz answers once the idle connections closed", healthz).await;
    app.stop().await;
}

/// Sends `head` and then a body of `declared` bytes, one byte every 100 ms; returns the answer.
async fn trickle(address: &str, head: &str, declared: usize) -> (u16, Value) {
    let socket = connect(address).await;
    let (mut read, mut write) = socket.into_split();
    let head = format!("{head}Content-Length: {declared}\r\n\r\n");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..declared {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut data = Vec::new();
    let answer = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            data.extend_from_slice(&buf[..n]);
        }
    };
    // The trickle would take 100 s; the answer must come long before.
    let _ = tokio::time::timeout(BOUND, answer).await;
    writer.abort();
    let text = String::from_utf8_lossy(&data).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer to a trickling body: {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trickling_and_oversized_bodies_are_refused_on_every_route() {
    let g = spawn_gateway(Backend::Sqlite, Mode::Normal, &[("BODY_READ_TIMEOUT_MS", "300")]).await;
    let app = &g.app;
    password_user(&app.db, "slow@example.com", "user").await;
    let browser = crate::fake_oauth::Browser::new();
    let form = [("email", "slow@example.com"), ("password", PASSWORD)];
    browser.post_form(&format!("{}/api/auth/signin/password", app.address), &form, None).await;
    let session = browser.cookie("tollgate_session").expect("signed in");

    let host = "Host: tollgate\r\n";
    let (status, body) = trickle(
        &app.address,
        &format!(
            "POST /api/auth/signin/password HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\n"
        ),
        1000,
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (408, &Value::from("request.timeout")), "sign-in: {body}");
    let (status, body) = trickle(
        &app.address,
        &format!(
            "POST /api/internal/keys HTTP/1.1\r\n{host}Content-Type: application/json\r\nCookie: tollgate_session={session}\r\n"
        ),
        1000,
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (408, &Value::from("request.timeout")), "key creation: {body}");

    // Forms and JSON outside the gateway are small; chat requests keep MAX_REQUEST_BYTES.
    let big = "x".repeat(100 * 1024);
    let res = fresh_client()
        .post(format!("{}/api/internal/keys", app.address))
        .header("cookie", format!("tollgate_session={session}"))
        .json(&serde_json::json!({ "name": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let (_, key) = app.customer("big@example.com", 100_000_000).await;
    let mut chat = chat_body(false);
    chat["messages"][0]["content"] = Value::from(big);
    assert_eq!(app.chat(&key, &chat).await.status(), 200, "a 100 KiB chat request passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_without_grace_cuts_open_streams_and_settles_them() {
    let g =
        spawn_gateway(Backend::Sqlite, Mode::SlowChunks(Duration::from_millis(200)), &[("SHUTDOWN_GRACE_SECS", "0")])
            .await;
    g.fake.set_chunks(1000);
    let (user, key) = g.app.customer("cut@example.com", 1_000_000).await;
    let res = g.app.chat(&key, &chat_body(true)).await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    stream.next().await.unwrap().unwrap();

    let url = g.app.database_url.clone();
    let stopped = tokio::time::timeout(BOUND, g.app.stop()).await;
    let _kept = stopped.expect("the server did not stop with a stream open");
    // The stream ends with the server (a 200 s stream would otherwise go on).
    let ended = tokio::time::timeout(BOUND, async { while let Some(Ok(_)) = stream.next().await {} }).await;
    assert!(ended.is_ok(), "the stream outlived the server");

    // Its settlement ran before the process would exit: nothing is left pending.
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    use tollgate::db::entities::reservations;
    let db = tollgate::db::Db::connect(&url, 2).await.unwrap();
    let pending = reservations::Entity::find()
        .filter(reservations::Column::UserId.eq(user))
        .filter(reservations::Column::State.eq("pending"))
        .count(&db.read)
        .await
        .unwrap();
    assert_eq!(pending, 0, "a reservation was left pending at shutdown");
}
