//! Server-rendered pages: login, the customer dashboard (overview, keys, usage) and the public
//! pricing page, in the visitor's language, with the shared navigation bar.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::PrivateCookieJar;
use axum_extra::extract::cookie::Cookie;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;

use super::ApiError;
use super::internal::cached_balance;
use super::session::{CurrentUser, safe_next};
use super::signin::NEW_KEY_COOKIE;
use crate::accounts::ROLE_ADMIN;
use crate::auth::sessions::USER_ID;
use crate::clock::{day_of, now_ms, rfc3339};
use crate::db::entities::{api_keys, usage_logs, users};
use crate::error::Error;
use crate::i18n::{LANG_COOKIE, Lang, Tr};
use crate::models as catalog;
use crate::money;
use crate::state::AppState;
use crate::subscriptions;
use crate::usage::{self, RawFilter};

/// One entry of the language switch.
pub struct LangLink {
    pub code: &'static str,
    pub label: &'static str,
    pub active: bool,
}

/// What every page's frame needs: the product name, who is signed in, where we are.
pub struct Chrome {
    pub site_name: String,
    pub email: Option<String>,
    pub admin: bool,
    /// The navigation entry to mark: `overview`, `keys`, `usage`, `pricing` or empty.
    pub current: &'static str,
    /// A back-office page: the navigation bar shows the back office's sections.
    pub admin_area: bool,
    /// This page's path and query, for the language switch to come back to.
    pub here: String,
    pub languages: Vec<LangLink>,
    pub currency: String,
    /// `{"currency", "symbol"}` for the pages' scripts (`<` escaped).
    pub site_json: String,
}

impl Chrome {
    pub fn new(
        state: &AppState,
        t: Tr,
        user: Option<&users::Model>,
        current: &'static str,
        here: &OriginalUri,
    ) -> Self {
        let site = serde_json::json!({ "currency": state.config.currency, "symbol": state.config.currency_symbol });
        Self {
            site_name: state.config.site_name.clone(),
            email: user.map(|u| u.email.clone()),
            admin: user.is_some_and(|u| u.role == ROLE_ADMIN),
            current,
            admin_area: current.starts_with("admin"),
            currency: state.config.currency.clone(),
            site_json: site.to_string().replace('<', "\\u003c"),
            here: here.0.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            languages: Lang::ALL
                .iter()
                .map(|l| LangLink { code: l.code(), label: l.native_name(), active: *l == t.lang })
                .collect(),
        }
    }
}

/// A page that may show someone's data: never stored by the browser or a proxy.
pub fn private(page: impl IntoResponse) -> Response {
    let mut res = page.into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::VARY, HeaderValue::from_static("Cookie, Accept-Language"));
    res
}

pub struct ProviderLink {
    pub name: &'static str,
    pub label: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    t: Tr,
    c: Chrome,
    providers: Vec<ProviderLink>,
    error: Option<String>,
    signed_out: bool,
    next: String,
}

#[derive(Default, Deserialize)]
pub struct LoginQuery {
    error: Option<String>,
    next: Option<String>,
    signed_out: Option<String>,
}

/// `GET /login`.
pub async fn login(
    State(state): State<AppState>,
    session: tower_sessions::Session,
    headers: HeaderMap,
    uri: OriginalUri,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    // A query we cannot read is ignored: the page is still the login page.
    let q = query.map(|Query(q)| q).unwrap_or_default();
    if q.error.is_none() && session.get::<i64>(USER_ID).await.ok().flatten().is_some() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    let t = Tr::from_headers(&headers);
    let providers =
        state.auth.providers.iter().map(|p| ProviderLink { name: p.kind.name(), label: p.kind.label() }).collect();
    // Only our own codes are shown, in the visitor's language: anything else reads as a failed
    // sign-in (no text of a link's choosing appears on this page).
    let error = q.error.map(|e| {
        let key = format!("login.error.{e}");
        match t.get(&key) {
            text if text != key => text.to_owned(),
            _ => t.get("login.error.failed").to_owned(),
        }
    });
    let page = LoginPage {
        c: Chrome::new(&state, t, None, "", &uri),
        t,
        providers,
        error,
        signed_out: q.signed_out.is_some(),
        next: safe_next(q.next.as_deref()),
    };
    private(page)
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
    t: Tr,
    c: Chrome,
    balance: String,
    spend_today: String,
    spend_month: String,
    new_key: Option<String>,
    key_prefix: Option<String>,
    key_shown: String,
    example_model: String,
    subscriptions: Vec<SubscriptionRow>,
    base_url: String,
}

