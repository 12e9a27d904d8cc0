//! The back office's JSON API under `/api/admin` (session cookie, role `admin`): the route
//! table, the `AdminUser` extractor every handler takes, and the JSON shapes they share.
//! Amounts are decimal strings, times RFC 3339, keys camelCase.

mod catalogue;
mod channels;
mod codes;
mod people;
mod reports;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use serde_json::{Value, json};

use super::ApiError;
use super::session::CurrentUser;
use crate::accounts::ROLE_ADMIN;
use crate::admin::Page;
use crate::audit::Actor;
use crate::db::entities::users;
use crate::error::Error;
use crate::state::AppState;

/// A signed-in admin. Anonymous callers get 401, signed-in non-admins 403, on every route that
/// takes it; the role is read from the database on each request.
pub struct AdminUser {
    pub user: users::Model,
    /// The admin and the client address of this request, for the audit log.
    pub actor: Actor,
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let current = CurrentUser::from_request_parts(parts, state).await?;
        if current.user.role != ROLE_ADMIN {
            return Err(ApiError(Error::Forbidden("this needs an administrator".into())).into_response());
        }
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| {
            super::client_ip::client_ip(peer.ip(), &parts.headers, &state.config.trusted_proxies).to_string()
        });
        Ok(Self { actor: Actor::admin(current.user.id, ip), user: current.user })
    }
}

/// Every admin route: method, path, handler. The router is built from this table and the
/// access-control test walks it, so a route cannot be added without being checked.
fn table() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("GET", "/api/admin/models", get(catalogue::list)),
        ("POST", "/api/admin/models", post(catalogue::create)),
        ("PATCH", "/api/admin/models/{id}", patch(catalogue::update)),
        ("DELETE", "/api/admin/models/{id}", delete(catalogue::remove)),
        ("GET", "/api/admin/users", get(people::list)),
        ("GET", "/api/admin/users/{id}", get(people::detail)),
        ("PATCH", "/api/admin/users/{id}", patch(people::update)),
        ("POST", "/api/admin/users/{id}/balance", post(people::balance)),
        ("POST", "/api/admin/users/{id}/subscriptions", post(people::grant)),
        ("POST", "/api/admin/subscriptions/{id}/renew", post(people::renew)),
        ("GET", "/api/admin/keys", get(people::keys)),
        ("DELETE", "/api/admin/keys/{id}", delete(people::revoke_key)),
        ("PATCH", "/api/admin/keys/{id}", patch(people::update_key)),
        ("GET", "/api/admin/audit-logs", get(reports::audit_logs)),
        ("GET", "/api/admin/revenue", get(reports::revenue)),
        ("GET", "/api/admin/redemption-codes", get(codes::list)),
        ("POST", "/api/admin/redemption-codes", post(codes::create)),
        ("GET", "/api/admin/channels", get(channels::list)),
        ("POST", "/api/admin/channels", post(channels::create)),
        ("PATCH", "/api/admin/channels/{id}", patch(channels::update)),
        ("DELETE", "/api/admin/channels/{id}", delete(channels::remove)),
        ("POST", "/api/admin/channels/{id}/test", post(channels::test)),
    ]
}

/// The admin routes, to be merged under the session layer.
pub fn routes() -> Router<AppState> {
    table().into_iter().fold(Router::new(), |router, (_, path, handler)| router.route(path, handler))
}

/// `(method, path)` of every admin route.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(method, path, _)| (method, path)).collect()
}

/// An id from the path; anything that is not one names nothing (404).
fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError(Error::NotFound(format!("no {what} with id {raw}"))))
}

/// A list answer: one page of rows and where it sits.
fn page_json<T>(page: &Page<T>, row: impl Fn(&T) -> Value) -> Value {
    json!({
        "data": page.rows.iter().map(row).collect::<Vec<_>>(),
        "page": page.paging.page,
        "pageSize": page.paging.page_size,
        "total": page.total,
    })
}

/// A query string that could not be read: a 400 in our shape.
fn bad_query(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError(Error::BadRequest(e.body_text()))
}
