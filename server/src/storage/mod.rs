//! Durable state behind one small trait: accounts, revoked tokens, tasks and their pushed
//! history, share links, the user log. [`SqlStorage`] implements it on SQLite (the default) and
//! PostgreSQL.
//!
//! Every method is one transaction, so a crash leaves either the old or the new state.

mod group;
mod metered;
mod sql;

use async_trait::async_trait;
pub use metered::Metered;
pub use sql::{Backend, SqlStorage};
use taskpulse_shared::{
    TaskProgressDto,
    dto::{SubmitTaskRequest, TaskEvent, TaskStatus},
};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The login name and STOMP principal.
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Credit balance (meaningful when credits are on).
    pub credits: i64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Insertion order; the list cursor.
    pub id: i64,
    /// Owner's principal.
    pub owner: String,
    /// What was asked.
    pub request: SubmitTaskRequest,
    /// The state last pushed (result URLs unsigned).
    pub state: TaskProgressDto,
    /// Credits reserved for it.
    pub cost: i64,
    /// Which executor runs it.
    pub executor: String,
    /// The executor's own id for it (ComfyUI's `prompt_id`).
    pub external_ref: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// Milliseconds since the Unix epoch, once terminal.
    pub finished_at: Option<i64>,
}

/// A task's share link as stored: whoever holds the token may watch that one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    /// The task (a task has at most one link).
    pub task_no: String,
    /// Its owner.
    pub owner: String,
    /// The SHA-256 of the link's token, hex: the token itself is never stored.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// One message of a user's log: what was sent to `/user{path}` as number `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The user.
    pub user: String,
    /// Position in the user's log, strictly increasing. Storage allocates it, in the
    /// transaction that stores the entry; what a caller puts here when appending is ignored.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// The user path, e.g. `/queue/tasks-progress`.
    pub path: String,
    /// The body's content type.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// The task this entry is a change of; `None` for a notice. A replay or a gap fill
    /// gives it back as its coalesce key, which a share link's watchers are filtered by.
    pub task_no: Option<String>,
}

/// Which of a user's tasks to list.
#[derive(Debug, Clone, Copy)]
pub struct TaskQuery<'a> {
    /// Owner.
    pub owner: &'a str,
    /// Only tasks older than this id.
    pub before: Option<i64>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// At most this many.
    pub limit: u32,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The username is taken.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// The owner cannot pay for the task.
    #[error("insufficient credits: the task costs {cost}, the balance is {balance}")]
    InsufficientCredits {
        /// Price of the task.
        cost: i64,
        /// What the user has.
        balance: i64,
    },
    /// `[storage] url` names no supported database.
    #[error("storage.url {0:?} is neither sqlite://<path> nor postgres://... (postgresql://...)")]
    Url(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database failed to migrate.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored document no longer parses.
    #[error("corrupt row for {0}: {1}")]
    Corrupt(String, String),
    /// The group commit this write was part of failed (the reason is the batch's).
    #[error("the group commit this write was part of failed: {0}")]
    Batch(String),
}

/// A user had no subscriber on a path from `seq` on (see [`Storage::mark_offline_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMark {
    /// The user.
    pub user: String,
    /// The user path.
    pub path: String,
    /// The first message the user missed there.
    pub seq: i64,
}

/// A task change, stored in the transaction that stores the log entry announcing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskChange {
    /// A new task (its state `created`), charged `cost` credits.
    Insert(Box<TaskRecord>),
    /// A task's new state, as of the entry's `at`; refused when the task is already
    /// terminal. A `failed` state refunds the task's cost.
    Update(TaskProgressDto),
    /// A task's `completed` state with its result file (see [`Storage::result`]), stored
    /// together: an [`TaskChange::Update`] that also keeps the file.
    Complete(TaskProgressDto, Vec<u8>),
}

impl TaskChange {
    /// The task's state after the change.
    pub fn state(&self) -> &TaskProgressDto {
        match self {
            TaskChange::Insert(task) => &task.state,
            TaskChange::Update(state) | TaskChange::Complete(state, _) => state,
        }
    }
}