/// The money the user spent since the start of `day` (UTC), in micro-units.
async fn spent_since(state: &AppState, user_id: i64, day: &str) -> Result<i64, Error> {
    let filter = RawFilter { start_date: Some(day.to_owned()), ..Default::default() }.validate(user_id)?;
    Ok(usage::totals(&state.db, &filter).await?.total_cost)
}

/// The first enabled model, for the examples.
async fn example_model(state: &AppState) -> Result<String, Error> {
    Ok(catalog::enabled(&state.db.read).await?.into_iter().next().map_or_else(|| "gpt-4o-mini".to_owned(), |m| m.name))
}

fn base_url(state: &AppState) -> String {
    state.public_url.as_str().trim_end_matches('/').to_owned()
}

/// `GET /dashboard`: balance, spend, subscriptions, a quick start, and a first key shown once.
pub async fn dashboard(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    uri: OriginalUri,
    jar: PrivateCookieJar,
) -> Result<Response, ApiError> {
    let t = Tr::from_headers(&headers);
    let symbol = state.config.currency_symbol.clone();
    let new_key = jar.get(NEW_KEY_COOKIE).map(|c| c.value().to_owned());
    let jar = jar.remove(Cookie::build(NEW_KEY_COOKIE).path("/dashboard").build());
    let balance = cached_balance(&state, me.user.id).await?;
    let today = day_of(now_ms());
    let month_start = format!("{}-01", &today[..7]);
    let spend_today = spent_since(&state, me.user.id, &today).await?;
    let spend_month = spent_since(&state, me.user.id, &month_start).await?;
    let first_key = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(me.user.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .order_by_asc(api_keys::Column::Id)
        .one(&state.db.read)
        .await
        .map_err(Error::from)?;
    let key_prefix = first_key.map(|k| format!("{}…", k.prefix));
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
        c: Chrome::new(&state, t, Some(&me.user), "overview", &uri),
        t,
        balance: money::display(balance, &symbol),
        spend_today: money::display(spend_today, &symbol),
        spend_month: money::display(spend_month, &symbol),
        key_shown: key_prefix.clone().unwrap_or_else(|| "sk-…".to_owned()),
        key_prefix,
        new_key,
        example_model: example_model(&state).await?,
        subscriptions,
        base_url: base_url(&state),
    };
    // The page may hold a key: never stored anywhere.
    Ok(private((jar, page)))
}

#[derive(Template, WebTemplate)]
#[template(path = "keys.html")]
pub struct KeysPage {
    t: Tr,
    c: Chrome,
}

/// `GET /dashboard/keys`: the keys page (its list comes from `/api/internal/keys`).
pub async fn keys_page(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Response {
    let t = Tr::from_headers(&headers);
    private(KeysPage { c: Chrome::new(&state, t, Some(&me.user), "keys", &uri), t })
}

#[derive(Template, WebTemplate)]
#[template(path = "usage.html")]
pub struct UsagePage {
    t: Tr,
    c: Chrome,
    /// The models for the filter: those on offer and those the user called.
    models: Vec<String>,
    /// (id, label) of every key the user ever had, for the filter.
    keys: Vec<(i64, String)>,
    base_url: String,
    example_model: String,
}

/// `GET /dashboard/usage`: the chart, the per-model breakdown and the call history (filled from
/// `/api/internal/usage/daily` and `/api/internal/usage`).
pub async fn usage_page(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, ApiError> {
    let t = Tr::from_headers(&headers);
    // The models on offer and those this user called (never a disabled model nobody used here).
    let mut models: Vec<String> = catalog::enabled(&state.db.read).await?.into_iter().map(|m| m.name).collect();
    let used: Vec<String> = usage_logs::Entity::find()
        .select_only()
        .column(usage_logs::Column::Model)
        .distinct()
        .filter(usage_logs::Column::UserId.eq(me.user.id))
        .filter(usage_logs::Column::Model.ne(""))
        .into_tuple()
        .all(&state.db.read)
        .await
        .map_err(Error::from)?;
    models.extend(used);
    models.sort();
    models.dedup();
    let keys = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(me.user.id))
        .order_by_asc(api_keys::Column::Id)
        .all(&state.db.read)
        .await
        .map_err(Error::from)?
        .into_iter()
        .map(|k| {
            let label = if k.revoked_at.is_some() { t.fill("usage.revoked_key", "name", &k.name) } else { k.name };
            (k.id, label)
        })
        .collect();
    let page = UsagePage {
        c: Chrome::new(&state, t, Some(&me.user), "usage", &uri),
        t,
        models,
        keys,
        base_url: base_url(&state),
        example_model: example_model(&state).await?,
    };
    Ok(private(page))
}

pub struct PriceRow {
    pub name: String,
    pub input: String,
    pub output: String,
    pub cache_read: String,
    pub cache_write: String,
    pub cache_write_1h: String,
    pub request: String,
    pub context: String,
    pub max_output: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "pricing.html")]
