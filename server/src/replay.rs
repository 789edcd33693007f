//! The per-user log behind "never lose a final status". Every message to a user's private
//! destinations takes the next `seq` of that user, is stored with it, and is then sent with
//! `seq` and `epoch` headers. A SUBSCRIBE carrying `x-resume-epoch`/`x-resume-seq` gets exactly
//! what it missed; when the log no longer covers that (pruned, another epoch, too far behind),
//! and on a plain SUBSCRIBE to `/user/queue/tasks-progress`, it gets a snapshot of the user's
//! tasks instead. Messages sent while a user had no subscriber on a path are replayed on the
//! next plain SUBSCRIBE to it (the seed's offline queue).
//!
//! Invariant: every numbered push, a notice or a task change, goes through one committer
//! task (the group commit), which stores a group, then sends it in `seq` order, before it
//! takes the next group; so on a node, send order is `seq` order for every user.
//!
//! A node alone also knows, from the committer, which users have anything stored (see
//! [`StoredUsers`]): a SUBSCRIBE of anyone else has nothing to catch up and reads nothing.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use taskpulse_shared::resume::ResumePosition;
pub use taskpulse_shared::resume::TASKS_PATH;
use tokio::sync::{mpsc, oneshot};

use crate::{
    ReplaySettings,
    broker::{Broker, Coalesce, Fanout, LogPlace, Publication, ReplayRequest, ReplaySource},
    metrics::Metrics,
    now_ms,
    storage::{Append, Appended, LogEntry, OfflineMark, Storage, StorageError, TaskChange},
};

/// Pushes one group commit takes at most.
const MAX_GROUP: usize = 1_000;

/// Pushes waiting for a group commit at most; senders wait beyond it.
const GROUP_QUEUE: usize = 10_000;

/// A push waiting for the next group commit, and who waits for its outcome.
#[derive(Debug)]
struct Pending {
    append: Append,
    coalesce: Option<Coalesce>,
    /// How many subscriptions took it once stored and sent; `None` when its task change was
    /// refused because the task had ended.
    outcome: oneshot::Sender<Result<Option<usize>, StorageError>>,
}

/// How a caller awaits its push's outcome (see [`UserLog::submit`]).
type Outcome = Result<Option<usize>, StorageError>;

/// Where a snapshot's documents come from: the current state of a user's tasks. The task
/// service knows what those are; the log only numbers, stores and sends, so it depends on
/// this trait and never on the task service.
#[async_trait::async_trait]
pub trait SnapshotSource: Send + Sync + std::fmt::Debug {
    /// `user`'s unfinished tasks and those finished at or after `finished_since` (ms), oldest
    /// first, at most `limit`, each as the JSON document its subscribers receive.
    ///
    /// # Errors
    /// Storage failed.
    async fn snapshot(
        &self,
        user: &str,
        finished_since: i64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StorageError>;

    /// One task of `user`'s as its subscribers receive it, if `user` owns it: a share link
    /// watcher's catch-up.
    ///
    /// # Errors
    /// Storage failed.
    async fn task(&self, user: &str, task_no: &str) -> Result<Option<Vec<u8>>, StorageError>;
}

/// What one replayed or snapshot message costs beyond its body in an outbound buffer: the
/// destination, ids and the guarantee's headers (see `broker::Message::cost`).
const REPLAY_OVERHEAD: usize = 256;

/// What a resume position gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The log covers it: the entries after this `seq`.
    Replay {
        /// The last `seq` the client has.
        after: i64,
    },
    /// The log does not cover it: resynchronise from a snapshot.
    Snapshot,
}

