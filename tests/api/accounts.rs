//! Signing in (GitHub, Google, password), sessions, and the dashboard's key and me APIs.

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::Value;
use tollgate::db::entities::{accounts, api_keys, sessions, users};

use crate::fake_oauth::{Browser, FakeOAuth, person};
use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::on_all_backends;

struct Site {
    app: TestApp,
    oauth: FakeOAuth,
}

async fn site(extra: &[(&str, &str)]) -> Site {
    site_on(Backend::Sqlite, extra).await
}

async fn site_on(backend: Backend, extra: &[(&str, &str)]) -> Site {
    let oauth = FakeOAuth::start().await;
    let settings = oauth.settings();
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    let app = spawn_app_with(backend, &vars).await;
    Site { app, oauth }
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.address)
    }

    /// Signs in through the provider; returns where the browser ended and its answer.
    async fn sign_in(&self, browser: &Browser, provider: &str, next: &str) -> (reqwest::Response, String) {
        browser.follow(&self.url(&format!("/api/auth/signin/{provider}?next={next}"))).await
    }

    async fn user_count(&self) -> u64 {
        users::Entity::find().count(&self.app.db.read).await.unwrap()
    }
}

fn error_on_login_page(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    assert_eq!(u.path(), "/login", "{url}");
    u.query_pairs().find(|(k, _)| k == "error").map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[tokio::test]
async fn first_github_sign_in_creates_the_user_their_key_and_a_session() {
    let s = site(&[("SIGNUP_CREDIT", "1.50")]).await;
    s.oauth.sign_in_as(person("4242", "Ada@Example.com"));
    let browser = Browser::new();
    let (res, url) = s.sign_in(&browser, "github", "/dashboard").await;
    assert!(url.ends_with("/dashboard"), "{url}");
    let page = res.text().await.unwrap();
    assert!(page.contains("ada@example.com"));
    assert!(page.contains("1.50"), "the sign-up credit");
    let key = page.split("id=\"new-key\">").nth(1).unwrap().split('<').next().unwrap().to_owned();
    assert!(tollgate::keys::is_well_formed(&key), "{key}");

    // The key is shown exactly once.
    let again = browser.get(&s.url("/dashboard")).await.text().await.unwrap();
    assert!(!again.contains(&key) && !again.contains("id=\"new-key\""));

    let db = &s.app.db;
    let user = users::Entity::find().one(&db.read).await.unwrap().unwrap();
    let account = accounts::Entity::find().one(&db.read).await.unwrap().unwrap();
    assert_eq!(
        (account.provider.as_str(), account.provider_account_id.as_str(), account.user_id),
        ("github", "4242", user.id)
    );
    let stored = api_keys::Entity::find().one(&db.read).await.unwrap().unwrap();
    assert_eq!(stored.key_hash, tollgate::keys::hash(&key));
    assert_eq!(s.oauth.shared.challenge_methods.lock().unwrap().as_slice(), ["S256"]);
    assert_eq!(s.oauth.shared.pkce_verified.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The session: HttpOnly, SameSite=Lax, not Secure on plain http; stored under a hash.
    let set_cookie = browser
        .set_cookie_headers
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.starts_with("tollgate_session="))
        .cloned()
        .unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax") && !set_cookie.contains("Secure"),
        "{set_cookie}"
    );
    let cookie = browser.cookie("tollgate_session").unwrap();
    let row = sessions::Entity::find().one(&db.read).await.unwrap().unwrap();
    assert_eq!(row.id, tollgate::crypto::sha256_hex(&cookie));
    assert_eq!(row.user_id, Some(user.id));
    assert!(!row.data.contains(&key));

    // /me
    let me: Value = browser.get(&s.url("/api/internal/me")).await.json().await.unwrap();
    assert_eq!(
        (me["email"].as_str(), me["role"].as_str(), me["balance"].as_str()),
        (Some("ada@example.com"), Some("user"), Some("1.50"))
    );

    // Signing in again is the same user, with no new key.
    let other = Browser::new();
    let (_, url) = s.sign_in(&other, "github", "/dashboard").await;
    assert!(url.ends_with("/dashboard"));
    assert_eq!(s.user_count().await, 1);
    assert_eq!(api_keys::Entity::find().count(&db.read).await.unwrap(), 1);
    crate::helpers::assert_books_balance(db, user.id).await;
}

