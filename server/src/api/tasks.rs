//! `/api/tasks/**` and `/api/publish`.

use std::collections::HashMap;

use futures_util::future::Either;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use taskpulse_shared::{
    TaskProgressDto,
    dto::{
        ProgressReport, PublishOutcome, PublishRequest, Published, SubmitTaskRequest, TaskDetails,
        TaskEvents, TaskPage, TaskStatus, TaskSubmitted,
    },
};

use super::{Backend, Body, MaybeUser, User, field_of};
use crate::{
    AppError, AppState,
    broker::{Publication, RouteError},
    tasks::is_task_no,
};

fn task_no(raw: String) -> Result<String, AppError> {
    if is_task_no(&raw) { Ok(raw) } else { Err(AppError::NotFound(format!("no task {raw}"))) }
}

pub(super) async fn submit(
    State(state): State<AppState>,
    user: User,
    Body(request): Body<SubmitTaskRequest>,
) -> Result<(StatusCode, Json<TaskSubmitted>), AppError> {
    let task_no = state.tasks.submit(&user.name, request).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskSubmitted { task_no })))
}

pub(super) async fn list(
    State(state): State<AppState>,
    user: User,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<TaskPage>, AppError> {
    for key in query.keys() {
        if !["limit", "before", "status"].contains(&key.as_str()) {
            return Err(AppError::field(
                key,
                format!("unknown query parameter {key:?}; expected limit, before or status"),
            ));
        }
    }
    let limit = query
        .get("limit")
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| AppError::field("limit", "must be a number between 1 and 100"))
        })
        .transpose()?;
    let status = query
        .get("status")
        .map(|s| {
            s.parse::<TaskStatus>().map_err(|_| {
                AppError::field(
                    "status",
                    "must be created, queued, processing, completed or failed",
                )
            })
        })
        .transpose()?;
    let page = state
        .tasks
        .list(&user.name, query.get("before").map(String::as_str), status, limit)
        .await?;
    Ok(Json(page))
}

pub(super) async fn details(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskDetails>, AppError> {
    Ok(Json(state.tasks.details(&user.name, &task_no(raw)?).await?))
}

pub(super) async fn events(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskEvents>, AppError> {
    Ok(Json(state.tasks.events(&user.name, &task_no(raw)?).await?))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskDetails>, AppError> {
    Ok(Json(state.tasks.cancel(&user.name, &task_no(raw)?).await?))
}

pub(super) async fn report(
    State(state): State<AppState>,
    _backend: Backend,
    Path(raw): Path<String>,
    Body(report): Body<ProgressReport>,
) -> Result<Json<TaskProgressDto>, AppError> {
    Ok(Json(state.tasks.external_report(&task_no(raw)?, report).await?))
}

/// The result image: to its owner (Bearer), or to anyone holding a valid signed URL.
pub(super) async fn result(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let task_no = task_no(raw)?;
    let results = state.tasks.results();
    match (query.get("expires"), query.get("signature"), user) {
        (Some(expires), Some(signature), _) => {
            let expires =
                expires.parse().map_err(|_| AppError::field("expires", "must be a number"))?;
            results
                .verify(&task_no, expires, signature)
                .map_err(|e| AppError::Forbidden(e.to_string()))?;
        }
        (None, None, Some(user)) => {
            state.tasks.details(&user.name, &task_no).await?;
        }
        (None, None, None) => {
            return Err(AppError::Unauthorized(
                "send Authorization: Bearer <token>, or use the signed resultUrl".into(),
            ));
        }
        _ => {
            return Err(AppError::field(
                "signature",
                "a signed URL needs both expires and signature",
            ));
        }
    }
    let Some(bytes) =
        results.read(&task_no).await.map_err(|e| AppError::Internal(e.to_string()))?
    else {
        return Err(AppError::NotFound(format!("task {task_no} has no result")));
    };
    let content_type = if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(b"\xff\xd8") {
        "image/jpeg"
    } else if bytes.len() > 12 && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "private, max-age=3600")],
        bytes,
    )
        .into_response())
}

/// Items one batch `POST /api/publish` may carry.
pub(crate) const MAX_PUBLISH_BATCH: usize = 1_000;

