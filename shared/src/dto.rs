//! JSON documents that cross the wire: task progress pushed over STOMP, and the REST bodies
//! for submitting tasks and signing in. Field names and values follow the seed documents.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Where a task is in its lifecycle: `created -> queued -> processing -> completed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    /// Accepted and stored, not yet queued.
    Created,
    /// Waiting for a free executor slot.
    Queued,
    /// Running; `progress` and `message` say how far.
    Processing,
    /// Finished successfully; `resultUrl` says where the result is.
    Completed,
    /// Finished unsuccessfully (including cancellation); `errorMessage` says why.
    Failed,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Created,
        TaskStatus::Queued,
        TaskStatus::Processing,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ];

    /// True for `completed` and `failed`: no further update follows.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }

    /// The wire spelling, e.g. `"processing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Created => "created",
            TaskStatus::Queued => "queued",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }
}

/// A status spelling that is none of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status {} is not one of created, queued, processing, completed, failed", crate::Quoted(.0))]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for TaskStatus {
    type Err = UnknownStatus;

    /// The wire spelling, e.g. `"processing"`.
    fn from_str(text: &str) -> Result<TaskStatus, UnknownStatus> {
        TaskStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task's state as pushed to `/user/queue/tasks-progress` and returned by the task API.
///
/// JSON: `{"taskNo","status","progress","message","resultUrl"?,"errorMessage"?,
/// "queuePosition"?}`; the optional fields are omitted when absent, never `null`, so a
/// document is exactly the seed's unless the task waits in a queue. `progress` is 0..=100 and
/// a document with a larger value is rejected.
///
/// ```
/// use taskpulse_shared::{TaskProgressDto, TaskStatus};
///
/// let update = TaskProgressDto::new("T-1", TaskStatus::Processing, 40, "sampling");
/// assert_eq!(
///     serde_json::to_string(&update)?,
///     r#"{"taskNo":"T-1","status":"processing","progress":40,"message":"sampling"}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskProgressDto {
    /// The task's public identifier.
    pub task_no: String,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// Percentage done, 0..=100.
    #[serde(deserialize_with = "percentage")]
    pub progress: u8,
    /// Human-readable detail of the current step.
    #[serde(default)]
    pub message: String,
    /// Where the result is, once `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    /// Why the task failed, once `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// While `queued`: how many tasks run before this one, plus one (1 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
}

impl TaskProgressDto {
    /// A update with the given status, progress (clamped to 100) and message.
    pub fn new(
        task_no: impl Into<String>,
        status: TaskStatus,
        progress: u8,
        message: impl Into<String>,
    ) -> Self {
        TaskProgressDto {
            task_no: task_no.into(),
            status,
            progress: progress.min(100),
            message: message.into(),
            result_url: None,
            error_message: None,
            queue_position: None,
        }
    }

    /// A `completed` update at 100 % with the result's URL.
    pub fn completed(task_no: impl Into<String>, result_url: impl Into<String>) -> Self {
        TaskProgressDto {
            result_url: Some(result_url.into()),
            ..Self::new(task_no, TaskStatus::Completed, 100, "completed")
        }
    }

    /// A `failed` update carrying the reason in both `message` and `errorMessage`.
    pub fn failed(task_no: impl Into<String>, progress: u8, error: impl Into<String>) -> Self {
        let error = error.into();
        TaskProgressDto {
            error_message: Some(error.clone()),
            ..Self::new(task_no, TaskStatus::Failed, progress, error)
        }
    }
}

fn percentage<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let value = u8::deserialize(deserializer)?;
    if value > 100 {
        return Err(serde::de::Error::custom(format!(
            "progress must be between 0 and 100, got {value}"
        )));
    }
    Ok(value)
}

/// Output proportions accepted for image tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AspectRatio {
    /// Square, the seed's default.
    #[default]
    #[serde(rename = "1:1")]
    Square,
    /// Landscape 4:3.
    #[serde(rename = "4:3")]
    Landscape4x3,
    /// Landscape 16:9.
    #[serde(rename = "16:9")]
    Landscape16x9,
    /// Portrait 9:16.
    #[serde(rename = "9:16")]
    Portrait9x16,
}

impl AspectRatio {
    /// Every accepted ratio, in the order a form lists them.
    pub const ALL: [AspectRatio; 4] = [
        AspectRatio::Square,
        AspectRatio::Landscape4x3,
        AspectRatio::Landscape16x9,
        AspectRatio::Portrait9x16,
    ];

    /// The wire spelling, e.g. `"16:9"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape4x3 => "4:3",
            AspectRatio::Landscape16x9 => "16:9",
            AspectRatio::Portrait9x16 => "9:16",
        }
    }
}