#[tokio::test]
async fn google_needs_a_verified_email_and_accounts_are_never_linked_by_email() {
    let s = site(&[]).await;
    let mut p = person("g-1", "grace@example.com");
    p.verified = false;
    s.oauth.sign_in_as(p);
    let browser = Browser::new();
    let (_, url) = s.sign_in(&browser, "google", "/dashboard").await;
    assert_eq!(error_on_login_page(&url), "no_verified_email", "{url}");
    assert_eq!(s.user_count().await, 0);

    s.oauth.sign_in_as(person("g-1", "grace@example.com"));
    let (_, url) = s.sign_in(&browser, "google", "/dashboard").await;
    assert!(url.ends_with("/dashboard"));

    // The same address at GitHub is another account: refused, not linked.
    s.oauth.sign_in_as(person("777", "grace@example.com"));
    let (_, url) = s.sign_in(&Browser::new(), "github", "/dashboard").await;
    assert_eq!(error_on_login_page(&url), "email_taken", "{url}");
    assert_eq!(s.user_count().await, 1);
    assert_eq!(accounts::Entity::find().count(&s.app.db.read).await.unwrap(), 1);

    // GitHub: only a primary *and* verified address will do.
    let mut p = person("888", "new@example.com");
    p.primary = false;
    s.oauth.sign_in_as(p);
    let (_, url) = s.sign_in(&Browser::new(), "github", "/dashboard").await;
    assert_eq!(error_on_login_page(&url), "no_verified_email", "{url}");
    assert_eq!(s.user_count().await, 1);
}

#[tokio::test]
async fn oauth_state_must_match_once() {
    let s = site(&[]).await;
    s.oauth.sign_in_as(person("1", "state@example.com"));

    // Denied consent ends on the login page with a message.
    s.oauth.deny(true);
    let (_, url) = s.sign_in(&Browser::new(), "github", "/dashboard").await;
    assert!(error_on_login_page(&url).contains("cancelled"), "{url}");
    s.oauth.deny(false);

    // Walk the flow by hand to tamper with it.
    let browser = Browser::new();
    let res = browser.get(&s.url("/api/auth/signin/github?next=/dashboard")).await;
    let authorize = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("state="));
    let res = browser.get(&authorize).await;
    let callback = res.headers()["location"].to_str().unwrap().to_owned();

    // Without the browser's attempt cookie (another browser): refused.
    let stranger = Browser::new();
    let res = stranger.get(&callback).await;
    assert!(
        error_on_login_page(&format!("http://x{}", res.headers()["location"].to_str().unwrap())).contains("expired")
    );
    // With a wrong state: refused (and the attempt is spent).
    let wrong = callback.replace("state=", "state=x");
    let res = browser.get(&wrong).await;
    assert!(
        error_on_login_page(&format!("http://x{}", res.headers()["location"].to_str().unwrap())).contains("expired")
    );
    // Replaying the real callback after that: refused too.
    let res = browser.get(&callback).await;
    assert!(
        error_on_login_page(&format!("http://x{}", res.headers()["location"].to_str().unwrap())).contains("expired")
    );
    assert_eq!(s.user_count().await, 0);
    assert!(browser.cookie("tollgate_session").is_none());

    // A code the provider does not know (expired, forged): a readable refusal.
    let browser = Browser::new();
    let authorize =
        browser.get(&s.url("/api/auth/signin/github")).await.headers()["location"].to_str().unwrap().to_owned();
    let callback = browser.get(&authorize).await.headers()["location"].to_str().unwrap().to_owned();
    let forged = url::Url::parse(&callback).unwrap();
    let state: String = forged.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let res = browser.get(&s.url(&format!("/api/auth/callback/github?code=expired-code&state={state}"))).await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(error_on_login_page(&format!("http://x{location}")), "provider_refused", "{location}");
    assert_eq!(s.user_count().await, 0);

    // A clean attempt works, and its callback cannot be replayed.
    let browser = Browser::new();
    let res = browser.get(&s.url("/api/auth/signin/github?next=https://evil.example/steal")).await;
    let authorize = res.headers()["location"].to_str().unwrap().to_owned();
    let callback = browser.get(&authorize).await.headers()["location"].to_str().unwrap().to_owned();
    let res = browser.get(&callback).await;
    assert_eq!(res.headers()["location"], "/dashboard", "next= only goes to paths on this site");
    let res = browser.get(&callback).await;
    assert!(res.headers()["location"].to_str().unwrap().starts_with("/login?error="));
    assert_eq!(s.user_count().await, 1);
}

