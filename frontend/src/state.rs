//! The task board: every task the user has, the connection's state, the filter and the
//! toasts, changed only through [`Action`]s (a Yew `Reducible`). Pure: no I/O, no clock
//! (times come in with the actions), so it is tested directly.

use std::rc::Rc;

use taskpulse_client::ConnectionState;
use taskpulse_shared::{
    TaskProgressDto, TaskStatus,
    dto::{SubmitTaskRequest, TaskDetails},
};
use yew::Reducible;

/// One task as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    /// The latest update (pushed, or from the API).
    pub update: TaskProgressDto,
    /// What was submitted, once known.
    pub request: Option<SubmitTaskRequest>,
    /// Submission time, ms since the epoch (the server's once known, else when first seen).
    pub created_at: f64,
    /// When it finished, ms since the epoch.
    pub finished_at: Option<f64>,
    /// How far the last live update said it was (none yet: only API data or the
    /// submission so far).
    pub live_rank: Option<(u8, u8)>,
    /// It has a share link.
    pub shared: bool,
    /// The link, when it was made on this page (the server shows a token only once).
    pub share_url: Option<String>,
}

impl TaskEntry {
    /// A task first seen in `update` at `now`.
    pub fn seen(update: TaskProgressDto, now: f64) -> TaskEntry {
        let finished = update.status.is_terminal();
        TaskEntry {
            live_rank: Some(rank(&update)),
            update,
            request: None,
            created_at: now,
            finished_at: finished.then_some(now),
            shared: false,
            share_url: None,
        }
    }

    /// The prompt, for display.
    pub fn prompt(&self) -> Option<&str> {
        match self.request.as_ref()? {
            SubmitTaskRequest::TextToImage { prompt, .. }
            | SubmitTaskRequest::ImageToImage { prompt, .. } => Some(prompt),
            SubmitTaskRequest::External { description } => Some(description),
        }
    }

    /// "text-to-image", "image-to-image" or "external", once known.
    pub fn kind(&self) -> Option<&'static str> {
        self.request.as_ref().map(|r| r.kind().as_str())
    }
}

/// Which tasks the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    /// Every task.
    #[default]
    All,
    /// Not finished yet.
    Active,
    /// Finished with `completed`.
    Completed,
    /// Finished with `failed`.
    Failed,
}

impl Filter {
    /// Every filter, in the order the page lists them.
    pub const ALL: [Filter; 4] = [Filter::All, Filter::Active, Filter::Completed, Filter::Failed];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Filter::All => "All",
            Filter::Active => "Active",
            Filter::Completed => "Completed",
            Filter::Failed => "Failed",
        }
    }

    /// Whether `status` passes.
    pub fn admits(self, status: TaskStatus) -> bool {
        match self {
            Filter::All => true,
            Filter::Active => !status.is_terminal(),
            Filter::Completed => status == TaskStatus::Completed,
            Filter::Failed => status == TaskStatus::Failed,
        }
    }
}

/// How a toast looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Something finished well.
    Success,
    /// Something failed.
    Failure,
}

/// A short message in the corner.
#[derive(Debug, Clone, PartialEq)]
pub struct Toast {
    /// Unique within the page.
    pub id: u64,
    /// The text.
    pub text: String,
    /// How it looks.
    pub tone: Tone,
    /// The task it is about, when it is about one.
    pub task_no: Option<String>,
}

/// The connection as the indicator shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connection {
    /// The client's state.
    pub state: ConnectionState,
    /// While reconnecting: when the next attempt starts.
    pub next_retry_at: Option<f64>,
}

/// Everything the monitor shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    /// Newest first.
    pub tasks: Vec<TaskEntry>,
    /// The list's filter.
    pub filter: Filter,
    /// The live connection.
    pub connection: Connection,
    /// Visible toasts, oldest first.
    pub toasts: Vec<Toast>,
    /// The API's cursor for the next older page of tasks; `None` once the oldest is shown.
    pub older: Option<String>,
    /// An older page is being fetched.
    pub loading_older: bool,
    /// Whether older pages were added (a reload of the newest page keeps their cursor).
    older_added: bool,
    next_toast: u64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            tasks: Vec::new(),
            filter: Filter::All,
            connection: Connection { state: ConnectionState::Connecting, next_retry_at: None },
            toasts: Vec::new(),
            older: None,
            loading_older: false,
            older_added: false,
            next_toast: 1,
        }
    }
}

/// What can happen to the board.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The newest page of the task list from the API (the page was opened or reconnected),
    /// and the cursor of the page before it.
    Loaded { tasks: Vec<TaskDetails>, older: Option<String> },
    /// The user asked for older tasks.
    LoadingOlder,
    /// An older page arrived (`None`: the request failed), with the cursor of the next.
    LoadedOlder(Option<(Vec<TaskDetails>, Option<String>)>),
    /// One task's details from the API.
    Details(TaskDetails),
    /// A pushed update, in the server's order; `now` is the page's clock.
    Update { update: TaskProgressDto, now: f64 },
    /// The user just submitted a task: show it at once as `created`.
    Submitted { task_no: String, request: SubmitTaskRequest, now: f64 },
    /// The connection changed.
    Connection(Connection),
    /// Show only some tasks.
    Filter(Filter),
    /// A message for the user (for example a failed cancel).
    Notify { text: String, tone: Tone },
    /// The user closed a toast.
    Dismiss(u64),
    /// A share link was made for the task (`url`: the whole link).
    Shared { task_no: String, url: String },
    /// The task's share link was revoked.
    Unshared(String),
}