pub struct PricingPage {
    t: Tr,
    c: Chrome,
    currency: String,
    models: Vec<PriceRow>,
}

/// `1234567` → `1,234,567`.
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `GET /pricing`: every enabled model and its prices, for visitors and customers alike.
pub async fn pricing(
    State(state): State<AppState>,
    session: tower_sessions::Session,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, ApiError> {
    let t = Tr::from_headers(&headers);
    let user = match session.get::<i64>(USER_ID).await.ok().flatten() {
        Some(id) => {
            users::Entity::find_by_id(id).one(&state.db.read).await.map_err(Error::from)?.filter(|u| !u.disabled)
        }
        None => None,
    };
    let symbol = &state.config.currency_symbol;
    let models = catalog::enabled(&state.db.read)
        .await?
        .into_iter()
        .map(|m| {
            // What each class is billed at, defaults applied.
            let p = crate::billing::Prices::of_model(
                m.input_price,
                m.output_price,
                m.cache_read_price,
                m.cache_write_price,
                m.request_price,
            );
            PriceRow {
                input: money::display(p.input, symbol),
                output: money::display(p.output, symbol),
                cache_read: money::display(p.cache_read, symbol),
                cache_write: money::display(p.cache_write, symbol),
                cache_write_1h: money::display(p.cache_write_1h, symbol),
                request: money::display(p.request, symbol),
                context: grouped(m.context_window),
                max_output: grouped(m.max_output_tokens),
                name: m.name,
            }
        })
        .collect();
    let page = PricingPage {
        c: Chrome::new(&state, t, user.as_ref(), "pricing", &uri),
        t,
        currency: state.config.currency.clone(),
        models,
    };
    Ok(private(page))
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `GET /lang/{code}?next=`: remembers the visitor's language for a year and goes back.
pub async fn switch_language(Path(code): Path<String>, query: Result<Query<NextQuery>, QueryRejection>) -> Response {
    let next = safe_next(query.ok().and_then(|Query(q)| q.next).as_deref());
    let Some(lang) = Lang::from_tag(&code) else {
        return (StatusCode::NOT_FOUND, format!("no pages in `{}`", code.chars().take(16).collect::<String>()))
            .into_response();
    };
    let cookie = format!("{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax", lang.code());
    let mut res = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// `GET /`: the dashboard for the signed-in, the login page for everyone else.
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// Long enough to spare a request per page, short enough that a new version is seen soon.
const ASSET_CACHE: &str = "public, max-age=300";

/// The pages' styles and scripts (files, so the CSP needs no inline style or script).
const ASSETS: [(&str, &str, &str); 7] = [
    ("app.css", "text/css; charset=utf-8", include_str!("../../templates/app.css")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../../templates/pages.js")),
    ("keys.js", "text/javascript; charset=utf-8", include_str!("../../templates/keys.js")),
    ("usage.js", "text/javascript; charset=utf-8", include_str!("../../templates/usage.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_str!("../../templates/admin.js")),
    ("redeem.js", "text/javascript; charset=utf-8", include_str!("../../templates/redeem.js")),
    ("channels.js", "text/javascript; charset=utf-8", include_str!("../../templates/channels.js")),
];

/// `GET /assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut res = (*body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(ASSET_CACHE));
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(super::grouped(0), "0");
        assert_eq!(super::grouped(999), "999");
        assert_eq!(super::grouped(128_000), "128,000");
        assert_eq!(super::grouped(1_048_576), "1,048,576");
        assert_eq!(super::grouped(-1_000), "-1,000");
    }
}
