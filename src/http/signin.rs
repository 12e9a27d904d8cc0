//! The sign-in routes: OAuth start and callback, password sign-in, sign-out.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use super::ApiError;
use super::session::{refusal, safe_next, urlencoding};
use crate::accounts::{self, password};
use crate::auth::limiter::{BUSY_RETRY_AFTER_SECS, Refused};
use crate::auth::oauth::{self, Kind, OAuthError};
use crate::auth::sessions::{SIGNED_IN_AT, USER_ID};
use crate::auth::signin::{self, SignedIn};
use crate::clock::now_ms;
use crate::crypto::constant_time_eq;
use crate::error::Error;
use crate::state::AppState;

/// The encrypted cookie that carries one OAuth attempt from redirect to callback.
const OAUTH_COOKIE: &str = "tollgate_oauth";
/// The encrypted cookie that carries a first key to the dashboard, once.
pub const NEW_KEY_COOKIE: &str = "tollgate_new_key";
/// How long an OAuth attempt may take.
const OAUTH_TTL_MS: i64 = oauth::STATE_TTL_MS;

#[derive(Serialize, Deserialize)]
struct Attempt {
    provider: String,
    state: String,
    verifier: String,
    next: String,
    expires_at: i64,
}

/// Back to the login page with an error code, which the page shows in the visitor's language
/// (`login.error.{code}` in the catalogues). Never free text: a link to the login page cannot
/// put words of its own on it.
fn login_with_error(code: &str) -> Response {
    Redirect::to(&format!("/login?error={}", urlencoding(code))).into_response()
}

fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    path: &'static str,
    max_age_secs: i64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(state.config.secure_cookies())
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(max_age_secs))
        .build()
}

/// The configured provider called `name` in a path.
fn configured<'a>(state: &'a AppState, name: &str) -> Option<&'a crate::auth::oauth::Provider> {
    Kind::parse(name).and_then(|k| state.auth.providers.iter().find(|p| p.kind == k))
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /api/auth/signin/{provider}`: to the provider, with a fresh state and PKCE verifier.
pub async fn start(
    State(state): State<AppState>,
    provider: Result<Path<String>, PathRejection>,
    query: Result<Query<StartQuery>, QueryRejection>,
    jar: PrivateCookieJar,
) -> Response {
    // A browser flow: what cannot be read ends on the login page, never in plain text.
    let (Ok(Path(provider)), Ok(Query(q))) = (provider, query) else {
        return login_with_error("malformed");
    };
    let Some(p) = configured(&state, &provider) else {
        return login_with_error("unavailable");
    };
    let start = p.start();
    // The state is also kept on the server, so that it can be spent exactly once.
    if let Err(err) = oauth::remember_state(&state.db, &start.state).await {
        tracing::error!(error = %err, "cannot store an OAuth state");
        return login_with_error("failed");
    }
    let attempt = Attempt {
        provider: p.kind.name().to_owned(),
        state: start.state,
        verifier: start.verifier,
        next: safe_next(q.next.as_deref()),
        expires_at: now_ms() + OAUTH_TTL_MS,
    };
    let Ok(value) = serde_json::to_string(&attempt) else { return login_with_error("failed") };
    let jar = jar.add(cookie(&state, OAUTH_COOKIE, value, "/api/auth", OAUTH_TTL_MS / 1000));
    (jar, Redirect::to(start.url.as_str())).into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /api/auth/callback/{provider}`: checks the state, exchanges the code, signs in.
pub async fn callback(
    State(state): State<AppState>,
    provider: Result<Path<String>, PathRejection>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
    session: Session,
    jar: PrivateCookieJar,
) -> Response {
    // The attempt is used once, whatever happens next.
    let attempt: Option<Attempt> = jar.get(OAUTH_COOKIE).and_then(|c| serde_json::from_str(c.value()).ok());
    let jar = jar.remove(Cookie::build(OAUTH_COOKIE).path("/api/auth").build());
    let fail = |jar: PrivateCookieJar, message: &str| (jar, login_with_error(message)).into_response();
    let (Ok(Path(provider)), Ok(Query(q))) = (provider, query) else {
        return fail(jar, "unreadable");
    };

    if let Some(error) = q.error {
        if error == "access_denied" {
            return fail(jar, "cancelled");
        }
        tracing::info!(provider, error = %error.chars().take(100).collect::<String>(), "the provider refused a sign-in");
        return fail(jar, "provider_refused");
    }
    let Some(attempt) = attempt else { return fail(jar, "expired") };
    let valid = attempt.provider == provider
        && attempt.expires_at > now_ms()
        && q.state.as_deref().is_some_and(|s| constant_time_eq(s, &attempt.state));
    if !valid {
        return fail(jar, "expired");
    }
    // The cookie alone can be saved and replayed: the server's copy of the state is what makes
    // an attempt single-use, on whichever instance the callback lands.
    match oauth::spend_state(&state.db, &attempt.state, OAUTH_TTL_MS).await {
        Ok(true) => {}
        Ok(false) => return fail(jar, "expired"),
        Err(err) => {
            tracing::error!(error = %err, "cannot check an OAuth state");
            return fail(jar, "failed");
        }
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return fail(jar, "no_code");
    };
    let Some(p) = configured(&state, &provider) else {
        return fail(jar, "unavailable");
    };
    let identity = match p.finish(&state.auth.http, &code, &attempt.verifier).await {
        Ok(i) => i,
        Err(OAuthError::Unverified(message)) => {
            tracing::info!(provider, reason = %message, "sign-in refused");
            return fail(jar, "no_verified_email");
        }
        Err(OAuthError::Refused(message)) => {
            tracing::info!(provider, reason = %message, "sign-in refused");
            return fail(jar, "provider_refused");
        }
        Err(OAuthError::Provider(detail)) => {
            tracing::warn!(provider, error = %detail, "OAuth provider error");
            return fail(jar, "provider_unreachable");
        }
    };
    match signin::sign_in(&state.db, &identity, state.config.signup_credit).await {
        Ok(signed) => {
            let jar = match begin_session(&state, &session, &signed, jar).await {
                Ok(jar) => jar,
                Err(response) => return response,
            };
            (jar, Redirect::to(&attempt.next)).into_response()
        }
        Err(Error::Conflict(_)) => fail(jar, "email_taken"),
        Err(Error::Forbidden(_)) => fail(jar, "disabled"),
        Err(err) => {
            tracing::error!(error = %err, "sign-in failed");
            fail(jar, "failed")
        }
    }
}

