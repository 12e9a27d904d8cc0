//! Managing channels: the admin API (create, list, change, test, enable/disable, delete, bad
//! input that changes nothing), the `tollgate channel` commands, and who sees which channel
//! served a call (the operator does; the customer never sees channel names, upstream URLs or
//! keys). Fake upstreams count their calls.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use reqwest::Method;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use tollgate::db::entities::{audit_logs, channel_keys, channels as channel_rows};

use crate::admin::Caller;
use crate::helpers::{
    Backend, ENCRYPTION_KEY, FakeUpstream, Mode, TestApp, UPSTREAM_KEY, add_test_model, chat_body, fresh_db, spawn_app,
};
use crate::on_all_backends;

const SECOND_KEY: &str = "sk-second-upstream-key-000000009999";
const THIRD_KEY: &str = "sk-replacement-upstream-key-00000zzzz";

/// Neither plaintext key appears in `text`.
fn assert_no_plaintext(text: &str, what: &str) {
    for key in [UPSTREAM_KEY, SECOND_KEY, THIRD_KEY] {
        assert!(!text.contains(key), "{what} shows an upstream key: {text}");
    }
}

async fn counts(app: &TestApp) -> (u64, u64, u64) {
    (
        channel_rows::Entity::find().count(&app.db.read).await.unwrap(),
        channel_keys::Entity::find().count(&app.db.read).await.unwrap(),
        audit_logs::Entity::find().count(&app.db.read).await.unwrap(),
    )
}