#[tokio::test]
async fn password_sign_in_rotates_the_session_and_logout_ends_it_on_the_server() {
    let s = site(&[]).await;
    crate::helpers::password_user(&s.app.db, "ops@example.com", "admin").await;

    let browser = Browser::new();
    let login = s.url("/api/auth/signin/password");
    let res = browser
        .post_form(
            &login,
            &[("email", "ops@example.com"), ("password", "wrong password!"), ("next", "/dashboard")],
            None,
        )
        .await;
    assert!(res.headers()["location"].to_str().unwrap().contains("error=wrong_password"));
    assert!(browser.cookie("tollgate_session").is_none());

    let form = [("email", "OPS@example.com"), ("password", "correct horse battery"), ("next", "/dashboard")];
    let res = browser.post_form(&login, &form, None).await;
    assert_eq!(res.headers()["location"], "/dashboard");
    let first = browser.cookie("tollgate_session").unwrap();
    // Signing in again gives a new session id; the old one is gone.
    browser.post_form(&login, &form, None).await;
    let second = browser.cookie("tollgate_session").unwrap();
    assert_ne!(first, second);
    let old = reqwest::Client::new()
        .get(s.url("/api/internal/me"))
        .header("cookie", format!("tollgate_session={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    assert_eq!(browser.get(&s.url("/api/internal/me")).await.status(), 200);

    // Logout deletes the session on the server: the cookie is worthless afterwards.
    let res = browser.post_form(&s.url("/api/auth/signout"), &[], None).await;
    assert_eq!(res.headers()["location"], "/login?signed_out=1");
    let after = reqwest::Client::new()
        .get(s.url("/api/internal/me"))
        .header("cookie", format!("tollgate_session={second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    assert_eq!(sessions::Entity::find().count(&s.app.db.read).await.unwrap(), 0);
    // Pages send the signed-out to the login page.
    let res = Browser::new().get(&s.url("/dashboard")).await;
    assert_eq!(res.headers()["location"], "/login?next=%2Fdashboard");
}

#[tokio::test]
async fn failed_passwords_are_limited_per_account() {
    let s = site(&[]).await;
    crate::helpers::password_user(&s.app.db, "victim@example.com", "user").await;
    let login = s.url("/api/auth/signin/password");
    let browser = Browser::new();
    for _ in 0..tollgate::auth::limiter::PER_ACCOUNT {
        browser.post_form(&login, &[("email", "victim@example.com"), ("password", "guess guess guess")], None).await;
    }
    let res = browser
        .post_form(&login, &[("email", "victim@example.com"), ("password", "correct horse battery")], None)
        .await;
    assert!(
        res.headers()["location"].to_str().unwrap().contains("error=locked"),
        "locked even with the right password"
    );
    assert!(browser.cookie("tollgate_session").is_none());
}

#[tokio::test]
async fn secure_cookies_outside_plain_http() {
    let s = site(&[("PUBLIC_URL", "https://relay.example")]).await;
    s.oauth.sign_in_as(person("5", "secure@example.com"));
    let browser = Browser::new();
    let res = browser.get(&s.url("/api/auth/signin/github")).await;
    let attempt = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        attempt.contains("Secure") && attempt.contains("HttpOnly") && attempt.contains("SameSite=Lax"),
        "{attempt}"
    );
    crate::helpers::password_user(&s.app.db, "s@example.com", "user").await;
    let res = browser
        .post_form(
            &s.url("/api/auth/signin/password"),
            &[("email", "s@example.com"), ("password", "correct horse battery")],
            Some("https://relay.example"),
        )
        .await;
    let session = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tollgate_session"))
        .unwrap();
    assert!(session.contains("Secure") && session.contains("HttpOnly"), "{session}");
}

#[tokio::test]
async fn keys_api_creates_lists_and_revokes_only_your_own() {
    let s = site(&[]).await;
    s.oauth.sign_in_as(person("10", "owner@example.com"));
    let owner = Browser::new();
    s.sign_in(&owner, "github", "/dashboard").await;
    s.oauth.sign_in_as(person("11", "other@example.com"));
    let other = Browser::new();
    s.sign_in(&other, "github", "/dashboard").await;

    let keys = s.url("/api/internal/keys");
    let res = owner.send(owner.client.post(&keys).json(&serde_json::json!({ "name": "laptop" }))).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let plaintext = created["key"].as_str().unwrap().to_owned();
    assert!(tollgate::keys::is_well_formed(&plaintext));
    let listed: Value = owner.get(&keys).await.json().await.unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "the first key and the new one");
    assert!(listed.iter().all(|k| k.get("key").is_none() && k["prefix"].is_string() && k["last4"].is_string()));
    assert!(!serde_json::to_string(&listed).unwrap().contains(&plaintext));

    // Someone else's key: 404, and it stays alive.
    let id = created["id"].as_i64().unwrap();
    let res = other.send(other.client.delete(format!("{keys}/{id}"))).await;
    assert_eq!(res.status(), 404);
    let row = api_keys::Entity::find_by_id(id).one(&s.app.db.read).await.unwrap().unwrap();
    assert!(row.revoked_at.is_none());
    let other_list: Value = other.get(&keys).await.json().await.unwrap();
    assert_eq!(other_list["data"].as_array().unwrap().len(), 1);

    // Cross-site requests with the cookie are refused.
    let res = owner.send(owner.client.delete(format!("{keys}/{id}")).header("origin", "https://evil.example")).await;
    assert_eq!(res.status(), 403);
    let res =
        owner.send(owner.client.post(&keys).header("sec-fetch-site", "cross-site").json(&serde_json::json!({}))).await;
    assert_eq!(res.status(), 403);

    // Bad input: unknown fields, wrong types, not JSON.
    for body in [
        r#"{"name":"x","userId":1}"#,
        r#"{"name":5}"#,
        "{",
        r#"{"name":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    ] {
        let res = owner.send(owner.client.post(&keys).header("content-type", "application/json").body(body)).await;
        assert_eq!(res.status(), 400, "{body}");
    }
    assert_eq!(res_count(&s, "owner@example.com").await, 2);

    let res = owner.send(owner.client.delete(format!("{keys}/{id}")).header("origin", s.app.address.as_str())).await;
    assert_eq!(res.status(), 204);
    let row = api_keys::Entity::find_by_id(id).one(&s.app.db.read).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some());
    assert_eq!(owner.send(owner.client.delete(format!("{keys}/{id}"))).await.status(), 404, "already revoked");
    assert_eq!(owner.send(owner.client.delete(format!("{keys}/nonsense"))).await.status(), 404);

    // Signed out: 401 in our error shape.
    let res = Browser::new().get(&keys).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
}

async fn res_count(s: &Site, email: &str) -> u64 {
    let user = tollgate::accounts::find_by_email(&s.app.db.read, email).await.unwrap().unwrap();
    api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(user.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .count(&s.app.db.read)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_revoked_in_the_dashboard_stops_working_at_the_gateway() {
    let fake = crate::helpers::FakeUpstream::start(crate::helpers::Mode::Normal).await.unwrap();
    let base = fake.base_url();
    let s = site(&[("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", crate::helpers::UPSTREAM_KEY)]).await;
    crate::helpers::add_test_model(&s.app).await;
    s.oauth.sign_in_as(person("20", "revoker@example.com"));
    let browser = Browser::new();
    s.sign_in(&browser, "github", "/dashboard").await;
    let user = tollgate::accounts::find_by_email(&s.app.db.read, "revoker@example.com").await.unwrap().unwrap();
    tollgate::billing::ledger::adjust(&s.app.db, user.id, 1_000_000, "topup", "test", None).await.unwrap();

    let created: Value = browser
        .send(browser.client.post(s.url("/api/internal/keys")).json(&serde_json::json!({ "name": "ci" })))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        s.app.chat(key, &crate::helpers::chat_body(false)).await.status(),
        200,
        "the key works, and is now cached"
    );
    let res = browser.send(browser.client.delete(format!("{}/{}", s.url("/api/internal/keys"), created["id"]))).await;
    assert_eq!(res.status(), 204);
    assert_eq!(s.app.chat(key, &crate::helpers::chat_body(false)).await.status(), 401, "refused at once, cache or not");
    s.app.settled(user.id).await;
    // The keys list (what the keys page shows) no longer has it; the first key is still there.
    let listed: Value = browser.send(browser.client.get(s.url("/api/internal/keys"))).await.json().await.unwrap();
    let ids: Vec<&Value> = listed["data"].as_array().unwrap().iter().map(|k| &k["id"]).collect();
    assert_eq!(ids.len(), 1, "the first key is still listed: {listed}");
    assert!(!ids.contains(&&created["id"]), "the revoked key is not: {listed}");
}

#[tokio::test]
async fn keys_per_user_are_limited() {
    let s = site(&[]).await;
    s.oauth.sign_in_as(person("50", "many@example.com"));
    let browser = Browser::new();
    s.sign_in(&browser, "github", "/dashboard").await;
    let keys = s.url("/api/internal/keys");
    for _ in 1..tollgate::keys::MAX_KEYS_PER_USER {
        let res = browser.send(browser.client.post(&keys).json(&serde_json::json!({}))).await;
        assert_eq!(res.status(), 201);
    }
    let res = browser.send(browser.client.post(&keys).json(&serde_json::json!({}))).await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("at most"));
}

#[tokio::test]
async fn expired_sessions_are_removed() {
    use sea_orm::{ActiveModelTrait, Set};
    let s = site(&[]).await;
    let now = tollgate::clock::now_ms();
    for (id, expires_at) in [("old".repeat(20), now - 1), ("new".repeat(20), now + 60_000)] {
        sessions::ActiveModel {
            id: Set(id),
            user_id: Set(None),
            data: Set("{}".into()),
            expires_at: Set(expires_at),
            created_at: Set(now),
        }
        .insert(&s.app.db.write)
        .await
        .unwrap();
    }
    assert_eq!(tollgate::auth::sessions::purge_expired(&s.app.db).await.unwrap(), 1);
    let left = sessions::Entity::find().all(&s.app.db.read).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].id.starts_with("new"));
}