/// Decides between replay and snapshot for a client at `(client_epoch, client_seq)`, given
/// the log's epoch and the lowest and highest `seq` it keeps for the user.
pub fn plan(
    client_epoch: &str,
    client_seq: i64,
    epoch: &str,
    (low, high): (i64, i64),
    max_replay: u32,
) -> Plan {
    let covered = client_epoch == epoch
        && client_seq <= high
        // Everything after client_seq is still kept (an empty log keeps everything after 0).
        && (high == client_seq || low <= client_seq + 1)
        && high - client_seq <= i64::from(max_replay);
    if covered { Plan::Replay { after: client_seq } } else { Plan::Snapshot }
}

/// The log and its sequencer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    fanout: Arc<dyn Fanout>,
    snapshots: Arc<dyn SnapshotSource>,
    /// Half of `limits.outbound_buffer`: the largest catch-up a connection can take.
    catch_up_budget: usize,
    epoch: Arc<str>,
    settings: ReplaySettings,
    /// Paths with an offline mark for some user (the marks themselves are stored).
    offline_paths: Mutex<HashSet<String>>,
    /// Who may have something to catch up with.
    stored_users: StoredUsers,
    /// Notices on their way to the group commit (see [`UserLog::send`]).
    commits: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
}

impl UserLog {
    /// Reads the epoch, installs the log as the broker's replay source and starts pruning;
    /// pushes go through `fanout`.
    ///
    /// # Errors
    /// Storage failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        broker: &Broker,
        fanout: Arc<dyn Fanout>,
        snapshots: Arc<dyn SnapshotSource>,
        settings: ReplaySettings,
    ) -> Result<UserLog, StorageError> {
        let epoch = Arc::from(storage.epoch().await?);
        let offline_paths = storage.offline_paths().await?.into_iter().collect();
        let stored_users = StoredUsers::default();
        stored_users.add(storage.users_with_log().await?.iter().map(String::as_str));
        let (commits, queue) = mpsc::channel(GROUP_QUEUE);
        let log = UserLog {
            inner: Arc::new(Inner {
                storage,
                fanout,
                snapshots,
                catch_up_budget: broker.settings().limits.outbound_buffer / 2,
                epoch,
                settings,
                offline_paths: Mutex::new(offline_paths),
                stored_users,
                commits,
                metrics: broker.metrics().clone(),
            }),
        };
        broker.set_replay_source(Arc::new(log.clone()));
        tokio::spawn(prune(Arc::downgrade(&log.inner)));
        tokio::spawn(group_commit(Arc::downgrade(&log.inner), queue));
        Ok(log)
    }

    /// The log's epoch.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// Appends and sends a message that is not a task change (a notice, a queue position);
    /// returns how many subscriptions took it. Pushes that queue up while a commit runs
    /// are stored together in the next one (group commit), then sent in `seq` order; each
    /// caller is answered after its commit. When nobody subscribed there, the path is marked
    /// so that the next plain SUBSCRIBE replays it (task updates need no mark: their
    /// SUBSCRIBE gets a snapshot).
    ///
    /// # Errors
    /// Storage failed; nothing was sent, or the mark was not stored.
    pub async fn send(
        &self,
        user: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        coalesce: Option<Coalesce>,
    ) -> Result<usize, StorageError> {
        self.submit(user, path, content_type, body, coalesce).await?.await
    }

    /// Queues a notice for the next group commit (waiting while the queue is full) and
    /// returns its outcome to await: what [`UserLog::send`] does in two steps, so that a
    /// caller with many notices queues them all, in order, before waiting.
    ///
    /// # Errors
    /// The log is shutting down.
    pub async fn submit(
        &self,
        user: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        coalesce: Option<Coalesce>,
    ) -> Result<impl Future<Output = Result<usize, StorageError>> + use<>, StorageError> {
        let entry = new_entry(user, path, content_type, body);
        let answer = self.queue(Append { entry, task: None }, coalesce).await?;
        // Only a task change can be refused as ended.
        Ok(async move { Ok(answer.await?.unwrap_or(0)) })
    }

    /// Stores a task change with its push to the owner's tasks path (one group commit, like
    /// a notice), then sends it; returns how many subscriptions took it, or `None` when the
    /// change was refused because the task had already ended (nothing stored or sent).
    ///
    /// # Errors
    /// [`StorageError::InsufficientCredits`] for a new task its owner cannot pay; storage
    /// failed.
    pub async fn record(
        &self,
        owner: &str,
        body: Vec<u8>,
        change: TaskChange,
        coalesce: Coalesce,
    ) -> Outcome {
        let mut entry = new_entry(owner, TASKS_PATH, "application/json", body);
        entry.task_no = Some(coalesce.key.to_string());
        self.queue(Append { entry, task: Some(change) }, Some(coalesce)).await?.await
    }

    async fn queue(
        &self,
        append: Append,
        coalesce: Option<Coalesce>,
    ) -> Result<impl Future<Output = Outcome> + use<>, StorageError> {
        let (outcome, answer) = oneshot::channel();
        let stopped = || StorageError::Batch("the log is shutting down".into());
        self.inner
            .commits
            .send(Pending { append, coalesce, outcome })
            .await
            .map_err(|_| stopped())?;
        Ok(async move { answer.await.map_err(|_| stopped())? })
    }

    /// Stores `group` in one transaction, then sends what was stored in `seq` order and
    /// answers each caller. The committer is the only sender of numbered pushes, so nothing
    /// else can interleave.
    async fn commit_group(&self, group: Vec<Pending>) {
        let (mut appends, waiting): (Vec<Append>, Vec<_>) =
            group.into_iter().map(|p| (p.append, (p.coalesce, p.outcome))).unzip();
        // Before anything is stored, so a SUBSCRIBE that finds a user without anything stored
        // subscribed before this group's delivery (see `StoredUsers`).
        self.inner.stored_users.add(appends.iter().map(|a| a.entry.user.as_str()));
        let outcomes = match self.inner.storage.append(&mut appends).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                let why = error.to_string();
                tracing::warn!(pushes = appends.len(), "group commit failed: {why}");
                for (_, outcome) in waiting {
                    let _ = outcome.send(Err(StorageError::Batch(why.clone())));
                }
                return;
            }
        };
        let mut marks = Vec::new();
        let mut results = Vec::with_capacity(appends.len());
        for ((append, stored), (coalesce, _)) in appends.iter().zip(outcomes).zip(&waiting) {
            let entry = &append.entry;
            let result = match stored {
                Appended::Stored => {
                    let taken = self.deliver(entry, coalesce.clone());
                    // For the offline queue only when nobody listens on the path, here or on
                    // another node (a subscriber elsewhere gets it through the bus).
                    let marked = taken == 0
                        && entry.path != TASKS_PATH
                        && !self.inner.fanout.listened(&entry.user, &entry.path);
                    if marked {
                        marks.push(OfflineMark {
                            user: entry.user.clone(),
                            path: entry.path.clone(),
                            seq: entry.seq,
                        });
                    }
                    (Ok(Some(taken)), marked)
                }
                Appended::Ended => (Ok(None), false),
                Appended::Unpaid { cost, balance } => {
                    (Err(StorageError::InsufficientCredits { cost, balance }), false)
                }
            };
            results.push(result);
        }
        let marked = if marks.is_empty() {
            Ok(())
        } else {
            self.inner.storage.mark_offline_many(&marks).await
        };
        match &marked {
            Ok(()) => self.inner.offline_paths.lock().extend(marks.into_iter().map(|m| m.path)),
            Err(error) => {
                tracing::warn!(marks = marks.len(), "cannot store offline marks: {error}")
            }
        }
        for ((_, outcome), (result, needs_mark)) in waiting.into_iter().zip(results) {
            let result = match &marked {
                Err(error) if needs_mark => Err(StorageError::Batch(error.to_string())),
                _ => result,
            };
            let _ = outcome.send(result);
        }
    }

    /// Hands a stored entry to its user's sessions; returns how many subscriptions took it.
    fn deliver(&self, entry: &LogEntry, coalesce: Option<Coalesce>) -> usize {
        let mut publication = self.publication(entry, false);
        if let Some(coalesce) = coalesce {
            publication = publication.coalesce(coalesce);
        }
        self.inner.fanout.to_user(&entry.user, &entry.path, publication)
    }

    fn publication(&self, entry: &LogEntry, replayed: bool) -> Publication {
        logged(entry.clone(), &self.inner.epoch, replayed)
    }

    async fn serve(&self, request: ReplayRequest) -> Result<(), StorageError> {
        let ReplayRequest { user, path, resume, task, held } = request;
        let settings = &self.inner.settings;
        // On a node of several: what is committed from now on reaches this node, so nothing
        // falls between the storage read below and the live messages after it.
        held.ready(&user).await;
        let stored = self.stored(&user);
        if let Some(task) = task {
            // A share link's watcher: its task's current state, whatever it last saw (one
            // document is as cheap as a replay, and a replay of the owner's log would be
            // filtered to nearly nothing).
            let (_, high) = stored.range().await?;
            let document = stored.task(&task).await?;
            let snapshot = document.map(|body| {
                Publication::json(body).at(LogPlace::Snapshot {
                    index: 1,
                    count: 1,
                    seq: high,
                    epoch: self.inner.epoch.clone(),
                })
            });
            self.inner.metrics.caught_up("snapshot", 1);
            held.release(snapshot.into_iter().collect(), Some(high));
            return Ok(());
        }
        let after = match resume {
            Some(ResumePosition { epoch, seq }) => {
                let range = stored.range().await?;
                match plan(&epoch, seq, &self.inner.epoch, range, settings.max_replay) {
                    Plan::Replay { after } => Some(after),
                    Plan::Snapshot => None,
                }
            }
            // A plain SUBSCRIBE gets what was sent there while nobody listened; without a
            // mark, live messages only (no floor: every later message is new to it).
            None if path != TASKS_PATH => stored.take_offline(&path).await?.map(|first| first - 1),
            None => None,
        };
        // A catch-up must fit the connection's outbound budget with room for live traffic;
        // one that does not is treated like one too far behind.
        let budget = self.inner.catch_up_budget;
        let mut after = after;
        let mut entries = Vec::new();
        if let Some(from) = after {
            entries = stored.log_after(&path, from).await?;
            let bytes: usize = entries.iter().map(|e| e.body.len() + REPLAY_OVERHEAD).sum();
            if bytes > budget {
                tracing::info!(%user, %path, bytes, budget, "catch-up larger than half of limits.outbound_buffer; not replayed");
                after = None;
                entries.clear();
            }
        }
        if let Some(after) = after {
            let up_to = entries.last().map_or(after, |e| e.seq);
            let replay: Vec<_> = entries.iter().map(|e| self.publication(e, true)).collect();
            if !replay.is_empty() {
                self.inner.metrics.caught_up("replay", replay.len() as u64);
            }
            held.release(replay, Some(up_to));
            return Ok(());
        }
        if path != TASKS_PATH {
            // Nothing to rebuild a notice stream from: live messages only.
            held.release(Vec::new(), None);
            return Ok(());
        }
        // The position first, then the tasks: a change stored in between is in the snapshot
        // and also comes live after it (the same state twice, never an older one).
        let (_, high) = stored.range().await?;
        let documents = stored.snapshot().await?;
        // Task documents are bounded (tasks::MAX_TEXT_CHARS per text field), so a snapshot of
        // `replay.snapshot_limit` of them fits; the newest come first if one ever does not.
        let mut bodies = Vec::with_capacity(documents.len());
        let mut bytes = 0;
        for body in documents {
            bytes += body.len() + REPLAY_OVERHEAD;
            if bytes > budget {
                tracing::warn!(%user, "snapshot cut at {} tasks by limits.outbound_buffer", bodies.len());
                break;
            }
            bodies.push(body);
        }
        let count = bodies.len();
        let snapshot = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                Publication::json(body).at(LogPlace::Snapshot {
                    index: i + 1,
                    count,
                    seq: high,
                    epoch: self.inner.epoch.clone(),
                })
            })
            .collect();
        self.inner.metrics.caught_up("snapshot", count as u64);
        held.release(snapshot, Some(high));
        Ok(())
    }

    /// What a catch-up of `user` reads, through the storage reads it may skip.
    fn stored<'a>(&'a self, user: &'a str) -> StoredFor<'a> {
        // On a node of several, another node may have stored something: storage is asked.
        let nothing = !self.inner.fanout.clustered() && !self.inner.stored_users.may_have(user);
        StoredFor { log: self, user, nothing }
    }
}

