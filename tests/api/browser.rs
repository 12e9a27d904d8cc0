//! One end-to-end run in headless Chromium (Debian's package, driven by playwright-core): a
//! visitor's pricing page, sign-in through the fake GitHub, the one-time key, a second key
//! created, copied, renamed, disabled, enabled and revoked, calls through the gateway seen in
//! the usage chart, history and CSV, the switch to Chinese, and logout. Screenshots of every
//! page land in `target/screenshots/`. Needs `node`, `tests/browser/node_modules` and Chromium (`.ci/run` installs them); in CI
//! their absence fails the test.

use sea_orm::EntityTrait;
use serde_json::Value;
use tollgate::db::entities::{api_keys, audit_logs, usage_logs};

use crate::fake_oauth::{FakeOAuth, person};
use crate::helpers::{Backend, FakeUpstream, Mode, UPSTREAM_KEY, add_model_named, spawn_app_with};

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

/// Where the runs save their screenshots (CI keeps them as artifacts).
const SCREENSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots");

/// Runs `tests/browser/{script}` against the app and returns its summary; fails the test when the
/// run failed.
async fn run_script(script: &str, address: &str, chromium: &str, env: &[(&str, &str)]) -> Value {
    let mut command = std::process::Command::new("node");
    command
        .arg(format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR")))
        .env("TOLLGATE_URL", address)
        .env("CHROMIUM", chromium)
        .env("SCREENSHOT_DIR", SCREENSHOTS)
        .envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_default();
    assert!(output.status.success() && summary["ok"] == true, "the {script} run failed: {stdout}");
    summary
}

/// Every page named was photographed at both widths.
fn assert_photographed(pages: &[&str]) {
    for page in pages {
        for suffix in ["", "-phone"] {
            let shot = format!("{SCREENSHOTS}/{page}{suffix}.png");
            assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "no screenshot {shot}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_browser), ignore = "Chromium or tests/browser/node_modules is missing")]
async fn a_customer_signs_in_manages_keys_and_follows_their_usage_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let oauth = FakeOAuth::start().await;
    oauth.sign_in_as(person("31337", "browser@example.com"));
    let settings = oauth.settings();
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    let upstream = fake.base_url();
    vars.extend([("SIGNUP_CREDIT", "2.00"), ("OPENAI_BASE_URL", &upstream), ("OPENAI_API_KEY", UPSTREAM_KEY)]);
    let app = spawn_app_with(Backend::Sqlite, &vars).await;
    add_model_named(&app.db, "test-model").await;
    add_model_named(&app.db, "other-model").await;

    let summary = run_script("signin.mjs", &app.address, &chromium, &[]).await;
    assert_eq!(summary["balance"], "$2.00");

    // What the browser saw matches the database: two keys, the second renamed and revoked; three
    // answered calls, billed.
    let keys = api_keys::Entity::find().all(&app.db.read).await.unwrap();
    assert_eq!(keys.len(), 2);
    let first =
        keys.iter().find(|k| k.key_hash == tollgate::keys::hash(summary["firstKey"].as_str().unwrap())).unwrap();
    let second =
        keys.iter().find(|k| k.key_hash == tollgate::keys::hash(summary["secondKey"].as_str().unwrap())).unwrap();
    assert!(first.revoked_at.is_none());
    assert!(second.revoked_at.is_some());
    assert_eq!(second.name, "ci-laptop");
    assert_eq!(
        (first.spend_limit, first.spend_limit_period.as_deref(), first.rpm),
        (Some(5_000_000), Some("day"), Some(60))
    );
    assert_eq!(first.allowed_ips, None, "the refused address changed nothing");
    let calls = usage_logs::Entity::find().all(&app.db.read).await.unwrap();
    let answered: Vec<_> = calls.iter().filter(|r| r.status_code == 200).collect();
    assert_eq!(answered.len(), 3, "{calls:?}");
    assert!(answered.iter().all(|r| r.cost > 0));
    assert_eq!(fake.calls(), 3, "refused calls must not reach the upstream");
    assert_photographed(&[
        "login",
        "dashboard",
        "keys",
        "usage",
        "usage-zh",
        "keys-zh",
        "key-settings",
        "key-settings-zh",
        "pricing-zh",
        "login-zh-signed-out",
    ]);
    assert_eq!(summary["secondId"], second.id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_browser), ignore = "Chromium or tests/browser/node_modules is missing")]
async fn an_operator_prices_a_model_tops_up_a_customer_and_reads_the_audit_log_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    let admin = crate::helpers::password_user(&app.db, "admin@example.com", "admin").await;
    let customer = crate::helpers::password_user(&app.db, "customer@example.com", "user").await;

    let env = [
        ("ADMIN_EMAIL", "admin@example.com"),
        ("CUSTOMER_EMAIL", "customer@example.com"),
        ("PASSWORD", crate::helpers::PASSWORD),
    ];
    run_script("admin.mjs", &app.address, &chromium, &env).await;

    // What the browser did is in the database: the model, priced; the top-up, audited as the admin.
    let model = tollgate::models::find_by_name(&app.db.read, "browser-model").await.unwrap();
    assert_eq!((model.input_price, model.output_price, model.max_output_tokens), (1_250_000, 5_000_000, 2048));
    // The top-up and one $5.00 code redeemed on the dashboard.
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, customer.id).await.unwrap(), 17_500_000);
    let codes = tollgate::db::entities::redemption_codes::Entity::find().all(&app.db.read).await.unwrap();
    assert_eq!(codes.len(), 2);
    assert_eq!(codes.iter().filter(|c| c.redeemed_by == Some(customer.id)).count(), 1);
    let entries = audit_logs::Entity::find().all(&app.db.read).await.unwrap();
    let topup = entries.iter().find(|e| e.action == "balance.adjust").expect("an audit entry for the top-up");
    assert_eq!(topup.actor_user_id, Some(admin.id));
    assert_eq!(topup.target_id, customer.id.to_string());
    crate::helpers::assert_books_balance(&app.db, customer.id).await;
    assert_photographed(&[
        "admin",
        "admin-models",
        "admin-users",
        "admin-user",
        "admin-audit",
        "admin-revenue",
        "admin-codes",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tollgate_test_browser), ignore = "Chromium or tests/browser/node_modules is missing")]
