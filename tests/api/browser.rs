//! One end-to-end run in headless Chromium (Debian's package, driven by playwright-core):
//! sign in through the fake GitHub, see the one-time key, create and revoke a second key, log
//! out. Needs `node`, `tests/browser/node_modules` and Chromium (`.ci/run` installs them); in CI
//! their absence fails the test.

use sea_orm::EntityTrait;
use serde_json::Value;
use tollgate::db::entities::api_keys;

use crate::fake_oauth::{FakeOAuth, person};
use crate::helpers::{Backend, spawn_app_with};

fn chromium() -> Option<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules/playwright-core");
    if std::path::Path::new(&path).exists() && std::path::Path::new(modules).exists() {
        return Some(path);
    }
    assert!(std::env::var("CI").is_err(), "Chromium ({path}) and tests/browser/node_modules must be installed in CI");
    eprintln!("Chromium or playwright-core is missing: skipping the browser test");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_browser), ignore = "Chromium or tests/browser/node_modules is missing")]
async fn a_person_signs_in_manages_keys_and_logs_out_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let oauth = FakeOAuth::start().await;
    oauth.sign_in_as(person("31337", "browser@example.com"));
    let settings = oauth.settings();
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("SIGNUP_CREDIT", "2.00"));
    let app = spawn_app_with(Backend::Sqlite, &vars).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/signin.mjs");
    let address = app.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node").arg(script).env("TOLLGATE_URL", address).env("CHROMIUM", chromium).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_default();
    assert!(output.status.success() && summary["ok"] == true, "the browser run failed: {stdout}");
    assert_eq!(summary["balance"], "2.00");

    // What the browser saw matches the database: two keys, the second revoked.
    let keys = api_keys::Entity::find().all(&app.db.read).await.unwrap();
    assert_eq!(keys.len(), 2);
    let first =
        keys.iter().find(|k| k.key_hash == tollgate::keys::hash(summary["firstKey"].as_str().unwrap())).unwrap();
    let second =
        keys.iter().find(|k| k.key_hash == tollgate::keys::hash(summary["secondKey"].as_str().unwrap())).unwrap();
    assert!(first.revoked_at.is_none());
    assert!(second.revoked_at.is_some());
    assert_eq!(summary["secondId"], second.id.to_string());
}
