//! The back office's pages (`/admin/*`): server-rendered frames in the visitor's language, filled
//! from `/api/admin/*` by `/assets/admin.js`. Anonymous visitors are sent to the login page; a
//! signed-in customer gets a 403 page.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::pages::{Chrome, private};
use super::session::CurrentUser;
use crate::accounts::ROLE_ADMIN;
use crate::i18n::Tr;
use crate::state::AppState;

#[derive(Template, WebTemplate)]
#[template(path = "forbidden.html")]
struct ForbiddenPage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_home.html")]
struct HomePage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_models.html")]
struct ModelsPage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_channels.html")]
struct ChannelsPage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_users.html")]
struct UsersPage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_user.html")]
struct UserPage {
    t: Tr,
    c: Chrome,
    user_id: i64,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_revenue.html")]
struct RevenuePage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_audit.html")]
struct AuditPage {
    t: Tr,
    c: Chrome,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_codes.html")]
struct CodesPage {
    t: Tr,
    c: Chrome,
}

/// Renders `page` for an administrator; anyone else signed in gets the 403 page.
fn for_admin(
    state: &AppState,
    me: &CurrentUser,
    headers: &HeaderMap,
    uri: &OriginalUri,
    current: &'static str,
    page: impl FnOnce(Tr, Chrome) -> Response,
) -> Response {
    let t = Tr::from_headers(headers);
    if me.user.role != ROLE_ADMIN {
        let c = Chrome::new(state, t, Some(&me.user), "", uri);
        return (StatusCode::FORBIDDEN, private(ForbiddenPage { t, c })).into_response();
    }
    let c = Chrome::new(state, t, Some(&me.user), current, uri);
    private(page(t, c))
}

/// `GET /admin`: today's and this month's figures, and the back office's sections.
pub async fn home(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin", |t, c| HomePage { t, c }.into_response())
}

/// `GET /admin/models`.
pub async fn models(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-models", |t, c| ModelsPage { t, c }.into_response())
}

/// `GET /admin/channels`: the upstream accounts, their health, keys (masked) and the test action.
pub async fn channels(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-channels", |t, c| ChannelsPage { t, c }.into_response())
}

/// `GET /admin/users`.
pub async fn users(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-users", |t, c| UsersPage { t, c }.into_response())
}

/// `GET /admin/users/{id}` (an id that names nobody shows the API's 404 on the page).
pub async fn user(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let Ok(user_id) = id.parse::<i64>() else {
        return (StatusCode::NOT_FOUND, "no such user").into_response();
    };
    for_admin(&state, &me, &headers, &uri, "admin-user", |t, c| UserPage { t, c, user_id }.into_response())
}

/// `GET /admin/revenue`.
pub async fn revenue(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-revenue", |t, c| RevenuePage { t, c }.into_response())
}

/// `GET /admin/audit`.
pub async fn audit(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-audit", |t, c| AuditPage { t, c }.into_response())
}

/// `GET /admin/codes`: create a batch of redemption codes (downloaded as CSV at once) and list
/// batches.
pub async fn codes(State(state): State<AppState>, me: CurrentUser, headers: HeaderMap, uri: OriginalUri) -> Response {
    for_admin(&state, &me, &headers, &uri, "admin-codes", |t, c| CodesPage { t, c }.into_response())
}
