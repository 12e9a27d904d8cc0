//! The official `openai` Python SDK against Tollgate: chat, streams, tool calls and the
//! exception classes it raises for our errors. Needs `TOLLGATE_PYTHON` (a Python with the
//! `openai` package; `.ci/run` makes one); in CI its absence fails the test.

use serde_json::json;

use crate::helpers::{Backend, Mode, assert_books_balance, spawn_gateway};

fn python() -> Option<String> {
    match std::env::var("TOLLGATE_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(std::env::var("CI").is_err(), "TOLLGATE_PYTHON must be set in CI");
            eprintln!("TOLLGATE_PYTHON is not set: skipping the OpenAI SDK test");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_python), ignore = "TOLLGATE_PYTHON is not set")]
async fn the_official_openai_sdk_works_against_tollgate() {
    let Some(python) = python() else { return };
    let g = spawn_gateway(Backend::Sqlite, Mode::Normal, &[]).await;
    let (user, key) = g.app.customer("sdk@example.com", 10_000_000).await;
    let (_, poor_key) = g.app.customer("poor@example.com", 0).await;
    let limited = spawn_gateway(Backend::Sqlite, Mode::Status(429), &[("UPSTREAM_MAX_RETRIES", "0")]).await;
    let (limited_user, limited_key) = limited.app.customer("limited@example.com", 10_000_000).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/openai_sdk.py");
    let envs = [
        ("TOLLGATE_BASE_URL", format!("{}/v1", g.app.address)),
        ("TOLLGATE_KEY", key),
        ("TOLLGATE_POOR_KEY", poor_key),
        ("TOLLGATE_LIMITED_BASE_URL", format!("{}/v1", limited.app.address)),
        ("TOLLGATE_LIMITED_KEY", limited_key),
    ];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).envs(envs).output())
            .await
            .unwrap()
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK checks failed:\n{stdout}");

    // The tool definitions reached the upstream untouched.
    let with_tools: Vec<_> = g.fake.bodies().into_iter().filter(|b| b.get("tools").is_some()).collect();
    assert_eq!(with_tools.len(), 2);
    assert_eq!(with_tools[0]["tools"][0]["function"]["name"], json!("get_weather"));
    assert_eq!(with_tools[0]["tool_choice"], json!("auto"));
    g.app.settled(user).await;
    assert_books_balance(&g.app.db, user).await;
    limited.app.settled(limited_user).await;
    assert_eq!(limited.app.balance(limited_user).await, 10_000_000, "a rate-limited request costs nothing");
}