async fn channels_are_managed_through_the_admin_api(backend: Backend) {
    let app = spawn_app(backend).await;
    add_test_model(&app).await;
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    let (_, admin) = Caller::signed_in(&app, "ops@example.com", "admin").await;

    let new = json!({
        "name": "primary",
        "type": "openai",
        "baseUrl": fake.base_url(),
        "models": ["test-model", { "name": "other-model", "upstream": "upstream-other" }],
        "priority": 5,
        "weight": 3,
        "keys": [UPSTREAM_KEY, SECOND_KEY],
        "headers": { "X-Org": "acme-org-secret" },
    });
    let res = admin.call(Method::POST, "/api/admin/channels", Some(&new), &[]).await;
    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert_no_plaintext(&text, "the create answer");
    assert!(!text.contains("acme-org-secret"), "a header value was returned: {text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["type"], "openai");
    assert_eq!((created["priority"].as_i64(), created["weight"].as_i64()), (Some(5), Some(3)));
    assert_eq!(created["keys"][0]["hint"], "sk-…cdef");
    assert_eq!(created["keys"][1]["hint"], "sk-…9999");
    assert_eq!(created["headerNames"], json!(["x-org"]));
    assert_eq!(created["models"][1], json!({ "name": "other-model", "upstream": "upstream-other" }));

    // Bad input: our JSON error shape, 400 or 409, and nothing changes (no row, no key, no audit).
    let before = counts(&app).await;
    let bad: Vec<(Value, u16)> = vec![
        (json!({ "name": "primary", "type": "openai", "baseUrl": fake.base_url(), "models": ["test-model"] }), 409),
        (json!({ "name": "x", "type": "nope", "baseUrl": fake.base_url(), "models": ["test-model"] }), 400),
        (json!({ "name": "x", "type": "openai", "baseUrl": "ftp://example.com", "models": ["test-model"] }), 400),
        (json!({ "name": "x", "type": "openai", "baseUrl": fake.base_url(), "models": [] }), 400),
        (json!({ "name": "x", "type": "openai", "baseUrl": fake.base_url(), "models": ["m"], "weight": 0 }), 400),
        (json!({ "name": "x", "type": "openai", "baseUrl": fake.base_url(), "models": ["m"], "keys": ["a b"] }), 400),
        (json!({ "name": "x", "type": "openai", "baseUrl": fake.base_url(), "models": ["m"], "apiKey": "k" }), 400),
        (json!({ "type": "openai", "baseUrl": fake.base_url(), "models": ["m"] }), 400),
    ];
    for (body, status) in &bad {
        let res = admin.call(Method::POST, "/api/admin/channels", Some(body), &[]).await;
        assert_eq!(res.status().as_u16(), *status, "{body}");
        let err: Value = res.json().await.unwrap();
        assert!(err["error"]["message"].is_string() && err["error"]["code"].is_string(), "{err}");
    }
    for body in [json!({ "weight": 0 }), json!({ "baseUrl": "not a url" }), json!({}), json!({ "keys": ["x y"] })] {
        let (status, err) = admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &body).await;
        assert_eq!(status, 400, "{body}: {err}");
    }
    let (status, _) = admin.send(Method::PATCH, "/api/admin/channels/999999", &json!({ "weight": 2 })).await;
    assert_eq!(status, 404);
    assert_eq!(counts(&app).await, before, "refused input changed nothing");

    // The list: masked keys, health, no plaintext anywhere.
    let res = admin.call(Method::GET, "/api/admin/channels", None, &[]).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert_no_plaintext(&text, "the list");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["name"], "primary");
    assert_eq!(list["data"][0]["health"], "healthy");
    assert_eq!(list["data"][0]["routable"], true);

    // PATCH: weight and priority; keys replaced by a new one.
    let (status, changed) = admin
        .send(
            Method::PATCH,
            &format!("/api/admin/channels/{id}"),
            &json!({ "weight": 7, "priority": 9, "keys": [THIRD_KEY] }),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_no_plaintext(&changed.to_string(), "the PATCH answer");
    assert_eq!((changed["weight"].as_i64(), changed["priority"].as_i64()), (Some(7), Some(9)));
    let hints: Vec<&str> = changed["keys"].as_array().unwrap().iter().map(|k| k["hint"].as_str().unwrap()).collect();
    assert_eq!(hints, ["sk-…zzzz"]);
    // addKeys adds to them.
    let (status, changed) =
        admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &json!({ "addKeys": [SECOND_KEY] })).await;
    assert_eq!(status, 200);
    assert_eq!(changed["keys"].as_array().unwrap().len(), 2);
    // A key the upstream refused is disabled with its reason; enableKeys turns it on again.
    let refused = changed["keys"][0]["id"].as_i64().unwrap();
    tollgate::channels::disable_key(&app.db, &app.cache(), id, Some(refused), 401).await.unwrap();
    let (_, list) = admin.get("/api/admin/channels").await;
    let key = &list["data"][0]["keys"][0];
    assert_eq!((key["enabled"].as_bool(), key["disabledReason"].is_string()), (Some(false), true), "{key}");
    let (status, _) =
        admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &json!({ "enableKeys": [999_999] })).await;
    assert_eq!(status, 400, "an unknown key id");
    let (status, on) =
        admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &json!({ "enableKeys": [refused] })).await;
    assert_eq!(status, 200);
    assert_eq!((on["keys"][0]["enabled"].as_bool(), on["keys"][0]["disabledReason"].is_null()), (Some(true), true));

    // The test action: one call to the upstream, with its status and latency.
    assert_eq!(fake.calls(), 0);
    let (status, report) = admin.send(Method::POST, &format!("/api/admin/channels/{id}/test"), &json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(fake.calls(), 1, "the test sends exactly one request");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["status"], 200);
    assert!(report["latencyMs"].is_u64(), "{report}");
    assert_eq!(report["model"], "test-model");
    // A failing upstream is reported, not hidden.
    let broken = FakeUpstream::start(Mode::Status(500)).await.unwrap();
    let (status, other) = admin
        .send(
            Method::POST,
            "/api/admin/channels",
            &json!({ "name": "broken", "type": "openai", "baseUrl": broken.base_url(), "models": ["test-model"] }),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    let (status, report) =
        admin.send(Method::POST, &format!("/api/admin/channels/{}/test", other["id"]), &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!((report["ok"].as_bool(), report["status"].as_u64()), (Some(false), Some(500)), "{report}");
    assert_eq!(broken.calls(), 1);

    // Disable and enable (the operator's switch), then delete.
    let (status, off) =
        admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &json!({ "enabled": false })).await;
    assert_eq!(status, 200);
    assert_eq!(off["enabled"], false);
    assert!(off["disabledReason"].is_string(), "{off}");
    let (_, on) = admin.send(Method::PATCH, &format!("/api/admin/channels/{id}"), &json!({ "enabled": true })).await;
    assert_eq!((on["enabled"].as_bool(), on["disabledReason"].is_null()), (Some(true), true));
    let res = admin.call(Method::DELETE, &format!("/api/admin/channels/{id}"), None, &[]).await;
    assert_eq!(res.status(), 204);
    let res = admin.call(Method::DELETE, &format!("/api/admin/channels/{id}"), None, &[]).await;
    assert_eq!(res.status(), 404);
    let (_, list) = admin.get("/api/admin/channels").await;
    let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken"]);

    // Every change is audited with the admin as actor; no audit entry holds a plaintext key.
    let entries = audit_logs::Entity::find().all(&app.db.read).await.unwrap();
    let channel_entries: Vec<_> = entries.iter().filter(|e| e.target_type == "channel").collect();
    for action in
        ["channel.create", "channel.update", "channel.test", "channel.disable", "channel.enable", "channel.delete"]
    {
        assert!(channel_entries.iter().any(|e| e.action == action && e.actor_user_id.is_some()), "{action} audited");
    }
    for e in &entries {
        assert_no_plaintext(&format!("{:?} {:?}", e.before, e.after), "the audit log");
    }
}

