//! A fake OAuth provider playing GitHub and Google: authorize (auto-consent or denial), token
//! with PKCE (S256) verification, GitHub's `/user` and `/user/emails`, Google's userinfo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The person the provider says is signing in.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: String,
    pub email: String,
    pub verified: bool,
    pub primary: bool,
    pub name: String,
}

#[derive(Default)]
pub struct Shared {
    pub person: Mutex<Option<Person>>,
    pub deny: Mutex<bool>,
    /// code → (challenge, redirect uri, person)
    codes: Mutex<HashMap<String, (String, String, Person)>>,
    pub tokens: Mutex<HashMap<String, Person>>,
    pub pkce_verified: AtomicUsize,
    pub challenge_methods: Mutex<Vec<String>>,
}

#[derive(Clone)]
pub struct FakeOAuth {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

impl FakeOAuth {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/api/user", get(user))
            .route("/api/user/emails", get(emails))
            .route("/userinfo", get(userinfo))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The settings that point Tollgate's GitHub and Google sign-in at this fake.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GITHUB_ID", "gh-client".into()),
            ("GITHUB_SECRET", "gh-secret".into()),
            ("GITHUB_AUTH_URL", self.url("/authorize")),
            ("GITHUB_TOKEN_URL", self.url("/token")),
            ("GITHUB_API_URL", self.url("/api")),
            ("GOOGLE_ID", "g-client".into()),
            ("GOOGLE_SECRET", "g-secret".into()),
            ("GOOGLE_AUTH_URL", self.url("/authorize")),
            ("GOOGLE_TOKEN_URL", self.url("/token")),
            ("GOOGLE_USERINFO_URL", self.url("/userinfo")),
        ]
    }

    pub fn sign_in_as(&self, person: Person) {
        *self.shared.person.lock().unwrap() = Some(person);
    }

    pub fn deny(&self, deny: bool) {
        *self.shared.deny.lock().unwrap() = deny;
    }
}

pub fn person(id: &str, email: &str) -> Person {
    Person { id: id.into(), email: email.into(), verified: true, primary: true, name: format!("Person {id}") }
}

async fn authorize(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    s.challenge_methods.lock().unwrap().push(q.get("code_challenge_method").cloned().unwrap_or_default());
    let sep = if redirect.contains('?') { '&' } else { '?' };
    if *s.deny.lock().unwrap() {
        return Redirect::to(&format!("{redirect}{sep}error=access_denied&state={state}")).into_response();
    }
    let person = s.person.lock().unwrap().clone().expect("a person to sign in");
    let code = format!("code-{}", tollgate::crypto::random_token(9));
    let challenge = q.get("code_challenge").cloned().unwrap_or_default();
    s.codes.lock().unwrap().insert(code.clone(), (challenge, redirect.clone(), person));
    Redirect::to(&format!("{redirect}{sep}code={code}&state={state}")).into_response()
}

async fn token(State(s): State<Arc<Shared>>, Form(f): Form<HashMap<String, String>>) -> Response {
    let invalid = |what: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "invalid_grant", "error_description": what })))
            .into_response()
    };
    let code = f.get("code").cloned().unwrap_or_default();
    // A code works once.
    let Some((challenge, redirect, person)) = s.codes.lock().unwrap().remove(&code) else {
        return invalid("unknown or used code");
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    if tollgate::crypto::base64url(&Sha256::digest(verifier.as_bytes())) != challenge {
        return invalid("PKCE verification failed");
    }
    if f.get("redirect_uri") != Some(&redirect) {
        return invalid("redirect_uri mismatch");
    }
    s.pkce_verified.fetch_add(1, Ordering::SeqCst);
    let access = format!("tok-{}", tollgate::crypto::random_token(9));
    s.tokens.lock().unwrap().insert(access.clone(), person);
    axum::Json(json!({ "access_token": access, "token_type": "bearer", "scope": "read:user" })).into_response()
}

fn who(s: &Shared, headers: &HeaderMap) -> Option<Person> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
    s.tokens.lock().unwrap().get(token).cloned()
}

async fn user(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match who(&s, &headers) {
        Some(p) => axum::Json(json!({ "id": p.id.parse::<i64>().unwrap_or(0), "login": p.name, "name": p.name }))
            .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn emails(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match who(&s, &headers) {
        Some(p) => axum::Json(json!([
            { "email": "old-address@example.com", "primary": false, "verified": true },
            { "email": p.email, "primary": p.primary, "verified": p.verified },
        ]))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn userinfo(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match who(&s, &headers) {
        Some(p) => axum::Json(json!({ "sub": p.id, "email": p.email, "email_verified": p.verified, "name": p.name }))
            .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A browser without JavaScript: follows nothing by itself, keeps cookies by name.
pub struct Browser {
    pub client: reqwest::Client,
    pub cookies: Mutex<HashMap<String, String>>,
    pub set_cookie_headers: Mutex<Vec<String>>,
}

impl Browser {
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: Mutex::new(HashMap::new()),
            set_cookie_headers: Mutex::new(Vec::new()),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn remember(&self, res: &reqwest::Response) {
        for v in res.headers().get_all("set-cookie") {
            let raw = v.to_str().unwrap().to_owned();
            self.set_cookie_headers.lock().unwrap().push(raw.clone());
            let (pair, attrs) = raw.split_once(';').unwrap_or((&raw, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let expired = attrs.to_ascii_lowercase().contains("max-age=0");
            let mut jar = self.cookies.lock().unwrap();
            if expired || value.is_empty() {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        let res = self.client.get(url).header("cookie", self.cookie_header()).send().await.unwrap();
        self.remember(&res);
        res
    }

    pub async fn post_form(&self, url: &str, form: &[(&str, &str)], origin: Option<&str>) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let mut req = self
            .client
            .post(url)
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let res = req.send().await.unwrap();
        self.remember(&res);
        res
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let res = req.header("cookie", self.cookie_header()).send().await.unwrap();
        self.remember(&res);
        res
    }

    /// Follows redirects (collecting cookies) until a non-redirect answer; returns the final
    /// answer and the URL it came from.
    pub async fn follow(&self, start: &str) -> (reqwest::Response, String) {
        let mut url = start.to_owned();
        for _ in 0..10 {
            let res = self.get(&url).await;
            if !res.status().is_redirection() {
                return (res, url);
            }
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            url = if location.starts_with("http") { location } else { format!("{}{location}", origin_of(&url)) };
        }
        panic!("too many redirects from {start}");
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }
}

fn origin_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    u.origin().ascii_serialization()
}