async fn an_operator_adds_tests_edits_and_deletes_channels_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    add_model_named(&app.db, "test-model").await;
    crate::helpers::password_user(&app.db, "admin@example.com", "admin").await;
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    let upstream = fake.base_url();
    // A channel whose only key the upstream refused (as the gateway records it).
    const REFUSED_KEY: &str = "sk-refused-upstream-key-0000000wxyz";
    let settings = tollgate::channels::Settings {
        sealer: Some(tollgate::channels::seal::Sealer::parse(crate::helpers::ENCRYPTION_KEY).unwrap()),
        allow_private: true,
    };
    let mut refused = tollgate::channels::NewChannel::new(
        "refused-upstream",
        "openai",
        &upstream,
        vec![tollgate::channels::ModelRoute::parse("*")],
        vec![tollgate::config::Secret::new(REFUSED_KEY)],
    );
    refused.priority = -1;
    let system = tollgate::audit::Actor::system();
    let refused = tollgate::channels::create(&app.db, &app.cache(), &settings, &system, refused).await.unwrap();
    tollgate::channels::disable_key(&app.db, &app.cache(), refused.id, Some(refused.keys[0].id), 401).await.unwrap();
    let env = [
        ("ADMIN_EMAIL", "admin@example.com"),
        ("PASSWORD", crate::helpers::PASSWORD),
        ("FAKE_UPSTREAM", upstream.as_str()),
        ("UPSTREAM_KEY", UPSTREAM_KEY),
        ("REFUSED_KEY", REFUSED_KEY),
    ];
    let summary = run_script("channels.mjs", &app.address, &chromium, &env).await;
    assert!(summary["testResult"].as_str().unwrap().contains("HTTP 200"), "{summary}");

    // What the browser did is in the database: one channel, weight 5, its key sealed; the two
    // test clicks reached the upstream, nothing else did.
    let all = tollgate::channels::list(&app.db).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].name.as_str(), all[0].priority, all[0].weight), ("browser-upstream", 3, 5));
    assert_eq!(all[0].keys.len(), 1);
    // The refused channel is back: its key and itself enabled.
    assert_eq!(all[1].name, "refused-upstream");
    assert!(all[1].enabled && all[1].keys[0].enabled && all[1].routable, "{:?}", all[1]);
    assert_eq!(fake.calls(), 2, "one upstream call per test click");
    let entries = audit_logs::Entity::find().all(&app.db.read).await.unwrap();
    for action in
        ["channel.create", "channel.update", "channel.test", "channel.disable", "channel.enable", "channel.delete"]
    {
        assert!(entries.iter().any(|e| e.action == action && e.actor_user_id.is_some()), "{action} audited");
    }
    assert_photographed(&["admin-channels", "admin-channels-zh", "admin-channels-dialog"]);
}
