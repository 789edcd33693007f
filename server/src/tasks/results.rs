//! Result images, kept in the database so that every server sharing it can serve them, and
//! the signed, expiring URLs that let an `<img src>` load them without an Authorization
//! header (signed with a key kept in the same database, so any server verifies them).

use std::{
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use taskpulse_shared::TaskProgressDto;

use crate::{
    now_ms,
    secret::hex,
    storage::{Storage, StorageError},
};

/// Where results live and how their URLs are signed.
#[derive(Clone)]
pub struct ResultStore {
    storage: Arc<dyn Storage>,
    key: Vec<u8>,
    ttl_s: u64,
}

impl std::fmt::Debug for ResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStore").field("ttl_s", &self.ttl_s).finish_non_exhaustive()
    }
}

/// Why a signed result URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedUrlError {
    /// `expires` is in the past.
    #[error("the link expired; ask the task API for a fresh resultUrl")]
    Expired,
    /// The signature does not match.
    #[error("the link's signature is invalid")]
    BadSignature,
}

/// The unsigned URL of a stored result.
fn local_url(task_no: &str) -> String {
    format!("/api/tasks/{task_no}/result")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl ResultStore {
    /// Signs with `key`, which every server sharing `storage` must use (see
    /// `Storage::shared_secret`). A data directory from before results moved into the
    /// database hands over its files (`results/`, renamed to `results.imported`), so images
    /// issued earlier keep loading.
    ///
    /// # Errors
    /// The database failed.
    pub async fn new(
        storage: Arc<dyn Storage>,
        key: Vec<u8>,
        ttl_s: u64,
        data_dir: &Path,
    ) -> Result<ResultStore, StorageError> {
        let store = ResultStore { storage, key, ttl_s };
        store.import(&data_dir.join("results")).await?;
        Ok(store)
    }

    /// Moves result files of an older version's data directory into the database.
    async fn import(&self, dir: &Path) -> Result<(), StorageError> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        let mut imported = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(task_no) = name.to_str().filter(|n| !n.ends_with(".tmp")) else { continue };
            if self.storage.result(task_no).await?.is_some() {
                continue;
            }
            if let Ok(bytes) = std::fs::read(entry.path()) {
                self.storage.put_result(task_no, &bytes, now_ms()).await?;
                imported += 1;
            }
        }
        let done = dir.with_file_name("results.imported");
        if let Err(e) = std::fs::rename(dir, &done) {
            tracing::warn!("imported result files but cannot rename {}: {e}", dir.display());
        }
        tracing::info!(imported, "moved result files into the database");
        Ok(())
    }

    /// The (unsigned) URL of a task's result, once stored (with the task's completion, see
    /// `storage::TaskChange::Complete`).
    pub fn url(task_no: &str) -> String {
        local_url(task_no)
    }

    /// A task's stored result, if any.
    ///
    /// # Errors
    /// The database failed.
    pub async fn read(&self, task_no: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.storage.result(task_no).await
    }

    fn signature(&self, task_no: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(task_no.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// `state` with a stored result's URL signed so that it works for `ttl_s` seconds without
    /// credentials. Other result URLs (an external worker's) are left as they are.
    pub fn signed(&self, state: &TaskProgressDto) -> TaskProgressDto {
        let mut state = state.clone();
        if state.result_url.as_deref() == Some(local_url(&state.task_no).as_str()) {
            // Rounded to the hour so that repeated pushes carry the same URL (caches work).
            let expires = (unix_now() + self.ttl_s).div_ceil(3600) * 3600;
            let signature = hex(&self.signature(&state.task_no, expires).finalize().into_bytes());
            state.result_url = Some(format!(
                "{}?expires={expires}&signature={signature}",
                local_url(&state.task_no)
            ));
        }
        state
    }

    /// Checks a signed URL's query.
    ///
    /// # Errors
    /// Expired or forged.
    pub fn verify(
        &self,
        task_no: &str,
        expires: u64,
        signature: &str,
    ) -> Result<(), SignedUrlError> {
        let bytes: Option<Vec<u8>> = (0..signature.len())
            .step_by(2)
            .map(|i| signature.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        let bytes = bytes.ok_or(SignedUrlError::BadSignature)?;
        self.signature(task_no, expires)
            .verify_slice(&bytes)
            .map_err(|_| SignedUrlError::BadSignature)?;
        if expires < unix_now() {
            return Err(SignedUrlError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use taskpulse_shared::TaskProgressDto;

    use super::*;

    async fn store(dir: &Path, key: &str) -> (ResultStore, Arc<dyn Storage>) {
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::SqlStorage::in_memory().await.unwrap());
        let store = ResultStore::new(storage.clone(), key.into(), 600, dir).await.unwrap();
        (store, storage)
    }

    #[tokio::test]
    async fn an_older_data_directory_s_result_files_move_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        std::fs::create_dir(&results).unwrap();
        std::fs::write(results.join("T1"), b"\x89PNG old").unwrap();
        std::fs::write(results.join("T2.tmp"), b"half").unwrap();
        let (store, storage) = store(dir.path(), "k").await;
        assert_eq!(store.read("T1").await.unwrap().as_deref(), Some(&b"\x89PNG old"[..]));
        assert_eq!(storage.result("T2.tmp").await.unwrap(), None, "unfinished writes stay out");
        assert!(!results.exists() && dir.path().join("results.imported/T1").exists());
        storage.put_result("T3", b"new", 1).await.unwrap();
        assert_eq!(store.read("T3").await.unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(store.read("T4").await.unwrap(), None);
    }

    #[tokio::test]
    async fn signed_urls_verify_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(dir.path(), "key").await;
        let done = TaskProgressDto::completed("abc", local_url("abc"));
        let url = store.signed(&done).result_url.unwrap();
        let query = url.split_once('?').unwrap().1;
        let (expires, signature) = query.split_once('&').unwrap();
        let expires: u64 = expires.strip_prefix("expires=").unwrap().parse().unwrap();
        let signature = signature.strip_prefix("signature=").unwrap();
        assert_eq!(store.verify("abc", expires, signature), Ok(()));
        assert_eq!(store.verify("abd", expires, signature), Err(SignedUrlError::BadSignature));
        assert_eq!(store.verify("abc", expires + 1, signature), Err(SignedUrlError::BadSignature));
        assert_eq!(store.verify("abc", expires, "zz"), Err(SignedUrlError::BadSignature));
        let old = hex(&store.signature("abc", 1).finalize().into_bytes());
        assert_eq!(store.verify("abc", 1, &old), Err(SignedUrlError::Expired));
        // External URLs stay as they are.
        let external = TaskProgressDto::completed("abc", "https://cdn.example/x.png");
        assert_eq!(store.signed(&external), external);
    }
}
