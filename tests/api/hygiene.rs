//! HTTP hygiene: every answer has a body in the shape of where it was sent (OpenAI JSON under
//! /v1, JSON under /api, HTML for pages), sign-in refusals are JSON, and pages carry a content
//! security policy that fits them.

use serde_json::Value;

use crate::fake_oauth::Browser;
use crate::helpers::{Backend, TestApp, spawn_app};

fn content_type(res: &reqwest::Response) -> String {
    res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

async fn json_error(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "{}", res.url());
    let url = res.url().to_string();
    assert!(content_type(&res).starts_with("application/json"), "{url}: {}", content_type(&res));
    let body: Value = res.json().await.unwrap();
    for field in ["message", "type", "code"] {
        assert!(body["error"][field].is_string(), "{url}: {body}");
    }
    body
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::Response {
    app.client.request(method, format!("{}{path}", app.address)).send().await.unwrap()
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_shape_of_their_surface() {
    let app = spawn_app(Backend::Sqlite).await;
    use reqwest::Method;
    for path in ["/v1/nothing", "/v1/chat/completion", "/api/v1/nothing", "/api/nothing", "/api/internal/nothing"] {
        let body = json_error(send(&app, Method::GET, path).await, 404).await;
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
    }
    let res = send(&app, Method::GET, "/nothing/here").await;
    assert_eq!(res.status(), 404);
    assert!(content_type(&res).starts_with("text/html"), "{}", content_type(&res));
    assert!(res.text().await.unwrap().contains("Not found"));

    for (method, path, allow) in [
        (Method::GET, "/v1/chat/completions", "POST"),
        (Method::DELETE, "/api/v1/models", "GET"),
        (Method::PUT, "/api/internal/keys", "GET"),
        (Method::GET, "/api/auth/signin/password", "POST"),
        (Method::GET, "/api/auth/signout", "POST"),
    ] {
        let res = send(&app, method.clone(), path).await;
        let allowed = res.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(allowed.contains(allow), "{method} {path}: Allow: {allowed}");
        json_error(res, 405).await;
    }
    let res = send(&app, Method::POST, "/login").await;
    assert_eq!(res.status(), 405);
    assert!(res.headers().get("allow").is_some());
    assert!(content_type(&res).starts_with("text/html"), "{}", content_type(&res));
}

#[tokio::test]
async fn sign_in_refusals_are_json() {
    let app = spawn_app(Backend::Sqlite).await;
    let login = format!("{}/api/auth/signin/password", app.address);
    let browser = Browser::new();
    // Missing fields, a body that is not a form, a form sent as JSON.
    json_error(browser.post_form(&login, &[("email", "a@example.com")], None).await, 400).await;
    let res = browser
        .send(browser.client.post(&login).header("content-type", "application/x-www-form-urlencoded").body("%%%=&&"))
        .await;
    json_error(res, 400).await;
    let res =
        browser.send(browser.client.post(&login).json(&serde_json::json!({ "email": "a", "password": "b" }))).await;
    json_error(res, 415).await;
    // Cross-site: refused in JSON.
    let res =
        browser.post_form(&login, &[("email", "a@example.com"), ("password", "x")], Some("https://evil.example")).await;
    json_error(res, 403).await;

    // The browser flows never answer in plain text: a query they cannot read goes to the login
    // page with a message, and the login page itself ignores what it cannot read.
    for path in ["/api/auth/signin/github?next=/a&next=/b", "/api/auth/callback/github?state=a&state=b"] {
        let res = send(&app, reqwest::Method::GET, path).await;
        assert!(res.status().is_redirection(), "{path}: {}", res.status());
        assert!(res.headers()["location"].to_str().unwrap().starts_with("/login?error="), "{path}");
    }
    let res = send(&app, reqwest::Method::GET, "/login?error=a&error=b").await;
    assert_eq!(res.status(), 200);
    assert!(content_type(&res).starts_with("text/html"));
    // A link cannot put words of its own on the login page: unknown codes read as a failed sign-in.
    let page = send(&app, reqwest::Method::GET, "/login?error=Your+account+is+suspended.+Call+555-0100").await;
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"id="error">Sign-in failed. Try again.</div>"#), "{page}");
    assert!(!page.contains("Call 555-0100"), "{page}");

    // Signed in, a path the route cannot read is JSON too.
    crate::helpers::password_user(&app.db, "paths@example.com", "user").await;
    browser.post_form(&login, &[("email", "paths@example.com"), ("password", crate::helpers::PASSWORD)], None).await;
    let res = browser.send(browser.client.delete(format!("{}/api/internal/keys/%FF", app.address))).await;
    json_error(res, 400).await;
}

#[tokio::test]
async fn pages_forbid_framing_and_inline_code_and_nothing_is_sniffed() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app.get("/login").await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for directive in ["default-src 'none'", "frame-ancestors 'none'", "script-src 'self'", "form-action 'self'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(res.headers().get("referrer-policy").is_some());
    let page = res.text().await.unwrap();
    // Everything the page runs or styles itself with comes from a file the policy allows.
    assert!(
        !page.contains("<script>") && !page.contains("<style") && !page.contains("style="),
        "inline code on /login"
    );
    crate::helpers::password_user(&app.db, "csp@example.com", "user").await;
    let browser = Browser::new();
    let form = [("email", "csp@example.com"), ("password", crate::helpers::PASSWORD)];
    browser.post_form(&format!("{}/api/auth/signin/password", app.address), &form, None).await;
    for path in ["/dashboard", "/dashboard/keys", "/dashboard/usage", "/pricing"] {
        let res = browser.get(&format!("{}{path}", app.address)).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-security-policy"].to_str().unwrap(), csp, "{path}");
        assert_eq!(res.headers()["cache-control"], "no-store", "{path}");
        let page = res.text().await.unwrap();
        assert!(page.contains("id=\"nav-usage\""), "{path} lacks the navigation");
        assert!(
            !page.contains("<script>") && !page.contains("<style") && !page.contains("style="),
            "inline code on {path}"
        );
    }
    for asset in ["/assets/app.css", "/assets/pages.js", "/assets/keys.js", "/assets/usage.js", "/assets/channels.js"] {
        let res = app.get(asset).await;
        assert_eq!(res.status(), 200, "{asset}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(app.get("/assets/../Cargo.toml").await.status(), 404);
    assert_eq!(app.get("/assets/nothing.js").await.status(), 404);

    // nosniff on every answer: pages, the API, errors.
    for path in ["/login", "/healthz", "/v1/models", "/api/internal/me", "/nothing", "/v1/nothing"] {
        let res = app.get(path).await;
        assert_eq!(res.headers().get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{path}");
    }
}

/// The back office's pages: an administrator gets every one, under the same policy and without
/// inline code; a customer gets a 403 page on each; an anonymous visitor is sent to sign in.
#[tokio::test]
async fn back_office_pages_are_for_administrators_only() {
    let app = spawn_app(Backend::Sqlite).await;
    let pages = [
        "/admin",
        "/admin/models",
        "/admin/channels",
        "/admin/users",
        "/admin/users/1",
        "/admin/revenue",
        "/admin/audit",
        "/admin/codes",
    ];
    let sign_in = |email: &'static str| {
        let app = &app;
        async move {
            let browser = Browser::new();
            let form = [("email", email), ("password", crate::helpers::PASSWORD)];
            browser.post_form(&format!("{}/api/auth/signin/password", app.address), &form, None).await;
            browser
        }
    };
    crate::helpers::password_user(&app.db, "boss@example.com", "admin").await;
    crate::helpers::password_user(&app.db, "client@example.com", "user").await;
    let admin = sign_in("boss@example.com").await;
    let customer = sign_in("client@example.com").await;
    let anonymous = Browser::new();
    for path in pages {
        let url = format!("{}{path}", app.address);
        let res = admin.get(&url).await;
        assert_eq!(res.status(), 200, "{path} for an admin");
        assert_eq!(res.headers()["cache-control"], "no-store", "{path}");
        let page = res.text().await.unwrap();
        assert!(page.contains("id=\"nav-admin-users\"") && page.contains("/assets/admin.js"), "{path}");
        assert!(
            !page.contains("<script>") && !page.contains("<style") && !page.contains("style="),
            "inline code on {path}"
        );

        let res = customer.get(&url).await;
        assert_eq!(res.status(), 403, "{path} for a customer");
        let page = res.text().await.unwrap();
        assert!(page.contains("id=\"forbidden\"") && !page.contains("/assets/admin.js"), "{path}");

        let res = anonymous.get(&url).await;
        assert_eq!(res.status(), 303, "{path} for a visitor");
        assert!(res.headers()["location"].to_str().unwrap().starts_with("/login?next="), "{path}");
    }
    // The back-office link is in the header for admins only.
    let dashboard = format!("{}/dashboard", app.address);
    assert!(admin.get(&dashboard).await.text().await.unwrap().contains("id=\"nav-admin\""));
    assert!(!customer.get(&dashboard).await.text().await.unwrap().contains("id=\"nav-admin\""));
    assert_eq!(admin.get(&format!("{}/admin/users/abc", app.address)).await.status(), 404);
}

/// The usage page's model filter offers the models on sale and those the customer called, never
/// a model the operator has not released.
#[tokio::test]
async fn the_usage_filter_does_not_reveal_unreleased_models() {
    let app = spawn_app(Backend::Sqlite).await;
    crate::helpers::add_model_named(&app.db, "released-model").await;
    let change = tollgate::models::ModelChange {
        upstream_model: Some("secret-upstream".into()),
        input_price: Some(1),
        output_price: Some(1),
        enabled: Some(false),
        ..Default::default()
    };
    tollgate::models::set(&app.db, &app.cache(), "unreleased-model", change, None).await.unwrap();
    crate::helpers::password_user(&app.db, "filter@example.com", "user").await;
    let browser = Browser::new();
    let form = [("email", "filter@example.com"), ("password", crate::helpers::PASSWORD)];
    browser.post_form(&format!("{}/api/auth/signin/password", app.address), &form, None).await;
    let page = browser.get(&format!("{}/dashboard/usage", app.address)).await.text().await.unwrap();
    assert!(page.contains(r#"<option value="released-model">"#), "{page}");
    assert!(!page.contains("unreleased-model"), "an unreleased model is named on the page");
}
