//! Channels: weighted routing, priorities, failover under one reservation, the circuit
//! breaker (shared through Redis), keys refused by the upstream, keys at rest, the SSRF guard,
//! and what the customer never sees. Fake upstreams count their calls.

use std::time::Duration;

use futures::StreamExt;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Statement};
use serde_json::Value;
use tollgate::audit::Actor;
use tollgate::channels::{self, ChannelView, ModelRoute, NewChannel, Settings, Timeouts};
use tollgate::config::Secret;
use tollgate::db::entities::{audit_logs, reservations};

use crate::helpers::{
    Backend, ENCRYPTION_KEY, FakeUpstream, MAX_OUT, Mode, TestApp, UPSTREAM_KEY, add_test_model, assert_books_balance,
    chat_body, spawn_app_with, worst_case,
};
use crate::on_all_backends;

fn settings(allow_private: bool) -> Settings {
    Settings { sealer: Some(channels::seal::Sealer::parse(ENCRYPTION_KEY).unwrap()), allow_private }
}

/// A channel on `base` serving every model, with one key.
async fn channel(app: &TestApp, name: &str, base: &str, priority: i32, weight: i32) -> ChannelView {
    channel_with(app, name, base, priority, weight, &[UPSTREAM_KEY], Timeouts::default()).await
}

async fn channel_with(
    app: &TestApp,
    name: &str,
    base: &str,
    priority: i32,
    weight: i32,
    keys: &[&str],
    timeouts: Timeouts,
) -> ChannelView {
    let mut new = NewChannel::new(
        name,
        "openai",
        base,
        vec![ModelRoute::parse("*")],
        keys.iter().map(|k| Secret::new(*k)).collect(),
    );
    new.priority = priority;
    new.weight = weight;
    new.timeouts = timeouts;
    channels::create(&app.db, &app.cache(), &settings(true), &Actor::system(), new).await.unwrap()
}

/// An app with the test model and no channel yet (no OPENAI_* settings).
async fn app(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let app = spawn_app_with(backend, extra).await;
    add_test_model(&app).await;
    app
}

async fn fake(mode: Mode) -> FakeUpstream {
    FakeUpstream::start(mode).await.unwrap()
}

async fn reservations_of(app: &TestApp, user: i64) -> u64 {
    reservations::Entity::find().filter(reservations::Column::UserId.eq(user)).count(&app.db.read).await.unwrap()
}

