//! Answers for requests no route takes (unknown paths, wrong methods), in the shape of the
//! surface they were sent to, and the headers every response carries.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::error::error_body;

/// The policy for our pages: scripts and styles only from our own files (no inline code), no
/// framing, forms only to us.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Which kind of client a path belongs to.
enum Surface {
    /// `/v1` and `/api/v1`: OpenAI clients.
    OpenAi,
    /// The rest of `/api`: the dashboard's and operators' JSON.
    Api,
    /// Everything else is read in a browser.
    Page,
}

fn surface(uri: &Uri) -> Surface {
    let path = uri.path();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    // Chat apps call `/dashboard/billing/…` without a prefix: it is OpenAI's surface too.
    if under("/v1") || under("/api/v1") || under("/dashboard/billing") {
        Surface::OpenAi
    } else if under("/api") {
        Surface::Api
    } else {
        Surface::Page
    }
}

fn answer(uri: &Uri, status: StatusCode, code: &str, message: &str, title: &str) -> Response {
    match surface(uri) {
        Surface::OpenAi | Surface::Api => {
            let mut body = error_body(message, "invalid_request_error", code);
            // OpenAI's own refusals of unknown paths carry `param` too.
            body["error"]["param"] = Value::Null;
            (status, Json(body)).into_response()
        }
        Surface::Page => {
            let body = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Tollgate</title>\
                 <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main><div class=\"card\">\
                 <h1>{title}</h1><p>{message}</p><p><a href=\"/\">Go to the dashboard</a></p></div></main></body></html>"
            );
            (status, Html(body)).into_response()
        }
    }
}

/// No route has this path.
pub async fn not_found(uri: Uri) -> Response {
    answer(&uri, StatusCode::NOT_FOUND, "request.not_found", "Not found: no such path.", "Not found")
}

/// The path exists but not with this method; axum adds the `Allow` header.
pub async fn method_not_allowed(uri: Uri) -> Response {
    answer(
        &uri,
        StatusCode::METHOD_NOT_ALLOWED,
        "request.method_not_allowed",
        "This method is not allowed here; the Allow header lists those that are.",
        "Method not allowed",
    )
}

/// `nosniff` on every response; on pages also the content security policy, no framing and no
/// referrer outside this site.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut res = next.run(request).await;
    let headers = res.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let html =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/html"));
    if html {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    }
    res
}
