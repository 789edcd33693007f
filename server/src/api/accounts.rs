//! `/api/auth/*` and `/api/me`.

use std::net::SocketAddr;

use axum::{
    Extension, Json,
    extract::{ConnectInfo, State},
    http::StatusCode,
};
use taskpulse_shared::dto::{ApiError, Credentials, Me, TokenResponse};

use super::{Body, User};
use crate::{AppError, AppState};

/// The caller's address, when the server was started with connect info (tests calling the
/// router directly have none).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn address(peer: Peer) -> Option<std::net::IpAddr> {
    peer.map(|Extension(ConnectInfo(addr))| addr.ip())
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/api/auth/register", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "Registered and signed in", body = TokenResponse),
        (status = 400, description = "A field is invalid", body = ApiError),
        (status = 403, description = "Registration is off (accounts.registration)", body = ApiError),
        (status = 409, description = "The name is taken", body = ApiError),
        (status = 429, description = "Too many attempts (accounts.attempts_per_minute)", body = ApiError),
        (status = 501, description = "Tokens come from another system (RS256/ES256)", body = ApiError),
    ))]
pub(super) async fn register(
    State(state): State<AppState>,
    peer: Peer,
    Body(credentials): Body<Credentials>,
) -> Result<(StatusCode, Json<TokenResponse>), AppError> {
    let token = state.accounts.register(credentials, address(peer)).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Signs in with a name and password (argon2id).
#[utoipa::path(post, path = "/api/auth/login", tag = "accounts", request_body = Credentials,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Wrong name or password", body = ApiError),
        (status = 429, description = "Too many attempts (accounts.attempts_per_minute)", body = ApiError),
        (status = 501, description = "Tokens come from another system (RS256/ES256)", body = ApiError),
    ))]
pub(super) async fn login(
    State(state): State<AppState>,
    peer: Peer,
    Body(credentials): Body<Credentials>,
) -> Result<Json<TokenResponse>, AppError> {
    Ok(Json(state.accounts.login(credentials, address(peer)).await?))
}

/// Revokes the token (kept across restarts); its connections get ERROR `token revoked`.
#[utoipa::path(post, path = "/api/auth/logout", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid token", body = ApiError),
    ))]
pub(super) async fn logout(
    State(state): State<AppState>,
    user: User,
) -> Result<StatusCode, AppError> {
    let closed = state.accounts.logout(&user.claims).await?;
    tracing::info!(user = %user.name, closed, "signed out");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/auth/ticket`: a short-lived, single-use ticket for `GET /sse/tasks`, whose
/// `EventSource` cannot send the token in a header.
/// A single-use ticket (30 s) for `GET /sse/tasks?ticket=`, since `EventSource` cannot send
/// headers.
#[utoipa::path(post, path = "/api/auth/ticket", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, description = "A ticket", body = crate::transport::sse::Ticket),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 503, description = "Too many tickets and streams (limits.max_connections)", body = ApiError),
    ))]
pub(super) async fn ticket(
    State(state): State<AppState>,
    user: User,
) -> Result<Json<crate::transport::sse::Ticket>, AppError> {
    let (ticket, expires_in) =
        state.passes.ticket(&user.name, user.claims.jti.as_deref(), user.claims.exp)?;
    Ok(Json(crate::transport::sse::Ticket { ticket, expires_in }))
}

/// The signed-in user, and the credit balance when credits are on.
#[utoipa::path(get, path = "/api/me", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = Me),
        (status = 401, description = "No valid token", body = ApiError),
    ))]
pub(super) async fn me(State(state): State<AppState>, user: User) -> Result<Json<Me>, AppError> {
    let credits = if state.config.settings.credits.enabled {
        let record = state
            .tasks
            .storage()
            .user(&user.name)
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
        // A user from an external token system has no account here, hence no credits.
        Some(record.map_or(0, |r| r.credits))
    } else {
        None
    };
    let operator = super::is_operator(&state, &user.name).await?;
    Ok(Json(Me { username: user.name, credits, operator }))
}