/// A catch-up's storage reads for one user. When the node knows that the user has nothing
/// stored (see [`StoredUsers`]), each answers empty without asking storage, as storage would
/// have: a new user's SUBSCRIBE costs no round trip to the database.
struct StoredFor<'a> {
    log: &'a UserLog,
    user: &'a str,
    nothing: bool,
}

impl StoredFor<'_> {
    /// See [`Storage::log_range`].
    async fn range(&self) -> Result<(i64, i64), StorageError> {
        if self.nothing { Ok((0, 0)) } else { self.log.inner.storage.log_range(self.user).await }
    }

    /// See [`SnapshotSource::task`].
    async fn task(&self, task: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if self.nothing { Ok(None) } else { self.log.inner.snapshots.task(self.user, task).await }
    }

    /// See [`Storage::take_offline`].
    async fn take_offline(&self, path: &str) -> Result<Option<i64>, StorageError> {
        if self.nothing {
            return Ok(None);
        }
        self.log.inner.storage.take_offline(self.user, path).await
    }

    /// The entries for `path` after `from`, at most `replay.max_replay` (see
    /// [`Storage::log_after`]).
    async fn log_after(&self, path: &str, from: i64) -> Result<Vec<LogEntry>, StorageError> {
        if self.nothing {
            return Ok(Vec::new());
        }
        let limit = self.log.inner.settings.max_replay;
        self.log.inner.storage.log_after(self.user, Some(path), from, limit).await
    }

    /// The user's unfinished and recently finished tasks, as `replay.snapshot_*` say (see
    /// [`SnapshotSource::snapshot`]).
    async fn snapshot(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        if self.nothing {
            return Ok(Vec::new());
        }
        let settings = &self.log.inner.settings;
        let since = now_ms() - (settings.snapshot_finished_s as i64) * 1000;
        self.log.inner.snapshots.snapshot(self.user, since, settings.snapshot_limit).await
    }
}

