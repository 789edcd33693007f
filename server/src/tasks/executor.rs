//! The executor contract: what an executor is given ([`Job`]), what it reports
//! ([`Progress`]) and returns ([`Artifact`]), and the [`Executor`] trait the demo and ComfyUI
//! executors implement.

use async_trait::async_trait;
use taskpulse_shared::dto::SubmitTaskRequest;

use super::TaskService;

/// What an executor is asked to do.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task.
    pub task_no: String,
    /// What was submitted.
    pub request: SubmitTaskRequest,
    /// The executor's own id from an earlier attempt (a ComfyUI `prompt_id` before a restart).
    pub external_ref: Option<String>,
}

/// What an executor produced.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The image file.
    pub bytes: Vec<u8>,
}

/// An executor's way to report progress on one task.
#[derive(Debug, Clone)]
pub struct Progress {
    pub(super) service: TaskService,
    pub(super) task_no: String,
}

impl Progress {
    /// Reports `percent` done and what is happening. Coalesced: at most one push per
    /// `tasks.progress_interval_ms`, always the latest.
    pub async fn report(&self, percent: u8, message: impl Into<String>) {
        self.service.report_progress(&self.task_no, percent.min(100), message.into()).await;
    }

    /// Remembers the executor's id for the task, so a restarted server can follow it.
    pub async fn set_external_ref(&self, external_ref: &str) {
        if let Err(e) =
            self.service.inner.storage.set_external_ref(&self.task_no, external_ref).await
        {
            tracing::warn!(task = %self.task_no, "cannot store executor id: {e}");
        }
    }
}

/// Runs tasks of some kinds.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Its name in logs and in the database.
    fn name(&self) -> &'static str;

    /// Runs one job to completion.
    ///
    /// # Errors
    /// Why the task failed, as the user should read it.
    async fn run(&self, job: &Job, progress: &Progress) -> Result<Artifact, String>;

    /// Stops a running job that was cancelled (its `run` future has been dropped).
    async fn cancel(&self, _job: &Job) {}
}
