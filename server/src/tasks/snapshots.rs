//! What a snapshot holds: each of a user's recent tasks as its subscribers receive it (the
//! stored state with its result URL signed), for the user log, which knows nothing of tasks.

use std::sync::Arc;

use async_trait::async_trait;

use super::ResultStore;
use crate::{
    replay::SnapshotSource,
    storage::{Storage, StorageError},
};

/// The task documents of snapshots: each task's stored state with its result URL signed,
/// for the user log (which knows nothing of tasks).
#[derive(Debug)]
pub struct TaskSnapshots {
    storage: Arc<dyn Storage>,
    results: ResultStore,
}

impl TaskSnapshots {
    /// Snapshots from `storage`, result URLs signed by `results`.
    pub fn new(storage: Arc<dyn Storage>, results: ResultStore) -> TaskSnapshots {
        TaskSnapshots { storage, results }
    }
}

#[async_trait]
impl SnapshotSource for TaskSnapshots {
    async fn snapshot(
        &self,
        user: &str,
        finished_since: i64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let tasks = self.storage.snapshot_tasks(user, finished_since, limit).await?;
        Ok(tasks
            .iter()
            .filter_map(|task| serde_json::to_vec(&self.results.signed(&task.state)).ok())
            .collect())
    }

    async fn task(&self, user: &str, task_no: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let task = self.storage.task(task_no).await?.filter(|t| t.owner == user);
        Ok(task.and_then(|t| serde_json::to_vec(&self.results.signed(&t.state)).ok()))
    }
}
