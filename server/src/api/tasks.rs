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
        ApiError, ProgressReport, PublishOutcome, PublishRequest, Published, ShareLink,
        SubmitTaskRequest, TaskDetails, TaskEvents, TaskPage, TaskStatus, TaskSubmitted,
    },
};

use super::{Backend, Body, MaybeUser, Operator, User, field_of};
use crate::{
    AppError, AppState,
    broker::{Publication, RouteError, Routed},
    tasks::is_task_no,
};

fn task_no(raw: String) -> Result<String, AppError> {
    if is_task_no(&raw) { Ok(raw) } else { Err(AppError::NotFound(format!("no task {raw}"))) }
}

/// Submits a task; its updates go to the owner's `/user/queue/tasks-progress`.
#[utoipa::path(post, path = "/api/tasks", tag = "tasks", security(("bearer" = [])),
    request_body = SubmitTaskRequest,
    responses(
        (status = 202, description = "Accepted: stored as `created` and queued", body = TaskSubmitted),
        (status = 400, description = "A field is invalid (named in `field`)", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 402, description = "Not enough credits", body = ApiError),
        (status = 413, description = "Body larger than api.body_limit", body = ApiError),
        (status = 429, description = "tasks.max_active_per_user or tasks.submissions_per_minute", body = ApiError),
        (status = 503, description = "The server is shutting down", body = ApiError),
    ))]
pub(super) async fn submit(
    State(state): State<AppState>,
    user: User,
    Body(request): Body<SubmitTaskRequest>,
) -> Result<(StatusCode, Json<TaskSubmitted>), AppError> {
    let task_no = state.tasks.submit(&user.name, request).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskSubmitted { task_no })))
}

/// The caller's tasks, newest first, a page at a time.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1-100 (tasks.page_size by default)"),
        ("before" = Option<String>, Query, description = "A page's `nextCursor`: the next older page"),
        ("status" = Option<TaskStatus>, Query, description = "Only tasks in this status"),
    ),
    responses(
        (status = 200, description = "A page", body = TaskPage),
        (status = 400, description = "A bad or unknown query parameter", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
    ))]
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
    let mut page = state
        .tasks
        .list(&user.name, query.get("before").map(String::as_str), status, limit)
        .await?;
    page.tasks.iter_mut().for_each(|details| state.shares.mark(details));
    Ok(Json(page))
}

/// One of the caller's tasks (404 for another user's, never 403).
#[utoipa::path(get, path = "/api/tasks/{taskNo}", tag = "tasks", security(("bearer" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    responses(
        (status = 200, description = "The task", body = TaskDetails),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such task of the caller's", body = ApiError),
    ))]
pub(super) async fn details(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskDetails>, AppError> {
    let mut details = state.tasks.details(&user.name, &task_no(raw)?).await?;
    state.shares.mark(&mut details);
    Ok(Json(details))
}

/// Every update pushed for the task, kept for tasks.events_retention_s.
#[utoipa::path(get, path = "/api/tasks/{taskNo}/events", tag = "tasks", security(("bearer" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    responses(
        (status = 200, description = "Its history; `pruned` when older updates were deleted", body = TaskEvents),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such task of the caller's", body = ApiError),
    ))]
pub(super) async fn events(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskEvents>, AppError> {
    Ok(Json(state.tasks.events(&user.name, &task_no(raw)?).await?))
}

/// A read-only link to the task: whoever holds it watches this one task live, without an
/// account. A task has one link; a new one replaces it.
#[utoipa::path(post, path = "/api/tasks/{taskNo}/share", tag = "tasks", security(("bearer" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    responses(
        (status = 201, description = "The link (its token is shown only now); the task's earlier link stops working", body = ShareLink),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such task of the caller's", body = ApiError),
    ))]
pub(super) async fn share(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<ShareLink>), AppError> {
    Ok((StatusCode::CREATED, Json(state.shares.create(&user.name, &task_no(raw)?).await?)))
}

