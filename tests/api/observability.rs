//! Prometheus metrics at `/metrics` count known requests exactly, behind `METRICS_TOKEN` and
//! off the public port with `METRICS_ADDR`; every API request leaves one JSON log line with
//! its fields and no secret.

use std::process::{Command, Stdio};

use tollgate::app::Application;

use crate::on_all_backends;

use crate::helpers::{
    Backend, FakeUpstream, Mode, TestApp, UPSTREAM_KEY, add_test_model, chat_body, eventually, spawn_app_with,
    spawn_gateway, test_config,
};

/// The value of the series `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

async fn scrape(app: &TestApp) -> String {
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    res.text().await.unwrap()
}

async fn counts_known_requests_exactly(backend: Backend) {
    let gw = spawn_gateway(backend, Mode::Normal, &[]).await;
    gw.fake.set_chunks(5);
    // A model name no other test uses, so parallel tests cannot move its series.
    let model = format!("metrics-{backend:?}-{}", tollgate::crypto::random_token(6)).to_lowercase();
    crate::helpers::add_model_named(&gw.app.db, &model).await;
    let (rich, key) = gw.app.customer("metrics-rich@example.com", 1_000_000).await;
    let (_, broke_key) = gw.app.customer("metrics-broke@example.com", 0).await;
    let body = serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": "Say hello." }] });
    for _ in 0..3 {
        assert_eq!(gw.app.chat(&key, &body).await.status(), 200);
    }
    assert_eq!(gw.app.chat(&broke_key, &body).await.status(), 402);
    // A model name nobody configured is never a label.
    let unknown =
        serde_json::json!({ "model": format!("{model}-nope"), "messages": [{ "role": "user", "content": "x" }] });
    assert_eq!(gw.app.chat(&key, &unknown).await.status(), 404);
    gw.app.settled(rich).await;

    let ok = [("route", "chat_completions"), ("model", model.as_str()), ("status", "200"), ("error", "none")];
    let app = &gw.app;
    eventually(10, "the three settlements are counted", || async move {
        sample(&scrape(app).await, "tollgate_requests_total", &ok) == Some(3.0)
    })
    .await;
    let text = scrape(&gw.app).await;
    assert_eq!(
        sample(
            &text,
            "tollgate_requests_total",
            &[("model", model.as_str()), ("status", "402"), ("error", "billing.insufficient_balance")]
        ),
        Some(1.0)
    );
    assert!(!text.contains(&format!("{model}-nope")), "an unknown model name became a label");
    // 17 prompt and 5 completion tokens per answer; 17 + 2 × 5 = 27 micros each.
    assert_eq!(sample(&text, "tollgate_tokens_total", &[("model", model.as_str()), ("kind", "prompt")]), Some(51.0));
    assert_eq!(
        sample(&text, "tollgate_tokens_total", &[("model", model.as_str()), ("kind", "completion")]),
        Some(15.0)
    );
    assert_eq!(sample(&text, "tollgate_charged_micros_total", &[("model", model.as_str())]), Some(81.0));
    assert_eq!(
        sample(&text, "tollgate_request_duration_seconds_count", &[("model", model.as_str())]),
        Some(4.0),
        "three served and one refused"
    );
    assert_eq!(sample(&text, "tollgate_request_ttfb_seconds_count", &[("model", model.as_str())]), Some(3.0));
    for name in [
        "tollgate_upstream_attempts_total",
        "tollgate_reservations_pending",
        "tollgate_reservations_resolved_total",
        "tollgate_cache_hits_total",
        "tollgate_cache_misses_total",
    ] {
        assert!(sample(&text, name, &[]).is_some(), "{name} is missing from /metrics");
    }
    if backend == Backend::Sqlite {
        // Only SQLite's writes go through the batching writer.
        for name in ["tollgate_db_write_batch_size_count", "tollgate_db_write_batch_duration_seconds_count"] {
            assert!(sample(&text, name, &[]).is_some(), "{name} is missing from /metrics");
        }
    }
}

