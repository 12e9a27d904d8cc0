//! Key edits from the dashboard: rename, disable (the gateway refuses the key at once) and
//! enable again; bad input and another user's or a revoked key change nothing — on every
//! backend.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tollgate::db::entities::{api_keys, audit_logs};

use crate::fake_oauth::Browser;
use crate::helpers::{Backend, Mode, assert_books_balance, chat_body, spawn_gateway};
use crate::on_all_backends;
use crate::usage_api::signed_in;

async fn patch(browser: &Browser, url: &str, body: &str) -> reqwest::Response {
    browser.send(browser.client.patch(url).header("content-type", "application/json").body(body.to_owned())).await
}

async fn stored(db: &tollgate::db::Db, id: i64) -> api_keys::Model {
    api_keys::Entity::find_by_id(id).one(&db.read).await.unwrap().unwrap()
}

async fn keys_are_renamed_disabled_and_enabled_by_their_owner_only(backend: Backend) {
    let g = spawn_gateway(backend, Mode::Normal, &[]).await;
    let app = &g.app;
    let (me, browser) = signed_in(app, "owner@example.com").await;
    tollgate::billing::ledger::adjust(&app.db, me, 1_000_000, "topup", "test", None).await.unwrap();
    let keys_url = format!("{}/api/internal/keys", app.address);
    let created: Value =
        browser.send(browser.client.post(&keys_url).json(&json!({ "name": "ci" }))).await.json().await.unwrap();
    let (id, key) = (created["id"].as_i64().unwrap(), created["key"].as_str().unwrap().to_owned());
    assert_eq!((created["status"].as_str(), created["disabled"].as_bool()), (Some("active"), Some(false)));
    let url = format!("{keys_url}/{id}");
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200, "the key works, and is now cached");

    // Rename.
    let res = patch(&browser, &url, r#"{"name":"  laptop  "}"#).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["id"].as_i64(), body["name"].as_str(), body["status"].as_str()),
        (Some(id), Some("laptop"), Some("active"))
    );
    assert!(body.get("key").is_none(), "the plaintext is never shown again");

    // Disable: refused by the gateway at once, in OpenAI's shape, and still listed.
    let res = patch(&browser, &url, r#"{"disabled":true}"#).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["disabled"].as_bool(), body["status"].as_str(), body["name"].as_str()),
        (Some(true), Some("disabled"), Some("laptop"))
    );
    let res = app.chat(&key, &chat_body(false)).await;
    assert_eq!(res.status(), 401);
    let refused: Value = res.json().await.unwrap();
    assert_eq!(refused["error"]["type"], "authentication_error", "{refused}");
    assert!(refused["error"]["message"].as_str().is_some_and(|m| m.contains("Incorrect API key")), "{refused}");
    let listed: Value = browser.get(&keys_url).await.json().await.unwrap();
    let mine: Vec<&Value> = listed["data"].as_array().unwrap().iter().filter(|k| k["id"] == id).collect();
    assert_eq!(mine.len(), 1, "a disabled key is still listed: {listed}");
    assert_eq!((mine[0]["status"].as_str(), mine[0]["disabled"].as_bool()), (Some("disabled"), Some(true)));

    // Enable: works again at once.
    let res = patch(&browser, &url, r#"{"disabled":false,"name":"laptop 2"}"#).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((body["status"].as_str(), body["name"].as_str()), (Some("active"), Some("laptop 2")));
    assert_eq!(app.chat(&key, &chat_body(false)).await.status(), 200);

    // Bad input: a 400 in our shape, and nothing changes.
    let before = stored(&app.db, id).await;
    let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(65));
    for bad in [
        "{}",
        r#"{"name":""}"#,
        r#"{"name":"   "}"#,
        &long,
        r#"{"name":"a\u0007b"}"#,
        r#"{"disabled":"yes"}"#,
        r#"{"disabled":true,"userId":2}"#,
        "{",
        "[]",
    ] {
        let res = patch(&browser, &url, bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
    assert_eq!(stored(&app.db, id).await, before);

    // Another user's key, a revoked key, no key: 404, nothing changes.
    let (other, _) = signed_in(app, "other@example.com").await;
    let (their, _) = tollgate::keys::create(&app.db.write, other, Some("theirs")).await.unwrap();
    let res = patch(&browser, &format!("{keys_url}/{}", their.id), r#"{"name":"mine now","disabled":true}"#).await;
    assert_eq!(res.status(), 404);
    assert_eq!(stored(&app.db, their.id).await, their, "someone else's key is unchanged");
    let (gone, _) = tollgate::keys::create(&app.db.write, me, Some("gone")).await.unwrap();
    tollgate::keys::revoke(&app.db, &app.cache(), Some(me), gone.id).await.unwrap();
    let revoked = stored(&app.db, gone.id).await;
    assert_eq!(patch(&browser, &format!("{keys_url}/{}", gone.id), r#"{"disabled":false}"#).await.status(), 404);
    assert_eq!(stored(&app.db, gone.id).await, revoked, "a revoked key stays revoked and unchanged");
    for missing in ["999999", "nonsense"] {
        assert_eq!(patch(&browser, &format!("{keys_url}/{missing}"), r#"{"name":"x"}"#).await.status(), 404);
    }
    // Cross-site: refused before anything changes.
    let res = browser
        .send(browser.client.patch(&url).header("sec-fetch-site", "cross-site").json(&json!({ "disabled": true })))
        .await;
    assert_eq!(res.status(), 403);
    assert!(!stored(&app.db, id).await.disabled);

    // Every change is audited with its owner as the actor, in order.
    let audit: Vec<(String, Option<i64>, String)> = audit_logs::Entity::find()
        .filter(audit_logs::Column::TargetType.eq("key"))
        .order_by_asc(audit_logs::Column::Id)
        .all(&app.db.read)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.action, a.actor_user_id, a.target_id))
        .collect();
    let (i, g_id) = (id.to_string(), gone.id.to_string());
    assert_eq!(
        audit,
        [
            ("key.rename".to_owned(), Some(me), i.clone()),
            ("key.disable".to_owned(), Some(me), i.clone()),
            ("key.rename".to_owned(), Some(me), i.clone()),
            ("key.enable".to_owned(), Some(me), i),
            ("key.revoke".to_owned(), Some(me), g_id),
        ]
    );
    app.settled(me).await;
    assert_books_balance(&app.db, me).await;
}

/// Ten revocations of one key and ten edits racing them: one revocation wins, it is audited
/// once, and no edit lands on the revoked key.
async fn racing_changes_to_one_key_revoke_it_once(backend: Backend) {
    let app = crate::helpers::spawn_app(backend).await;
    let (me, _) = signed_in(&app, "racer@example.com").await;
    let (key, _) = tollgate::keys::create(&app.db.write, me, Some("contested")).await.unwrap();
    let cache = app.cache();
    let revokes = (0..10).map(|_| tollgate::keys::revoke(&app.db, &cache, Some(me), key.id));
    let names: Vec<String> = (0..10).map(|i| format!("edit {i}")).collect();
    let edits = names.iter().map(|n| tollgate::keys::rename(&app.db, &cache, Some(me), key.id, n));
    let (revoked, edited) =
        tokio::join!(futures_util::future::join_all(revokes), futures_util::future::join_all(edits));
    assert_eq!(revoked.iter().filter(|r| r.is_ok()).count(), 1, "{revoked:?}");
    assert!(revoked.iter().chain(edited.iter()).all(|r| matches!(r, Ok(_) | Err(tollgate::error::Error::NotFound(_)))));
    let row = stored(&app.db, key.id).await;
    assert!(row.revoked_at.is_some());
    let audit = audit_logs::Entity::find()
        .filter(audit_logs::Column::TargetId.eq(key.id.to_string()))
        .all(&app.db.read)
        .await
        .unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "key.revoke").count(), 1);
    let renames = edited.iter().filter(|r| r.is_ok()).count();
    assert_eq!(audit.iter().filter(|a| a.action == "key.rename").count(), renames, "one entry per rename that landed");
    // Renames that landed did so before the revocation: the last of them is the stored name.
    if renames > 0 {
        assert!(row.name.starts_with("edit "), "{}", row.name);
    } else {
        assert_eq!(row.name, "contested");
    }
}

/// A key the operator disabled stays off for its owner: they may rename it, not enable it; the
/// operator can. A key the owner disabled, the owner enables.
async fn a_key_the_operator_disabled_only_the_operator_enables(backend: Backend) {
    let app = crate::helpers::spawn_app(backend).await;
    let (me, browser) = signed_in(&app, "fenced@example.com").await;
    let (key, _) = tollgate::keys::create(&app.db.write, me, Some("shared")).await.unwrap();
    let cache = app.cache();
    tollgate::keys::set_disabled(&app.db, &cache, None, key.id, true).await.unwrap();
    let url = format!("{}/api/internal/keys/{}", app.address, key.id);
    let res = patch(&browser, &url, r#"{"disabled":false}"#).await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("operator"), "{body}");
    assert!(stored(&app.db, key.id).await.disabled, "still disabled");
    assert_eq!(patch(&browser, &url, r#"{"name":"renamed"}"#).await.status(), 200, "renaming is still theirs");
    // Asking to disable it again changes nothing and does not make it theirs.
    assert_eq!(patch(&browser, &url, r#"{"disabled":true}"#).await.status(), 200);
    assert_eq!(patch(&browser, &url, r#"{"disabled":false}"#).await.status(), 403);
    tollgate::keys::set_disabled(&app.db, &cache, None, key.id, false).await.unwrap();
    assert!(!stored(&app.db, key.id).await.disabled, "the operator enables it");
    // Disabled by its owner: the owner enables it.
    assert_eq!(patch(&browser, &url, r#"{"disabled":true}"#).await.status(), 200);
    assert_eq!(patch(&browser, &url, r#"{"disabled":false}"#).await.status(), 200);
    assert!(!stored(&app.db, key.id).await.disabled);
}

on_all_backends!(
    keys_are_renamed_disabled_and_enabled_by_their_owner_only,
    racing_changes_to_one_key_revoke_it_once,
    a_key_the_operator_disabled_only_the_operator_enables
);
