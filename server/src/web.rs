//! HTTP routes: health, the STOMP WebSocket at `/ws`, the API namespace, and the
//! single-page UI with its fallback.

use axum::http::{HeaderName, HeaderValue, Request};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::Uri,
    response::{Html, IntoResponse, Response},
    routing::{any, get},
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    services::{ServeDir, ServeFile},
    trace::TraceLayer,
};

use taskpulse_shared::dto::ApiError;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppError, AppState};

/// The router for the whole server. No socket: tests may call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    let ui_dir = state.config.ui_dir.clone();
    let (documented, _) = documented().split_for_parts();
    let routes = documented
        .route("/ws", get(crate::transport::websocket::upgrade))
        .route("/ws/json", get(crate::transport::websocket::upgrade_json))
        .route("/api", get(unknown_api))
        .route("/api/{*rest}", get(unknown_api).post(unknown_api));
    let routes = if ui_dir.join("index.html").is_file() {
        // Unknown paths get index.html so that the single-page app can route them.
        let index = ServeFile::new(ui_dir.join("index.html"));
        let files = ServeDir::new(ui_dir).fallback(index);
        let files = tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn(reserved))
            .map_response(utf8_text)
            .service(files);
        routes.fallback_service(files)
    } else {
        routes.fallback(ui_missing)
    };
    let cors = cors(&state.config.settings.api.cors_origins);
    let body_limit = DefaultBodyLimit::max(state.config.settings.api.body_limit);
    let routes = routes.layer(body_limit).with_state(state.clone());
    let routes = match cors {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    // SockJS answers its own CORS (with credentials, as sockjs-client's XHRs send them).
    let routes = routes.merge(sockjs(state));
    // Every request gets an id (or keeps the one a proxy gave it in `x-request-id`), its
    // log lines carry it, and so does the answer.
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", id, method = %request.method(), path = request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(request_id, RequestIds::default()))
}

/// Request ids: this process's random prefix and a counter, unique across the servers
/// sharing a database.
#[derive(Debug, Clone)]
struct RequestIds {
    prefix: std::sync::Arc<str>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let prefix = crate::secret::random_hex(4).unwrap_or_else(|_| "0000".into());
        RequestIds { prefix: prefix.into(), next: Default::default() }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix)).ok().map(RequestId::new)
    }
}

/// SockJS under `/ws` (`transport::sockjs`).
fn sockjs(state: AppState) -> Router {
    use crate::transport::sockjs::{self, http};
    Router::new()
        .route("/ws/info", get(sockjs::info).options(sockjs::info_options))
        .route("/ws/iframe.html", get(sockjs::iframe))
        .route("/ws/websocket", get(sockjs::raw_websocket))
        .route("/ws/{server}/{session}/websocket", get(sockjs::websocket))
        .route("/ws/{server}/{session}/{transport}", any(http::transport))
        .with_state(state)
}

/// Text files of the UI directory are UTF-8: say so, so that a page without a `<meta
/// charset>` (the seed's plain-HTML monitor) is not read as Windows-1252.
fn utf8_text<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    use axum::http::{HeaderValue, header};
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let plain = content_type
        .and_then(|v| v.to_str().ok())
        .filter(|v| matches!(*v, "text/html" | "text/css" | "text/plain" | "text/javascript"));
    if let Some(mime) = plain {
        if let Ok(value) = HeaderValue::from_str(&format!("{mime}; charset=utf-8")) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
    }
    response
}

/// CORS for pages served elsewhere (a dev server, another app) that call the API; none
/// when no origin is configured. Tokens travel in headers, so credentials stay off.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Every HTTP endpoint with its OpenAPI operation: the API's and the operational ones (the
/// WebSocket and SockJS endpoints are protocols, described in the README, not here).
fn documented() -> OpenApiRouter<AppState> {
    crate::api::routes()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(crate::transport::sse::tasks))
        .routes(routes!(crate::transport::sse::share))
        .routes(routes!(openapi_json))
}

/// The OpenAPI 3.1 document of [`documented`], built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::LazyLock<utoipa::openapi::OpenApi> =
        std::sync::LazyLock::new(|| documented().into_openapi());
    &DOCUMENT
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// The `/healthz` document: the server answers and which version it is.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

async fn unknown_api(uri: Uri) -> AppError {
    AppError::NotFound(format!("no API endpoint at {}", uri.path()))
}

/// Path prefixes of the server's own endpoints: an unknown path under one answers 404 JSON,
/// never the UI's `index.html`.
const RESERVED: [&str; 6] = ["/api", "/ws", "/sse", "/metrics", "/healthz", "/readyz"];

/// The 404 for `path` if it is under a reserved prefix (whole segments only).
fn reserved_path(path: &str) -> Option<AppError> {
    let under = |prefix: &&str| {
        path.strip_prefix(*prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    RESERVED.iter().any(under).then(|| AppError::NotFound(format!("no endpoint at {path}")))
}

/// In front of the UI's files: the server's reserved paths are not the UI's.
async fn reserved(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match reserved_path(request.uri().path()) {
        Some(not_found) => not_found.into_response(),
        None => next.run(request).await,
    }
}

/// `GET /metrics`: every figure in the Prometheus text format; with `[metrics] token` set,
/// only for `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("metricsToken" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "[metrics] token is set and was not given", body = ApiError),
        (status = 404, description = "[metrics] enabled = false", body = ApiError),
    ))]
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    use axum::http::header;
    let settings = &state.config.settings.metrics;
    if !settings.enabled {
        return AppError::NotFound("metrics are off ([metrics] enabled = false)".into())
            .into_response();
    }
    if !settings.token.is_empty() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !crate::secret::constant_time_eq(given.as_bytes(), settings.token.as_bytes()) {
            let why = "GET /metrics needs Authorization: Bearer with the [metrics] token";
            let mut refused = AppError::Unauthorized(why.into()).into_response();
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return refused;
        }
    }
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    ([(header::CONTENT_TYPE, content_type)], state.metrics.prometheus()).into_response()
}

/// How long `/readyz` waits for the database.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The `/readyz` document.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready` or `not ready`.
    status: &'static str,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `GET /readyz`: 200 `{"status":"ready"}` when the database answers within 2 s (and,
/// clustered, the bus is connected); 503 `{"status":"not ready","reason"}` otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: the database answers (and, clustered, the bus is connected)", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    use axum::http::StatusCode;
    let answered = tokio::time::timeout(READY_WITHIN, state.storage.epoch()).await;
    let reason = match answered {
        Ok(Ok(_)) if state.bus.as_ref().is_some_and(|bus| !bus.connected()) => {
            "bus: the connection to Redis (cluster.redis_url) is down".to_owned()
        }
        Ok(Ok(_)) => return Json(Readiness { status: "ready", reason: None }).into_response(),
        Ok(Err(e)) => format!("storage: {e}"),
        Err(_) => format!("storage: no answer within {} s", READY_WITHIN.as_secs()),
    };
    let body = Json(Readiness { status: "not ready", reason: Some(reason) });
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn ui_missing(State(state): State<AppState>, uri: Uri) -> Response {
    if let Some(not_found) = reserved_path(uri.path()) {
        return not_found.into_response();
    }
    let dir = state.config.ui_dir.display();
    Html(format!(
        "<!doctype html><title>TaskPulse</title><h1>TaskPulse</h1>\
         <p>The server is running, but the web UI was not found in <code>{dir}</code>.\
         Build it with <code>cargo xtask run</code>, or pass <code>--ui-dir</code>.</p>"
    ))
    .into_response()
}