impl ReplaySource for UserLog {
    fn wants(&self, path: &str, resume: bool) -> bool {
        // On a node of several, another node may have marked any path: storage is asked.
        resume
            || path == TASKS_PATH
            || self.inner.fanout.clustered()
            || self.inner.offline_paths.lock().contains(path)
    }

    fn replay(&self, request: ReplayRequest) {
        let log = self.clone();
        tokio::spawn(async move {
            let user = request.user.clone();
            // On failure the held subscription is dropped, which releases it empty.
            if let Err(e) = log.serve(request).await {
                tracing::error!(%user, "replay failed: {e}");
            }
        });
    }
}

/// The users a node alone knows to have anything stored that a catch-up reads (log entries,
/// offline marks, tasks): those storage listed at start, and every user of a group commit
/// since, added before the group is stored. Users are kept as 64-bit hashes under a key
/// drawn at start (about 16 bytes each; a user is added at most once); a collision only costs
/// the storage reads this spares.
///
/// Why a user it does not list has nothing to catch up with, even racing a first push: the
/// SUBSCRIBE is registered (and held) before it asks, and the committer adds a user before
/// it stores, so a push this check missed is delivered after the registration, live.
#[derive(Debug, Default)]
struct StoredUsers {
    key: RandomState,
    hashes: Mutex<HashSet<u64>>,
}

