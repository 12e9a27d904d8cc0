//! Server-rendered pages: the login page and the dashboard.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::Cookie;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Deserialize;

use super::ApiError;
use super::internal::cached_balance;
use super::session::{CurrentUser, safe_next};
use super::signin::NEW_KEY_COOKIE;
use crate::app::AppState;
use crate::auth::sessions::USER_ID;
use crate::clock::rfc3339;
use crate::db::entities::api_keys;
use crate::money::format_amount;
use crate::subscriptions;

pub struct ProviderLink {
    pub name: &'static str,
    pub label: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    providers: Vec<ProviderLink>,
    error: Option<String>,
    next: String,
}

#[derive(Default, Deserialize)]
pub struct LoginQuery {
    error: Option<String>,
    next: Option<String>,
}

/// `GET /login`.
pub async fn login(
    State(state): State<AppState>,
    session: tower_sessions::Session,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    // A query we cannot read is ignored: the page is still the login page.
    let q = query.map(|Query(q)| q).unwrap_or_default();
    if q.error.is_none() && session.get::<i64>(USER_ID).await.ok().flatten().is_some() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    let providers =
        state.auth.providers.iter().map(|p| ProviderLink { name: p.kind.name(), label: p.kind.label() }).collect();
    let error = q.error.map(|e| e.chars().take(300).collect());
    LoginPage { providers, error, next: safe_next(q.next.as_deref()) }.into_response()
}

pub struct KeyRow {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub last4: String,
    pub created_at: String,
    pub last_used_at: String,
}

pub struct SubscriptionRow {
    pub name: String,
    pub tokens_remaining: i64,
    pub tokens_total: i64,
    pub expires_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    email: String,
    balance: String,
    new_key: Option<String>,
    keys: Vec<KeyRow>,
    subscriptions: Vec<SubscriptionRow>,
    base_url: String,
}

/// `GET /dashboard`: balance, subscriptions, keys, and a first key shown exactly once.
pub async fn dashboard(
    State(state): State<AppState>,
    me: CurrentUser,
    jar: PrivateCookieJar,
) -> Result<Response, ApiError> {
    let new_key = jar.get(NEW_KEY_COOKIE).map(|c| c.value().to_owned());
    let jar = jar.remove(Cookie::build(NEW_KEY_COOKIE).path("/dashboard").build());
    let balance = cached_balance(&state, me.user.id).await?;
    let keys = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(me.user.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .order_by_asc(api_keys::Column::Id)
        .all(&state.db.read)
        .await
        .map_err(crate::error::Error::from)?
        .into_iter()
        .map(|k| KeyRow {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            last4: k.last4,
            created_at: rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(rfc3339).unwrap_or_else(|| "never".into()),
        })
        .collect();
    let subscriptions = subscriptions::active(&state.db.read, me.user.id)
        .await?
        .into_iter()
        .map(|s| SubscriptionRow {
            name: s.name,
            tokens_remaining: s.tokens_remaining,
            tokens_total: s.tokens_total,
            expires_at: rfc3339(s.expires_at),
        })
        .collect();
    let page = DashboardPage {
        email: me.user.email,
        balance: format_amount(balance),
        new_key,
        keys,
        subscriptions,
        base_url: state.public_url.as_str().trim_end_matches('/').to_owned(),
    };
    let mut res = (jar, page).into_response();
    // The page may hold a key: never store it anywhere.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /`: the dashboard for the signed-in, the login page for everyone else.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// Long enough to spare a request per page, short enough that a new version is seen soon.
const ASSET_CACHE: &str = "public, max-age=300";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE));
    res
}

/// `GET /assets/app.css`: the pages' styles (a file, so the CSP needs no inline style).
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("../../templates/app.css"))
}

/// `GET /assets/dashboard.js`: the dashboard's key actions (a file, so the CSP needs no inline
/// script).
pub async fn dashboard_script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../../templates/dashboard.js"))
}