#[tokio::test]
async fn failed_passwords_are_limited_per_address() {
    let s = site(&[]).await;
    crate::helpers::password_user(&s.app.db, "real@example.com", "user").await;
    let login = s.url("/api/auth/signin/password");
    let browser = Browser::new();
    // Guessing across many accounts from one address...
    for i in 0..tollgate::auth::limiter::PER_ADDRESS {
        let email = format!("guess{i}@example.com");
        browser.post_form(&login, &[("email", email.as_str()), ("password", "guess guess guess")], None).await;
    }
    // ...locks that address, even for a right password of an untouched account.
    let res =
        browser.post_form(&login, &[("email", "real@example.com"), ("password", crate::helpers::PASSWORD)], None).await;
    assert!(res.headers()["location"].to_str().unwrap().contains("error=locked"));
    assert!(browser.cookie("tollgate_session").is_none());
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_limit_applies_to_each_client() {
    // The test client is the "proxy" (127.0.0.1); each client has its own forwarded address.
    let s = site(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    crate::helpers::password_user(&s.app.db, "real@example.com", "user").await;
    let login = s.url("/api/auth/signin/password");
    let attempt = |forwarded: &'static str, email: String, password: &'static str| {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("email", email.as_str()), ("password", password)])
            .finish();
        let req = client
            .post(&login)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-for", forwarded)
            .body(body);
        async move { location(&req.send().await.unwrap()) }
    };
    // A client that spoofs an address at the left of the header gains nothing: the address
    // our proxy appended (203.0.113.7) is the one counted.
    for i in 0..tollgate::auth::limiter::PER_ADDRESS {
        attempt("198.51.100.1, 203.0.113.7", format!("guess{i}@example.com"), "guess guess guess").await;
    }
    let locked = attempt("203.0.113.7", "real@example.com".into(), crate::helpers::PASSWORD).await;
    assert!(locked.contains("error=locked"), "{locked}");
    // Another client behind the same proxy is not locked out by it.
    let other = attempt("203.0.113.8", "real@example.com".into(), crate::helpers::PASSWORD).await;
    assert!(!other.contains("error=locked") && other.contains("/dashboard"), "{other}");
}