impl StoredUsers {
    fn add<'a>(&self, users: impl Iterator<Item = &'a str>) {
        let hashes: Vec<u64> = users.map(|user| self.key.hash_one(user)).collect();
        self.hashes.lock().extend(hashes);
    }

    fn may_have(&self, user: &str) -> bool {
        let hash = self.key.hash_one(user);
        self.hashes.lock().contains(&hash)
    }
}

/// A stored entry as it is sent again (`replayed`: by a catch-up; else by a node that read
/// what the bus did not bring): at its place in the log of `epoch`, a task change with its
/// task as coalesce key (never merged away: it may be a status change).
pub(crate) fn logged(entry: LogEntry, epoch: &Arc<str>, replayed: bool) -> Publication {
    let place = LogPlace::Numbered { seq: entry.seq, epoch: epoch.clone(), replayed };
    let publication = Publication::new(&entry.content_type, entry.body).at(place);
    match entry.task_no {
        Some(task) => publication.coalesce(Coalesce { key: task.into(), replaceable: false }),
        None => publication,
    }
}

/// A new entry for `user`'s log, stamped now; storage gives it its `seq`.
fn new_entry(user: &str, path: &str, content_type: &str, body: Vec<u8>) -> LogEntry {
    LogEntry {
        user: user.to_owned(),
        seq: 0,
        at: now_ms(),
        path: path.to_owned(),
        content_type: content_type.to_owned(),
        body,
        task_no: None,
    }
}

