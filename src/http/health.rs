//! Liveness and readiness probes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// 200 while the process serves requests.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long readiness waits for the database: a probe that gets no answer in time counts as
/// failed, and the load balancer must hear so before its own probe times out.
const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// 200 when the database answers, else 503: a load balancer stops sending traffic here.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let ready = tokio::time::timeout(READY_TIMEOUT, state.db.ping()).await.unwrap_or(false);
    if ready {
        (StatusCode::OK, Json(json!({ "status": "ready", "database": "ok" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "database": "unreachable" })))
    }
}