on_all_backends!(channels_are_managed_through_the_admin_api);

async fn the_operator_sees_which_channel_served_and_the_customer_never_does(backend: Backend) {
    let app = spawn_app(backend).await;
    add_test_model(&app).await;
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    let (_, admin) = Caller::signed_in(&app, "ops@example.com", "admin").await;
    let (customer_id, customer) = Caller::signed_in(&app, "buyer@example.com", "user").await;
    tollgate::billing::ledger::adjust(&app.db, customer_id, 5_000_000, "topup", "test", None).await.unwrap();
    let (_, key) = tollgate::keys::create(&app.db.write, customer_id, None).await.unwrap();
    let name = "hidden-upstream-account";
    let (status, _) = admin
        .send(
            Method::POST,
            "/api/admin/channels",
            &json!({ "name": name, "type": "openai", "baseUrl": fake.base_url(), "models": ["*"], "keys": [UPSTREAM_KEY] }),
        )
        .await;
    assert_eq!(status, 201);
    let res = app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 200);
    let head = format!("{:?}", res.headers());
    let answer = format!("{head} {}", res.text().await.unwrap());
    app.settled(customer_id).await;
    assert_eq!(fake.calls(), 1);

    // The operator: the user's recent usage names the channel and the attempts.
    let (status, detail) = admin.get(&format!("/api/admin/users/{customer_id}")).await;
    assert_eq!(status, 200);
    let row = &detail["recentUsage"][0];
    assert_eq!(row["channel"], name, "{detail}");
    assert_eq!(row["attempts"], 1);

    // The customer: no channel name, upstream address or key in any answer they can get.
    let host = url::Url::parse(&fake.base_url()).unwrap();
    let upstream_address = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    let mut seen = vec![("the chat answer".to_owned(), answer)];
    for path in [
        "/api/internal/me",
        "/api/internal/usage",
        "/api/internal/usage/daily",
        "/api/internal/usage/export",
        "/dashboard",
        "/dashboard/usage",
    ] {
        let res = customer.call(Method::GET, path, None, &[]).await;
        assert_eq!(res.status(), 200, "{path}");
        seen.push((path.to_owned(), res.text().await.unwrap()));
    }
    let now = tollgate::clock::now_ms();
    let (today, tomorrow) = (tollgate::clock::rfc3339(now), tollgate::clock::rfc3339(now + 86_400_000));
    let billing = format!("/v1/dashboard/billing/usage?start_date={}&end_date={}", &today[..10], &tomorrow[..10]);
    for path in [billing.as_str(), "/v1/dashboard/billing/subscription", "/v1/models"] {
        let res = app.client.get(format!("{}{path}", app.address)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        seen.push((path.to_owned(), res.text().await.unwrap()));
    }
    for (what, text) in &seen {
        assert!(!text.contains(name), "{what} names the channel: {text}");
        assert!(!text.contains(&upstream_address), "{what} shows the upstream address: {text}");
        // Pages carry the whole string catalogue (back-office words included); answers do not.
        if !what.starts_with("/dashboard") {
            assert!(!text.to_lowercase().contains("channel"), "{what} speaks of channels: {text}");
        }
        assert_no_plaintext(text, what);
    }
    assert!(
        seen.iter().any(|(w, t)| w == "/api/internal/usage/export" && t.contains("test-model")),
        "the CSV has the row"
    );
}