async fn weights_priorities_and_disabled_channels(backend: Backend) {
    let app = app(backend, &[]).await;
    let (one, three, low, off) =
        (fake(Mode::Normal).await, fake(Mode::Normal).await, fake(Mode::Normal).await, fake(Mode::Normal).await);
    channel(&app, "weight-1", &one.base_url(), 10, 1).await;
    channel(&app, "weight-3", &three.base_url(), 10, 3).await;
    channel(&app, "lower-priority", &low.base_url(), 5, 1000).await;
    let disabled = channel(&app, "disabled", &off.base_url(), 10, 1000).await;
    channels::set_enabled(&app.db, &app.cache(), &Actor::system(), disabled.id, false).await.unwrap();

    let (user, key) = app.customer("weights@example.com", 100_000_000).await;
    const N: usize = 1000;
    let statuses: Vec<u16> = futures::stream::iter(0..N)
        .map(|_| {
            let (app, key) = (&app, &key);
            async move { app.chat(key, &chat_body(false)).await.status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "every request served");
    // Expected 250 : 750; one standard deviation is about 14 calls, the tolerance ±60 (over 4σ).
    let (a, b) = (one.calls(), three.calls());
    assert_eq!(a + b, N, "only the two channels of the highest priority are called");
    assert!((190..=310).contains(&a), "weight 1 of 4 got {a} of {N}");
    assert_eq!(low.calls(), 0, "a lower priority is not used while a higher one serves");
    assert_eq!(off.calls(), 0, "a disabled channel gets no call");
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(weights_priorities_and_disabled_channels);

/// A port nothing listens on.
async fn refused_base() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

async fn failover_before_the_first_byte_keeps_one_reservation(backend: Backend) {
    let app = app(backend, &[("CHANNEL_FAILURE_THRESHOLD", "1000")]).await;
    let backup = fake(Mode::Normal).await;
    let backup_channel = channel(&app, "backup", &backup.base_url(), 0, 1).await;
    let (user, key) = app.customer("failover@example.com", 1_000_000).await;
    let slow = Timeouts { first_byte_ms: Some(300), ..Timeouts::default() };
    let cases: Vec<(&str, Option<Mode>, bool)> = vec![
        ("refused", None, false),
        ("status-500", Some(Mode::Status(500)), false),
        ("status-429", Some(Mode::Status(429)), false),
        ("first-byte-timeout", Some(Mode::DelayHead(Duration::from_secs(5))), true),
    ];
    let mut expected_balance = 1_000_000;
    for (name, mode, stream) in cases {
        let (primary, base) = match mode {
            Some(mode) => {
                let f = fake(mode).await;
                let base = f.base_url();
                (Some(f), base)
            }
            None => (None, refused_base().await),
        };
        let primary_channel = channel_with(&app, name, &base, 1, 1, &[UPSTREAM_KEY], slow).await;
        let backup_before = backup.calls();
        let before = reservations_of(&app, user).await;
        let res = app.chat(&key, &chat_body(stream)).await;
        assert_eq!(res.status(), 200, "{name}: the backup serves");
        let _ = res.bytes().await.unwrap();
        app.settled(user).await;
        assert_eq!(backup.calls() - backup_before, 1, "{name}");
        if let Some(p) = &primary {
            assert_eq!(p.calls(), 1, "{name}: the failing channel is tried once");
        }
        assert_eq!(reservations_of(&app, user).await - before, 1, "{name}: one reservation for both attempts");
        let row = app.usage(user).await.pop().unwrap();
        assert_eq!(row.status_code, 200, "{name}");
        assert_eq!(row.channel_id, Some(backup_channel.id), "{name}: the usage row names the channel that served");
        assert_eq!(row.attempts, 2, "{name}");
        expected_balance -= row.cost;
        assert!(row.cost > 0, "{name}: billed");
        assert_eq!(app.balance(user).await, expected_balance, "{name}: billed once");
        channels::delete(&app.db, &app.cache(), &Actor::system(), primary_channel.id).await.unwrap();
    }
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(failover_before_the_first_byte_keeps_one_reservation);

async fn when_every_channel_fails_one_clean_error_and_a_voided_reservation(backend: Backend) {
    let app = app(backend, &[("CHANNEL_FAILURE_THRESHOLD", "1000")]).await;
    let (a, b) = (fake(Mode::Status(500)).await, fake(Mode::Status(503)).await);
    channel(&app, "a", &a.base_url(), 1, 1).await;
    channel(&app, "b", &b.base_url(), 0, 1).await;
    let (user, key) = app.customer("allfail@example.com", 1_000_000).await;
    let res = app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
    app.settled(user).await;
    assert_eq!(a.calls() + b.calls(), 3, "UPSTREAM_MAX_ATTEMPTS (3) bounds the attempts over all channels");
    assert!(a.calls() >= 1 && b.calls() >= 1, "both channels were tried");
    assert_eq!(app.balance(user).await, 1_000_000, "nothing was delivered: the reservation is voided");
    let row = app.usage(user).await.pop().unwrap();
    assert_eq!((row.status_code, row.attempts, row.cost), (502, 3, 0));
    assert_books_balance(&app.db, user).await;

    // No channel serves the model at all: 503 no_available_channel, in OpenAI's shape.
    let none = app_without_channels(backend).await;
    let (user, key) = none.customer("nochannel@example.com", 1_000_000).await;
    let res = none.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_available_channel");
    none.settled(user).await;
    assert_eq!(none.balance(user).await, 1_000_000);
    assert_eq!(reservations_of(&none, user).await, 1);
    assert_books_balance(&none.db, user).await;
}

async fn app_without_channels(backend: Backend) -> TestApp {
    app(backend, &[]).await
}

on_all_backends!(when_every_channel_fails_one_clean_error_and_a_voided_reservation);

async fn a_failure_after_the_first_byte_is_never_retried(backend: Backend) {
    let app = app(backend, &[]).await;
    let (broken, backup) = (fake(Mode::Reset { after: 2 }).await, fake(Mode::Normal).await);
    channel(&app, "breaks-mid-stream", &broken.base_url(), 1, 1).await;
    channel(&app, "backup", &backup.base_url(), 0, 1).await;
    let (user, key) = app.customer("midstream@example.com", 1_000_000).await;
    let body = chat_body(true);
    let res = app.chat(&key, &body).await;
    assert_eq!(res.status(), 200, "the head was already sent");
    let text = res.text().await.unwrap();
    assert!(text.contains("\"error\""), "the stream ends with an error event: {text}");
    app.settled(user).await;
    assert_eq!((broken.calls(), backup.calls()), (1, 0), "no retry once the client has bytes");
    let row = app.usage(user).await.pop().unwrap();
    assert!(row.cost > 0 && row.cost < worst_case(&body, MAX_OUT), "billed for what was delivered: {}", row.cost);
    assert_eq!(row.attempts, 1);
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(a_failure_after_the_first_byte_is_never_retried);

async fn a_refused_key_disables_its_channel_and_traffic_moves_on(backend: Backend) {
    let app = app(backend, &[]).await;
    let (revoked, backup) = (fake(Mode::Status(401)).await, fake(Mode::Normal).await);
    let bad = channel(&app, "revoked", &revoked.base_url(), 1, 1).await;
    channel(&app, "backup", &backup.base_url(), 0, 1).await;
    let (user, key) = app.customer("revoked@example.com", 1_000_000).await;
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200, "the next candidate serves");
    assert_eq!((revoked.calls(), backup.calls()), (1, 1));
    let view = channels::get(&app.db, bad.id).await.unwrap();
    assert!(!view.enabled && !view.routable, "the channel without an enabled key is off");
    assert!(view.disabled_reason.as_deref().unwrap().contains("401"));
    assert!(!view.keys[0].enabled && view.keys[0].disabled_reason.is_some());
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("channel.auto_disable"))
        .filter(audit_logs::Column::TargetId.eq(bad.id.to_string()))
        .all(&app.db.read)
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor_user_id, None);
    for _ in 0..3 {
        assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    }
    assert_eq!(revoked.calls(), 1, "the disabled channel gets no more calls");
    // The operator puts the key back once the account is fixed.
    let patch = channels::ChannelPatch {
        enabled: Some(true),
        keys: Some(channels::KeyChange::Enable(vec![view.keys[0].id])),
        ..Default::default()
    };
    let restored =
        channels::update(&app.db, &app.cache(), &settings(true), &Actor::system(), bad.id, patch).await.unwrap();
    assert!(restored.routable && restored.keys[0].enabled && restored.disabled_reason.is_none());
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(a_refused_key_disables_its_channel_and_traffic_moves_on);

async fn keys_rotate_and_a_cooling_channel_is_skipped(backend: Backend) {
    let app = app(backend, &[("CHANNEL_FAILURE_THRESHOLD", "2"), ("CHANNEL_COOLDOWN_SECS", "600")]).await;
    let rotating = fake(Mode::Normal).await;
    let keys = ["sk-rotation-key-number-one-0001", "sk-rotation-key-number-two-0002"];
    channel_with(&app, "two-keys", &rotating.base_url(), 0, 1, &keys, Timeouts::default()).await;
    let (user, key) = app.customer("rotate@example.com", 10_000_000).await;
    for _ in 0..4 {
        assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    }
    let sent: Vec<String> =
        rotating.headers().iter().map(|h| h.get("authorization").unwrap().to_str().unwrap().to_owned()).collect();
    assert_eq!(sent.iter().filter(|a| a.ends_with(keys[0])).count(), 2, "{sent:?}");
    assert_eq!(sent.iter().filter(|a| a.ends_with(keys[1])).count(), 2, "{sent:?}");
    assert_ne!(sent[0], sent[1], "round robin");

    // A higher-priority channel that keeps failing cools down after two failures, then gets
    // no calls while the cool-down lasts.
    let failing = fake(Mode::Status(500)).await;
    channel(&app, "failing", &failing.base_url(), 5, 1).await;
    for _ in 0..6 {
        assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    }
    assert_eq!(failing.calls(), 2, "cooling after CHANNEL_FAILURE_THRESHOLD failures");
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}

on_all_backends!(keys_rotate_and_a_cooling_channel_is_skipped);

#[tokio::test]
async fn a_cool_down_set_by_one_instance_is_seen_by_another_with_redis() {
    let Ok(redis) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("skipped: TEST_REDIS_URL is not set");
        return;
    };
    let prefix = format!("tg-channels-{}:", tollgate::crypto::random_token(6));
    let extra = [
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("REDIS_TIMEOUT_MS", "2000"),
        ("CHANNEL_FAILURE_THRESHOLD", "1"),
        ("CHANNEL_COOLDOWN_SECS", "600"),
    ];
    let first = app(Backend::Sqlite, &extra).await;
    let second = crate::helpers::spawn_instance(&first.database_url, &extra).await;
    let (failing, backup) = (fake(Mode::Status(500)).await, fake(Mode::Normal).await);
    channel(&first, "failing", &failing.base_url(), 1, 1).await;
    channel(&first, "backup", &backup.base_url(), 0, 1).await;
    let (user, key) = first.customer("shared@example.com", 1_000_000).await;
    assert_eq!(first.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(failing.calls(), 1, "one failure cools the channel down");
    for _ in 0..3 {
        assert_eq!(second.chat(&key, &chat_body(false)).await.status(), 200);
    }
    assert_eq!(failing.calls(), 1, "the other instance skips the cooling channel");
    assert_eq!(backup.calls(), 4);
    first.settled(user).await;
}

async fn keys_are_never_stored_or_shown_in_the_clear(backend: Backend) {
    let app = app(backend, &[]).await;
    let upstream = fake(Mode::Normal).await;
    let header_secret = "hdr-secret-value-9f8e7d6c5b4a";
    let mut new = NewChannel::new(
        "confidential-channel-name",
        "openai",
        &upstream.base_url(),
        vec![ModelRoute::parse("*")],
        vec![Secret::new(UPSTREAM_KEY)],
    );
    new.headers = vec![("x-upstream-tenant".into(), Secret::new(header_secret))];
    let view = channels::create(&app.db, &app.cache(), &settings(true), &Actor::system(), new).await.unwrap();
    assert_eq!(view.keys[0].hint, "sk-…cdef");
    assert_eq!(view.header_names, vec!["x-upstream-tenant"]);
    let shown = serde_json::to_string(&channels::list(&app.db).await.unwrap()).unwrap();
    assert!(!shown.contains(UPSTREAM_KEY) && !shown.contains(header_secret));

    let (user, browser) = crate::usage_api::signed_in(&app, "secretive@example.com").await;
    tollgate::billing::ledger::adjust(&app.db, user, 1_000_000, "topup", "test", None).await.unwrap();
    let (_, key) = tollgate::keys::create(&app.db.write, user, None).await.unwrap();
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    let sent = &upstream.headers()[0];
    assert_eq!(sent.get("authorization").unwrap(), &format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(sent.get("x-upstream-tenant").unwrap(), header_secret);
    app.settled(user).await;

    // The database: every column of every table.
    let tables: Vec<String> = match backend {
        Backend::Sqlite => query_strings(&app, "SELECT name FROM sqlite_master WHERE type = 'table'").await,
        Backend::MySql => {
            query_strings(
                &app,
                "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE()",
            )
            .await
        }
        Backend::Postgres => {
            query_strings(
                &app,
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .await
        }
    };
    assert!(tables.iter().any(|t| t == "channel_keys"), "{tables:?}");
    for table in tables {
        let rows = app
            .db
            .read
            .query_all_raw(Statement::from_string(app.db.read.get_database_backend(), format!("SELECT * FROM {table}")))
            .await
            .unwrap();
        for row in rows {
            let text = format!("{row:?}");
            assert!(!text.contains(UPSTREAM_KEY), "the plaintext key is stored in {table}");
            assert!(!text.contains(header_secret), "a header value is stored in the clear in {table}");
        }
    }

    // The customer's usage API and CSV never name the channel, its URL or its key.
    for path in ["/api/internal/usage", "/api/internal/usage/export"] {
        let text = browser.get(&format!("{}{path}", app.address)).await.text().await.unwrap();
        assert!(text.contains("test-model"), "{path}: {text}");
        for secret in ["confidential-channel-name", upstream.base_url().as_str(), UPSTREAM_KEY, "channel"] {
            assert!(!text.contains(secret), "{path} shows `{secret}`: {text}");
        }
    }
}

async fn query_strings(app: &TestApp, sql: &str) -> Vec<String> {
    app.db
        .read
        .query_all_raw(Statement::from_string(app.db.read.get_database_backend(), sql.to_owned()))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

on_all_backends!(keys_are_never_stored_or_shown_in_the_clear);

#[tokio::test]
async fn internal_base_urls_are_refused_without_the_flag() {
    let app = app(Backend::Sqlite, &[]).await;
    for base in [
        "http://127.0.0.1:8080/v1",
        "http://localhost:11434/v1",
        "http://10.0.0.5/v1",
        "http://192.168.1.10/v1",
        "http://169.254.169.254/latest",
        "http://100.64.0.1/v1",
        "http://[::1]:8080/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://[fd00::1]/v1",
        "http://0.0.0.0/v1",
    ] {
        let new = NewChannel::new("internal", "openai", base, vec![ModelRoute::parse("*")], Vec::new());
        let err = channels::create(&app.db, &app.cache(), &settings(false), &Actor::system(), new).await.unwrap_err();
        assert_eq!(err.status(), 400, "{base}");
        assert!(err.to_string().contains("ALLOW_PRIVATE_UPSTREAMS"), "{base}: {err}");
    }
    assert!(channels::list(&app.db).await.unwrap().is_empty(), "nothing was created");
    // At connect time the resolver refuses names that resolve to internal addresses.
    use reqwest::dns::Resolve;
    let resolved = channels::ssrf::GuardedResolver.resolve("localhost".parse().unwrap()).await;
    assert!(resolved.is_err(), "localhost resolves to loopback and is refused");
}

#[tokio::test]
async fn the_connect_time_guard_refuses_a_stored_internal_url() {
    // A channel stored while private upstreams were allowed, served by an instance that does
    // not allow them: the upstream is never called.
    let upstream = fake(Mode::Normal).await;
    let first = app(Backend::Sqlite, &[]).await;
    channel(&first, "local", &upstream.base_url(), 0, 1).await;
    let strict = crate::helpers::spawn_instance(&first.database_url, &[("ALLOW_PRIVATE_UPSTREAMS", "false")]).await;
    let (user, key) = first.customer("strict@example.com", 1_000_000).await;
    let res = strict.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 502);
    assert_eq!(upstream.calls(), 0);
    strict.settled(user).await;
    assert_eq!(strict.balance(user).await, 1_000_000);
}

async fn start_up_refuses_a_missing_or_wrong_encryption_key(backend: Backend) {
    let upstream = fake(Mode::Normal).await;
    let base = upstream.base_url();
    let first = spawn_app_with(backend, &[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", UPSTREAM_KEY)]).await;
    let default = channels::find_by_name(&first.db, "default").await.unwrap();
    assert_eq!(default.models, vec![ModelRoute::parse("*")]);
    assert_eq!(default.keys.len(), 1);
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("channel.create"))
        .count(&first.db.read)
        .await
        .unwrap();
    assert_eq!(audit, 1, "the default channel's creation is audited");
    let url = first.database_url.clone();
    let other_key = "b3RoZXItZW5jcnlwdGlvbi1rZXktMzItYnl0ZXMtMDE=";
    let mut config = crate::helpers::test_config(&url, &[("ENCRYPTION_KEY", other_key)]);
    let err = tollgate::app::Application::build(config.clone()).await.err().expect("a wrong key is refused");
    assert!(err.to_string().contains("ENCRYPTION_KEY"), "{err}");
    config.encryption_key = None;
    let err = tollgate::app::Application::build(config).await.err().expect("a missing key is refused");
    assert!(err.to_string().contains("ENCRYPTION_KEY"), "{err}");
    // The right key starts, and a second start creates no second default channel.
    let again =
        crate::helpers::spawn_instance(&url, &[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", UPSTREAM_KEY)]).await;
    assert_eq!(channels::list(&again.db).await.unwrap().len(), 1);
    drop(first);
}

on_all_backends!(start_up_refuses_a_missing_or_wrong_encryption_key);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_log_line_at_trace_level_holds_an_upstream_key() {
    use std::process::{Command, Stdio};
    let upstream = fake(Mode::FailThenOk { status: 401, times: 1 }).await;
    let setup = app(Backend::Sqlite, &[]).await;
    let (user, key) = setup.customer("trace@example.com", 1_000_000).await;
    let url = setup.database_url.clone();
    let _kept = setup.stop().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENAI_BASE_URL", upstream.base_url())
        .env("OPENAI_API_KEY", UPSTREAM_KEY)
        .env("ALLOW_PRIVATE_UPSTREAMS", "true")
        .env("ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("NEXTAUTH_SECRET", "trace-log-secret-trace-log-secret-0123")
        .env("RUST_LOG", "trace")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log.path()).unwrap())
        .spawn()
        .unwrap();
    crate::helpers::eventually(30, "the server answers /healthz", || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    // The default channel is created from OPENAI_API_KEY, its key refused once (auto-disable).
    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(upstream.calls(), 1);
    let path = log.path().to_owned();
    crate::helpers::eventually(10, "the auto-disable warning", || {
        let path = path.clone();
        async move { std::fs::read_to_string(&path).unwrap_or_default().contains("key disabled") }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("TRACE"), "the log is at trace level");
    assert!(!text.contains(UPSTREAM_KEY), "the upstream key appears in the trace log");
    assert!(!text.contains(&UPSTREAM_KEY[12..]), "part of the upstream key appears in the trace log");
    let _ = user;
}

async fn the_test_action_sends_one_token_and_reports(backend: Backend) {
    let app = app(backend, &[]).await;
    let (good, revoked) = (fake(Mode::Normal).await, fake(Mode::Status(401)).await);
    let mut new = NewChannel::new(
        "mapped",
        "openai",
        &good.base_url(),
        vec![ModelRoute::parse("test-model=vendor-model-v2")],
        vec![Secret::new(UPSTREAM_KEY)],
    );
    new.priority = 1;
    let mapped = channels::create(&app.db, &app.cache(), &settings(true), &Actor::system(), new).await.unwrap();
    let bad = channel(&app, "revoked", &revoked.base_url(), 0, 1).await;
    let config = crate::helpers::test_config(&app.database_url, &[]);
    let gateway = tollgate::gateway::Gateway::new(&config, &app.cache()).unwrap();

    let ok = channels::test(&app.db, &gateway, &Actor::system(), mapped.id).await.unwrap();
    assert_eq!((ok.status, ok.error.as_deref(), ok.model.as_deref()), (Some(200), None, Some("vendor-model-v2")));
    let sent = good.bodies().pop().unwrap();
    assert_eq!(sent["model"], "vendor-model-v2", "the channel's upstream name");
    assert_eq!(sent["max_completion_tokens"], 1, "one token");
    let refused = channels::test(&app.db, &gateway, &Actor::system(), bad.id).await.unwrap();
    assert_eq!(refused.status, Some(401));
    assert!(refused.error.is_some());
    assert!(channels::get(&app.db, bad.id).await.unwrap().enabled, "a test changes nothing");
    let tests = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("channel.test"))
        .count(&app.db.read)
        .await
        .unwrap();
    assert_eq!(tests, 2);

    // Requests use the mapping too; a channel of another protocol (reached only by translation)
    // is not used while one of the request's own protocol of a higher priority serves.
    let other_protocol = fake(Mode::Normal).await;
    let mut anthropic =
        NewChannel::new("anthropic", "anthropic", &other_protocol.base_url(), vec![ModelRoute::parse("*")], Vec::new());
    anthropic.priority = -1;
    channels::create(&app.db, &app.cache(), &settings(true), &Actor::system(), anthropic).await.unwrap();
    let (user, key) = app.customer("mapped@example.com", 1_000_000).await;
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(good.bodies().pop().unwrap()["model"], "vendor-model-v2");
    assert_eq!(other_protocol.calls(), 0);
    app.settled(user).await;
}

on_all_backends!(the_test_action_sends_one_token_and_reports);

#[tokio::test]
async fn without_redis_the_breaker_is_local_and_a_probe_follows_the_cool_down() {
    // Redis configured but unreachable: health falls back to this instance, never an error.
    let extra = [
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("REDIS_TIMEOUT_MS", "100"),
        ("CHANNEL_FAILURE_THRESHOLD", "1"),
        ("CHANNEL_COOLDOWN_SECS", "1"),
    ];
    let app = app(Backend::Sqlite, &extra).await;
    let (failing, backup) = (fake(Mode::FailThenOk { status: 500, times: 1 }).await, fake(Mode::Normal).await);
    channel(&app, "flaky", &failing.base_url(), 1, 1).await;
    channel(&app, "backup", &backup.base_url(), 0, 1).await;
    let (user, key) = app.customer("local-breaker@example.com", 1_000_000).await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    }
    assert_eq!((failing.calls(), backup.calls()), (1, 3), "cooling after one failure");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(failing.calls(), 2, "one probe once the cool-down is over");
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);
    assert_eq!(failing.calls(), 3, "the probe succeeded: the channel is healthy again");
    assert_eq!(backup.calls(), 3);
    app.settled(user).await;
    assert_books_balance(&app.db, user).await;
}
