//! The one HTTP error type. Its response is JSON [`ApiError`] and never leaks internals.

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use taskpulse_shared::dto::ApiError;

use crate::{
    accounts::AccountError,
    tasks::{ShareError, TaskError},
};

/// Everything a handler can fail with, mapped to a status and a message that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; `field` names the offending part when there is one.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The request field.
        field: Option<String>,
    },
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The owner's credits do not cover the task.
    #[error("{0}")]
    PaymentRequired(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The path names no resource (or one of another user).
    #[error("{0}")]
    NotFound(String),
    /// The resource's state does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the server accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A rate limit or quota was hit; `retry_after` says when trying again can succeed.
    #[error("{message}")]
    TooManyRequests {
        /// Which limit, naming its setting.
        message: String,
        /// The wait, for `Retry-After` (none for a quota that frees up when tasks end).
        retry_after: Option<std::time::Duration>,
    },
    /// The server cannot take this now (a capacity limit); trying later can succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The server is configured without this feature.
    #[error("{0}")]
    NotImplemented(String),
    /// Something failed inside; logged, and the client only learns that.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// A 400 naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> AppError {
        AppError::BadRequest { message: message.into(), field: Some(field.into()) }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(detail) => {
                tracing::error!("request failed: {detail}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let retry_after = match &self {
            AppError::TooManyRequests { retry_after, .. } => *retry_after,
            _ => None,
        };
        let body = Json(self.body());
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        if let Some(wait) = retry_after {
            // Whole seconds, rounded up: a client retrying then is allowed.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return (status, [(header::RETRY_AFTER, seconds.to_string())], body).into_response();
        }
        (status, body).into_response()
    }
}

impl AppError {
    /// The JSON body a client gets: the message and, for a bad request, the field.
    pub fn body(&self) -> ApiError {
        let field = match self {
            AppError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        ApiError { error: self.to_string(), field }
    }
}

impl From<TaskError> for AppError {
    fn from(error: TaskError) -> AppError {
        match error {
            TaskError::Invalid { field, .. } => AppError::field(field, error.to_string()),
            TaskError::NotFound(_) => AppError::NotFound(error.to_string()),
            TaskError::Conflict(message) => AppError::Conflict(message),
            TaskError::InsufficientCredits { .. } => AppError::PaymentRequired(error.to_string()),
            TaskError::Limited { retry_after, .. } => {
                AppError::TooManyRequests { message: error.to_string(), retry_after }
            }
            TaskError::ShuttingDown => AppError::Unavailable(error.to_string()),
            TaskError::Storage(e) => AppError::Internal(e.to_string()),
            TaskError::Elsewhere(failure) => {
                let message = failure.message;
                match failure.status {
                    400 => AppError::BadRequest { message, field: failure.field },
                    402 => AppError::PaymentRequired(message),
                    404 => AppError::NotFound(message),
                    409 => AppError::Conflict(message),
                    429 => AppError::TooManyRequests { message, retry_after: None },
                    503 => AppError::Unavailable(message),
                    _ => AppError::Internal(message),
                }
            }
        }
    }
}

impl From<ShareError> for AppError {
    fn from(error: ShareError) -> AppError {
        match error {
            ShareError::NoTask(_) | ShareError::NoLink(_) | ShareError::UnknownLink => {
                AppError::NotFound(error.to_string())
            }
            ShareError::Randomness(_) | ShareError::Storage(_) => {
                AppError::Internal(error.to_string())
            }
        }
    }
}

impl From<AccountError> for AppError {
    fn from(error: AccountError) -> AppError {
        match error {
            AccountError::Invalid { field, .. } => AppError::field(field, error.to_string()),
            AccountError::RegistrationClosed => AppError::Forbidden(error.to_string()),
            AccountError::ExternalTokens => AppError::NotImplemented(error.to_string()),
            AccountError::Busy => AppError::Unavailable(error.to_string()),
            AccountError::Taken(_) | AccountError::Reserved(_) => {
                AppError::Conflict(error.to_string())
            }
            AccountError::BadCredentials => AppError::Unauthorized(error.to_string()),
            AccountError::Limited { retry_after, .. } => AppError::TooManyRequests {
                message: error.to_string(),
                retry_after: Some(retry_after),
            },
            AccountError::NotRevocable => {
                AppError::BadRequest { message: error.to_string(), field: None }
            }
            AccountError::Internal(detail) => AppError::Internal(detail),
        }
    }
}
