//! The task service: submission, the lifecycle `created -> queued -> processing ->
//! completed | failed`, executors behind per-executor queues, coalesced progress, and the
//! push of every change to the owner's `/user/queue/tasks-progress`.
//!
//! Invariant: a state is written to [`Storage`] before it is pushed, and one task's writes
//! and pushes happen one at a time (its [`LiveTask`] lock), so subscribers see them in order.

mod comfyui;
mod demo;
mod executor;
mod fetch;
mod lane;
mod results;
mod shares;
mod snapshots;
mod validation;

use std::{collections::HashMap, sync::Arc, time::Duration};

pub use comfyui::ComfyUiExecutor;
pub use demo::DemoExecutor;
pub use executor::{Artifact, Executor, Job, Progress};
pub use fetch::{HostRule, is_public};
use lane::Lane;
use parking_lot::Mutex;
pub use results::{ResultStore, SignedUrlError};
pub use shares::{SHARE_PAGE, ShareError, TaskShares};
pub use snapshots::TaskSnapshots;
use taskpulse_shared::{
    TaskProgressDto,
    dto::{
        ProgressReport, SubmitTaskRequest, TaskDetails, TaskEvents, TaskKind, TaskPage, TaskStatus,
    },
};
use tokio::{sync::Notify, time::Instant};
pub use validation::{MAX_TEXT_CHARS, is_task_no};
use validation::{new_task_no, next_external_state, validate};

use crate::{
    Settings,
    broker::Coalesce,
    metrics::{Metrics, RunningTask},
    now_ms,
    replay::UserLog,
    storage::{Storage, StorageError, TaskChange, TaskQuery, TaskRecord},
};

/// The user path of task updates (`/user/queue/tasks-progress` for the owner).
const PROGRESS_PATH: &str = crate::replay::TASKS_PATH;

/// Why a task operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No such task for this user.
    #[error("no task {0}")]
    NotFound(String),
    /// The task is in a state that does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The owner cannot pay.
    #[error("insufficient credits: this task costs {cost} and the balance is {balance}")]
    InsufficientCredits {
        /// Price.
        cost: i64,
        /// Balance.
        balance: i64,
    },
    /// A quota or rate limit, naming its setting.
    #[error("{message}")]
    Limited {
        /// What was exceeded.
        message: String,
        /// When trying again can succeed, if that is a matter of time.
        retry_after: Option<Duration>,
    },
    /// The server is shutting down and takes no new task.
    #[error("the server is shutting down and takes no new tasks; submit again in a moment")]
    ShuttingDown,
    /// The node that runs the task refused the call, or none answered.
    #[error("{}", .0.message)]
    Elsewhere(RemoteFailure),
    /// The database failed.
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for TaskError {
    fn from(error: StorageError) -> TaskError {
        match error {
            StorageError::InsufficientCredits { cost, balance } => {
                TaskError::InsufficientCredits { cost, balance }
            }
            other => TaskError::Storage(other),
        }
    }
}

/// A call on a task that runs on another node (several nodes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskCall {
    /// Cancel it, as its owner asked.
    Cancel,
    /// An external worker's report.
    Report(ProgressReport),
}

/// Why a call on another node failed, as that node would have answered it over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteFailure {
    /// The HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
    /// The request field it blames.
    pub field: Option<String>,
}

impl From<&TaskError> for RemoteFailure {
    fn from(error: &TaskError) -> RemoteFailure {
        let (status, field) = match error {
            TaskError::Invalid { field, .. } => (400, Some((*field).to_owned())),
            TaskError::NotFound(_) => (404, None),
            TaskError::Conflict(_) => (409, None),
            TaskError::InsufficientCredits { .. } => (402, None),
            TaskError::Limited { .. } => (429, None),
            TaskError::ShuttingDown => (503, None),
            TaskError::Storage(_) => (500, None),
            TaskError::Elsewhere(failure) => return failure.clone(),
        };
        RemoteFailure { status, message: error.to_string(), field }
    }
}

/// How a node of several reaches the node that runs a task (`cluster::Bus`).
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// Makes `call` on `task_no` on the node that runs it; its answer.
    fn call(
        &self,
        task_no: &str,
        call: TaskCall,
    ) -> futures_util::future::BoxFuture<'static, Result<TaskProgressDto, RemoteFailure>>;
}

