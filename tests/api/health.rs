//! Liveness, readiness and graceful shutdown.

use crate::helpers::{Backend, spawn_app};
use crate::on_all_backends;

async fn probes_report_health(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["database"], "ok");

    // With the database gone, readiness fails while liveness still answers.
    app.db.read.clone().close().await.unwrap();
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["database"], "unreachable");
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

on_all_backends!(probes_report_health);

#[tokio::test]
async fn shutdown_stops_the_server_cleanly() {
    let app = spawn_app(Backend::Sqlite).await;
    let address = app.address.clone();
    app.stop().await;
    assert!(reqwest::get(format!("{address}/healthz")).await.is_err(), "the listener must be closed after shutdown");
}
