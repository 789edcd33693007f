//! HTTP routes: health, the STOMP WebSocket at `/ws`, the API namespace, and the
//! single-page UI with its fallback.

use axum::{
    Json, Router,
    extract::State,
    http::Uri,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tower_http::services::{ServeDir, ServeFile};

use crate::{AppError, AppState};

/// The router for the whole server. No socket: tests may call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    let ui_dir = state.config.ui_dir.clone();
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/ws", get(crate::ws::upgrade))
        .merge(crate::api::routes())
        .route("/api", get(unknown_api))
        .route("/api/{*rest}", get(unknown_api).post(unknown_api));
    let routes = if ui_dir.join("index.html").is_file() {
        // Unknown paths get index.html so that the single-page app can route them.
        let index = ServeFile::new(ui_dir.join("index.html"));
        routes.fallback_service(ServeDir::new(ui_dir).fallback(index))
    } else {
        routes.fallback(ui_missing)
    };
    routes.with_state(state)
}

/// The `/healthz` document: the server answers and which version it is.
#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

async fn unknown_api(uri: Uri) -> AppError {
    AppError::NotFound(format!("no API endpoint at {}", uri.path()))
}

async fn ui_missing(State(state): State<AppState>) -> Response {
    let dir = state.config.ui_dir.display();
    Html(format!(
        "<!doctype html><title>TaskPulse</title><h1>TaskPulse</h1>\
         <p>The server is running, but the web UI was not found in <code>{dir}</code>.\
         Build it with <code>cargo xtask run</code>, or pass <code>--ui-dir</code>.</p>"
    ))
    .into_response()
}
