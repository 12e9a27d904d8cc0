//! The back office's JSON API: access control on every route, balance changes with their
//! ledger, audit and idempotency, model changes reaching the gateway, the lists support uses,
//! and revenue that adds up — on every backend.

use std::collections::BTreeSet;

use reqwest::Method;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tollgate::db::entities::audit_logs;

use crate::fake_oauth::Browser;
use crate::helpers::{
    Backend, MODEL, Mode, PASSWORD, TestApp, assert_books_balance, password_user, spawn_app, spawn_gateway,
    spawn_instance, user_with_balance,
};
use crate::on_all_backends;

/// Someone calling the API: anonymous, or signed in with a password.
pub struct Caller {
    browser: Browser,
    base: String,
}

impl Caller {
    pub fn anonymous(app: &TestApp) -> Self {
        Self { browser: Browser::new(), base: app.address.clone() }
    }

    /// Creates a password user with `role` and signs them in.
    pub async fn signed_in(app: &TestApp, email: &str, role: &str) -> (i64, Self) {
        let user = password_user(&app.db, email, role).await;
        let caller = Self::anonymous(app);
        let form = [("email", email), ("password", PASSWORD), ("next", "/dashboard")];
        caller.browser.post_form(&format!("{}/api/auth/signin/password", app.address), &form, None).await;
        assert!(caller.browser.cookie("tollgate_session").is_some(), "{email} signed in");
        (user.id, caller)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.browser.send(req).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.call(Method::GET, path, None, &[]).await;
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, method: Method, path: &str, body: &Value) -> (u16, Value) {
        let res = self.call(method, path, Some(body), &[]).await;
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// A model nobody has used, by its admin API id.
async fn model_id(app: &TestApp, name: &str) -> i64 {
    tollgate::models::find_by_name(&app.db.read, name).await.unwrap().id
}

async fn every_admin_route_needs_an_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = Caller::signed_in(&app, "root@example.com", "admin").await;
    let (_, customer) = Caller::signed_in(&app, "customer@example.com", "user").await;
    let anonymous = Caller::anonymous(&app);
    let target = user_with_balance(&app.db, "target@example.com", 5_000_000).await;
    let (key, _) = tollgate::keys::create(&app.db.write, target, None).await.unwrap();
    let sub = tollgate::subscriptions::grant(&app.db, target, "starter", 1000, 30, None).await.unwrap();
    let spare = tollgate::models::create(
        &app.db,
        &app.cache(),
        "spare-model",
        tollgate::models::ModelChange { input_price: Some(1), output_price: Some(1), ..Default::default() },
        &tollgate::audit::Actor::system(),
    )
    .await
    .unwrap();
    let mini = model_id(&app, "gpt-4o-mini").await;
    // Two channels on a port nothing listens on: one to change and test, one to delete.
    let channel = |name: &str| {
        tollgate::channels::NewChannel::new(
            name,
            "openai",
            "http://127.0.0.1:9/v1",
            vec![tollgate::channels::ModelRoute::parse("*")],
            Vec::new(),
        )
    };
    let settings = tollgate::channels::Settings { sealer: None, allow_private: true };
    let system = tollgate::audit::Actor::system();
    let kept =
        tollgate::channels::create(&app.db, &app.cache(), &settings, &system, channel("rbac-kept")).await.unwrap();
    let doomed =
        tollgate::channels::create(&app.db, &app.cache(), &settings, &system, channel("rbac-doomed")).await.unwrap();

    // (method, route, concrete path, body an admin sends, the admin's status). Adding a route to
    // the admin router without a row here fails the comparison below.
    let rows: Vec<(Method, &str, String, Option<Value>, u16)> = vec![
        (Method::GET, "/api/admin/models", "/api/admin/models".into(), None, 200),
        (
            Method::POST,
            "/api/admin/models",
            "/api/admin/models".into(),
            Some(json!({ "name": "rbac-model", "inputPrice": "1", "outputPrice": "2" })),
            201,
        ),
        (
            Method::PATCH,
            "/api/admin/models/{id}",
            format!("/api/admin/models/{mini}"),
            Some(json!({ "inputPrice": "0.20" })),
            200,
        ),
        (Method::DELETE, "/api/admin/models/{id}", format!("/api/admin/models/{}", spare.id), None, 204),
        (Method::GET, "/api/admin/users", "/api/admin/users".into(), None, 200),
        (Method::GET, "/api/admin/users/{id}", format!("/api/admin/users/{target}"), None, 200),
        (
            Method::PATCH,
            "/api/admin/users/{id}",
            format!("/api/admin/users/{target}"),
            Some(json!({ "role": "user" })),
            200,
        ),
        (
            Method::POST,
            "/api/admin/users/{id}/balance",
            format!("/api/admin/users/{target}/balance"),
            Some(json!({ "amount": "1.00", "reason": "rbac" })),
            200,
        ),
        (
            Method::POST,
            "/api/admin/users/{id}/subscriptions",
            format!("/api/admin/users/{target}/subscriptions"),
            Some(json!({ "tokens": 10, "days": 1 })),
            201,
        ),
        (
            Method::POST,
            "/api/admin/subscriptions/{id}/renew",
            format!("/api/admin/subscriptions/{}/renew", sub.id),
            Some(json!({ "days": 1 })),
            200,
        ),
        (Method::GET, "/api/admin/keys", "/api/admin/keys".into(), None, 200),
        (
            Method::PATCH,
            "/api/admin/keys/{id}",
            format!("/api/admin/keys/{}", key.id),
            Some(json!({ "rpm": 60, "allowedModels": ["gpt-4o-mini"] })),
            200,
        ),
        (Method::DELETE, "/api/admin/keys/{id}", format!("/api/admin/keys/{}", key.id), None, 204),
        (Method::GET, "/api/admin/audit-logs", "/api/admin/audit-logs".into(), None, 200),
        (Method::GET, "/api/admin/revenue", "/api/admin/revenue".into(), None, 200),
        (Method::GET, "/api/admin/redemption-codes", "/api/admin/redemption-codes".into(), None, 200),
        (
            Method::POST,
            "/api/admin/redemption-codes",
            "/api/admin/redemption-codes".into(),
            Some(json!({ "count": 2, "amount": "1.00" })),
            201,
        ),
        (Method::GET, "/api/admin/channels", "/api/admin/channels".into(), None, 200),
        (
            Method::POST,
            "/api/admin/channels",
            "/api/admin/channels".into(),
            Some(json!({ "name": "rbac-new", "type": "openai", "baseUrl": "http://127.0.0.1:9/v1", "models": ["*"] })),
            201,
        ),
        (
            Method::PATCH,
            "/api/admin/channels/{id}",
            format!("/api/admin/channels/{}", kept.id),
            Some(json!({ "weight": 2 })),
            200,
        ),
        (Method::DELETE, "/api/admin/channels/{id}", format!("/api/admin/channels/{}", doomed.id), None, 204),
        (
            Method::POST,
            "/api/admin/channels/{id}/test",
            format!("/api/admin/channels/{}/test", kept.id),
            Some(json!({})),
            200,
        ),
    ];
    let listed: BTreeSet<(String, String)> = rows.iter().map(|r| (r.0.to_string(), r.1.to_owned())).collect();
    let routed: BTreeSet<(String, String)> =
        tollgate::http::admin::route_list().into_iter().map(|(m, p)| (m.to_owned(), p.to_owned())).collect();
    assert_eq!(listed, routed, "every admin route is in this matrix, and only those");
    let audits = audit_logs::Entity::find().count(&app.db.read).await.unwrap();

    for (method, _, path, body, _) in &rows {
        for (who, caller, status) in [("anonymous", &anonymous, 401), ("customer", &customer, 403)] {
            let res = caller.call(method.clone(), path, body.as_ref(), &[]).await;
            assert_eq!(res.status().as_u16(), status, "{who} {method} {path}");
            let err: Value = res.json().await.unwrap();
            assert!(err["error"]["message"].is_string() && err["error"]["code"].is_string(), "{err}");
        }
    }
    // Nothing the refused callers sent changed anything.
    assert_eq!(audit_logs::Entity::find().count(&app.db.read).await.unwrap(), audits);
    let batches = tollgate::db::entities::redemption_batches::Entity::find().count(&app.db.read).await.unwrap();
    assert_eq!(batches, 0, "no codes were made by refused callers");
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, target).await.unwrap(), 5_000_000);

    for (method, _, path, body, admin_status) in &rows {
        let res = admin.call(method.clone(), path, body.as_ref(), &[]).await;
        assert_eq!(res.status().as_u16(), *admin_status, "admin {method} {path}: {:?}", res.text().await);
    }
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, target).await.unwrap(), 6_000_000);
    // Every admin write above is in the audit log, with the admin as actor and their address.
    let written: Vec<audit_logs::Model> = audit_logs::Entity::find()
        .filter(audit_logs::Column::Id.gt(i64::try_from(audits).unwrap()))
        .all(&app.db.read)
        .await
        .unwrap();
    let actions: BTreeSet<&str> = written.iter().map(|a| a.action.as_str()).collect();
    for action in [
        "model.create",
        "model.update",
        "model.delete",
        "balance.adjust",
        "subscription.grant",
        "subscription.renew",
        "key.revoke",
        "redemption_codes.create",
        "channel.create",
        "channel.update",
        "channel.delete",
        "channel.test",
    ] {
        assert!(actions.contains(action), "{action} audited: {actions:?}");
    }
    assert!(written.iter().all(|a| a.actor_user_id.is_some()), "{written:?}");
    assert!(written.iter().all(|a| a.ip.as_deref() == Some("127.0.0.1")), "{written:?}");
    assert_books_balance(&app.db, target).await;
}

