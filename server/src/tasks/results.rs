//! Result images on disk under `<data-dir>/results/`, and the signed, expiring URLs that let
//! an `<img src>` load them without an Authorization header.

use std::{
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use taskpulse_shared::TaskProgressDto;

use crate::{
    broker::{KeyError, stored_secret},
    secret::hex,
};

/// Where results live and how their URLs are signed.
#[derive(Clone)]
pub struct ResultStore {
    dir: PathBuf,
    key: Vec<u8>,
    ttl_s: u64,
}

impl std::fmt::Debug for ResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStore").field("dir", &self.dir).finish_non_exhaustive()
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
    /// Uses `<data_dir>/results` and the signing key in `<data_dir>/result-key` (generated
    /// the first time).
    ///
    /// # Errors
    /// The directory or key cannot be created.
    pub fn new(data_dir: &Path, ttl_s: u64) -> Result<ResultStore, KeyError> {
        let key = stored_secret(data_dir, "result-key")?;
        Ok(ResultStore { dir: data_dir.join("results"), key, ttl_s })
    }

    /// Writes a result (atomically: a crash leaves the old file or none) and returns its URL.
    ///
    /// # Errors
    /// The file cannot be written.
    pub async fn store(&self, task_no: &str, bytes: &[u8]) -> io::Result<String> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let tmp = self.dir.join(format!("{task_no}.tmp"));
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, self.path(task_no)).await?;
        Ok(local_url(task_no))
    }

    /// The file of a task's result (which may not exist).
    pub fn path(&self, task_no: &str) -> PathBuf {
        self.dir.join(task_no)
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

    #[test]
    fn signed_urls_verify_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::new(dir.path(), 600).unwrap();
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