/// Starts a fresh session for the user: a new id (so a planted one is useless), the user, the
/// time; and the first key, once, in an encrypted cookie for the dashboard.
async fn begin_session(
    state: &AppState,
    session: &Session,
    signed: &SignedIn,
    jar: PrivateCookieJar,
) -> Result<PrivateCookieJar, Response> {
    // ADMIN_EMAILS: listed accounts become admins as they sign in, whichever way they do.
    if let Err(err) = accounts::promote_if_listed(&state.db, signed.user.clone(), &state.config.admin_emails).await {
        tracing::error!(error = %err, user.id = signed.user.id, "could not apply ADMIN_EMAILS");
        return Err(login_with_error("sign-in failed; try again"));
    }
    let ok = session.cycle_id().await.is_ok()
        && session.insert(USER_ID, signed.user.id).await.is_ok()
        && session.insert(SIGNED_IN_AT, now_ms()).await.is_ok();
    if !ok {
        return Err(login_with_error("failed"));
    }
    tracing::info!(user.id = signed.user.id, "signed in");
    Ok(match &signed.first_key {
        Some(key) => jar.add(cookie(state, NEW_KEY_COOKIE, key.clone(), "/dashboard", 600)),
        None => jar,
    })
}

#[derive(Deserialize)]
pub struct PasswordForm {
    email: String,
    password: String,
    next: Option<String>,
}

/// `POST /api/auth/signin/password`.
///
/// Every attempt takes its place in the per-account and per-address windows before the
/// password is hashed, and holds one of `PASSWORD_HASH_CONCURRENCY` hashing permits while it
/// is: when they are all taken the answer is 429, and nothing is hashed or counted.
pub async fn password_signin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    session: Session,
    jar: PrivateCookieJar,
    form: Result<Form<PasswordForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(FormRejection::InvalidFormContentType(_)) => {
            return refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "request.unsupported_media_type",
                "send the form as application/x-www-form-urlencoded",
            );
        }
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refusal(e.status(), "invalid_request_error", "request.too_large", &e.body_text());
        }
        Err(e) => return refusal(StatusCode::BAD_REQUEST, "invalid_request_error", "request.invalid", &e.body_text()),
    };
    let account = form.email.trim().to_lowercase();
    // Behind a trusted reverse proxy, the client's own address (TRUSTED_PROXIES).
    let ip = Some(crate::http::client_ip::client_ip(peer.ip(), &headers, &state.config.trusted_proxies));
    let (permit, slot) = match state.auth.failures.admit(&account, ip) {
        Ok(admitted) => admitted,
        Err(Refused::Locked) => {
            return login_with_error("locked");
        }
        Err(Refused::Busy) => {
            return ApiError(Error::RateLimited {
                message: "too many sign-ins at once; try again in a moment".into(),
                retry_after_secs: BUSY_RETRY_AFTER_SECS,
            })
            .into_response();
        }
    };
    let user = accounts::find_by_email(&state.db.read, &account).await.ok().flatten();
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    // Verified even when there is no such user, so both failures take the same time (and the
    // same permit).
    let matches = password::verify(form.password, phc).await;
    drop(permit);
    match user {
        Some(user) if matches && !user.disabled => {
            state.auth.failures.release(slot);
            let signed = SignedIn { user, first_key: None };
            match begin_session(&state, &session, &signed, jar).await {
                Ok(jar) => (jar, Redirect::to(&safe_next(form.next.as_deref()))).into_response(),
                Err(response) => response,
            }
        }
        _ => login_with_error("wrong_password"),
    }
}

/// `POST /api/auth/signout`: ends the session on the server and in the browser.
pub async fn signout(session: Session) -> Response {
    let _ = session.flush().await;
    Redirect::to("/login?signed_out=1").into_response()
}
