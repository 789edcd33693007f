//! The one HTTP error type. Its response is JSON [`ApiError`] and never leaks internals.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use taskpulse_shared::dto::ApiError;

/// Everything a handler can fail with, mapped to a status and a message that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The path names no resource.
    #[error("{0}")]
    NotFound(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (status, Json(ApiError { error: self.to_string(), field: None })).into_response()
    }
}