/// Takes the notices that queued up (at most [`MAX_GROUP`]) and commits them together, one
/// group at a time, until the log is dropped.
async fn group_commit(log: std::sync::Weak<Inner>, mut queue: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let Some(inner) = log.upgrade() else { return };
        UserLog { inner }.commit_group(std::mem::take(&mut group)).await;
    }
}

/// Forgets old entries once a minute.
async fn prune(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Some(inner) = inner.upgrade() else { return };
        let settings = &inner.settings;
        let before = now_ms() - (settings.max_age_s as i64) * 1000;
        let removed = match inner.storage.prune_log(before, settings.max_entries).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot prune the user log: {e}");
                continue;
            }
        };
        if removed > 0 {
            tracing::debug!(removed, "pruned the user log");
        }
        if let Ok(left) = inner.storage.log_size().await {
            inner.metrics.log_pruned(removed, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use taskpulse_shared::{
        TaskProgressDto, TaskStatus,
        dto::{AspectRatio, SubmitTaskRequest},
    };

    use super::*;
    use crate::{
        broker::Authenticator,
        config::Settings,
        storage::{SqlStorage, TaskRecord},
    };

    const E: &str = "e1";

    #[derive(Debug)]
    struct NoTasks;

    #[async_trait::async_trait]
    impl SnapshotSource for NoTasks {
        async fn snapshot(&self, _: &str, _: i64, _: u32) -> Result<Vec<Vec<u8>>, StorageError> {
            Ok(Vec::new())
        }

        async fn task(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StorageError> {
            Ok(None)
        }
    }

    async fn log() -> UserLog {
        let mut settings = Settings::default();
        settings.jwt.secret = "replay-unit-tests-secret-of-32-bytes".into();
        let auth = Authenticator::new(&settings.jwt, &settings.auth).expect("valid settings");
        let broker = Broker::new(settings.clone(), auth, Arc::default());
        let storage = Arc::new(SqlStorage::in_memory().await.expect("in-memory SQLite"));
        let fanout: Arc<dyn Fanout> = Arc::new(broker.clone());
        UserLog::start(storage, &broker, fanout, Arc::new(NoTasks), settings.replay)
            .await
            .expect("log starts")
    }

    #[tokio::test]
    async fn a_refused_task_change_takes_no_number_and_its_caller_learns_why() {
        let log = log().await;
        let key = || Coalesce { key: Arc::from("t1"), replaceable: false };
        let unknown = TaskProgressDto::new("t1", TaskStatus::Processing, 0, "started");
        let ended = log.record("alice", b"{}".to_vec(), TaskChange::Update(unknown), key()).await;
        assert!(matches!(ended, Ok(None)), "{ended:?}");
        let mut task = TaskRecord {
            id: 0,
            owner: "alice".into(),
            request: SubmitTaskRequest::TextToImage {
                prompt: "a lighthouse".into(),
                aspect_ratio: AspectRatio::Square,
            },
            state: TaskProgressDto::new("t1", TaskStatus::Created, 0, "created"),
            cost: 5,
            executor: "demo".into(),
            external_ref: None,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
        };
        let change = TaskChange::Insert(Box::new(task.clone()));
        let unpaid = log.record("alice", b"{}".to_vec(), change, key()).await;
        assert!(
            matches!(unpaid, Err(StorageError::InsufficientCredits { cost: 5, balance: 0 })),
            "{unpaid:?}"
        );
        assert_eq!(log.inner.storage.log_range("alice").await.expect("range"), (0, 0));
        task.cost = 0;
        let change = TaskChange::Insert(Box::new(task));
        let stored = log.record("alice", b"{}".to_vec(), change, key()).await;
        assert!(matches!(stored, Ok(Some(0))), "stored, nobody listening: {stored:?}");
        log.send("alice", "/queue/n", "text/plain", b"x".to_vec(), None).await.expect("sent");
        assert_eq!(log.inner.storage.log_range("alice").await.expect("range"), (1, 2));
        // Read back (a replay, a gap fill), the task change keeps its task as coalesce key,
        // which a share link's watchers are filtered by; the notice has none.
        let stored = log.inner.storage.log_after("alice", None, 0, 10).await.expect("read");
        let epoch: Arc<str> = Arc::from("e");
        let again: Vec<_> = stored.into_iter().map(|e| logged(e, &epoch, true).coalesce).collect();
        assert_eq!(again, [Some(key()), None]);
    }

    #[test]
    fn a_covered_gap_is_replayed() {
        assert_eq!(plan(E, 5, E, (1, 9), 100), Plan::Replay { after: 5 });
        // Pruned up to 6: entries 6.. are all there for a client at 5.
        assert_eq!(plan(E, 5, E, (6, 9), 100), Plan::Replay { after: 5 });
    }

    #[test]
    fn an_uncovered_gap_gets_a_snapshot() {
        assert_eq!(plan(E, 5, E, (7, 9), 100), Plan::Snapshot, "6 was pruned");
        assert_eq!(plan(E, 5, E, (1, 900), 100), Plan::Snapshot, "too far behind");
        assert_eq!(plan(E, 10, E, (1, 9), 100), Plan::Snapshot, "ahead of the log");
    }

    #[test]
    fn another_epoch_gets_a_snapshot() {
        assert_eq!(plan("e0", 5, E, (1, 9), 100), Plan::Snapshot);
        assert_eq!(plan("e0", 0, E, (0, 0), 100), Plan::Snapshot);
    }

    #[test]
    fn the_boundary_is_exact() {
        // Up to date: nothing to replay, no duplicate of the last one.
        assert_eq!(plan(E, 9, E, (1, 9), 100), Plan::Replay { after: 9 });
        // Only the newest entry kept and the client has it.
        assert_eq!(plan(E, 9, E, (9, 9), 100), Plan::Replay { after: 9 });
        // Exactly max_replay behind is still a replay; one more is not.
        assert_eq!(plan(E, 0, E, (1, 100), 100), Plan::Replay { after: 0 });
        assert_eq!(plan(E, 0, E, (1, 101), 100), Plan::Snapshot);
        // An empty log and a fresh client of this epoch.
        assert_eq!(plan(E, 0, E, (0, 0), 100), Plan::Replay { after: 0 });
    }
}
