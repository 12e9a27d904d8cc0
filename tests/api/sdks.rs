//! The official SDKs against the protocol edges: the Python `anthropic` SDK on Messages (text,
//! streams, tool use, count_tokens, its exception classes for 401 and 402) and the Python and
//! Node `openai` SDKs on Responses, embeddings and streamed chat. Each run is billed exactly the
//! usage the fake upstream reported, and refused calls cost nothing. Needs `TOLLGATE_PYTHON` (a
//! Python with both SDKs) and `node` with `tests/browser/node_modules` (`.ci/run` installs
//! them); in CI their absence fails the test.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::json;

use crate::helpers::{Backend, MODEL, TestApp, add_test_model, assert_books_balance, spawn_app_with};
use crate::protocols::add_channel;
use crate::sdk_upstream::{SdkUpstream, Seen, charge};

const ANTHROPIC_KEY: &str = "sk-ant-sdk-upstream-key";
const OPENAI_KEY: &str = "sk-openai-sdk-upstream-key";

/// An app with the test model, an OpenAI channel and, if asked, an Anthropic one on the same
/// fake, preferred for Messages (and for chat, which it serves translated).
async fn setup(anthropic: bool) -> (TestApp, SdkUpstream) {
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    add_test_model(&app).await;
    let fake = SdkUpstream::start().await;
    if anthropic {
        add_channel(&app, "claude", "anthropic", &fake.base, ANTHROPIC_KEY, 10).await;
    }
    add_channel(&app, "openai", "openai", &format!("{}/v1", fake.base), OPENAI_KEY, 0).await;
    (app, fake)
}

/// Runs `command` with the gateway's address and keys; fails the test when the script did.
/// Answers what it printed.
async fn run(mut command: Command, app: &TestApp, key: &str, poor_key: &str) -> String {
    command
        .env("TOLLGATE_URL", &app.address)
        .env("TOLLGATE_KEY", key)
        .env("TOLLGATE_POOR_KEY", poor_key)
        .env("TOLLGATE_MODEL", MODEL);
    // A developer's own SDK settings must not change what the scripts send.
    for var in
        ["ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"]
    {
        command.env_remove(var);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK checks failed:\n{stdout}");
    assert!(stdout.lines().last().is_some_and(|l| l.ends_with(" 0 failed")), "{stdout}");
    stdout.into_owned()
}

/// How many calls reached the fake, by method and path.
fn calls(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry(format!("{} {}", s.method, s.path)).or_default() += 1;
    }
    out
}

fn expect_calls(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// Every call went to the channel of its protocol with that channel's key, never the customer's;
/// Anthropic calls carry the SDK's `anthropic-version` (`None`: no Anthropic call expected).
fn assert_channel_keys(seen: &[Seen], customer_key: &str, anthropic_version: Option<&str>) {
    for s in seen {
        let anthropic = s.path.starts_with("/v1/messages");
        if anthropic {
            assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY, "{}", s.path);
            assert!(s.headers.get("authorization").is_none(), "{}", s.path);
            assert_eq!(s.headers["anthropic-version"], anthropic_version.unwrap(), "the SDK's version is passed on");
        } else {
            assert_eq!(s.headers["authorization"], format!("Bearer {OPENAI_KEY}"), "{}", s.path);
            assert!(s.headers.get("x-api-key").is_none(), "{}", s.path);
        }
        for (name, value) in &s.headers {
            assert!(!value.to_str().unwrap_or_default().contains(customer_key), "the customer's key in {name}");
        }
    }
}

/// The customer was charged exactly what the fake reported for the calls it served, one usage
/// row per billed call; the books balance.
async fn assert_billed_exactly(app: &TestApp, user: i64, funded: i64, seen: &[Seen], billed_calls: usize) {
    app.settled(user).await;
    let expected: i64 = seen.iter().map(charge).sum();
    assert!(expected > 0);
    assert_eq!(funded - app.balance(user).await, expected, "exactly the upstream's usage at the model's prices");
    let rows: Vec<_> = app.usage(user).await.into_iter().filter(|r| r.cost > 0).collect();
    assert_eq!(rows.len(), billed_calls, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.cost).sum::<i64>(), expected);
    assert_books_balance(&app.db, user).await;
}

/// The customer with too little money paid nothing and left nothing pending.
async fn assert_untouched(app: &TestApp, user: i64, balance: i64) {
    app.settled(user).await;
    assert_eq!(app.balance(user).await, balance, "a refused call costs nothing");
    assert!(app.usage(user).await.iter().all(|r| r.cost == 0));
    assert_books_balance(&app.db, user).await;
}

