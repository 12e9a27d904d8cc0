//! Cookie-authenticated requests: the signed-in user extractor, the cross-site request check,
//! and the rules for `next=` redirects.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sea_orm::EntityTrait;
use tower_sessions::Session;

use super::ApiError;
use crate::auth::sessions::{SIGNED_IN_AT, USER_ID};
use crate::clock::now_ms;
use crate::db::entities::users;
use crate::error::Error;
use crate::state::AppState;

/// The signed-in user. API routes reject with 401 JSON; pages redirect to the login page.
pub struct CurrentUser {
    pub user: users::Model,
    pub session: Session,
}

fn path_and_query(parts: &Parts) -> String {
    parts.uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let api = parts.uri.path().starts_with("/api/");
        let here = path_and_query(parts);
        let deny = move || {
            if api {
                ApiError(Error::Unauthorized("sign in first".into())).into_response()
            } else {
                Redirect::to(&format!("/login?next={}", urlencoding(&here))).into_response()
            }
        };
        let session = Session::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let user_id: Option<i64> = session.get(USER_ID).await.ok().flatten();
        let signed_in_at: Option<i64> = session.get(SIGNED_IN_AT).await.ok().flatten();
        let Some(user_id) = user_id else { return Err(deny()) };
        let max_age = i64::try_from(state.config.session_max_age.as_millis()).unwrap_or(i64::MAX);
        if signed_in_at.is_none_or(|t| now_ms().saturating_sub(t) > max_age) {
            let _ = session.flush().await;
            return Err(deny());
        }
        let user = users::Entity::find_by_id(user_id)
            .one(&state.db.read)
            .await
            .map_err(|e| ApiError(Error::Database(e)).into_response())?;
        match user {
            Some(user) if !user.disabled => Ok(Self { user, session }),
            _ => {
                let _ = session.flush().await;
                Err(deny())
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn urlencoding(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

/// A `next=` target we are willing to redirect to: a path on this site, nothing else.
pub fn safe_next(raw: Option<&str>) -> String {
    let fallback = "/dashboard".to_owned();
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else { return fallback };
    let same_origin_path = raw.starts_with('/')
        && !raw.starts_with("//")
        && !raw.starts_with("/\\")
        && !raw.chars().any(|c| c.is_control() || c == '\\')
        && raw.len() <= 512;
    if same_origin_path { raw.to_owned() } else { fallback }
}

/// Refuses state-changing requests that a browser made on behalf of another site: the
/// `Sec-Fetch-Site` header when the browser sends it, else `Origin` must be this site.
/// Requests with neither (not from a browser) pass.
pub async fn reject_cross_site(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let allowed = match fetch_site {
        Some(site) => matches!(site, "same-origin" | "none"),
        None => match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(origin) => {
                let ours = state.public_url.origin().ascii_serialization();
                let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
                origin == ours || (!host.is_empty() && origin_host == host)
            }
        },
    };
    if allowed {
        next.run(request).await
    } else {
        refusal(StatusCode::FORBIDDEN, "permission_error", "auth.cross_site", "cross-site request refused")
    }
}

/// A refusal in our JSON shape, `{"error": {"message", "type", "code"}}`.
pub fn refusal(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (status, axum::Json(crate::error::error_body(message, kind, code))).into_response()
}

/// Longest plain-text refusal carried over into JSON; extractor messages are far shorter.
const PLAIN_LIMIT: usize = 16 * 1024;

/// Under `/api`, turns a plain-text refusal (what axum's and tower-sessions' extractors answer
/// when a path, query or body cannot be read) into our JSON shape, keeping status and message.
/// Handlers that know better answer for themselves; this is the net under them.
pub async fn json_refusals(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let res = next.run(request).await;
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    let status = res.status();
    if !api || !plain || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), PLAIN_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let (kind, code) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_request_error", "request.unsupported_media_type"),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "request.too_large"),
        s if s.is_server_error() => ("server_error", "internal"),
        _ => ("invalid_request_error", "request.invalid"),
    };
    let message = if status.is_server_error() || text.trim().is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    refusal(status, kind, code, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_only_goes_to_paths_on_this_site() {
        assert_eq!(safe_next(Some("/dashboard/keys?x=1")), "/dashboard/keys?x=1");
        for bad in
            ["https://evil.example", "//evil.example", "/\\evil.example", "javascript:alert(1)", "dashboard", "/a\nb"]
        {
            assert_eq!(safe_next(Some(bad)), "/dashboard", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/dashboard");
    }
}