/// Why the task service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The ComfyUI settings are unusable.
    #[error("{0}")]
    ComfyUi(String),
    /// The unfinished tasks could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The task service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    settings: Settings,
    results: ResultStore,
    /// Sequences, stores and sends every push.
    log: UserLog,
    /// Executors by name, each with its queue.
    lanes: HashMap<&'static str, Arc<Lane>>,
    /// Tasks not yet terminal.
    live: Mutex<HashMap<String, Arc<LiveTask>>>,
    /// `tasks.submissions_per_minute`, per owner.
    submissions: crate::throttle::Throttle,
    metrics: Arc<Metrics>,
    /// Set by [`TaskService::drain`]: no new task is accepted or started.
    draining: std::sync::atomic::AtomicBool,
    /// This node's id on the bus, when it is one of several: it holds a lease on each task
    /// it runs (`cluster.lease_s`).
    node: Option<String>,
    /// The other nodes, for calls on the tasks they run.
    remote: std::sync::OnceLock<Arc<dyn Remote>>,
}

/// Why a task that was not running here is taken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// This server started again.
    Restart,
    /// The node that ran it stopped renewing its lease.
    TakeOver,
}

/// A task that is not terminal yet.
#[derive(Debug)]
struct LiveTask {
    owner: String,
    lane: Option<&'static str>,
    /// What its executor is asked to do (kept here so that starting it reads nothing).
    job: Job,
    state: tokio::sync::Mutex<LiveState>,
    cancelled: Notify,
    /// Another node took it over (this one's lease ran out): nothing more is written here,
    /// and its executor stops without cancelling the work the other node follows.
    abandoned: std::sync::atomic::AtomicBool,
}

impl LiveTask {
    /// Its executor's name for the metrics (`external` when a worker of its own reports).
    fn executor(&self) -> &'static str {
        self.lane.unwrap_or("external")
    }
}

#[derive(Debug)]
struct LiveState {
    /// The state last written and pushed.
    current: TaskProgressDto,
    last_push: Instant,
    /// The latest progress held back by coalescing.
    pending: Option<TaskProgressDto>,
    flush_scheduled: bool,
    /// The queue position last pushed.
    announced_position: Option<u32>,
    /// When it entered its current status (for the queue wait).
    since: Instant,
    /// When it started processing (for its duration).
    started: Option<Instant>,
    /// When its executor or worker last reported (any progress, even one coalescing held
    /// back), or it last changed; the stall watchdog measures silence from here.
    last_report: Instant,
}

