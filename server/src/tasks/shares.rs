//! Share links: a task's owner hands out a token with which anyone can watch that one task
//! live (REST, STOMP, SSE) without an account, until the owner revokes it or shares again.

use std::sync::Arc;

use taskpulse_shared::{
    TaskProgressDto,
    dto::{ShareLink, TaskDetails},
};

use super::{TaskError, TaskService};

/// Why a share operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The caller has no such task.
    #[error("no task {0}")]
    NoTask(String),
    /// The task has no link to revoke.
    #[error("task {0} has no share link")]
    NoLink(String),
    /// No link has this token: never had, or it was revoked or replaced.
    #[error("unknown or revoked share link")]
    UnknownLink,
    /// The OS gave no randomness for a token.
    #[error("no randomness for a share token: {0}")]
    Randomness(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

use crate::{
    broker::{Broker, Fanout, SharedTask, share_id},
    now_ms,
    secret::random_hex,
    storage::{ShareRecord, Storage, StorageError},
};

/// Bytes of randomness in a share token (64 hex characters).
const TOKEN_BYTES: usize = 32;

/// Where the monitor shows a shared task; the token follows in the fragment.
pub const SHARE_PAGE: &str = "/share";

/// The share links: stored, and known to the broker's authenticator so that a CONNECT with
/// a link's token is checked without I/O. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskShares {
    storage: Arc<dyn Storage>,
    broker: Broker,
    fanout: Arc<dyn Fanout>,
    tasks: TaskService,
}

impl TaskShares {
    /// Loads the stored links into the broker's authenticator.
    ///
    /// # Errors
    /// Reading them failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        broker: Broker,
        fanout: Arc<dyn Fanout>,
        tasks: TaskService,
    ) -> Result<TaskShares, StorageError> {
        for share in storage.shares().await? {
            broker.authenticator().add_share(SharedTask {
                id: share.id,
                owner: share.owner,
                task_no: share.task_no,
            });
        }
        Ok(TaskShares { storage, broker, fanout, tasks })
    }

    /// A new link to `owner`'s task; the link it had stops working (its watchers are
    /// disconnected).
    ///
    /// # Errors
    /// [`ShareError::NoTask`] when `owner` has no such task; storage failed.
    pub async fn create(&self, owner: &str, task_no: &str) -> Result<ShareLink, ShareError> {
        self.owned(owner, task_no).await?;
        let token = random_hex(TOKEN_BYTES).map_err(|e| ShareError::Randomness(e.to_string()))?;
        let share = ShareRecord {
            task_no: task_no.to_owned(),
            owner: owner.to_owned(),
            id: share_id(&token),
            created_at: now_ms(),
        };
        let replaced = self.storage.put_share(&share).await?;
        if let Some(old) = replaced {
            self.forget(&old, task_no, owner, "the task's owner made a new share link");
        }
        let ShareRecord { id, created_at, .. } = share;
        let shared = SharedTask { id, owner: owner.to_owned(), task_no: task_no.to_owned() };
        self.broker.add_share(shared);
        Ok(ShareLink { url: format!("{SHARE_PAGE}#{token}"), token, created_at })
    }

    /// Revokes the link to `owner`'s task: it stops working and its watchers are
    /// disconnected.
    ///
    /// # Errors
    /// [`ShareError::NoTask`] when `owner` has no such task, [`ShareError::NoLink`] when
    /// it has no link; storage failed.
    pub async fn revoke(&self, owner: &str, task_no: &str) -> Result<(), ShareError> {
        self.owned(owner, task_no).await?;
        match self.storage.delete_share(task_no).await? {
            Some(id) => {
                self.forget(&id, task_no, owner, "the task's owner revoked the share link");
                Ok(())
            }
            None => Err(ShareError::NoLink(task_no.to_owned())),
        }
    }

    /// The task a link's `token` shows, as its subscribers receive it.
    ///
    /// # Errors
    /// [`ShareError::UnknownLink`] for an unknown or revoked link; storage failed.
    pub async fn task(&self, token: &str) -> Result<TaskProgressDto, ShareError> {
        let shared = self.broker.authenticator().shared(token).ok_or(ShareError::UnknownLink)?;
        match self.tasks.details(&shared.owner, &shared.task_no).await {
            Ok(details) => Ok(details.progress),
            Err(TaskError::Storage(e)) => Err(ShareError::Storage(e)),
            Err(_) => Err(ShareError::UnknownLink),
        }
    }

    /// Sets `details.shared`.
    pub fn mark(&self, details: &mut TaskDetails) {
        details.shared = self.broker.authenticator().is_shared(&details.progress.task_no);
    }

    async fn owned(&self, owner: &str, task_no: &str) -> Result<(), ShareError> {
        match self.storage.task(task_no).await? {
            Some(record) if record.owner == owner => Ok(()),
            _ => Err(ShareError::NoTask(task_no.to_owned())),
        }
    }

    fn forget(&self, id: &str, task_no: &str, owner: &str, why: &str) {
        let shared =
            SharedTask { id: id.to_owned(), owner: owner.to_owned(), task_no: task_no.to_owned() };
        self.broker.remove_share(id);
        let closed = self.fanout.disconnect_user(&shared.principal(), why);
        tracing::info!(%owner, task_no, closed, "share link ended: {why}");
    }
}