fn python() -> Option<String> {
    match std::env::var("TOLLGATE_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(std::env::var("CI").is_err(), "TOLLGATE_PYTHON must be set in CI");
            eprintln!("TOLLGATE_PYTHON is not set: skipping the SDK test");
            None
        }
    }
}

const FUNDED: i64 = 10_000_000;
/// Less than any request's reservation.
const POOR: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_python), ignore = "TOLLGATE_PYTHON is not set")]
async fn the_official_anthropic_and_openai_python_sdks_speak_every_protocol_edge() {
    let Some(python) = python() else { return };
    let (app, fake) = setup(true).await;
    let (user, key) = app.customer("sdk@example.com", FUNDED).await;
    let (poor, poor_key) = app.customer("poor@example.com", POOR).await;

    let mut command = Command::new(python);
    command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/protocol_sdks.py"));
    let stdout = run(command, &app, &key, &poor_key).await;
    let version = stdout.lines().find_map(|l| l.strip_prefix("anthropic-version: ")).unwrap();

    // Exactly the calls the checks make that are served; the refused ones (bad key, no money,
    // an unknown stored response) never reached the upstream.
    let seen = fake.seen();
    let created = fake.response_ids();
    assert_eq!(created.len(), 3);
    let retrieved = format!("GET /v1/responses/{}", created[0]);
    assert_eq!(
        calls(&seen),
        expect_calls(&[
            ("POST /v1/messages", 5),
            ("POST /v1/messages/count_tokens", 1),
            ("POST /v1/responses", 3),
            (&retrieved, 1),
            ("POST /v1/embeddings", 2),
        ]),
        "the first response created was read back"
    );
    assert_channel_keys(&seen, &key, Some(version));

    // The tool definition went up as the SDK wrote it; the model name and cap were ours.
    let messages = fake.on("/v1/messages");
    let with_tools: Vec<_> = messages.iter().filter(|s| s.body.get("tools").is_some()).collect();
    assert_eq!(with_tools.len(), 2, "tool use, whole and streamed");
    for s in &with_tools {
        assert_eq!(s.body["tools"][0]["name"], "get_weather");
        assert_eq!(s.body["tools"][0]["input_schema"]["required"], json!(["city"]));
    }
    assert!(messages.iter().all(|s| s.body["model"] == "upstream-model" && s.body["max_tokens"] == 64));
    assert_eq!(fake.on("/v1/messages/count_tokens")[0].body["tools"][0]["name"], "get_weather");
    let embeddings = fake.on("/v1/embeddings");
    assert_eq!(embeddings[0].body["encoding_format"], "base64", "the SDK's default, passed on");
    assert_eq!(embeddings[1].body["input"], json!(["one", "two", "three"]));

    // 5 Messages answers, 3 responses and 2 embeddings calls billed; counting and reading free.
    assert_billed_exactly(&app, user, FUNDED, &seen, 10).await;
    assert_untouched(&app, poor, POOR).await;
}

/// `node` and the pinned `openai` package, or `None` (skipped) outside CI.
fn node_with_openai() -> Option<()> {
    let module = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/openai/package.json");
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if node && std::path::Path::new(module).exists() {
        return Some(());
    }
    assert!(std::env::var("CI").is_err(), "node and tests/browser/node_modules (openai) must be installed in CI");
    eprintln!("node or the openai package is missing: skipping the Node SDK test");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_node_openai), ignore = "node or tests/browser/node_modules/openai is missing")]
async fn the_official_openai_node_sdk_streams_chat_and_responses() {
    let Some(()) = node_with_openai() else { return };
    let (app, fake) = setup(false).await;
    let (user, key) = app.customer("node@example.com", FUNDED).await;
    let (poor, poor_key) = app.customer("poor-node@example.com", POOR).await;

    let mut command = Command::new("node");
    command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/openai_node.mjs"));
    run(command, &app, &key, &poor_key).await;

    // Chat served natively by the OpenAI channel: the fake's own chunks, relayed.
    let seen = fake.seen();
    assert_eq!(calls(&seen), expect_calls(&[("POST /v1/chat/completions", 3), ("POST /v1/responses", 2)]));
    assert!(seen.iter().all(|s| s.body["stream"] == true), "every call streamed");
    for s in fake.on("/v1/chat/completions") {
        // The gateway asks for the usage chunk whether or not the client did.
        assert_eq!(s.body["stream_options"]["include_usage"], true);
    }
    assert_channel_keys(&seen, &key, None);
    assert_billed_exactly(&app, user, FUNDED, &seen, 5).await;
    assert_untouched(&app, poor, POOR).await;
}
