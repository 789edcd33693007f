//! `/api/auth/*` and `/api/me`.

use std::net::SocketAddr;

use axum::{
    Extension, Json,
    extract::{ConnectInfo, State},
    http::StatusCode,
};
use taskpulse_shared::dto::{Credentials, Me, TokenResponse};

use super::{Body, User};
use crate::{AppError, AppState};

/// The caller's address, when the server was started with connect info (tests calling the
/// router directly have none).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn address(peer: Peer) -> Option<std::net::IpAddr> {
    peer.map(|Extension(ConnectInfo(addr))| addr.ip())
}

pub(super) async fn register(
    State(state): State<AppState>,
    peer: Peer,
    Body(credentials): Body<Credentials>,
) -> Result<(StatusCode, Json<TokenResponse>), AppError> {
    let token = state.accounts.register(credentials, address(peer)).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub(super) async fn login(
    State(state): State<AppState>,
    peer: Peer,
    Body(credentials): Body<Credentials>,
) -> Result<Json<TokenResponse>, AppError> {
    Ok(Json(state.accounts.login(credentials, address(peer)).await?))
}

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
pub(super) async fn ticket(
    State(state): State<AppState>,
    user: User,
) -> Result<Json<crate::transport::sse::Ticket>, AppError> {
    let (ticket, expires_in) =
        state.passes.ticket(&user.name, user.claims.jti.as_deref(), user.claims.exp)?;
    Ok(Json(crate::transport::sse::Ticket { ticket, expires_in }))
}

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
    Ok(Json(Me { username: user.name, credits }))
}