impl TaskService {
    /// Builds the service with the demo executor, and the ComfyUI one when
    /// `comfyui.url` is set, then picks up the tasks a previous run left unfinished. On a
    /// node of several (`node`), it picks up only tasks whose lease ran out, and keeps doing
    /// so, renewing the leases of its own.
    ///
    /// # Errors
    /// The ComfyUI settings are unusable, or reading the unfinished tasks failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        log: UserLog,
        settings: Settings,
        results: ResultStore,
        metrics: Arc<Metrics>,
        node: Option<String>,
    ) -> Result<TaskService, ServiceError> {
        let mut lanes = HashMap::new();
        let demo: Arc<dyn Executor> = Arc::new(DemoExecutor::new(&settings));
        lanes.insert(demo.name(), Arc::new(Lane::new(demo, settings.demo.concurrency)));
        if !settings.comfyui.url.is_empty() {
            let comfy: Arc<dyn Executor> =
                Arc::new(ComfyUiExecutor::start(&settings).map_err(ServiceError::ComfyUi)?);
            lanes.insert(comfy.name(), Arc::new(Lane::new(comfy, settings.comfyui.concurrency)));
        }
        let submissions =
            crate::throttle::Throttle::per_minute(settings.tasks.submissions_per_minute);
        let service = TaskService {
            inner: Arc::new(Inner {
                storage,
                settings,
                results,
                log,
                lanes,
                live: Mutex::default(),
                submissions,
                metrics,
                draining: std::sync::atomic::AtomicBool::new(false),
                node,
                remote: std::sync::OnceLock::new(),
            }),
        };
        for lane in service.inner.lanes.values() {
            tokio::spawn(service.clone().dispatch(lane.clone()));
            tokio::spawn(service.clone().announce_positions(lane.clone()));
        }
        if let Some(retention) = (service.inner.settings.tasks.events_retention_s > 0)
            .then(|| Duration::from_secs(service.inner.settings.tasks.events_retention_s))
        {
            tokio::spawn(prune_events(Arc::downgrade(&service.inner), retention));
        }
        if service.inner.node.is_some() {
            service.hold_leases().await?;
            tokio::spawn(leases(Arc::downgrade(&service.inner)));
        } else {
            let unfinished = service.inner.storage.unfinished_tasks().await?;
            service.recover(unfinished, Recovery::Restart).await;
        }
        Ok(service)
    }

    /// Renews this node's leases and (unless draining) takes over the tasks whose lease ran
    /// out.
    async fn hold_leases(&self) -> Result<(), StorageError> {
        let Some(node) = &self.inner.node else { return Ok(()) };
        let lease = Duration::from_secs(self.inner.settings.cluster.lease_s).as_millis() as i64;
        let now = crate::now_ms();
        let mine: Vec<String> = self.inner.live.lock().keys().cloned().collect();
        let lost = self.inner.storage.renew_leases(node, &mine, now + lease).await?;
        for task_no in lost {
            // Paused longer than its lease (or cut off from the database): another node
            // runs it now. This one stops its part and writes nothing more for it (one write
            // under way may still land; storage keeps the first final status either way).
            tracing::warn!(task = %task_no, "another node took this task over; stopping it here");
            self.abandon(&task_no).await;
        }
        if self.inner.draining.load(std::sync::atomic::Ordering::Relaxed) {
            // What is left when this node stops is for the others.
            return Ok(());
        }
        let taken = self.inner.storage.take_over(node, now, now - lease, now + lease).await?;
        self.recover(taken, Recovery::TakeOver).await;
        Ok(())
    }

    /// Stops running `task_no` here without writing anything: another node holds it now.
    async fn abandon(&self, task_no: &str) {
        let Some(live) = self.inner.live.lock().remove(task_no) else { return };
        live.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        // Waits for a write under way; none starts after it.
        let status = live.state.lock().await.current.status;
        if let Some(lane) = live.lane {
            self.inner.lanes[lane].remove(task_no);
        }
        live.cancelled.notify_one();
        self.inner.metrics.task_left(live.executor(), status.as_str());
    }

    /// The storage the service writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// Where results are kept.
    pub fn results(&self) -> &ResultStore {
        &self.inner.results
    }

    /// Which executor runs `kind`: ComfyUI when configured, else the demo.
    fn lane_for(&self, kind: TaskKind) -> Option<&'static str> {
        match kind {
            TaskKind::External => None,
            _ if self.inner.lanes.contains_key(ComfyUiExecutor::NAME) => {
                Some(ComfyUiExecutor::NAME)
            }
            _ => Some(DemoExecutor::NAME),
        }
    }

    fn cost(&self, kind: TaskKind) -> i64 {
        let credits = &self.inner.settings.credits;
        if !credits.enabled {
            return 0;
        }
        match kind {
            TaskKind::TextToImage => credits.text_to_image,
            TaskKind::ImageToImage => credits.image_to_image,
            TaskKind::External => credits.external,
        }
    }

    /// Accepts a task for `owner`: stores it as `created`, pushes that, and queues it.
    ///
    /// # Errors
    /// [`TaskError::Invalid`] naming the field, [`TaskError::InsufficientCredits`], or storage.
    pub async fn submit(
        &self,
        owner: &str,
        request: SubmitTaskRequest,
    ) -> Result<String, TaskError> {
        if self.draining() {
            return Err(TaskError::ShuttingDown);
        }
        validate(&request, self.inner.settings.tasks.max_prompt_chars)?;
        let limits = &self.inner.settings.tasks;
        self.inner.submissions.check(owner).map_err(|wait| TaskError::Limited {
            message: format!(
                "too many submissions: at most {} a minute (tasks.submissions_per_minute)",
                limits.submissions_per_minute
            ),
            retry_after: Some(wait),
        })?;
        let task_no = new_task_no();
        let kind = request.kind();
        let lane = self.lane_for(kind);
        let now = now_ms();
        let state = TaskProgressDto::new(&task_no, TaskStatus::Created, 0, "created");
        let record = TaskRecord {
            id: 0,
            owner: owner.to_owned(),
            request,
            state: state.clone(),
            cost: self.cost(kind),
            executor: lane.unwrap_or("external").to_owned(),
            external_ref: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        // Counted and taken under the map's lock, so two concurrent submissions cannot both
        // take the last place; given back if the task is not stored.
        let limit = limits.max_active_per_user as usize;
        let live = self.track(&record, lane, limit).map_err(|active| TaskError::Limited {
            message: format!(
                "{active} tasks are still running or queued: at most {limit} at once \
                     (tasks.max_active_per_user); wait for some to finish"
            ),
            retry_after: None,
        })?;
        let change = TaskChange::Insert(Box::new(record));
        let coalesce = coalesce_key(&state, false);
        let stored = self.inner.log.record(owner, self.body(&state), change, coalesce).await;
        if !matches!(stored, Ok(Some(_))) {
            self.inner.live.lock().remove(&task_no);
            stored?;
            // Storage refuses a new task only for credits (an error), never as ended.
            let why = "a new task was refused as ended".into();
            return Err(TaskError::Storage(StorageError::Corrupt(task_no, why)));
        }
        self.inner.metrics.task_status(live.executor(), None, TaskStatus::Created.as_str(), false);
        self.watch_stall(&task_no, lane);
        if let Some(lane) = lane {
            self.enqueue(&live, &task_no, lane, "waiting for a free slot").await;
        }
        Ok(task_no)
    }

    /// Follows a task until it ends, if its owner has fewer than `limit` live tasks (else
    /// returns the number they have).
    fn track(
        &self,
        record: &TaskRecord,
        lane: Option<&'static str>,
        limit: usize,
    ) -> Result<Arc<LiveTask>, usize> {
        let owner = record.owner.as_str();
        let current = record.state.clone();
        let live = Arc::new(LiveTask {
            owner: owner.to_owned(),
            lane,
            job: Job {
                task_no: current.task_no.clone(),
                request: record.request.clone(),
                external_ref: record.external_ref.clone(),
            },
            state: tokio::sync::Mutex::new(LiveState {
                current: current.clone(),
                last_push: Instant::now(),
                pending: None,
                flush_scheduled: false,
                announced_position: None,
                since: Instant::now(),
                started: None,
                last_report: Instant::now(),
            }),
            cancelled: Notify::new(),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        });
        let mut tasks = self.inner.live.lock();
        let active = tasks.values().filter(|t| t.owner == owner).count();
        if active >= limit {
            return Err(active);
        }
        tasks.insert(current.task_no, live.clone());
        Ok(live)
    }

    fn live(&self, task_no: &str) -> Option<Arc<LiveTask>> {
        self.inner.live.lock().get(task_no).cloned()
    }

    /// Marks the task `queued` (with its position) and puts it in its executor's queue.
    async fn enqueue(&self, live: &Arc<LiveTask>, task_no: &str, lane: &'static str, why: &str) {
        let lane = &self.inner.lanes[lane];
        let mut state = live.state.lock().await;
        let position = lane.waiting_len() as u32 + 1;
        let mut queued = TaskProgressDto::new(task_no, TaskStatus::Queued, 0, why);
        queued.queue_position = Some(position);
        if self.apply(live, &mut state, TaskChange::Update(queued), false).await {
            state.announced_position = Some(position);
            lane.push(task_no.to_owned());
        }
    }

    /// Writes a change (an update or a completion with its result), then pushes it; forgets
    /// the task once terminal. False when the task was already terminal or the write failed.
    async fn apply(
        &self,
        live: &LiveTask,
        state: &mut LiveState,
        change: TaskChange,
        replaceable: bool,
    ) -> bool {
        if state.current.status.is_terminal()
            || live.abandoned.load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let next = change.state().clone();
        let body = self.body(&next);
        let coalesce = coalesce_key(&next, replaceable);
        match self.inner.log.record(&live.owner, body, change, coalesce).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(task = %next.task_no, "cannot store task state: {e}");
                return false;
            }
        }
        state.last_push = Instant::now();
        state.last_report = state.last_push;
        if next.status.is_terminal() {
            state.pending = None;
            self.inner.live.lock().remove(&next.task_no);
        }
        self.count(live, state, next.status);
        state.current = next;
        true
    }

    /// Counts a stored change of `live` (in `state`) to `status` into the metrics.
    fn count(&self, live: &LiveTask, state: &mut LiveState, status: TaskStatus) {
        let from = state.current.status;
        if from == status {
            return;
        }
        let metrics = &self.inner.metrics;
        let executor = live.executor();
        let terminal = status.is_terminal();
        metrics.task_status(executor, Some(from.as_str()), status.as_str(), terminal);
        if status == TaskStatus::Processing {
            if from == TaskStatus::Queued {
                metrics.task_started(executor, state.since.elapsed());
            }
            state.started = Some(Instant::now());
        }
        if let Some(started) = state.started.filter(|_| terminal) {
            metrics.task_ended(executor, status.as_str(), started.elapsed());
        }
        state.since = Instant::now();
    }

    /// The pushed JSON of a state (its result URL signed).
    fn body(&self, state: &TaskProgressDto) -> Vec<u8> {
        serde_json::to_vec(&self.inner.results.signed(state)).expect("a DTO serialises")
    }

    /// A status change (never coalesced away). False when the task is unknown or terminal,
    /// or the write failed.
    async fn transition(&self, change: TaskChange) -> bool {
        let Some(live) = self.live(&change.state().task_no) else { return false };
        let mut state = live.state.lock().await;
        state.pending = None;
        self.apply(&live, &mut state, change, false).await
    }

    async fn report_progress(&self, task_no: &str, percent: u8, message: String) {
        let Some(live) = self.live(task_no) else { return };
        let mut state = live.state.lock().await;
        if state.current.status != TaskStatus::Processing {
            return;
        }
        state.last_report = Instant::now();
        let next = TaskProgressDto::new(task_no, TaskStatus::Processing, percent, message);
        let interval = Duration::from_millis(self.inner.settings.tasks.progress_interval_ms);
        if state.last_push.elapsed() >= interval {
            state.pending = None;
            self.apply(&live, &mut state, TaskChange::Update(next), true).await;
        } else {
            state.pending = Some(next);
            if !state.flush_scheduled {
                state.flush_scheduled = true;
                let due = state.last_push + interval;
                let service = self.clone();
                let task_no = task_no.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep_until(due).await;
                    service.flush(&task_no).await;
                });
            }
        }
    }

    /// Pushes the progress coalescing held back.
    async fn flush(&self, task_no: &str) {
        let Some(live) = self.live(task_no) else { return };
        let mut state = live.state.lock().await;
        state.flush_scheduled = false;
        if let Some(next) = state.pending.take()
            && state.current.status == TaskStatus::Processing
        {
            self.apply(&live, &mut state, TaskChange::Update(next), true).await;
        }
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a graceful stop: accepts and starts no new task, then waits (at most `within`)
    /// until the tasks running on executors have ended. Queued tasks stay queued, and
    /// whatever still runs at the deadline starts again on the next start, as after a crash.
    pub async fn drain(&self, within: Duration) {
        self.inner.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + within;
        let mut told = false;
        loop {
            let running: usize = self.inner.lanes.values().map(|lane| lane.running()).sum();
            if running == 0 {
                return;
            }
            if !told {
                tracing::info!(running, "waiting for running tasks to finish");
                told = true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    running,
                    "tasks still running after server.drain_timeout_s ({} s); they start \
                     again on the next start",
                    within.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes tasks from a lane's queue as slots free up.
    async fn dispatch(self, lane: Arc<Lane>) {
        loop {
            let (task_no, permit) = lane.next().await;
            if self.draining() {
                // Stopping: it stays queued in storage and runs after the restart.
                drop(permit);
                continue;
            }
            let service = self.clone();
            let running = lane.started();
            let lane = lane.clone();
            tokio::spawn(async move {
                service.run(&lane, &task_no).await;
                drop((permit, running));
            });
        }
    }

    /// Runs one task on its lane's executor.
    async fn run(&self, lane: &Lane, task_no: &str) {
        let Some(live) = self.live(task_no) else { return };
        let started = TaskProgressDto::new(task_no, TaskStatus::Processing, 0, "started");
        if !self.transition(TaskChange::Update(started)).await {
            return; // cancelled while queued
        }
        let job = &live.job;
        let progress = Progress { service: self.clone(), task_no: task_no.to_owned() };
        let outcome = tokio::select! {
            outcome = lane.executor.run(job, &progress) => outcome,
            () = live.cancelled.notified() => {
                // An abandoned task's work is the other node's now (a ComfyUI prompt it
                // follows by id): only this node's part stops.
                if !live.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                    lane.executor.cancel(job).await;
                }
                return;
            }
        };
        let last = live.state.lock().await.current.progress;
        match outcome {
            Ok(artifact) => {
                // The result file is stored in the transaction that completes the task.
                let done = TaskProgressDto::completed(task_no, ResultStore::url(task_no));
                if !self.transition(TaskChange::Complete(done, artifact.bytes)).await {
                    // Cancelled meanwhile (then this changes nothing either), or the write
                    // failed: the task must not stay `processing`.
                    let why = "the result could not be stored";
                    let failed = TaskProgressDto::failed(task_no, last, why);
                    self.transition(TaskChange::Update(failed)).await;
                }
            }
            Err(reason) => {
                let failed = TaskProgressDto::failed(task_no, last, reason);
                self.transition(TaskChange::Update(failed)).await;
            }
        }
    }

    /// The `limit` processing tasks that have run longest, longest first.
    pub async fn slowest(&self, limit: usize) -> Vec<RunningTask> {
        let live: Vec<Arc<LiveTask>> = self.inner.live.lock().values().cloned().collect();
        let mut running = Vec::new();
        for task in live {
            let state = task.state.lock().await;
            if let (TaskStatus::Processing, Some(started)) = (state.current.status, state.started) {
                running.push(RunningTask {
                    task_no: state.current.task_no.clone(),
                    owner: task.owner.clone(),
                    executor: task.executor().to_owned(),
                    progress: state.current.progress,
                    running_seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        running.sort_by(|a, b| b.running_seconds.total_cmp(&a.running_seconds));
        running.truncate(limit);
        running
    }

    /// How long tasks of `lane` (`None`: external) may stay silent; `None` for ever.
    fn stall_timeout(&self, lane: Option<&'static str>) -> Option<Duration> {
        let settings = &self.inner.settings;
        let own = match lane {
            Some(DemoExecutor::NAME) => settings.demo.stall_timeout_s,
            Some(ComfyUiExecutor::NAME) => settings.comfyui.stall_timeout_s,
            _ => 0,
        };
        let seconds = if own > 0 { own } else { settings.tasks.stall_timeout_s };
        (seconds > 0).then(|| Duration::from_secs(seconds))
    }

    /// Starts the stall watchdog of a stored, followed task (none when its executor's timeout
    /// is 0).
    fn watch_stall(&self, task_no: &str, lane: Option<&'static str>) {
        if let Some(timeout) = self.stall_timeout(lane) {
            tokio::spawn(self.clone().watch(task_no.to_owned(), timeout));
        }
    }

    /// Ends the task as stalled once it has been silent for `timeout`: a task running on an
    /// executor, or an external task in any unfinished status (its worker may have died).
    /// Queued tasks are waiting, not stalled.
    async fn watch(self, task_no: String, timeout: Duration) {
        let mut due = Instant::now() + timeout;
        loop {
            tokio::time::sleep_until(due).await;
            let Some(live) = self.live(&task_no) else { return };
            let mut state = live.state.lock().await;
            if state.current.status.is_terminal() {
                return;
            }
            let watched = live.lane.is_none() || state.current.status == TaskStatus::Processing;
            let silent_until = state.last_report + timeout;
            if !watched || silent_until > Instant::now() {
                due = if watched { silent_until } else { Instant::now() + timeout };
                continue;
            }
            let who = match live.lane {
                Some(lane) => format!("the {lane} executor"),
                None => "the task's worker".to_owned(),
            };
            let why = format!(
                "stalled: {who} reported no progress for {} s (tasks.stall_timeout_s); the \
                 task was stopped",
                timeout.as_secs()
            );
            tracing::warn!(task = %task_no, "{why}");
            let end = TaskProgressDto::failed(&task_no, state.current.progress, why);
            state.pending = None;
            if !self.apply(&live, &mut state, TaskChange::Update(end), false).await {
                return;
            }
            drop(state);
            self.inner.metrics.task_stalled(live.executor());
            if let Some(lane) = live.lane {
                self.inner.lanes[lane].remove(&task_no);
            }
            // The running executor's work is stopped as a cancel stops it.
            live.cancelled.notify_one();
            return;
        }
    }

    /// Pushes new queue positions of a lane's waiting tasks, at most once per progress
    /// interval. Positions are pushed, not stored: they are stale a moment later.
    async fn announce_positions(self, lane: Arc<Lane>) {
        let interval =
            Duration::from_millis(self.inner.settings.tasks.progress_interval_ms.max(10));
        loop {
            lane.moved().await;
            tokio::time::sleep(interval).await;
            for (index, task_no) in lane.waiting().into_iter().enumerate() {
                let position = index as u32 + 1;
                // Far back in a long queue, every hundredth place is news enough.
                if position > 100 && position % 100 != 0 {
                    continue;
                }
                let Some(live) = self.live(&task_no) else { continue };
                let mut state = live.state.lock().await;
                if state.current.status != TaskStatus::Queued
                    || state.announced_position == Some(position)
                {
                    continue;
                }
                state.announced_position = Some(position);
                let mut update = state.current.clone();
                update.queue_position = Some(position);
                update.message = format!("waiting in queue, position {position}");
                let body = self.body(&update);
                let coalesce = Some(coalesce_key(&update, true));
                let sent = self.inner.log.send(
                    &live.owner,
                    PROGRESS_PATH,
                    "application/json",
                    body,
                    coalesce,
                );
                if let Err(e) = sent.await {
                    tracing::warn!(task = %task_no, "cannot announce the queue position: {e}");
                }
            }
        }
    }

    /// Picks up what a previous run left: queued tasks are queued again; tasks that were
    /// running start again (a ComfyUI prompt is followed by its id). External tasks wait
    /// for their worker. Each owner is told.
    async fn recover(&self, records: Vec<TaskRecord>, why: Recovery) {
        for record in records {
            let kind = record.request.kind();
            let task_no = record.state.task_no.clone();
            let lane = self.lane_for(kind);
            // Every task a previous run accepted is followed again, whatever the limit.
            let Ok(live) = self.track(&record, lane, usize::MAX) else {
                continue;
            };
            let status = record.state.status.as_str();
            self.inner.metrics.task_status(live.executor(), None, status, false);
            self.watch_stall(&task_no, lane);
            let Some(lane) = lane else { continue };
            let message = match (why, record.state.status) {
                (Recovery::Restart, TaskStatus::Processing) if record.external_ref.is_some() => {
                    "the server restarted; following the running job again"
                }
                (Recovery::Restart, TaskStatus::Processing) => {
                    "the server restarted while this task ran; it will run again"
                }
                (Recovery::Restart, _) => "the server restarted; still waiting for a free slot",
                (Recovery::TakeOver, TaskStatus::Processing) if record.external_ref.is_some() => {
                    "the server running it stopped; another follows the running job again"
                }
                (Recovery::TakeOver, TaskStatus::Processing) => {
                    "the server running it stopped; another will run it again"
                }
                (Recovery::TakeOver, _) => {
                    "the server it waited on stopped; waiting for a free slot on another"
                }
            };
            tracing::info!(task = %task_no, owner = %record.owner, ?why, "taking up an unfinished task");
            self.enqueue(&live, &task_no, lane, message).await;
        }
    }

    /// The task as its owner sees it.
    ///
    /// # Errors
    /// [`TaskError::NotFound`] for a missing task or another user's.
    pub async fn details(&self, owner: &str, task_no: &str) -> Result<TaskDetails, TaskError> {
        let record = self.owned(owner, task_no).await?;
        Ok(self.to_details(record))
    }

    async fn owned(&self, owner: &str, task_no: &str) -> Result<TaskRecord, TaskError> {
        match self.inner.storage.task(task_no).await? {
            Some(record) if record.owner == owner => Ok(record),
            _ => Err(TaskError::NotFound(task_no.to_owned())),
        }
    }

    fn to_details(&self, record: TaskRecord) -> TaskDetails {
        let mut progress = self.inner.results.signed(&record.state);
        if progress.status == TaskStatus::Queued
            && let Some(lane) = self.live(&progress.task_no).and_then(|l| l.lane)
        {
            progress.queue_position = self.inner.lanes[lane].position(&progress.task_no);
        }
        TaskDetails {
            progress,
            request: record.request,
            created_at: record.created_at,
            updated_at: record.updated_at,
            finished_at: record.finished_at,
            cost: record.cost,
            shared: false,
        }
    }

    /// A page of the owner's tasks, newest first.
    ///
    /// # Errors
    /// The cursor is not one this API gave, or storage failed.
    pub async fn list(
        &self,
        owner: &str,
        before: Option<&str>,
        status: Option<TaskStatus>,
        limit: Option<u32>,
    ) -> Result<TaskPage, TaskError> {
        let before = before
            .map(|c| {
                c.parse::<i64>().map_err(|_| TaskError::Invalid {
                    field: "before",
                    reason: "is not a cursor returned as nextCursor".into(),
                })
            })
            .transpose()?;
        let limit = limit.unwrap_or(self.inner.settings.tasks.page_size);
        if !(1..=100).contains(&limit) {
            return Err(TaskError::Invalid {
                field: "limit",
                reason: "must be between 1 and 100".into(),
            });
        }
        let records =
            self.inner.storage.tasks(TaskQuery { owner, before, status, limit: limit + 1 }).await?;
        let more = records.len() > limit as usize;
        let mut tasks: Vec<TaskRecord> = records.into_iter().take(limit as usize).collect();
        let next_cursor = more.then(|| tasks.last().map(|t| t.id.to_string())).flatten();
        let tasks = tasks.drain(..).map(|r| self.to_details(r)).collect();
        Ok(TaskPage { tasks, next_cursor })
    }

    /// The task's pushed history.
    ///
    /// # Errors
    /// [`TaskError::NotFound`] for a missing task or another user's.
    pub async fn events(&self, owner: &str, task_no: &str) -> Result<TaskEvents, TaskError> {
        self.owned(owner, task_no).await?;
        let mut events = self.inner.storage.events(task_no).await?;
        for event in &mut events {
            event.progress = self.inner.results.signed(&event.progress);
        }
        // Every task's history starts with `created`; a list that does not lost its start.
        let pruned = events.first().is_none_or(|e| e.progress.status != TaskStatus::Created);
        Ok(TaskEvents { events, pruned })
    }

    /// Cancels a task: it ends `failed` with errorMessage `cancelled` (credits refunded) and
    /// its executor is stopped.
    ///
    /// # Errors
    /// [`TaskError::NotFound`], or [`TaskError::Conflict`] when it already ended.
    pub async fn cancel(&self, owner: &str, task_no: &str) -> Result<TaskDetails, TaskError> {
        let record = self.owned(owner, task_no).await?;
        if record.state.status.is_terminal() {
            return Err(TaskError::Conflict(format!(
                "task {task_no} already ended ({})",
                record.state.status
            )));
        }
        match self.live(task_no) {
            Some(live) => {
                self.cancel_live(&live, task_no).await?;
            }
            None => {
                self.elsewhere(task_no, TaskCall::Cancel).await?;
            }
        }
        self.details(owner, task_no).await
    }

    async fn cancel_live(
        &self,
        live: &Arc<LiveTask>,
        task_no: &str,
    ) -> Result<TaskProgressDto, TaskError> {
        let end = {
            let mut state = live.state.lock().await;
            let end = TaskProgressDto::failed(task_no, state.current.progress, "cancelled");
            state.pending = None;
            if !self.apply(live, &mut state, TaskChange::Update(end.clone()), false).await {
                return Err(TaskError::Conflict(format!("task {task_no} already ended")));
            }
            end
        };
        if let Some(lane) = live.lane {
            self.inner.lanes[lane].remove(task_no);
        }
        live.cancelled.notify_one();
        Ok(end)
    }

    /// Hands `call` to the node that runs `task_no` (several nodes).
    async fn elsewhere(&self, task_no: &str, call: TaskCall) -> Result<TaskProgressDto, TaskError> {
        match self.inner.remote.get() {
            Some(remote) => remote.call(task_no, call).await.map_err(TaskError::Elsewhere),
            None => Err(TaskError::Conflict(format!("task {task_no} is not running"))),
        }
    }

    /// Lets this node reach the others for calls on the tasks they run.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.inner.remote.set(remote);
    }

    /// Makes `call` on `task_no` if it runs on this node; `None` when it does not.
    pub async fn call_here(
        &self,
        task_no: &str,
        call: TaskCall,
    ) -> Option<Result<TaskProgressDto, TaskError>> {
        let live = self.live(task_no)?;
        Some(match call {
            TaskCall::Cancel => self.cancel_live(&live, task_no).await,
            TaskCall::Report(report) => self.report_live(&live, task_no, report).await,
        })
    }

    /// An external worker's report on an `external` task.
    ///
    /// # Errors
    /// [`TaskError::NotFound`], [`TaskError::Invalid`] for a bad report, and
    /// [`TaskError::Conflict`] for a task that is not external or already ended.
    pub async fn external_report(
        &self,
        task_no: &str,
        report: ProgressReport,
    ) -> Result<TaskProgressDto, TaskError> {
        let record = self
            .inner
            .storage
            .task(task_no)
            .await?
            .ok_or_else(|| TaskError::NotFound(task_no.to_owned()))?;
        if record.request.kind() != TaskKind::External {
            return Err(TaskError::Conflict(format!(
                "task {task_no} is run by the {} executor, not by an external worker",
                record.executor
            )));
        }
        if record.state.status.is_terminal() {
            return Err(TaskError::Conflict(format!(
                "task {task_no} already ended ({}); no transition out of a terminal status",
                record.state.status
            )));
        }
        match self.live(task_no) {
            Some(live) => self.report_live(&live, task_no, report).await,
            None => self.elsewhere(task_no, TaskCall::Report(report)).await,
        }
    }

    async fn report_live(
        &self,
        live: &Arc<LiveTask>,
        task_no: &str,
        report: ProgressReport,
    ) -> Result<TaskProgressDto, TaskError> {
        let mut state = live.state.lock().await;
        let next = next_external_state(&state.current, report)?;
        let replaceable = next.status == state.current.status;
        state.pending = None;
        let change = TaskChange::Update(next.clone());
        if !self.apply(live, &mut state, change, replaceable).await {
            return Err(TaskError::Conflict(format!("task {task_no} already ended")));
        }
        Ok(next)
    }
}

/// Renews this node's task leases and takes over expired ones, every third of
/// `cluster.lease_s`, while the service lives.
async fn leases(inner: std::sync::Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => Duration::from_secs(inner.settings.cluster.lease_s) / 3,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let service = TaskService { inner };
        if let Err(e) = service.hold_leases().await {
            tracing::warn!("renewing task leases failed: {e}");
        }
    }
}

/// Deletes task events older than `retention`, every minute (or every half retention, if
/// shorter), while the service lives.
async fn prune_events(inner: std::sync::Weak<Inner>, retention: Duration) {
    let every = (retention / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match inner.storage.prune_events(before).await {
            Ok(removed) => inner.metrics.task_events_pruned(removed),
            Err(e) => tracing::warn!("cannot prune task events: {e}"),
        }
    }
}

/// Intermediate progress may be merged by the broker for a slow consumer; status changes
/// never are.
fn coalesce_key(state: &TaskProgressDto, replaceable: bool) -> Coalesce {
    Coalesce { key: Arc::from(state.task_no.as_str()), replaceable }
}
