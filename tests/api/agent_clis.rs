//! The real agentic coding tools against Tollgate: Claude Code (`claude -p`) on an Anthropic
//! channel and, translated, on an OpenAI-compatible one; Codex CLI (`codex exec`) on an OpenAI
//! channel. The upstream is `tests/fixtures/clients/recorder.py`, which answers Messages, Chat
//! and Responses streams and writes every request it receives to a directory, so each test sees
//! what reached the upstream and how often.
//!
//! Needs `TOLLGATE_AGENT_CLIS`: a directory with `node_modules/.bin/claude` and
//! `node_modules/.bin/codex` (`.ci/run` installs `@anthropic-ai/claude-code@2.1.197` and
//! `@openai/codex@0.171.0` there). Without it the tests are reported as skipped; in CI its
//! absence fails the build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::audit::Actor;
use tollgate::channels::{self, ModelRoute, NewChannel, Settings};
use tollgate::config::Secret;

use crate::helpers::{Backend, ENCRYPTION_KEY, TestApp, add_model_named, assert_books_balance, spawn_app_with};

const CHANNEL_KEY: &str = "sk-upstream-channel-key";
const CLAUDE_MODEL: &str = "claude-sonnet-4-5";
const CODEX_MODEL: &str = "gpt-5.1-codex";
/// What the recorder answers every call with.
const ANSWER: &str = "Hello from the fake.";

fn cli(name: &str) -> PathBuf {
    let dir = std::env::var("TOLLGATE_AGENT_CLIS").expect("TOLLGATE_AGENT_CLIS is set when these tests run");
    let path = Path::new(&dir).join("node_modules/.bin").join(name);
    assert!(path.exists(), "{} is missing: install the agent CLIs there (see .ci/run)", path.display());
    path
}

/// The recording upstream, stopped when dropped.
struct Recorder {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Recorder {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clients/recorder.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 runs the recorder");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the recorder did not start");
        }
        Self { child, base: format!("http://127.0.0.1:{port}"), dir }
    }

    /// Every request it received, in order: `{method, path, headers, body}`.
    fn requests(&self) -> Vec<Value> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn add_channel(app: &TestApp, name: &str, provider: &str, base: &str) {
    let new = NewChannel::new(name, provider, base, vec![ModelRoute::parse("*")], vec![Secret::new(CHANNEL_KEY)]);
    let settings =
        Settings { sealer: Some(channels::seal::Sealer::parse(ENCRYPTION_KEY).unwrap()), allow_private: true };
    channels::create(&app.db, &app.cache(), &settings, &Actor::system(), new).await.unwrap();
}

/// Runs a CLI to its end in a home of its own; answers its standard output.
async fn run(program: PathBuf, args: Vec<String>, envs: Vec<(&'static str, String)>) -> String {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (home_path, work_path) = (home.path().to_owned(), work.path().to_owned());
    let codex_home = home_path.join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let config = envs.iter().find(|(k, _)| *k == "CODEX_CONFIG").map(|(_, v)| v.clone());
    if let Some(config) = config {
        std::fs::write(codex_home.join("config.toml"), config).unwrap();
    }
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&work_path)
            .env("HOME", &home_path)
            .env("CODEX_HOME", &codex_home)
            .env("DISABLE_TELEMETRY", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .env_remove("OPENAI_API_KEY")
            .stdin(Stdio::null());
        for (k, v) in envs.into_iter().filter(|(k, _)| *k != "CODEX_CONFIG") {
            cmd.env(k, v);
        }
        cmd.output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the CLI failed ({}):\n{stdout}\n{stderr}", output.status);
    drop((home, work));
    stdout
}

async fn claude_code(app: &TestApp, key: &str) -> String {
    let args = ["-p", "Say hello", "--model", CLAUDE_MODEL].map(String::from).to_vec();
    run(cli("claude"), args, vec![("ANTHROPIC_BASE_URL", app.address.clone()), ("ANTHROPIC_API_KEY", key.to_owned())])
        .await
}

/// The test models cost 1 per input token and 2 per output token (micro-units).
fn charge(input: i64, output: i64) -> i64 {
    input + 2 * output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_agents), ignore = "TOLLGATE_AGENT_CLIS is not set")]