/// A backend's notice for one user's or everyone's subscribers; or, when the body is a JSON
/// array of such objects (at most [`MAX_PUBLISH_BATCH`]), all of them, answered with one
/// result per item in the same order. A batch's notices share group commits, and one
/// user's are numbered in array order.
pub(super) async fn publish(
    State(state): State<AppState>,
    _backend: Backend,
    Body(body): Body<serde_json::Value>,
) -> Result<Response, AppError> {
    let serde_json::Value::Array(items) = body else {
        let request = parse_publish(body)?;
        let delivered = publish_one(&state, request).await?.await?;
        return Ok(Json(Published { delivered }).into_response());
    };
    if items.len() > MAX_PUBLISH_BATCH {
        return Err(AppError::PayloadTooLarge(format!(
            "a batch may carry at most {MAX_PUBLISH_BATCH} notices, not {}",
            items.len()
        )));
    }
    // Queue every item first, in order, then wait: they go into the same group commits.
    let mut queued = Vec::with_capacity(items.len());
    for item in items {
        let request = parse_publish(item);
        queued.push(match request {
            Ok(request) => publish_one(&state, request).await,
            Err(refusal) => Err(refusal),
        });
    }
    let mut outcomes = Vec::with_capacity(queued.len());
    for item in queued {
        let delivered = match item {
            Ok(pending) => pending.await,
            Err(refusal) => Err(refusal),
        };
        outcomes.push(match delivered {
            Ok(delivered) => PublishOutcome::Published(Published { delivered }),
            Err(refusal) => PublishOutcome::Refused(refusal.body()),
        });
    }
    Ok(Json(outcomes).into_response())
}

/// One publish object, with errors naming its field (in a batch, the result's position
/// says which item).
fn parse_publish(value: serde_json::Value) -> Result<PublishRequest, AppError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // A missing or unknown field has no path of its own: its name is in the message.
        let field = if path == "." { field_of(&inner, b"") } else { Some(path) };
        AppError::BadRequest { message: inner.to_string(), field }
    })
}

/// Checks one notice and hands it on: a user's to the log's group commit (the returned
/// future resolves after its commit), a broadcast to the broker at once.
async fn publish_one(
    state: &AppState,
    request: PublishRequest,
) -> Result<impl Future<Output = Result<usize, AppError>> + use<>, AppError> {
    let destination = &request.destination;
    if !(destination.starts_with("/topic/") || destination.starts_with("/queue/")) {
        return Err(AppError::field(
            "destination",
            format!(
                "{destination:?} must start with /topic/ or /queue/ (for a user, the part after /user)"
            ),
        ));
    }
    let body = serde_json::to_vec(&request.payload).expect("a JSON value serialises");
    let user = match &request.user {
        Some(user) if user.is_empty() || user.chars().any(char::is_control) => {
            return Err(AppError::field("user", "must be a user name"));
        }
        Some(user) => user,
        None => {
            let delivered = state.fanout.publish(destination, Publication::json(body)).map_err(
                |e| match e {
                    RouteError::Destination(_) => AppError::field("destination", e.to_string()),
                    other => AppError::Conflict(other.to_string()),
                },
            )?;
            return Ok(Either::Left(std::future::ready(Ok(delivered))));
        }
    };
    // Through the user's log: numbered, kept for replay and for the offline user.
    let stored = state
        .log
        .submit(user, destination, "application/json", body, None)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Either::Right(async move { stored.await.map_err(|e| AppError::Internal(e.to_string())) }))
}

/// Body of `POST /api/admin/disconnect`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Disconnect {
    user: String,
}

/// An operator closes every STOMP connection of a user (clients reconnect and resume).
pub(super) async fn disconnect(
    State(state): State<AppState>,
    _backend: Backend,
    Body(request): Body<Disconnect>,
) -> Json<serde_json::Value> {
    let closed = state.fanout.disconnect_user(&request.user, "disconnected by an operator");
    Json(serde_json::json!({ "closed": closed }))
}

/// What the server has seen since it started (the figures of `/metrics`, as JSON).
pub(super) async fn stats(
    State(state): State<AppState>,
    _backend: Backend,
) -> Json<crate::metrics::Stats> {
    Json(state.metrics.stats())
}