/// Body of `POST /api/tasks`: what to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SubmitTaskRequest {
    /// Generate an image from a prompt.
    #[serde(rename_all = "camelCase")]
    TextToImage {
        /// What to draw.
        prompt: String,
        /// Output proportions; `1:1` when omitted.
        #[serde(default)]
        aspect_ratio: AspectRatio,
    },
    /// Transform an existing image according to a prompt.
    #[serde(rename_all = "camelCase")]
    ImageToImage {
        /// How to transform it.
        prompt: String,
        /// The source image.
        image_url: String,
        /// Output proportions; `1:1` when omitted.
        #[serde(default)]
        aspect_ratio: AspectRatio,
    },
    /// Work done by another backend, which reports through `POST /api/tasks/{taskNo}/progress`.
    #[serde(rename_all = "camelCase")]
    External {
        /// What the work is, for display.
        #[serde(default)]
        description: String,
    },
}

/// What kind of work a task is; the `kind` of [`SubmitTaskRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskKind {
    /// [`SubmitTaskRequest::TextToImage`].
    TextToImage,
    /// [`SubmitTaskRequest::ImageToImage`].
    ImageToImage,
    /// [`SubmitTaskRequest::External`].
    External,
}

impl TaskKind {
    /// The wire spelling, e.g. `"text-to-image"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::TextToImage => "text-to-image",
            TaskKind::ImageToImage => "image-to-image",
            TaskKind::External => "external",
        }
    }
}

impl SubmitTaskRequest {
    /// The request's kind.
    pub fn kind(&self) -> TaskKind {
        match self {
            SubmitTaskRequest::TextToImage { .. } => TaskKind::TextToImage,
            SubmitTaskRequest::ImageToImage { .. } => TaskKind::ImageToImage,
            SubmitTaskRequest::External { .. } => TaskKind::External,
        }
    }

    /// The prompt, or an external task's description.
    pub fn prompt(&self) -> &str {
        match self {
            SubmitTaskRequest::TextToImage { prompt, .. }
            | SubmitTaskRequest::ImageToImage { prompt, .. } => prompt,
            SubmitTaskRequest::External { description } => description,
        }
    }
}

/// A task as the task API lists it: its current [`TaskProgressDto`] (flattened) plus what was
/// asked and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskDetails {
    /// The current state, exactly as pushed.
    #[serde(flatten)]
    pub progress: TaskProgressDto,
    /// What was submitted.
    pub request: SubmitTaskRequest,
    /// Submission time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// When it reached `completed` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Credits reserved or spent for it.
    pub cost: i64,
    /// It has a share link (`POST /api/tasks/{taskNo}/share`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// One page of `GET /api/tasks`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskPage {
    /// The tasks of this page.
    pub tasks: Vec<TaskDetails>,
    /// Pass as `?before=` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One entry of `GET /api/tasks/{taskNo}/events`: a pushed update and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEvent {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// The update as it was pushed.
    #[serde(flatten)]
    pub progress: TaskProgressDto,
}

/// Body of `GET /api/tasks/{taskNo}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEvents {
    /// The updates kept, oldest first.
    pub events: Vec<TaskEvent>,
    /// Older updates were deleted by the server's retention (`tasks.events_retention_s`):
    /// the list does not start at `created`.
    pub pruned: bool,
}

/// Body of `POST /api/tasks/{taskNo}/share`: a read-only link to one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareLink {
    /// The secret that lets anyone watch the task: STOMP CONNECT header `share`,
    /// `GET /sse/share?token=`, `GET /api/shared?token=`. Shown once: the server keeps
    /// only its hash.
    pub token: String,
    /// The monitor's page for it, relative to the server (`/share#<token>`: the token
    /// stays in the fragment, which browsers never send).
    pub url: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// Body of `POST /api/tasks/{taskNo}/progress`: an external worker's report. Absent fields
/// keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressReport {
    /// New status (`queued`, `processing`, `completed` or `failed`).
    #[serde(default)]
    pub status: Option<TaskStatus>,
    /// Percentage done, 0..=100.
    #[serde(default)]
    pub progress: Option<u32>,
    /// Detail of the current step.
    #[serde(default)]
    pub message: Option<String>,
    /// Where the result is; required with `completed`.
    #[serde(default)]
    pub result_url: Option<String>,
    /// Why it failed; required with `failed`.
    #[serde(default)]
    pub error_message: Option<String>,
}

/// Body of `POST /api/publish`: a notice for one user's or everyone's subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishRequest {
    /// The user whose sessions receive it at `/user{destination}`; absent for a broadcast.
    #[serde(default)]
    pub user: Option<String>,
    /// `/queue/…` or `/topic/…` (for a user, the path after `/user`).
    pub destination: String,
    /// Any JSON document.
    pub payload: serde_json::Value,
}

/// Answer to `POST /api/publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Published {
    /// How many subscriptions (or queue consumers) it was handed to right away.
    pub delivered: usize,
}

/// One item's result in the answer to a batch `POST /api/publish` (a JSON array of
/// [`PublishRequest`]s is answered with an array of these, in the same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PublishOutcome {
    /// Stored (for a user) and handed to this many subscriptions.
    Published(Published),
    /// Refused, saying why; the other items are not affected.
    Refused(ApiError),
}

