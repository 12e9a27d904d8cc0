//! `POST /v1/embeddings`: OpenAI Embeddings (the shared edge is `http::calls`).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{Authenticated, Route};
use crate::gateway::protocol::Protocol;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    auth: Authenticated<Embeddings>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::http::calls::serve(&state, Protocol::Embeddings, auth, headers, body).await
}

pub struct Embeddings;
impl Route for Embeddings {
    const NAME: &'static str = "embeddings";
}