/// 100 creations at once for a user who holds one key: exactly 49 succeed, the rest are 409.
async fn the_key_limit_holds_under_concurrency(backend: Backend) {
    let s = site_on(backend, &[]).await;
    s.oauth.sign_in_as(person("51", "racer@example.com"));
    let browser = Browser::new();
    s.sign_in(&browser, "github", "/dashboard").await;
    let keys = s.url("/api/internal/keys");
    let attempts = (0..100).map(|i| {
        let req = browser.client.post(&keys).json(&serde_json::json!({ "name": format!("k{i}") }));
        browser.send(req)
    });
    let statuses: Vec<u16> =
        futures_util::future::join_all(attempts).await.iter().map(|r| r.status().as_u16()).collect();
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((created, refused), (49, 51), "{statuses:?}");
    assert_eq!(res_count(&s, "racer@example.com").await, tollgate::keys::MAX_KEYS_PER_USER);
}

on_all_backends!(the_key_limit_holds_under_concurrency);

/// Where a password sign-in answer sends the browser ("" when it is not a redirect).
fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// 30 wrong passwords at once for one account: only the first five are ever evaluated, and the
/// right password is refused afterwards.
async fn concurrent_guesses_are_counted_before_hashing(backend: Backend) {
    let s = site_on(backend, &[("PASSWORD_HASH_CONCURRENCY", "64")]).await;
    crate::helpers::password_user(&s.app.db, "target@example.com", "user").await;
    let login = s.url("/api/auth/signin/password");
    let browser = Browser::new();
    let form = [("email", "target@example.com"), ("password", "guess guess guess")];
    let answers = futures_util::future::join_all((0..30).map(|_| browser.post_form(&login, &form, None))).await;
    let places: Vec<String> = answers.iter().map(location).collect();
    let evaluated = places.iter().filter(|l| l.contains("error=wrong_password")).count();
    let locked = places.iter().filter(|l| l.contains("error=locked")).count();
    assert_eq!(
        (evaluated, locked),
        (tollgate::auth::limiter::PER_ACCOUNT, 30 - tollgate::auth::limiter::PER_ACCOUNT),
        "{places:?}"
    );
    let res = browser
        .post_form(&login, &[("email", "target@example.com"), ("password", crate::helpers::PASSWORD)], None)
        .await;
    assert!(location(&res).contains("error=locked"), "{}", location(&res));
    assert!(browser.cookie("tollgate_session").is_none());
}