/// One numbered push of a group commit: an entry for a user's log and, for a task update,
/// the change it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The entry; storage sets its `seq` when it is stored.
    pub entry: LogEntry,
    /// The task change stored with it, if any.
    pub task: Option<TaskChange>,
}

/// What became of one [`Append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored; its entry has its `seq`.
    Stored,
    /// Its task had already ended (or is unknown): nothing stored.
    Ended,
    /// Its owner cannot pay for the new task: nothing stored.
    Unpaid {
        /// Price of the task.
        cost: i64,
        /// What the owner has.
        balance: i64,
    },
}

/// Durable state. Implementations are shared as `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Creates an account.
    ///
    /// # Errors
    /// [`StorageError::UserExists`] when the name is taken.
    async fn create_user(&self, user: &UserRecord, now: i64) -> Result<(), StorageError>;

    /// Looks an account up.
    async fn user(&self, username: &str) -> Result<Option<UserRecord>, StorageError>;

    /// Records a revoked token id until its expiry.
    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StorageError>;

    /// Token ids revoked and not yet expired at `now` (expired ones are forgotten).
    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StorageError>;

    /// The log's epoch: fixed for the life of the database.
    async fn epoch(&self) -> Result<String, StorageError>;

    /// Stores a group of numbered pushes in one transaction (the group commit): each
    /// [`Append`]'s task change, if any, with its history row, and its entry, numbered (it
    /// sets `seq`): a user's entries take that user's next numbers in the order given. An
    /// append whose task change is refused ([`Appended::Ended`], [`Appended::Unpaid`])
    /// stores nothing and takes no number; the others are stored together or, on an error,
    /// not at all. Returns one outcome per append, in order.
    async fn append(&self, group: &mut [Append]) -> Result<Vec<Appended>, StorageError>;

    /// Stores a new task and its first event, taking `task.cost` credits from the owner, and
    /// appends `log` (the push that announces it) in the same transaction. Returns the `seq`
    /// it gave `log`. One [`Storage::append`].
    ///
    /// # Errors
    /// [`StorageError::InsufficientCredits`] when the balance is below the cost.
    async fn insert_task(&self, task: &TaskRecord, log: &LogEntry) -> Result<i64, StorageError> {
        let change = TaskChange::Insert(Box::new(task.clone()));
        let mut group = [Append { entry: log.clone(), task: Some(change) }];
        match self.append(&mut group).await?.pop() {
            Some(Appended::Unpaid { cost, balance }) => {
                Err(StorageError::InsufficientCredits { cost, balance })
            }
            _ => Ok(group[0].entry.seq),
        }
    }

    /// Stores a task's new state (as of `log.at`), appends it to the history and `log` to the
    /// user's log, and returns the `seq` it gave `log`; unless the task is already terminal
    /// (then nothing changes and `None` is returned). A `failed` state refunds the task's
    /// cost to the owner in the same transaction. One [`Storage::append`].
    async fn update_task(
        &self,
        state: &TaskProgressDto,
        log: &LogEntry,
    ) -> Result<Option<i64>, StorageError> {
        let change = TaskChange::Update(state.clone());
        let mut group = [Append { entry: log.clone(), task: Some(change) }];
        let stored = self.append(&mut group).await?.pop() == Some(Appended::Stored);
        Ok(stored.then_some(group[0].entry.seq))
    }

    /// Appends one message that is not a task change; returns the `seq` it was given. One
    /// [`Storage::append`].
    async fn append_log(&self, entry: &LogEntry) -> Result<i64, StorageError> {
        let mut group = [Append { entry: entry.clone(), task: None }];
        self.append(&mut group).await?;
        Ok(group[0].entry.seq)
    }

    /// Every user with a log (entries or only their counter) or a task: whoever a catch-up
    /// may find something stored for.
    async fn users_with_log(&self) -> Result<Vec<String>, StorageError>;

    /// The lowest and the highest `seq` kept in `user`'s log; `(0, 0)` when it is empty.
    async fn log_range(&self, user: &str) -> Result<(i64, i64), StorageError>;

    /// `user`'s entries for `path` (every path: `None`) after `after`, oldest first, at
    /// most `limit`.
    async fn log_after(
        &self,
        user: &str,
        path: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StorageError>;

    /// Forgets entries older than `before` (ms) and all but the newest `keep` per user;
    /// returns how many went. The newest entry of each user is always kept, so `seq` never
    /// restarts.
    async fn prune_log(&self, before: i64, keep: u32) -> Result<u64, StorageError>;

    /// Forgets task events stored before `before` (ms); returns how many went.
    async fn prune_events(&self, before: i64) -> Result<u64, StorageError>;

    /// How many entries every user's log holds together.
    async fn log_size(&self) -> Result<u64, StorageError>;

    /// Remembers, for each `(user, path, seq)`, that `user` had no subscriber on `path` from
    /// `seq` on (a mark already set is kept; of several for one path the first counts).
    async fn mark_offline_many(&self, marks: &[OfflineMark]) -> Result<(), StorageError>;

    /// [`Storage::mark_offline_many`] for one mark.
    async fn mark_offline(&self, user: &str, path: &str, seq: i64) -> Result<(), StorageError> {
        let mark = OfflineMark { user: user.to_owned(), path: path.to_owned(), seq };
        self.mark_offline_many(std::slice::from_ref(&mark)).await
    }

    /// Takes (and forgets) the mark of `user` on `path`.
    async fn take_offline(&self, user: &str, path: &str) -> Result<Option<i64>, StorageError>;

    /// The paths that have a mark for some user.
    async fn offline_paths(&self) -> Result<Vec<String>, StorageError>;

    /// `owner`'s tasks that are unfinished or finished at or after `finished_since`,
    /// oldest first, at most `limit`.
    async fn snapshot_tasks(
        &self,
        owner: &str,
        finished_since: i64,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StorageError>;

    /// Remembers the executor's id for a task.
    async fn set_external_ref(&self, task_no: &str, external_ref: &str)
    -> Result<(), StorageError>;

    /// One task.
    async fn task(&self, task_no: &str) -> Result<Option<TaskRecord>, StorageError>;

    /// A page of one user's tasks, newest first.
    async fn tasks(&self, query: TaskQuery<'_>) -> Result<Vec<TaskRecord>, StorageError>;

    /// A task's pushed history, oldest first.
    async fn events(&self, task_no: &str) -> Result<Vec<TaskEvent>, StorageError>;

    /// Every task not yet `completed` or `failed`, oldest first.
    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, StorageError>;

    /// Stores (or replaces) a task's result file.
    async fn put_result(&self, task_no: &str, bytes: &[u8], now: i64) -> Result<(), StorageError>;

    /// A task's result file, if one was stored.
    async fn result(&self, task_no: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Holds `node`'s leases on `tasks` until `until` (ms): a task without a lease gets one,
    /// `node`'s are extended, another node's is left alone; leases of finished tasks are
    /// forgotten. Returns the tasks of `tasks` whose lease another node holds, or that ended.
    async fn renew_leases(
        &self,
        node: &str,
        tasks: &[String],
        until: i64,
    ) -> Result<Vec<String>, StorageError>;

    /// Takes over, for `node` until `until`, every unfinished task whose lease expired
    /// before `now`, or that has none and was created before `unleased_before`; returns
    /// them. Two nodes never take the same task.
    async fn take_over(
        &self,
        node: &str,
        now: i64,
        unleased_before: i64,
        until: i64,
    ) -> Result<Vec<TaskRecord>, StorageError>;

    /// Stores `share` as its task's link, replacing the one it had; returns the replaced
    /// link's id.
    async fn put_share(&self, share: &ShareRecord) -> Result<Option<String>, StorageError>;

    /// Deletes a task's link; returns its id, or `None` when it had none.
    async fn delete_share(&self, task_no: &str) -> Result<Option<String>, StorageError>;

    /// Every share link.
    async fn shares(&self) -> Result<Vec<ShareRecord>, StorageError>;

    /// The secret called `name` that every server sharing this database uses: the stored one,
    /// or `candidate` if none was stored yet (it is stored then; the first server wins).
    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StorageError>;
}