on_all_backends!(counts_known_requests_exactly);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_token_guards_the_endpoint() {
    let app = spawn_app_with(Backend::Sqlite, &[("METRICS_TOKEN", "metrics-token-0123456789")]).await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let wrong = app.client.get(format!("{}/metrics", app.address)).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_addr_moves_the_endpoint_off_the_public_port() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let app = Application::build(test_config(&url, &[("METRICS_ADDR", "127.0.0.1:0")])).await.unwrap();
    let (port, metrics_port) = (app.port(), app.metrics_port().unwrap());
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let public = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap();
    assert_eq!(public.status(), 404);
    let private = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap();
    assert_eq!(private.status(), 200);
    stop.cancel();
    server.await.unwrap().unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The JSON lines of the request log in `log`.
fn request_lines(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "tollgate::observability" && v["message"] == "request")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_api_request_leaves_one_json_log_line_without_secrets() {
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    fake.set_chunks(5);
    let setup = spawn_app_with(Backend::Sqlite, &[]).await;
    add_test_model(&setup).await;
    let email = "request-log@example.com";
    let (_, key) = setup.customer(email, 1_000_000).await;
    let (_, broke_key) = setup.customer("request-log-broke@example.com", 0).await;
    let url = setup.database_url.clone();
    let _kept = setup.stop().await;

    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENAI_BASE_URL", fake.base_url())
        .env("OPENAI_API_KEY", UPSTREAM_KEY)
        .env("ALLOW_PRIVATE_UPSTREAMS", "true")
        .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
        .env("NEXTAUTH_SECRET", "request-log-secret-request-log-secret")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    eventually(30, "the server answers /healthz", || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let client = reqwest::Client::new();
    let chat = |key: &str, body: serde_json::Value| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(key)
            .header("cookie", "tollgate_session=session-cookie-value")
            .json(&body)
            .send()
    };
    let ok = chat(&key, chat_body(false)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let ok_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(chat(&broke_key, chat_body(false)).await.unwrap().status(), 402);
    assert_eq!(chat("sk-not-a-real-key-0123456789", chat_body(false)).await.unwrap().status(), 401);
    let models = client.get(format!("http://127.0.0.1:{port}/v1/models")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(models.status(), 200);

    let path = log.path().to_owned();
    eventually(10, "four request lines", || {
        let path = path.clone();
        async move { request_lines(&path).len() >= 4 }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // no late duplicate
    child.kill().unwrap();
    child.wait().unwrap();

    let lines = request_lines(log.path());
    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    for line in &lines {
        assert_eq!(line["level"], "INFO");
        for field in ["request.id", "route", "status", "latency_ms", "attempts"] {
            assert!(!line[field].is_null(), "{field} missing in {line}");
        }
    }
    let served = lines.iter().find(|l| l["request.id"] == ok_id.as_str()).expect("the served request's line");
    assert_eq!(served["route"], "chat_completions");
    assert_eq!(served["model"], "test-model");
    assert_eq!(served["status"], 200);
    assert_eq!((served["prompt_tokens"].as_i64(), served["completion_tokens"].as_i64()), (Some(17), Some(5)));
    assert_eq!(served["cost"], 27);
    assert_eq!(served["channel"], "default");
    assert_eq!(served["attempts"], 1);
    assert!(served["key.id"].is_i64() && served["user.id"].is_i64() && served["ttfb_ms"].is_u64());
    let refused = lines.iter().find(|l| l["status"] == 402).expect("the 402's line");
    assert_eq!(refused["error"], "billing.insufficient_balance");
    assert!(refused["key.id"].is_i64());
    let unauthenticated = lines.iter().find(|l| l["status"] == 401).expect("the 401's line");
    assert_eq!(unauthenticated["error"], "auth.unauthorized");
    assert!(lines.iter().any(|l| l["route"] == "models" && l["status"] == 200));

    let text = std::fs::read_to_string(log.path()).unwrap();
    for secret in [
        key.as_str(),
        broke_key.as_str(),
        "sk-not-a-real-key",
        "Say hello",
        email,
        "session-cookie-value",
        UPSTREAM_KEY,
    ] {
        assert!(!text.contains(secret), "{secret} appears in the log");
    }
    assert!(!text.contains('\u{1b}'), "colour codes in a log that is not a terminal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pretty_logs_carry_no_colour_codes_when_not_a_terminal() {
    // No application is built in this test: reqwest needs the TLS provider installed here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("pretty.db").display());
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    eventually(30, "the server answers /healthz", || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let res = reqwest::get(format!("http://127.0.0.1:{port}/v1/models")).await.unwrap();
    assert_eq!(res.status(), 401);
    let path = log.path().to_owned();
    eventually(10, "the request line", || {
        let path = path.clone();
        async move { std::fs::read_to_string(&path).unwrap().contains("auth.unauthorized") }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("tollgate listening"));
    assert!(!text.contains('\u{1b}'), "colour codes in a log that is not a terminal:\n{text}");
}