/// Revokes the task's link: it stops working and its watchers are disconnected.
#[utoipa::path(delete, path = "/api/tasks/{taskNo}/share", tag = "tasks", security(("bearer" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such task of the caller's, or it has no link", body = ApiError),
    ))]
pub(super) async fn unshare(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<StatusCode, AppError> {
    state.shares.revoke(&user.name, &task_no(raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /api/shared`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(super) struct SharedQuery {
    /// The share link's token.
    token: Option<String>,
}

/// The answer to a share link's endpoint called without its token.
pub(crate) fn missing_token() -> AppError {
    AppError::field("token", "the share link's token is missing (?token=...)")
}

/// The task a share link shows, now (its live updates: STOMP with the CONNECT header
/// `share`, or `GET /sse/share`). No account needed.
#[utoipa::path(get, path = "/api/shared", tag = "tasks", security(()),
    params(SharedQuery),
    responses(
        (status = 200, description = "The task's current state", body = TaskProgressDto),
        (status = 400, description = "No token", body = ApiError),
        (status = 404, description = "No link has this token (revoked, replaced or never made)", body = ApiError),
    ))]
pub(super) async fn shared(
    State(state): State<AppState>,
    Query(query): Query<SharedQuery>,
) -> Result<Json<TaskProgressDto>, AppError> {
    let token = query.token.ok_or_else(missing_token)?;
    Ok(Json(state.shares.task(&token).await?))
}

/// Ends the task `failed` / `cancelled`, stops its executor, refunds its credits.
#[utoipa::path(post, path = "/api/tasks/{taskNo}/cancel", tag = "tasks", security(("bearer" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    responses(
        (status = 200, description = "Cancelled", body = TaskDetails),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 404, description = "No such task of the caller's", body = ApiError),
        (status = 409, description = "It already ended", body = ApiError),
    ))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Json<TaskDetails>, AppError> {
    Ok(Json(state.tasks.cancel(&user.name, &task_no(raw)?).await?))
}

/// An external worker's report on an `external` task.
#[utoipa::path(post, path = "/api/tasks/{taskNo}/progress", tag = "backends", security(("apiKey" = [])),
    params(("taskNo" = String, Path, description = "The task's number (32 hex digits)")),
    request_body = ProgressReport,
    responses(
        (status = 200, description = "The task's new state, pushed to its owner", body = TaskProgressDto),
        (status = 400, description = "A field is invalid", body = ApiError),
        (status = 401, description = "No or a wrong X-API-Key", body = ApiError),
        (status = 403, description = "No API keys are configured ([api] keys)", body = ApiError),
        (status = 404, description = "No such task", body = ApiError),
        (status = 409, description = "Not an external task, or it already ended", body = ApiError),
    ))]
pub(super) async fn report(
    State(state): State<AppState>,
    _backend: Backend,
    Path(raw): Path<String>,
    Body(report): Body<ProgressReport>,
) -> Result<Json<TaskProgressDto>, AppError> {
    Ok(Json(state.tasks.external_report(&task_no(raw)?, report).await?))
}

/// The result image: to its owner (Bearer), or to anyone holding a valid signed URL.
/// The task's result image: to its owner, or to anyone holding its signed `resultUrl`.
#[utoipa::path(get, path = "/api/tasks/{taskNo}/result", tag = "tasks", security((), ("bearer" = [])),
    params(
        ("taskNo" = String, Path, description = "The task's number (32 hex digits)"),
        ("expires" = Option<i64>, Query, description = "From the signed resultUrl"),
        ("signature" = Option<String>, Query, description = "From the signed resultUrl"),
    ),
    responses(
        (status = 200, description = "The image", content_type = "image/png"),
        (status = 400, description = "Half a signed URL", body = ApiError),
        (status = 401, description = "Neither a token nor a signed URL", body = ApiError),
        (status = 403, description = "A bad or expired signature", body = ApiError),
        (status = 404, description = "No such task, or no result", body = ApiError),
    ))]
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
/// A notice for one user's sessions (numbered, logged, replayed) or for a topic's
/// subscribers; a JSON array of up to 1,000 is the batch form.
#[utoipa::path(post, path = "/api/publish", tag = "backends", security(("apiKey" = [])),
    request_body = PublishBody,
    responses(
        (status = 200, description = "`Published` for one notice; an array of `PublishOutcome`, in order, for a batch", body = PublishAnswer),
        (status = 400, description = "A field is invalid", body = ApiError),
        (status = 401, description = "No or a wrong X-API-Key", body = ApiError),
        (status = 403, description = "No API keys are configured ([api] keys)", body = ApiError),
        (status = 413, description = "More than 1,000 items, or larger than api.body_limit", body = ApiError),
    ))]
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
            let refused = |e: RouteError| match e {
                RouteError::Destination(_) => AppError::field("destination", e.to_string()),
                RouteError::Unavailable(_) => AppError::Unavailable(e.to_string()),
                other => AppError::Conflict(other.to_string()),
            };
            return match state.fanout.publish(destination, Publication::json(body)) {
                Ok(Routed::Delivered(delivered)) => {
                    Ok(Either::Left(Either::Left(std::future::ready(Ok(delivered)))))
                }
                // On a node of several, a queue message is answered once its store has it
                // (and none was handed out here yet).
                Ok(Routed::Queuing(stored)) => Ok(Either::Left(Either::Right(async move {
                    stored.await.map(|()| 0).map_err(refused)
                }))),
                Err(e) => Err(refused(e)),
            };
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

/// Body of `POST /api/publish`, for the OpenAPI document (the handler reads either form).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(super) enum PublishBody {
    /// One notice.
    One(PublishRequest),
    /// The batch form.
    Many(Vec<PublishRequest>),
}

/// Answer of `POST /api/publish`, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(super) enum PublishAnswer {
    /// For one notice.
    One(Published),
    /// For a batch, one per item in order.
    Many(Vec<PublishOutcome>),
}

/// Body of `POST /api/admin/disconnect`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Disconnect {
    /// Whose connections to close.
    user: String,
}

/// Answer of `POST /api/admin/disconnect`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Disconnected {
    /// How many connections were closed.
    closed: usize,
}

/// An operator closes every STOMP connection of a user (clients reconnect and resume).
#[utoipa::path(post, path = "/api/admin/disconnect", tag = "operations", security(("apiKey" = []), ("bearer" = [])),
    request_body = Disconnect,
    responses(
        (status = 200, description = "Closed", body = Disconnected),
        (status = 401, description = "No or a wrong X-API-Key or token", body = ApiError),
        (status = 403, description = "Not an operator ([auth] operators), or no API keys are configured", body = ApiError),
    ))]
pub(super) async fn disconnect(
    State(state): State<AppState>,
    _operator: Operator,
    Body(request): Body<Disconnect>,
) -> Json<Disconnected> {
    let closed = state.fanout.disconnect_user(&request.user, "disconnected by an operator");
    Json(Disconnected { closed })
}

/// What the server has seen since it started (the figures of `/metrics`, as JSON).
#[utoipa::path(get, path = "/api/admin/stats", tag = "operations", security(("apiKey" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The figures", body = crate::metrics::Stats),
        (status = 401, description = "No or a wrong X-API-Key or token", body = ApiError),
        (status = 403, description = "Not an operator ([auth] operators), or no API keys are configured", body = ApiError),
    ))]
pub(super) async fn stats(
    State(state): State<AppState>,
    _operator: Operator,
) -> Json<crate::metrics::Stats> {
    let mut stats = state.metrics.stats();
    stats.slowest_tasks = state.tasks.slowest(SLOWEST).await;
    stats.cluster = state.bus.as_ref().map(crate::cluster::Bus::stats);
    Json(stats)
}

/// Running tasks `GET /api/admin/stats` lists, longest-running first.
const SLOWEST: usize = 10;
