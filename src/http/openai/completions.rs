//! `POST /v1/completions`: OpenAI Completions (the shared edge is `http::calls`).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{Authenticated, Route};
use crate::gateway::protocol::Protocol;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    auth: Authenticated<Completions>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::http::calls::serve(&state, Protocol::Completions, auth, headers, body).await
}

pub struct Completions;
impl Route for Completions {
    const NAME: &'static str = "completions";
}