/// Answer to `GET /api/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    /// The principal.
    pub username: String,
    /// Credit balance; absent when credits are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<i64>,
    /// The operator role (`[auth] operators`); absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
}

/// Answer to `POST /api/tasks`: the new task's number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskSubmitted {
    /// The task's public identifier.
    pub task_no: String,
}

/// Body of `POST /api/auth/register` and `POST /api/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The password in clear; only ever sent over the login request.
    pub password: String,
}

/// Answer to a successful register or login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// A JWT to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// The JSON body of every HTTP error answer: what went wrong, and on which field if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// A sentence that names the problem.
    pub error: String,
    /// The offending request field, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_dto_omits_absent_optionals() {
        let dto = TaskProgressDto::new("T1", TaskStatus::Processing, 42, "step 2");
        let json = serde_json::to_string(&dto).unwrap();
        assert_eq!(
            json,
            r#"{"taskNo":"T1","status":"processing","progress":42,"message":"step 2"}"#
        );
    }

    #[test]
    fn progress_dto_writes_result_and_error_in_camel_case() {
        let done = serde_json::to_value(TaskProgressDto::completed("T1", "/r/1.png")).unwrap();
        assert_eq!(done["resultUrl"], "/r/1.png");
        assert_eq!(done["status"], "completed");
        assert_eq!(done["progress"], 100);
        let failed = serde_json::to_value(TaskProgressDto::failed("T2", 30, "cancelled")).unwrap();
        assert_eq!(failed["errorMessage"], "cancelled");
        assert!(failed.get("resultUrl").is_none());
    }

    #[test]
    fn progress_dto_reads_the_seed_example() {
        let json = r#"{"taskNo":"20240101-001","status":"failed","progress":10,
                       "message":"boom","errorMessage":"GPU out of memory"}"#;
        let dto: TaskProgressDto = serde_json::from_str(json).unwrap();
        assert_eq!(dto.status, TaskStatus::Failed);
        assert_eq!(dto.error_message.as_deref(), Some("GPU out of memory"));
        assert_eq!(dto.result_url, None);
    }

    #[test]
    fn progress_above_100_is_rejected_with_a_reason() {
        let json = r#"{"taskNo":"T","status":"processing","progress":101,"message":""}"#;
        let err = serde_json::from_str::<TaskProgressDto>(json).unwrap_err();
        assert!(err.to_string().contains("between 0 and 100"), "{err}");
    }

    #[test]
    fn unknown_status_is_rejected() {
        let json = r#"{"taskNo":"T","status":"running","progress":1,"message":""}"#;
        let err = serde_json::from_str::<TaskProgressDto>(json).unwrap_err();
        assert!(err.to_string().contains("unknown variant `running`"), "{err}");
    }

    #[test]
    fn constructor_clamps_progress() {
        assert_eq!(TaskProgressDto::new("T", TaskStatus::Processing, 250, "").progress, 100);
    }

    #[test]
    fn only_completed_and_failed_are_terminal() {
        let terminal: Vec<_> = TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [TaskStatus::Completed, TaskStatus::Failed]);
        for status in TaskStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn submit_request_is_tagged_by_kind() {
        let t2i: SubmitTaskRequest = serde_json::from_str(
            r#"{"kind":"text-to-image","prompt":"a cat","aspectRatio":"16:9"}"#,
        )
        .unwrap();
        assert_eq!(
            t2i,
            SubmitTaskRequest::TextToImage {
                prompt: "a cat".into(),
                aspect_ratio: AspectRatio::Landscape16x9
            }
        );
        let i2i: SubmitTaskRequest = serde_json::from_str(
            r#"{"kind":"image-to-image","prompt":"oil","imageUrl":"http://x/a.png"}"#,
        )
        .unwrap();
        assert!(matches!(
            i2i,
            SubmitTaskRequest::ImageToImage { aspect_ratio: AspectRatio::Square, .. }
        ));
        let back = serde_json::to_value(&i2i).unwrap();
        assert_eq!(back["kind"], "image-to-image");
        assert_eq!(back["imageUrl"], "http://x/a.png");
    }

    #[test]
    fn submit_request_rejects_bad_ratio_and_unknown_kind() {
        let ratio = serde_json::from_str::<SubmitTaskRequest>(
            r#"{"kind":"text-to-image","prompt":"x","aspectRatio":"2:1"}"#,
        )
        .unwrap_err();
        assert!(ratio.to_string().contains("2:1"), "{ratio}");
        let kind = serde_json::from_str::<SubmitTaskRequest>(r#"{"kind":"video","prompt":"x"}"#)
            .unwrap_err();
        assert!(kind.to_string().contains("video"), "{kind}");
    }

    #[test]
    fn token_response_uses_expires_in() {
        let json =
            serde_json::to_string(&TokenResponse { token: "t".into(), expires_in: 60 }).unwrap();
        assert_eq!(json, r#"{"token":"t","expiresIn":60}"#);
    }
}