/// With one hash at a time, attempts that arrive while it is busy are refused with 429 JSON and
/// `Retry-After`, whether or not the account exists; none of them counts as a failure.
async fn password_hashing_is_bounded(backend: Backend) {
    let s = site_on(backend, &[("PASSWORD_HASH_CONCURRENCY", "1")]).await;
    crate::helpers::password_user(&s.app.db, "known@example.com", "user").await;
    let login = s.url("/api/auth/signin/password");
    let browser = Browser::new();
    let forms: Vec<[(&str, String); 2]> = (0..16)
        .map(|i| [("email", format!("nobody{i}@example.com")), ("password", "guess guess guess".to_owned())])
        .collect();
    let forms: Vec<Vec<(&str, &str)>> =
        forms.iter().map(|f| f.iter().map(|(k, v)| (*k, v.as_str())).collect()).collect();
    let attempts = forms.iter().map(|f| browser.post_form(&login, f, None));
    let answers = futures_util::future::join_all(attempts).await;
    let mut refused = 0;
    for res in answers {
        if res.status() == 429 {
            refused += 1;
            assert!(res.headers().get("retry-after").is_some());
            assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
            assert!(body["error"]["message"].is_string());
        } else {
            assert!(location(&res).contains("error=wrong_password"), "{}", location(&res));
        }
    }
    assert!(refused > 0, "16 hashes at once with room for one: some must be refused");
    // The refusals did not count against the address: a right password still signs in.
    let res = browser
        .post_form(&login, &[("email", "known@example.com"), ("password", crate::helpers::PASSWORD)], None)
        .await;
    assert_eq!(location(&res), "/dashboard");
}

