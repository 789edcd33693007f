//! `Metered`: any [`Storage`] with each call's latency (and failures) counted into
//! [`Metrics`] under the operation's name, so every backend is measured the same way.

use std::sync::Arc;

use async_trait::async_trait;
use taskpulse_shared::dto::TaskEvent;

use super::{
    Append, Appended, LogEntry, OfflineMark, ShareRecord, Storage, StorageError, TaskQuery,
    TaskRecord, UserRecord,
};
use crate::metrics::{Metrics, timed};

/// A [`Storage`] whose calls are timed.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
}

impl Metered {
    /// Times every call of `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Storage>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }
}

#[async_trait]
impl Storage for Metered {
    async fn create_user(&self, user: &UserRecord, now: i64) -> Result<(), StorageError> {
        timed(&self.metrics, "create_user", self.inner.create_user(user, now)).await
    }

    async fn user(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        timed(&self.metrics, "user", self.inner.user(username)).await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StorageError> {
        timed(&self.metrics, "revoke_token", self.inner.revoke_token(jti, expires_at)).await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StorageError> {
        timed(&self.metrics, "revoked_tokens", self.inner.revoked_tokens(now)).await
    }

    async fn epoch(&self) -> Result<String, StorageError> {
        timed(&self.metrics, "epoch", self.inner.epoch()).await
    }

    async fn append(&self, group: &mut [Append]) -> Result<Vec<Appended>, StorageError> {
        timed(&self.metrics, "append", self.inner.append(group)).await
    }

    async fn users_with_log(&self) -> Result<Vec<String>, StorageError> {
        timed(&self.metrics, "users_with_log", self.inner.users_with_log()).await
    }

    async fn log_range(&self, user: &str) -> Result<(i64, i64), StorageError> {
        timed(&self.metrics, "log_range", self.inner.log_range(user)).await
    }

    async fn log_after(
        &self,
        user: &str,
        path: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StorageError> {
        timed(&self.metrics, "log_after", self.inner.log_after(user, path, after, limit)).await
    }

    async fn prune_log(&self, before: i64, keep: u32) -> Result<u64, StorageError> {
        timed(&self.metrics, "prune_log", self.inner.prune_log(before, keep)).await
    }

    async fn prune_events(&self, before: i64) -> Result<u64, StorageError> {
        timed(&self.metrics, "prune_events", self.inner.prune_events(before)).await
    }

    async fn log_size(&self) -> Result<u64, StorageError> {
        timed(&self.metrics, "log_size", self.inner.log_size()).await
    }

    async fn mark_offline_many(&self, marks: &[OfflineMark]) -> Result<(), StorageError> {
        timed(&self.metrics, "mark_offline", self.inner.mark_offline_many(marks)).await
    }

    async fn take_offline(&self, user: &str, path: &str) -> Result<Option<i64>, StorageError> {
        timed(&self.metrics, "take_offline", self.inner.take_offline(user, path)).await
    }

    async fn offline_paths(&self) -> Result<Vec<String>, StorageError> {
        timed(&self.metrics, "offline_paths", self.inner.offline_paths()).await
    }

    async fn snapshot_tasks(
        &self,
        owner: &str,
        finished_since: i64,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let call = self.inner.snapshot_tasks(owner, finished_since, limit);
        timed(&self.metrics, "snapshot_tasks", call).await
    }

    async fn set_external_ref(
        &self,
        task_no: &str,
        external_ref: &str,
    ) -> Result<(), StorageError> {
        let call = self.inner.set_external_ref(task_no, external_ref);
        timed(&self.metrics, "set_external_ref", call).await
    }

    async fn task(&self, task_no: &str) -> Result<Option<TaskRecord>, StorageError> {
        timed(&self.metrics, "task", self.inner.task(task_no)).await
    }

    async fn tasks(&self, query: TaskQuery<'_>) -> Result<Vec<TaskRecord>, StorageError> {
        timed(&self.metrics, "tasks", self.inner.tasks(query)).await
    }

    async fn events(&self, task_no: &str) -> Result<Vec<TaskEvent>, StorageError> {
        timed(&self.metrics, "events", self.inner.events(task_no)).await
    }

    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, StorageError> {
        timed(&self.metrics, "unfinished_tasks", self.inner.unfinished_tasks()).await
    }

    async fn put_result(&self, task_no: &str, bytes: &[u8], now: i64) -> Result<(), StorageError> {
        timed(&self.metrics, "put_result", self.inner.put_result(task_no, bytes, now)).await
    }

    async fn result(&self, task_no: &str) -> Result<Option<Vec<u8>>, StorageError> {
        timed(&self.metrics, "result", self.inner.result(task_no)).await
    }

    async fn renew_leases(
        &self,
        node: &str,
        tasks: &[String],
        until: i64,
    ) -> Result<Vec<String>, StorageError> {
        timed(&self.metrics, "renew_leases", self.inner.renew_leases(node, tasks, until)).await
    }

    async fn take_over(
        &self,
        node: &str,
        now: i64,
        unleased_before: i64,
        until: i64,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let taking = self.inner.take_over(node, now, unleased_before, until);
        timed(&self.metrics, "take_over", taking).await
    }

    async fn put_share(&self, share: &ShareRecord) -> Result<Option<String>, StorageError> {
        timed(&self.metrics, "put_share", self.inner.put_share(share)).await
    }

    async fn delete_share(&self, task_no: &str) -> Result<Option<String>, StorageError> {
        timed(&self.metrics, "delete_share", self.inner.delete_share(task_no)).await
    }

    async fn shares(&self) -> Result<Vec<ShareRecord>, StorageError> {
        timed(&self.metrics, "shares", self.inner.shares()).await
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StorageError> {
        timed(&self.metrics, "shared_secret", self.inner.shared_secret(name, candidate)).await
    }
}
