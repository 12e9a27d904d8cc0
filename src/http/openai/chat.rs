//! `POST /v1/chat/completions`: OpenAI Chat Completions (the shared edge is `http::calls`).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{Authenticated, Route};
use crate::gateway::protocol::Protocol;
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    auth: Authenticated<ChatCompletions>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::http::calls::serve(&state, Protocol::Chat, auth, headers, body).await
}

pub struct ChatCompletions;
impl Route for ChatCompletions {
    const NAME: &'static str = "chat_completions";
}