/// A saved attempt cookie and state, replayed with a fresh code after the sign-in completed, is
/// refused: the state is spent on the server, not only in the browser.
async fn an_oauth_state_is_accepted_once_on_the_server(backend: Backend) {
    let s = site_on(backend, &[]).await;
    s.oauth.sign_in_as(person("60", "replay@example.com"));
    let browser = Browser::new();
    let res = browser.get(&s.url("/api/auth/signin/github?next=/dashboard")).await;
    let authorize = res.headers()["location"].to_str().unwrap().to_owned();
    let saved_attempt = browser.cookie("tollgate_oauth").unwrap();
    let callback = browser.get(&authorize).await.headers()["location"].to_str().unwrap().to_owned();
    let res = browser.get(&callback).await;
    assert_eq!(res.headers()["location"], "/dashboard");
    assert!(browser.cookie("tollgate_session").is_some());

    // Another browser with the saved cookie, and a fresh code for the same state and verifier.
    let thief = Browser::new();
    thief.cookies.lock().unwrap().insert("tollgate_oauth".into(), saved_attempt);
    let fresh = thief.get(&authorize).await.headers()["location"].to_str().unwrap().to_owned();
    assert_ne!(fresh, callback, "a new code");
    let res = thief.get(&fresh).await;
    let refused = location(&res);
    assert!(error_on_login_page(&format!("http://x{refused}")).contains("expired"), "{refused}");
    assert!(thief.cookie("tollgate_session").is_none());
    let rows = tollgate::db::entities::oauth_states::Entity::find().count(&s.app.db.read).await.unwrap();
    assert_eq!(rows, 0, "a used state leaves nothing behind");

    // Attempts abandoned at the provider are removed by the hourly cleanup once they expired.
    use sea_orm::{ActiveModelTrait, Set};
    let now = tollgate::clock::now_ms();
    for (hash, created_at) in [("a".repeat(64), now - tollgate::auth::oauth::STATE_TTL_MS - 1), ("b".repeat(64), now)] {
        tollgate::db::entities::oauth_states::ActiveModel { state_hash: Set(hash), created_at: Set(created_at) }
            .insert(&s.app.db.write)
            .await
            .unwrap();
    }
    let removed = tollgate::auth::oauth::purge_states(&s.app.db, tollgate::auth::oauth::STATE_TTL_MS).await.unwrap();
    assert_eq!(removed, 1);
    let left = tollgate::db::entities::oauth_states::Entity::find().all(&s.app.db.read).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].state_hash.starts_with('b'));
}

on_all_backends!(
    concurrent_guesses_are_counted_before_hashing,
    password_hashing_is_bounded,
    an_oauth_state_is_accepted_once_on_the_server
);