on_all_backends!(the_operator_sees_which_channel_served_and_the_customer_never_does);

// ---- the command line ----------------------------------------------------------------------

fn tollgate(database_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env("ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("ALLOW_PRIVATE_UPSTREAMS", "true")
        .env_remove("REDIS_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "command failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn listed(url: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(&tollgate(url, &["channel", "list", "--json"], None)))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn channels_are_managed_from_the_command_line(backend: Backend) {
    let test_db = fresh_db(backend).await;
    let url = test_db.url.clone();
    tollgate::models::set(
        &test_db.db,
        &tollgate::cache::Cache::in_process(),
        "test-model",
        tollgate::models::ModelChange {
            upstream_model: Some("upstream-model".into()),
            input_price: Some(1_000_000),
            output_price: Some(2_000_000),
            enabled: Some(true),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let fake = FakeUpstream::start(Mode::Normal).await.unwrap();
    let base = fake.base_url();
    let add = [
        "channel",
        "add",
        "--name",
        "primary",
        "--type",
        "openai",
        "--base-url",
        &base,
        "--models",
        "test-model,other-model=upstream-other",
        "--priority",
        "5",
        "--weight",
        "3",
        "--header",
        "X-Org: acme-org-secret",
        "--keys-stdin",
    ];
    let out = ok(&tollgate(&url, &add, Some(&format!("{UPSTREAM_KEY}\n\n{SECOND_KEY}\n"))));
    assert!(out.contains("primary") && out.contains("2 key(s)"), "{out}");

    // A key on the command line is refused, and nothing is created.
    for flag in ["--key", "--keys", "--api-key"] {
        let o = tollgate(
            &url,
            &[
                "channel",
                "add",
                "--name",
                "argv",
                "--type",
                "openai",
                "--base-url",
                &base,
                "--models",
                "m",
                flag,
                THIRD_KEY,
            ],
            None,
        );
        assert!(!o.status.success(), "{flag} accepted");
        let why = String::from_utf8_lossy(&o.stderr);
        assert!(why.contains("--keys-stdin"), "{flag}: {why}");
        assert!(!why.contains(THIRD_KEY), "the refusal echoes the key: {why}");
    }
    // Other bad input: an error, nothing changed.
    for (args, stdin) in [
        (vec!["channel", "add", "--name", "primary", "--type", "openai", "--base-url", &base, "--models", "m"], None),
        (vec!["channel", "add", "--name", "x", "--type", "nope", "--base-url", &base, "--models", "m"], None),
        (vec!["channel", "add", "--name", "x", "--type", "openai", "--base-url", "ftp://x", "--models", "m"], None),
        (
            vec![
                "channel",
                "add",
                "--name",
                "x",
                "--type",
                "openai",
                "--base-url",
                &base,
                "--models",
                "m",
                "--keys-stdin",
            ],
            Some("\n"),
        ),
        (vec!["channel", "set", "primary", "--weight", "0"], None),
        (vec!["channel", "set", "nothing", "--weight", "2"], None),
        (vec!["channel", "test", "nothing"], None),
        (vec!["channel", "delete", "nothing"], None),
    ] {
        let o = tollgate(&url, &args, stdin);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!o.stderr.is_empty(), "{args:?} should say why");
    }
    let all = listed(&url);
    assert_eq!(all.len(), 1);
    let c = &all[0];
    assert_eq!((c["priority"].as_i64(), c["weight"].as_i64()), (Some(5), Some(3)));
    assert_eq!(c["type"], "openai");
    let hints: Vec<&str> = c["keys"].as_array().unwrap().iter().map(|k| k["hint"].as_str().unwrap()).collect();
    assert_eq!(hints, ["sk-…cdef", "sk-…9999"]);
    assert_eq!(c["header_names"], json!(["x-org"]));
    assert_eq!(c["models"][1], json!({ "name": "other-model", "upstream": "upstream-other" }));
    let table = ok(&tollgate(&url, &["channel", "list"], None));
    assert!(table.contains("primary") && table.contains("sk-…cdef") && table.contains("test-model"), "{table}");
    for text in [&table, &serde_json::to_string(&all).unwrap()] {
        assert_no_plaintext(text, "channel list");
        assert!(!text.contains("acme-org-secret"), "{text}");
    }

    // The test: one call upstream, status and latency printed.
    let out = ok(&tollgate(&url, &["channel", "test", "primary"], None));
    assert!(out.contains("HTTP 200") && out.contains(" ms"), "{out}");
    assert_eq!(fake.calls(), 1);

    // set: keys from stdin replace them; other options change what they name.
    ok(&tollgate(&url, &["channel", "set", "primary", "--weight", "7", "--keys-stdin"], Some(THIRD_KEY)));
    let c = &listed(&url)[0];
    assert_eq!((c["priority"].as_i64(), c["weight"].as_i64()), (Some(5), Some(7)));
    assert_eq!(c["keys"].as_array().unwrap().len(), 1);
    assert_eq!(c["keys"][0]["hint"], "sk-…zzzz");
    // A key the upstream refused: listed as disabled, enabled again with --enable-keys.
    let key_id = c["keys"][0]["id"].as_i64().unwrap();
    let channel_id = c["id"].as_i64().unwrap();
    let cache = tollgate::cache::Cache::in_process();
    tollgate::channels::disable_key(&test_db.db, &cache, channel_id, Some(key_id), 403).await.unwrap();
    let c = &listed(&url)[0];
    assert_eq!((c["keys"][0]["enabled"].as_bool(), c["enabled"].as_bool()), (Some(false), Some(false)));
    let table = ok(&tollgate(&url, &["channel", "list"], None));
    assert!(table.contains("(disabled)") && table.contains("HTTP 403"), "{table}");
    ok(&tollgate(&url, &["channel", "set", "primary", "--enable-keys"], None));
    ok(&tollgate(&url, &["channel", "enable", "primary"], None));
    let c = &listed(&url)[0];
    assert_eq!((c["keys"][0]["enabled"].as_bool(), c["enabled"].as_bool()), (Some(true), Some(true)));
    ok(&tollgate(&url, &["channel", "set", "primary", "--name", "renamed", "--clear-headers"], None));
    assert_eq!(listed(&url)[0]["header_names"], json!([]));

    ok(&tollgate(&url, &["channel", "disable", "renamed"], None));
    let c = &listed(&url)[0];
    assert_eq!(c["enabled"], false);
    assert!(c["disabled_reason"].is_string());
    ok(&tollgate(&url, &["channel", "enable", "renamed"], None));
    assert_eq!(listed(&url)[0]["enabled"], true);

    // A failing upstream: a non-zero exit that says what happened.
    let broken = FakeUpstream::start(Mode::Status(500)).await.unwrap();
    let broken_base = broken.base_url();
    ok(&tollgate(
        &url,
        &["channel", "add", "--name", "broken", "--type", "openai", "--base-url", &broken_base, "--models", "*"],
        None,
    ));
    let o = tollgate(&url, &["channel", "test", "broken"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 500"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(broken.calls(), 1);

    let out = ok(&tollgate(&url, &["channel", "delete", "renamed"], None));
    assert!(out.contains("deleted channel renamed"), "{out}");
    let names: Vec<String> = listed(&url).iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["broken"]);

    // Every change is audited (actor: the command line); no stored text holds a key in the clear.
    let entries = audit_logs::Entity::find().all(&test_db.db.read).await.unwrap();
    for action in
        ["channel.create", "channel.update", "channel.test", "channel.disable", "channel.enable", "channel.delete"]
    {
        assert!(entries.iter().any(|e| e.action == action && e.actor_user_id.is_none()), "{action} audited");
    }
    for e in &entries {
        assert_no_plaintext(&format!("{:?} {:?}", e.before, e.after), "the audit log");
    }
}

on_all_backends!(channels_are_managed_from_the_command_line);