async fn claude_code_works_on_an_anthropic_channel_and_is_billed_exactly() {
    let rec = Recorder::start().await;
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    add_model_named(&app.db, CLAUDE_MODEL).await;
    add_channel(&app, "claude", "anthropic", &rec.base).await;
    let (user, key) = app.customer("claude-code@example.com", 10_000_000).await;

    let out = claude_code(&app, &key).await;
    assert!(out.contains(ANSWER), "Claude Code printed the upstream's answer: {out}");

    let calls: Vec<Value> =
        rec.requests().into_iter().filter(|r| r["path"].as_str().unwrap().contains("/messages")).collect();
    assert_eq!(calls.len(), 1, "one model call reached the upstream: {calls:#?}");
    let call = &calls[0];
    // Claude Code calls `/v1/messages?beta=true`; the betas themselves travel in `anthropic-beta`.
    assert_eq!(call["path"], json!("/v1/messages"));
    let headers = &call["headers"];
    assert_eq!(headers["x-api-key"], json!(CHANNEL_KEY), "the channel's key, never the customer's");
    assert!(headers.get("Authorization").is_none() && headers.get("authorization").is_none());
    assert!(headers["anthropic-beta"].as_str().is_some_and(|b| !b.is_empty()), "beta headers pass through");
    assert!(headers["anthropic-version"].is_string());
    let body = &call["body"];
    assert_eq!(body["model"], json!("upstream-model"));
    assert_eq!(body["stream"], json!(true));
    assert!(body["tools"].as_array().is_some_and(|t| t.len() > 5), "Claude Code's tools pass through");
    assert!(body.to_string().contains("cache_control"), "prompt-cache markers pass through");

    app.settled(user).await;
    assert_eq!(app.balance(user).await, 10_000_000 - charge(25, 5), "the upstream's usage: 25 in, 5 out");
    assert_books_balance(&app.db, user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_agents), ignore = "TOLLGATE_AGENT_CLIS is not set")]
async fn claude_code_works_on_an_openai_channel_through_translation() {
    let rec = Recorder::start().await;
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    add_model_named(&app.db, CLAUDE_MODEL).await;
    add_channel(&app, "openai", "openai", &format!("{}/v1", rec.base)).await;
    let (user, key) = app.customer("claude-code-oai@example.com", 10_000_000).await;

    let out = claude_code(&app, &key).await;
    assert!(out.contains(ANSWER), "Claude Code printed the translated answer: {out}");

    let calls: Vec<Value> = rec.requests().into_iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(calls.len(), 1, "one model call reached the upstream: {calls:#?}");
    let call = &calls[0];
    assert_eq!(call["path"], json!("/v1/chat/completions"));
    assert_eq!(call["headers"]["authorization"], json!(format!("Bearer {CHANNEL_KEY}")));
    let body = &call["body"];
    assert_eq!(body["messages"][0]["role"], json!("system"), "the system prompt became a system message");
    assert!(body["tools"].as_array().is_some_and(|t| t.iter().all(|t| t["type"] == "function")));
    assert_eq!(body["stream_options"], json!({ "include_usage": true }));

    app.settled(user).await;
    assert_eq!(app.balance(user).await, 10_000_000 - charge(30, 5), "the upstream's usage: 30 in, 5 out");
    assert_books_balance(&app.db, user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_agents), ignore = "TOLLGATE_AGENT_CLIS is not set")]
async fn codex_works_on_an_openai_channel_and_is_billed_exactly() {
    let rec = Recorder::start().await;
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    add_model_named(&app.db, CODEX_MODEL).await;
    add_channel(&app, "openai", "openai", &format!("{}/v1", rec.base)).await;
    let (user, key) = app.customer("codex@example.com", 10_000_000).await;

    let config = format!(
        "model = \"{CODEX_MODEL}\"\nmodel_provider = \"tollgate\"\n\n[model_providers.tollgate]\nname = \"Tollgate\"\n\
         base_url = \"{}/v1\"\nwire_api = \"responses\"\nenv_key = \"TOLLGATE_API_KEY\"\n",
        app.address
    );
    let args = ["exec", "--skip-git-repo-check", "Say hello"].map(String::from).to_vec();
    let out = run(cli("codex"), args, vec![("CODEX_CONFIG", config), ("TOLLGATE_API_KEY", key)]).await;
    assert!(out.contains(ANSWER), "Codex printed the upstream's answer: {out}");

    let calls: Vec<Value> = rec.requests().into_iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(calls.len(), 1, "one model call reached the upstream: {calls:#?}");
    let call = &calls[0];
    assert_eq!(call["path"], json!("/v1/responses"));
    assert_eq!(call["headers"]["authorization"], json!(format!("Bearer {CHANNEL_KEY}")));
    let body = &call["body"];
    assert_eq!(body["model"], json!("upstream-model"));
    let tools = body["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t["name"] == "exec_command"), "Codex's own tools pass through");
    assert!(tools.iter().any(|t| t["type"] == "namespace"), "tool namespaces pass through");
    assert!(!tools.iter().any(|t| t["type"].as_str().unwrap().starts_with("web_search")), "per-call search left out");
    assert!(body["prompt_cache_key"].is_string() && body["include"].is_array());

    app.settled(user).await;
    assert_eq!(app.balance(user).await, 10_000_000 - charge(30, 5), "the upstream's usage: 30 in, 5 out");
    assert_books_balance(&app.db, user).await;
}
