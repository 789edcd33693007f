//! The REST API under `/api`: accounts, tasks, and the endpoints other backends call.
//! Handlers are thin: they authenticate, parse, call the task service or accounts, and map
//! errors to [`AppError`].

mod accounts;
mod tasks;

pub(crate) use tasks::missing_token;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;
use taskpulse_shared::dto::ApiError;
use utoipa::{Modify, OpenApi, openapi::security::SecurityScheme};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppError, AppState, broker::Claims, secret::constant_time_eq};

/// The routes under `/api`, each with its OpenAPI operation (`#[utoipa::path]` on the
/// handler names the path both the router and the document use).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::ticket))
        .routes(routes!(accounts::me))
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::details))
        .routes(routes!(tasks::events))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::share, tasks::unshare))
        .routes(routes!(tasks::shared))
        .routes(routes!(tasks::report))
        .routes(routes!(tasks::result))
        .routes(routes!(tasks::publish))
        .routes(routes!(tasks::disconnect))
        .routes(routes!(tasks::stats))
}

/// The document's frame: what the API is, its tags and its security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "TaskPulse",
        description = "Tasks and their live progress. Updates are pushed over STOMP at /ws \
                       (also SockJS, the JSON protocol at /ws/json, and SSE at /sse/tasks); \
                       this document covers the HTTP endpoints. Every error answer is an \
                       `ApiError`."
    ),
    modifiers(&Security),
    components(schemas(ApiError)),
    tags(
        (name = "accounts", description = "Registration, sign-in, tokens"),
        (name = "tasks", description = "The caller's tasks"),
        (name = "backends", description = "Other services pushing progress and notices (X-API-Key)"),
        (name = "operations", description = "Health, readiness, metrics, operator actions"),
        (name = "live", description = "Server-Sent Events"),
    )
)]
struct ApiDoc;

/// The security schemes operations refer to.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A token from /api/auth/register or /api/auth/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "One of [api] keys",
            ))),
        );
        components.add_security_scheme(
            "metricsToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The [metrics] token, when one is set"))
                    .build(),
            ),
        );
    }
}

/// The caller, from `Authorization: Bearer <token>`.
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) claims: Claims,
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

impl FromRequestParts<AppState> for User {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<User, AppError> {
        let token = bearer(parts).ok_or_else(|| {
            AppError::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
        match state.broker.authenticator().validate_claims(token) {
            Ok(claims) => Ok(User { name: claims.sub.clone(), claims }),
            Err(reason) => {
                tracing::debug!(%reason, "HTTP authentication failed");
                Err(AppError::Unauthorized("invalid, expired or revoked token".into()))
            }
        }
    }
}

/// The caller, when it authenticated at all (for result downloads with a signed URL).
pub(crate) struct MaybeUser(pub(crate) Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<MaybeUser, AppError> {
        if bearer(parts).is_none() {
            return Ok(MaybeUser(None));
        }
        User::from_request_parts(parts, state).await.map(|u| MaybeUser(Some(u)))
    }
}

/// A backend holding one of the configured `X-API-Key`s.
pub(crate) struct Backend;

impl FromRequestParts<AppState> for Backend {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Backend, AppError> {
        let keys = &state.config.settings.api.keys;
        if keys.is_empty() {
            return Err(AppError::Forbidden(
                "this endpoint is disabled: no API keys are configured ([api] keys)".into(),
            ));
        }
        let given = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| AppError::Unauthorized("missing X-API-Key header".into()))?;
        if keys.iter().any(|k| constant_time_eq(k.as_bytes(), given.as_bytes())) {
            Ok(Backend)
        } else {
            Err(AppError::Unauthorized("invalid API key".into()))
        }
    }
}

/// An operator: a backend with an `X-API-Key`, or a principal of `[auth] operators` with its
/// token.
pub(crate) struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, AppError> {
        if parts.headers.contains_key("x-api-key") {
            return Backend::from_request_parts(parts, state).await.map(|Backend| Operator);
        }
        let user = User::from_request_parts(parts, state).await.map_err(|_| {
            AppError::Unauthorized(
                "send an operator's Authorization: Bearer <token>, or an X-API-Key".into(),
            )
        })?;
        if is_operator(state, &user.name).await? {
            Ok(Operator)
        } else {
            Err(AppError::Forbidden(format!("{} is not an operator ([auth] operators)", user.name)))
        }
    }
}

/// Whether `name` has the operator role: it is in `[auth] operators`, and no registered
/// account has that name (one registered before the name was configured is not the
/// configured operator).
pub(crate) async fn is_operator(state: &AppState, name: &str) -> Result<bool, AppError> {
    if !state.config.settings.auth.operators.iter().any(|o| o == name) {
        return Ok(false);
    }
    let account =
        state.tasks.storage().user(name).await.map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(account.is_none())
}

/// A JSON body whose errors name the offending field.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Body<T>, AppError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().ends_with("json")));
        if !json {
            return Err(AppError::UnsupportedMediaType(
                "the body must be JSON with Content-Type: application/json".into(),
            ));
        }
        let limit = state.config.settings.api.body_limit;
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge(format!(
                    "the body is larger than {limit} bytes (api.body_limit)"
                ))
            } else {
                AppError::BadRequest { message: format!("cannot read the body: {e}"), field: None }
            }
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(value) => Ok(Body(value)),
            Err(error) => {
                let path = error.path().to_string();
                let inner = error.into_inner();
                let field = (path != ".").then_some(path).or_else(|| field_of(&inner, &bytes));
                Err(AppError::BadRequest { message: format!("invalid JSON body: {inner}"), field })
            }
        }
    }
}

/// The field an error is about when serde could not say (a missing field is reported at the
/// parent, and an internally tagged enum such as `SubmitTaskRequest` buffers its content, which
/// loses the path): the name in "missing/unknown field `x`", or the top-level key whose string
/// value is the "unknown variant `v`".
pub(super) fn field_of(error: &serde_json::Error, body: &[u8]) -> Option<String> {
    let message = error.to_string();
    let quoted = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        Some(rest[..rest.find('`')?].to_owned())
    };
    if let Some(name) = quoted("missing field `").or_else(|| quoted("unknown field `")) {
        return Some(name);
    }
    let variant = quoted("unknown variant `")?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    object.into_iter().find(|(_, v)| v.as_str() == Some(&variant)).map(|(k, _)| k)
}