/// How far along a status is: API data older than a live update must not undo it.
fn rank(update: &TaskProgressDto) -> (u8, u8) {
    let status = match update.status {
        TaskStatus::Created => 0,
        TaskStatus::Queued => 1,
        TaskStatus::Processing => 2,
        TaskStatus::Completed | TaskStatus::Failed => 3,
    };
    (status, if update.status == TaskStatus::Processing { update.progress } else { 0 })
}

impl Board {
    /// The tasks the filter lets through, newest first.
    pub fn visible(&self) -> impl Iterator<Item = &TaskEntry> {
        self.tasks.iter().filter(|t| self.filter.admits(t.update.status))
    }

    /// How many tasks each filter would show.
    pub fn count(&self, filter: Filter) -> usize {
        self.tasks.iter().filter(|t| filter.admits(t.update.status)).count()
    }

    fn entry(&mut self, task_no: &str) -> Option<&mut TaskEntry> {
        self.tasks.iter_mut().find(|t| t.update.task_no == task_no)
    }

    fn insert(&mut self, entry: TaskEntry) {
        let at = self.tasks.iter().position(|t| t.created_at < entry.created_at);
        self.tasks.insert(at.unwrap_or(self.tasks.len()), entry);
    }

    fn toast(&mut self, text: String, tone: Tone, task_no: Option<String>) {
        self.toasts.push(Toast { id: self.next_toast, text, tone, task_no });
        self.next_toast += 1;
        // Keep the corner readable.
        if self.toasts.len() > 4 {
            self.toasts.remove(0);
        }
    }

    /// Takes `details` unless the board already holds a newer state of that task.
    fn merge_details(&mut self, details: TaskDetails) {
        let created_at = details.created_at as f64;
        let finished_at = details.finished_at.map(|t| t as f64);
        match self.entry(&details.progress.task_no) {
            Some(entry) => {
                entry.request = Some(details.request);
                entry.created_at = created_at;
                entry.shared = details.shared;
                if !details.shared {
                    entry.share_url = None;
                }
                if rank(&details.progress) >= rank(&entry.update) {
                    entry.update = details.progress;
                }
                entry.finished_at = entry.finished_at.or(finished_at);
            }
            None => self.insert(TaskEntry {
                update: details.progress,
                request: Some(details.request),
                created_at,
                finished_at,
                live_rank: None,
                shared: details.shared,
                share_url: None,
            }),
        }
        self.tasks.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    }

    fn apply_update(&mut self, update: TaskProgressDto, now: f64) {
        let task_no = update.task_no.clone();
        let finished = update.status.is_terminal();
        let announce = match self.entry(&task_no) {
            Some(entry) => {
                // Live updates arrive in the server's order (the client drops replays it
                // already applied), so a step back of the live stream itself is the truth: a
                // task that was running when the server restarted goes back to `queued`.
                // But one behind what the API already showed, while the live stream still
                // moves forward, was in flight when the API answered: the newer state stays.
                let incoming = rank(&update);
                let in_flight = rank(&entry.update) > incoming
                    && entry.live_rank.is_none_or(|last| incoming >= last);
                entry.live_rank = Some(incoming);
                if in_flight {
                    return;
                }
                let was_running = !entry.update.status.is_terminal();
                if finished && entry.finished_at.is_none() {
                    entry.finished_at = Some(now);
                }
                entry.update = update.clone();
                was_running && finished
            }
            None => {
                self.insert(TaskEntry::seen(update.clone(), now));
                false
            }
        };
        if announce {
            let short = short_task_no(&task_no);
            match update.status {
                TaskStatus::Completed => {
                    self.toast(format!("Task {short} completed"), Tone::Success, Some(task_no))
                }
                _ => self.toast(
                    format!(
                        "Task {short} failed: {}",
                        update.error_message.as_deref().unwrap_or("no reason given")
                    ),
                    Tone::Failure,
                    Some(task_no),
                ),
            }
        }
    }
}

/// The first 8 characters of a task number, enough to tell tasks apart on screen.
pub fn short_task_no(task_no: &str) -> &str {
    task_no.get(..8).unwrap_or(task_no)
}

impl Reducible for Board {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        let mut board = (*self).clone();
        match action {
            Action::Loaded { tasks, older } => {
                for details in tasks {
                    board.merge_details(details);
                }
                if !board.older_added {
                    board.older = older;
                }
            }
            Action::LoadingOlder => board.loading_older = board.older.is_some(),
            Action::LoadedOlder(page) => {
                board.loading_older = false;
                if let Some((tasks, older)) = page {
                    for details in tasks {
                        board.merge_details(details);
                    }
                    board.older = older;
                    board.older_added = true;
                }
            }
            Action::Details(details) => board.merge_details(details),
            Action::Update { update, now } => board.apply_update(update, now),
            Action::Submitted { task_no, request, now } => {
                if board.entry(&task_no).is_none() {
                    board.insert(TaskEntry {
                        update: TaskProgressDto::new(&task_no, TaskStatus::Created, 0, "submitted"),
                        request: Some(request),
                        created_at: now,
                        finished_at: None,
                        live_rank: None,
                        shared: false,
                        share_url: None,
                    });
                } else if let Some(entry) = board.entry(&task_no) {
                    entry.request.get_or_insert(request);
                }
            }
            Action::Connection(connection) => board.connection = connection,
            Action::Filter(filter) => board.filter = filter,
            Action::Notify { text, tone } => board.toast(text, tone, None),
            Action::Dismiss(id) => board.toasts.retain(|t| t.id != id),
            Action::Shared { task_no, url } => {
                if let Some(entry) = board.entry(&task_no) {
                    entry.shared = true;
                    entry.share_url = Some(url);
                }
            }
            Action::Unshared(task_no) => {
                if let Some(entry) = board.entry(&task_no) {
                    entry.shared = false;
                    entry.share_url = None;
                }
            }
        }
        Rc::new(board)
    }
}