on_all_backends!(every_admin_route_needs_an_admin);

/// The cost the gateway charged for the latest request of `user` and what `input`/`output`
/// micro-units per token make of its usage.
async fn last_charge(app: &TestApp, user: i64, input: i64, output: i64) -> (i64, i64) {
    app.settled(user).await;
    let row = app.usage(user).await.pop().unwrap();
    (row.cost, row.prompt_tokens * input + row.completion_tokens * output)
}

async fn model_changes_reach_the_gateway_at_once(backend: Backend) {
    let redis = std::env::var("TEST_REDIS_URL").unwrap();
    let prefix = format!("tg-test-{}:", tollgate::crypto::random_token(6));
    let shared = [("REDIS_URL", redis.as_str()), ("REDIS_PREFIX", prefix.as_str())];
    let g = spawn_gateway(backend, Mode::Normal, &shared).await;
    let base = g.fake.base_url();
    let mut second = shared.to_vec();
    second.extend([("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", crate::helpers::UPSTREAM_KEY)]);
    let other = spawn_instance(&g.app.database_url, &second).await;
    let (_, admin) = Caller::signed_in(&g.app, "ops@example.com", "admin").await;
    let (user, key) = g.app.customer("buyer@example.com", 10_000_000).await;
    let body = json!({ "model": "admin-model", "messages": [{ "role": "user", "content": "Say hello." }] });

    let new = json!({
        "name": "admin-model", "upstreamModel": "upstream-model", "inputPrice": "1", "outputPrice": "2",
        "maxOutputTokens": 100, "contextWindow": 100000,
    });
    let (status, created) = admin.send(Method::POST, "/api/admin/models", &new).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["inputPrice"].as_str(), created["enabled"].as_bool()), (Some("1.00"), Some(true)));
    let id = created["id"].as_i64().unwrap();
    // Both instances serve it and cache its configuration.
    for app in [&g.app, &other] {
        assert_eq!(app.chat(&key, &body).await.status(), 200);
        let (charged, expected) = last_charge(&g.app, user, 1, 2).await;
        assert_eq!(charged, expected);
    }

    let (status, changed) =
        admin.send(Method::PATCH, &format!("/api/admin/models/{id}"), &json!({ "inputPrice": "3" })).await;
    assert_eq!((status, changed["inputPrice"].as_str()), (200, Some("3.00")), "{changed}");
    assert_eq!(g.app.chat(&key, &body).await.status(), 200);
    let (charged, expected) = last_charge(&g.app, user, 3, 2).await;
    assert_eq!(charged, expected, "the new price at once on the instance that changed it");
    // The other instance drops its copy with Redis; its in-process layer holds entries for at
    // most a second.
    tokio::time::sleep(tollgate::cache::LOCAL_TTL_WITH_REDIS).await;
    assert_eq!(other.chat(&key, &body).await.status(), 200);
    let (charged, expected) = last_charge(&g.app, user, 3, 2).await;
    assert_eq!(charged, expected, "the new price on the other instance");

    let (status, _) = admin.send(Method::PATCH, &format!("/api/admin/models/{id}"), &json!({ "enabled": false })).await;
    assert_eq!(status, 200);
    assert_eq!(g.app.chat(&key, &body).await.status(), 404, "disabled at once");
    tokio::time::sleep(tollgate::cache::LOCAL_TTL_WITH_REDIS).await;
    assert_eq!(other.chat(&key, &body).await.status(), 404, "disabled on the other instance");

    // Used: deleting is refused; bad and unknown fields change nothing.
    let res = admin.call(Method::DELETE, &format!("/api/admin/models/{id}"), None, &[]).await;
    assert_eq!(res.status(), 409);
    for bad in [
        json!({ "inputPrice": 3 }),
        json!({ "inputPrice": "-1" }),
        json!({ "balance": "100" }),
        json!({ "capField": "max_length" }),
        json!({}),
    ] {
        let (status, err) = admin.send(Method::PATCH, &format!("/api/admin/models/{id}"), &bad).await;
        assert_eq!(status, 400, "{bad} → {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    let (status, _) = admin
        .send(Method::POST, "/api/admin/models", &json!({ "name": MODEL, "inputPrice": "1", "outputPrice": "1" }))
        .await;
    assert_eq!(status, 409, "a name in use");
    let (status, _) = admin.send(Method::PATCH, "/api/admin/models/999999", &json!({ "enabled": true })).await;
    assert_eq!(status, 404);
    let m = tollgate::models::find(&g.app.db.read, id).await.unwrap();
    assert_eq!((m.input_price, m.enabled), (3_000_000, false));

    let (status, list) = admin.get("/api/admin/models").await;
    assert_eq!(status, 200);
    let row = list["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap().clone();
    assert_eq!(row["requestsLast30Days"], 4, "two, then one on each instance at the new price: {row}");
    assert_books_balance(&g.app.db, user).await;
}

on_all_backends!(redis: model_changes_reach_the_gateway_at_once);

async fn ledger_rows(app: &TestApp, user: i64) -> Vec<(String, i64, String)> {
    use sea_orm::QueryOrder;
    use tollgate::db::entities::credit_transactions;
    credit_transactions::Entity::find()
        .filter(credit_transactions::Column::UserId.eq(user))
        .order_by_asc(credit_transactions::Column::Id)
        .all(&app.db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.amount, c.reason))
        .collect()
}

async fn balance_changes_are_exact_idempotent_and_never_below_zero(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_id, admin) = Caller::signed_in(&app, "ops@example.com", "admin").await;
    let user = user_with_balance(&app.db, "client@example.com", 0).await;
    let path = format!("/api/admin/users/{user}/balance");
    let post = |body: Value, key: Option<&'static str>| {
        let (admin, path) = (&admin, path.clone());
        async move {
            let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
            let res = admin.call(Method::POST, &path, Some(&body), &headers).await;
            let replayed = res.headers().get("idempotent-replayed").is_some();
            (res.status().as_u16(), res.json::<Value>().await.unwrap(), replayed)
        }
    };

    // A top-up, exact to the micro-unit.
    let (status, body, replayed) = post(json!({ "amount": "12.50", "reason": "invoice 7" }), Some("k-1")).await;
    assert_eq!((status, replayed), (200, false), "{body}");
    assert_eq!((body["balanceBefore"].as_str(), body["balance"].as_str()), (Some("0.00"), Some("12.50")));
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, user).await.unwrap(), 12_500_000);
    assert_books_balance(&app.db, user).await;

    // The same request again with the same key: the first answer, no second change.
    let (status, again, replayed) = post(json!({ "amount": "12.50", "reason": "invoice 7" }), Some("k-1")).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, body);
    // The key for another request is refused.
    let (status, err, _) = post(json!({ "amount": "99", "reason": "invoice 7" }), Some("k-1")).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, user).await.unwrap(), 12_500_000);
    // Retries racing each other still change the balance once.
    let racing: Vec<_> = (0..6).map(|_| post(json!({ "amount": "1", "reason": "race" }), Some("k-race"))).collect();
    let answers = futures::future::join_all(racing).await;
    assert!(answers.iter().all(|(s, b, _)| *s == 200 && b == &answers[0].1), "{answers:?}");
    assert_eq!(answers.iter().filter(|a| !a.2).count(), 1, "one ran, the rest replayed");
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, user).await.unwrap(), 13_500_000);

    // A correction.
    let (status, body, _) = post(json!({ "amount": "-3.25", "reason": "refund reversed" }), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["balance"].as_str(), body["kind"].as_str()), (Some("10.25"), Some("adjustment")));
    assert_books_balance(&app.db, user).await;

    // Below zero: 409 with the current balance, nothing changed, nothing stored for the key.
    let before = ledger_rows(&app, user).await;
    let audits = audit_logs::Entity::find().count(&app.db.read).await.unwrap();
    let (status, err, _) = post(json!({ "amount": "-10.26", "reason": "too much" }), Some("k-low")).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        (err["error"]["code"].as_str(), err["error"]["balance"].as_str()),
        (Some("billing.balance_too_low"), Some("10.25"))
    );
    // Bad input: a clear 400, nothing changed.
    for bad in [
        json!({ "amount": 5, "reason": "number" }),
        json!({ "amount": "0", "reason": "zero" }),
        json!({ "amount": "1.0000001", "reason": "too precise" }),
        json!({ "amount": "abc", "reason": "not money" }),
        json!({ "amount": "1", "reason": "  " }),
        json!({ "amount": "1" }),
        json!({ "amount": "1", "reason": "x", "role": "admin" }),
    ] {
        let (status, err, _) = post(bad.clone(), None).await;
        assert_eq!(status, 400, "{bad} → {err}");
    }
    let res = admin
        .call(Method::POST, &path, Some(&json!({ "amount": "1", "reason": "x" })), &[("Idempotency-Key", "")])
        .await;
    assert_eq!(res.status(), 400, "an empty key");
    // A page on another site cannot make the admin's browser do it.
    let res = admin
        .call(
            Method::POST,
            &path,
            Some(&json!({ "amount": "100", "reason": "x" })),
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(res.status(), 403, "cross-site");
    let (status, _) =
        admin.send(Method::POST, "/api/admin/users/999999/balance", &json!({ "amount": "1", "reason": "x" })).await;
    assert_eq!(status, 404);
    assert_eq!(ledger_rows(&app, user).await, before);
    assert_eq!(audit_logs::Entity::find().count(&app.db.read).await.unwrap(), audits);
    let batches = tollgate::db::entities::redemption_batches::Entity::find().count(&app.db.read).await.unwrap();
    assert_eq!(batches, 0, "no codes were made by refused callers");
    // The refused request stored nothing: once covered, the same key works.
    post(json!({ "amount": "5", "reason": "cover" }), None).await;
    let (status, body, replayed) = post(json!({ "amount": "-10.26", "reason": "too much" }), Some("k-low")).await;
    assert_eq!((status, replayed, body["balance"].as_str()), (200, false, Some("4.99")));

    let expected: Vec<(String, i64, String)> = [
        ("topup", 12_500_000, "invoice 7"),
        ("topup", 1_000_000, "race"),
        ("adjustment", -3_250_000, "refund reversed"),
        ("topup", 5_000_000, "cover"),
        ("adjustment", -10_260_000, "too much"),
    ]
    .iter()
    .map(|(k, a, r)| ((*k).to_owned(), *a, (*r).to_owned()))
    .collect();
    assert_eq!(ledger_rows(&app, user).await, expected);

    // The audit log, newest first, with actor, address, before and after.
    let (status, log) = admin.get(&format!("/api/admin/audit-logs?action=balance.adjust&target=user:{user}")).await;
    assert_eq!(status, 200);
    assert_eq!(log["total"], 5);
    let newest = &log["data"][0];
    assert_eq!(newest["actorUserId"], admin_id);
    assert_eq!(newest["actorEmail"], "ops@example.com");
    assert_eq!(newest["ip"], "127.0.0.1");
    assert_eq!(
        (newest["before"]["balance"].as_str(), newest["after"]["balance"].as_str()),
        (Some("15.25"), Some("4.99"))
    );
    assert_eq!(newest["after"]["reason"], "too much");
    assert_books_balance(&app.db, user).await;

    // The user's detail shows the same ledger and balance.
    let (status, detail) = admin.get(&format!("/api/admin/users/{user}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["balance"], "4.99");
    assert_eq!(detail["ledger"].as_array().unwrap().len(), 5);
    assert_eq!(detail["ledger"][0]["amount"], "-10.26");
}

on_all_backends!(balance_changes_are_exact_idempotent_and_never_below_zero);

async fn support_finds_users_and_keys_and_acts_on_them(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (admin_id, admin) = Caller::signed_in(app, "ops@example.com", "admin").await;
    let (alice, alice_key) = app.customer("alice@example.com", 3_000_000).await;
    let (bob, bob_key) = app.customer("bob@shop.example", 1_000_000).await;
    for i in 0..25 {
        user_with_balance(&app.db, &format!("bulk{i:02}@example.com"), 0).await;
    }
    tollgate::subscriptions::grant(&app.db, alice, "monthly", 5000, 30, None).await.unwrap();
    assert_eq!(app.chat(&alice_key, &crate::helpers::chat_body(false)).await.status(), 200);
    app.settled(alice).await;
    let spent = app.usage(alice).await[0].subscription_tokens;

    // Search by part of the email, any case; figures support needs first.
    let (status, found) = admin.get("/api/admin/users?q=ALICE").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["total"], 1);
    let row = &found["data"][0];
    assert_eq!(
        (row["id"].as_i64(), row["balance"].as_str(), row["keys"].as_i64()),
        (Some(alice), Some("3.00"), Some(1))
    );
    assert_eq!(row["subscriptionTokens"], 5000 - spent);
    assert!(row["lastActiveAt"].is_string(), "{row}");
    // LIKE wildcards are searched for literally.
    assert_eq!(admin.get("/api/admin/users?q=%25").await.1["total"], 0);
    assert_eq!(admin.get("/api/admin/users?q=_").await.1["total"], 0);
    // Paging over everyone: 25 + alice + bob + the admin.
    let (_, page) = admin.get("/api/admin/users?page=2&pageSize=10").await;
    assert_eq!((page["total"].as_u64(), page["data"].as_array().unwrap().len()), (Some(28), 10));
    let (_, last) = admin.get("/api/admin/users?page=3&pageSize=10").await;
    assert_eq!(last["data"].as_array().unwrap().len(), 8);
    assert_eq!(admin.get("/api/admin/users?role=admin").await.1["data"][0]["id"], admin_id);
    for bad in ["?role=root", "?status=gone", "?pageSize=1000", "?page=0", "?sort=email"] {
        let (status, err) = admin.get(&format!("/api/admin/users{bad}")).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    assert_eq!(admin.get("/api/admin/users/999999").await.0, 404);
    assert_eq!(admin.get("/api/admin/users/abc").await.0, 404);

    // Disabling: the key stops at once, the listing shows it.
    let (status, patched) =
        admin.send(Method::PATCH, &format!("/api/admin/users/{bob}"), &json!({ "disabled": true })).await;
    assert_eq!((status, patched["disabled"].as_bool()), (200, Some(true)), "{patched}");
    assert_eq!(app.chat(&bob_key, &crate::helpers::chat_body(false)).await.status(), 401);
    assert_eq!(admin.get("/api/admin/users?status=disabled").await.1["data"][0]["id"], bob);
    // Role changes; no mass assignment, no locking oneself out.
    let (status, _) = admin.send(Method::PATCH, &format!("/api/admin/users/{bob}"), &json!({ "role": "admin" })).await;
    assert_eq!(status, 200);
    for (target, bad) in [
        (bob, json!({ "balance": "100" })),
        (bob, json!({ "role": "root" })),
        (bob, json!({})),
        (admin_id, json!({ "disabled": true })),
        (admin_id, json!({ "role": "user" })),
    ] {
        let (status, err) = admin.send(Method::PATCH, &format!("/api/admin/users/{target}"), &bad).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    let bob_row = tollgate::accounts::require(&app.db.read, bob).await.unwrap();
    assert_eq!((bob_row.role.as_str(), bob_row.disabled), ("admin", true));
    assert_eq!(tollgate::billing::balance::amount(&app.db.read, bob).await.unwrap(), 1_000_000);

    // Keys, for support: by owner and by visible part; revoking any user's key works at once.
    let (status, keys) = admin.get("/api/admin/keys?user=alice@example.com").await;
    assert_eq!((status, keys["total"].as_u64()), (200, Some(1)), "{keys}");
    let key = keys["data"][0].clone();
    assert_eq!(key["email"], "alice@example.com");
    assert!(!key.to_string().contains(&alice_key), "never the plaintext");
    let last4 = key["last4"].as_str().unwrap();
    assert_eq!(admin.get(&format!("/api/admin/keys?q={last4}")).await.1["data"][0]["id"], key["id"]);
    assert_eq!(admin.get(&format!("/api/admin/keys?user={bob}")).await.1["total"], 1);
    assert_eq!(admin.get("/api/admin/keys?user=nobody@example.com").await.1["total"], 0);
    let res = admin.call(Method::DELETE, &format!("/api/admin/keys/{}", key["id"]), None, &[]).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.chat(&alice_key, &crate::helpers::chat_body(false)).await.status(), 401, "revoked at once");
    let res = admin.call(Method::DELETE, &format!("/api/admin/keys/{}", key["id"]), None, &[]).await;
    assert_eq!(res.status(), 404, "already revoked");
    let (_, revoked) = admin.get("/api/admin/keys?user=alice@example.com").await;
    assert!(revoked["data"][0]["revokedAt"].is_string());

    // Subscriptions: grant and renew.
    let (status, sub) = admin
        .send(
            Method::POST,
            &format!("/api/admin/users/{bob}/subscriptions"),
            &json!({ "tokens": 1000, "days": 7, "name": "trial" }),
        )
        .await;
    assert_eq!((status, sub["tokensRemaining"].as_i64()), (201, Some(1000)), "{sub}");
    let (status, renewed) = admin
        .send(
            Method::POST,
            &format!("/api/admin/subscriptions/{}/renew", sub["id"]),
            &json!({ "days": 7, "tokens": 500 }),
        )
        .await;
    assert_eq!((status, renewed["tokensTotal"].as_i64()), (200, Some(1500)), "{renewed}");
    // With an Idempotency-Key, a retried grant or renewal is answered again and changes nothing.
    let grant_path = format!("/api/admin/users/{bob}/subscriptions");
    let grant = json!({ "tokens": 200, "days": 3, "name": "bonus" });
    let mut granted = Vec::new();
    for _ in 0..2 {
        let res = admin.call(Method::POST, &grant_path, Some(&grant), &[("idempotency-key", "grant-once")]).await;
        let replayed = res.headers().get("idempotent-replayed").is_some();
        granted.push((res.status().as_u16(), replayed, res.json::<Value>().await.unwrap()["id"].clone()));
    }
    assert_eq!((granted[0].0, granted[0].1, granted[1].0, granted[1].1), (201, false, 201, true), "{granted:?}");
    assert_eq!(granted[0].2, granted[1].2, "one package");
    let renew_path = format!("/api/admin/subscriptions/{}/renew", granted[0].2);
    for _ in 0..2 {
        let res = admin
            .call(
                Method::POST,
                &renew_path,
                Some(&json!({ "days": 1, "tokens": 50 })),
                &[("idempotency-key", "renew-once")],
            )
            .await;
        assert_eq!(res.status(), 200);
    }
    let (_, detail) = admin.get(&format!("/api/admin/users/{bob}")).await;
    let bonus: Vec<&Value> =
        detail["subscriptions"].as_array().unwrap().iter().filter(|s| s["name"] == "bonus").collect();
    assert_eq!(bonus.len(), 1, "{detail}");
    assert_eq!(bonus[0]["tokensTotal"], 250, "renewed once");
    let res =
        admin.call(Method::POST, &renew_path, Some(&json!({ "days": 2 })), &[("idempotency-key", "renew-once")]).await;
    assert_eq!(res.status(), 409, "the same key for another request");
    for (path, bad) in [
        (format!("/api/admin/users/{bob}/subscriptions"), json!({ "tokens": 0, "days": 7 })),
        (format!("/api/admin/users/{bob}/subscriptions"), json!({ "tokens": 10, "days": 7, "price": "1" })),
        (format!("/api/admin/subscriptions/{}/renew", sub["id"]), json!({ "days": 0 })),
    ] {
        assert_eq!(admin.send(Method::POST, &path, &bad).await.0, 400, "{bad}");
    }
    assert_eq!(
        admin.send(Method::POST, "/api/admin/users/999999/subscriptions", &json!({ "tokens": 1, "days": 1 })).await.0,
        404
    );
    assert_eq!(admin.send(Method::POST, "/api/admin/subscriptions/999999/renew", &json!({ "days": 1 })).await.0, 404);
    let (_, detail) = admin.get(&format!("/api/admin/users/{bob}")).await;
    let trial: Vec<&Value> =
        detail["subscriptions"].as_array().unwrap().iter().filter(|s| s["name"] == "trial").collect();
    assert_eq!(trial[0]["tokensRemaining"], 1500);
    assert_eq!(detail["apiKeys"].as_array().unwrap().len(), 1);

    // The audit log filters by actor, action family and target, newest first.
    let (_, log) = admin.get(&format!("/api/admin/audit-logs?actor={admin_id}&target=user:{bob}")).await;
    let actions: Vec<&str> = log["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["user.role", "user.disable"]);
    let (_, log) = admin.get("/api/admin/audit-logs?action=subscription&actor=ops@example.com").await;
    assert_eq!(log["total"], 4, "grant and renew, once each with their keys");
    let (_, log) = admin.get("/api/admin/audit-logs?actor=system&action=subscription.grant").await;
    assert_eq!(log["total"], 1, "the grant made without an admin");
    let (_, log) = admin.get("/api/admin/audit-logs?pageSize=1&page=2").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 1);
    assert_eq!(admin.get("/api/admin/audit-logs?actor=someone").await.0, 400);
    for user in [alice, bob] {
        assert_books_balance(&app.db, user).await;
    }
}

on_all_backends!(support_finds_users_and_keys_and_acts_on_them);

/// 2025-10-30T00:00:00Z: four days from here cross a month boundary.
const OCT_30: i64 = 1_761_782_400_000;

async fn revenue_adds_up_by_day_and_by_month(backend: Backend) {
    use sea_orm::{ActiveModelTrait, Set};
    use std::collections::{BTreeMap, BTreeSet};
    use tollgate::clock::{MS_PER_DAY, day_of};
    use tollgate::db::entities::{credit_transactions, usage_logs};

    let app = spawn_app(backend).await;
    let (_, admin) = Caller::signed_in(&app, "ops@example.com", "admin").await;
    let users = [
        user_with_balance(&app.db, "r1@example.com", 0).await,
        user_with_balance(&app.db, "r2@example.com", 0).await,
        user_with_balance(&app.db, "r3@example.com", 0).await,
    ];
    let mut rows = Vec::new();
    for i in 0..60i64 {
        let at = OCT_30 + (i % 5) * MS_PER_DAY + i * 1000 - 1;
        let user = users[usize::try_from(i % 3).unwrap()];
        let refused = i % 7 == 0;
        let row = usage_logs::ActiveModel {
            request_id: Set(format!("rev-{i}")),
            user_id: Set(user),
            key_id: Set(None),
            model: Set(if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" }.into()),
            prompt_tokens: Set(10 * i),
            completion_tokens: Set(i),
            total_tokens: Set(11 * i),
            cost: Set(if refused { 0 } else { 1_000 + 37 * i }),
            subscription_tokens: Set(0),
            status_code: Set(if refused { 402 } else { 200 }),
            latency_ms: Set(1),
            ttfb_ms: Set(None),
            stream: Set(false),
            usage_source: Set("upstream".into()),
            created_at: Set(at),
            day: Set(day_of(at)),
            shortfall: Set(0),
            request_count: Set(if refused { 3 } else { 1 }),
            ..Default::default()
        };
        rows.push(row.insert(&app.db.write).await.unwrap());
    }
    let mut topups = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let at = OCT_30 + i64::try_from(i).unwrap() * 2 * MS_PER_DAY + 5;
        let amount = 1_000_000 * (i64::try_from(i).unwrap() + 1);
        credit_transactions::ActiveModel {
            user_id: Set(*user),
            kind: Set("topup".into()),
            amount: Set(amount),
            tokens: Set(0),
            subscription_id: Set(None),
            reason: Set("revenue test".into()),
            actor_user_id: Set(None),
            created_at: Set(at),
            ..Default::default()
        }
        .insert(&app.db.write)
        .await
        .unwrap();
        topups.push((day_of(at), amount));
    }
    // A correction counts against the top-ups; a sign-up credit is not revenue at all.
    for (kind, amount, counted) in [("adjustment", -400_000, true), ("signup_credit", 9_000_000, false)] {
        let at = OCT_30 + 7;
        credit_transactions::ActiveModel {
            user_id: Set(users[0]),
            kind: Set(kind.into()),
            amount: Set(amount),
            tokens: Set(0),
            subscription_id: Set(None),
            reason: Set("revenue test".into()),
            actor_user_id: Set(None),
            created_at: Set(at),
            ..Default::default()
        }
        .insert(&app.db.write)
        .await
        .unwrap();
        if counted {
            topups.push((day_of(at), amount));
        }
    }

    // The first row falls a millisecond before the range (2025-10-29) and is left out.
    assert_eq!(rows[0].day, "2025-10-29");
    let rows: Vec<usage_logs::Model> = rows.into_iter().filter(|r| r.day.as_str() >= "2025-10-30").collect();
    for (granularity, key_len) in [("day", 10), ("month", 7)] {
        let (status, report) =
            admin.get(&format!("/api/admin/revenue?granularity={granularity}&start=2025-10-30&end=2025-11-03")).await;
        assert_eq!(status, 200, "{report}");
        // The same sums, computed here from the rows.
        let mut expected: BTreeMap<String, (i64, i64, i64, BTreeSet<i64>, i64)> = BTreeMap::new();
        for r in &rows {
            let e = expected.entry(r.day[..key_len].to_owned()).or_default();
            e.0 += r.cost;
            e.1 += r.total_tokens;
            e.2 += r.request_count;
            if r.cost > 0 {
                e.3.insert(r.user_id);
            }
        }
        for (day, amount) in &topups {
            expected.entry(day[..key_len].to_owned()).or_default().4 += amount;
        }
        let periods = report["periods"].as_array().unwrap();
        assert_eq!(periods.len(), if granularity == "day" { 5 } else { 2 }, "{report}");
        for p in periods {
            let e = &expected[p["period"].as_str().unwrap()];
            let money = tollgate::money::format_amount;
            assert_eq!(p["charged"], money(e.0), "{p}");
            assert_eq!((p["tokens"].as_i64(), p["requests"].as_i64()), (Some(e.1), Some(e.2)), "{p}");
            assert_eq!(p["payingUsers"].as_i64(), Some(i64::try_from(e.3.len()).unwrap()), "{p}");
            assert_eq!(p["topups"], money(e.4), "{p}");
        }
        let total: i64 = rows.iter().map(|r| r.cost).sum();
        assert_eq!(report["totals"]["charged"], tollgate::money::format_amount(total));
        let mini: i64 = rows.iter().filter(|r| r.model == "gpt-4o-mini").map(|r| r.cost).sum();
        let by_model = report["models"].as_array().unwrap();
        assert_eq!(by_model.len(), 2);
        let row = by_model.iter().find(|m| m["model"] == "gpt-4o-mini").unwrap();
        assert_eq!(row["charged"], tollgate::money::format_amount(mini));
    }
    // A narrower range leaves the rest out.
    let (_, one) = admin.get("/api/admin/revenue?start=2025-11-01&end=2025-11-01").await;
    let nov1: i64 = rows.iter().filter(|r| r.day == "2025-11-01").map(|r| r.cost).sum();
    assert_eq!(one["totals"]["charged"], tollgate::money::format_amount(nov1));
    for bad in [
        "?granularity=week",
        "?start=2025-11-05&end=2025-11-01",
        "?start=11/01/2025",
        "?start=2020-01-01&end=2025-01-01",
        "?from=2025-01-01",
    ] {
        let (status, err) = admin.get(&format!("/api/admin/revenue{bad}")).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    let (status, default) = admin.get("/api/admin/revenue?granularity=month").await;
    assert_eq!((status, default["periods"].as_array().map(Vec::len)), (200, Some(12)));
}

on_all_backends!(revenue_adds_up_by_day_and_by_month);

/// `ADMIN_EMAILS` makes the listed accounts admins as they sign in, with GitHub or a password;
/// others stay customers.
async fn listed_accounts_become_admins_at_sign_in(backend: Backend) {
    use crate::fake_oauth::{FakeOAuth, person};
    let oauth = FakeOAuth::start().await;
    let settings = oauth.settings();
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("ADMIN_EMAILS", "Boss@Example.com, pw-boss@example.com"));
    let app = crate::helpers::spawn_app_with(backend, &vars).await;

    // OAuth: the first sign-in creates the user, who is an admin at once.
    oauth.sign_in_as(person("77", "boss@example.com"));
    let boss = Caller::anonymous(&app);
    boss.browser.follow(&format!("{}/api/auth/signin/github?next=/dashboard", app.address)).await;
    assert_eq!(boss.get("/api/admin/users").await.0, 200);
    oauth.sign_in_as(person("78", "staff@example.com"));
    let staff = Caller::anonymous(&app);
    staff.browser.follow(&format!("{}/api/auth/signin/github?next=/dashboard", app.address)).await;
    assert_eq!(staff.get("/api/admin/users").await.0, 403, "not listed");

    // Password: an existing customer account that is listed is promoted at its next sign-in.
    let (id, pw_boss) = Caller::signed_in(&app, "pw-boss@example.com", "user").await;
    assert_eq!(pw_boss.get("/api/admin/users").await.0, 200);
    let (_, other) = Caller::signed_in(&app, "pw-staff@example.com", "user").await;
    assert_eq!(other.get("/api/admin/users").await.0, 403);

    let (_, log) = boss.get("/api/admin/audit-logs?action=user.role").await;
    assert_eq!(log["total"], 2, "{log}");
    let entry = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["targetId"].as_str() == Some(id.to_string().as_str()))
        .unwrap();
    assert_eq!((entry["before"]["role"].as_str(), entry["after"]["role"].as_str()), (Some("user"), Some("admin")));
    assert!(entry["actorUserId"].is_null(), "made by the settings, not by a person");
}

on_all_backends!(listed_accounts_become_admins_at_sign_in);
