//! [`Storage`] in SQL, one implementation for both backends through sqlx's `Any` driver:
//! SQLite (one file, WAL journal; the embedded default) or PostgreSQL (`postgres://`).
//! Migrations per backend live in `server/migrations/{sqlite,postgres}/` and are compiled into
//! the binary; every query is written in the SQL both accept.
//!
//! A transaction committed before a `kill -9` survives it (SQLite's WAL with
//! `synchronous=NORMAL` loses at most the last commits on a power failure, never on a process
//! crash; PostgreSQL commits are durable).

use std::path::Path;

use async_trait::async_trait;
use sqlx::{
    AnyConnection, AnyPool, Executor, Row,
    any::{AnyPoolOptions, AnyRow},
};
use taskpulse_shared::{
    TaskProgressDto,
    dto::{TaskEvent, TaskStatus},
};

use super::{
    Append, Appended, LogEntry, OfflineMark, ShareRecord, Storage, StorageError, TaskQuery,
    TaskRecord, UserRecord,
};

/// Which database a [`SqlStorage`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the embedded default.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Storage on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStorage {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const TASK_COLUMNS: &str = "id, task_no, owner, request, status, progress, message, result_url, \
     error_message, cost, executor, external_ref, created_at, updated_at, finished_at";

impl SqlStorage {
    /// Opens the database named by `url`: `sqlite://<path>` (created if missing),
    /// `postgres://` or `postgresql://`. Applies pending migrations.
    ///
    /// # Errors
    /// An unknown scheme, a database that cannot be reached, or a failed migration.
    pub async fn open(url: &str) -> Result<SqlStorage, StorageError> {
        sqlx::any::install_default_drivers();
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Self::sqlite(Path::new(path)).await;
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StorageError::Url(url.to_owned()));
        }
        let pool = AnyPoolOptions::new().max_connections(16).connect(url).await?;
        POSTGRES.run(&pool).await?;
        Ok(SqlStorage { pool, backend: Backend::Postgres })
    }

    /// Opens (creating if needed) the SQLite file at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn sqlite(path: &Path) -> Result<SqlStorage, StorageError> {
        // It holds password hashes and the generated secrets: its owner's only. SQLite gives
        // its -wal and -shm files the mode of the database file.
        private_file(path).map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // SQLite serialises writers; a few connections let reads proceed beside one write.
        Self::sqlite_pool(&url, 4).await
    }

    /// A private in-memory SQLite database, for tests.
    ///
    /// # Errors
    /// A migration fails.
    pub async fn in_memory() -> Result<SqlStorage, StorageError> {
        // An in-memory database exists per connection, so it gets exactly one.
        Self::sqlite_pool("sqlite::memory:", 1).await
    }

    async fn sqlite_pool(url: &str, connections: u32) -> Result<SqlStorage, StorageError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(|conn: &mut AnyConnection, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        SQLITE.run(&pool).await?;
        Ok(SqlStorage { pool, backend: Backend::Sqlite })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

fn corrupt(task_no: &str, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(task_no.to_owned(), what.to_string())
}

fn task_from_row(row: &AnyRow) -> Result<TaskRecord, StorageError> {
    let task_no: String = row.try_get("task_no")?;
    let request = serde_json::from_str(row.try_get::<&str, _>("request")?)
        .map_err(|e| corrupt(&task_no, e))?;
    let status: TaskStatus =
        row.try_get::<String, _>("status")?.parse().map_err(|e| corrupt(&task_no, e))?;
    let progress: i64 = row.try_get("progress")?;
    let mut state = TaskProgressDto::new(
        task_no.clone(),
        status,
        u8::try_from(progress.clamp(0, 100)).unwrap_or(100),
        row.try_get::<String, _>("message")?,
    );
    state.result_url = row.try_get("result_url")?;
    state.error_message = row.try_get("error_message")?;
    Ok(TaskRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        request,
        state,
        cost: row.try_get("cost")?,
        executor: row.try_get("executor")?,
        external_ref: row.try_get("external_ref")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The history stores the pushed document, minus the queue position (which is stale at once).
pub(super) fn event_json(state: &TaskProgressDto) -> String {
    let mut state = state.clone();
    state.queue_position = None;
    serde_json::to_string(&state).expect("a DTO serialises")
}

/// Rows per multi-row INSERT: far below both backends' bind limits (SQLite 32,766,
/// PostgreSQL 65,535 parameters).
pub(super) const ROWS_PER_INSERT: usize = 500;

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` values; `(?, ?), (?, ?)` on SQLite,
/// whose lookup of numbered parameters is linear per parameter (quadratic for a statement of
/// thousands: a third of the CPU of a group commit, measured with `perf`).
pub(super) fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let values: Vec<String> = (1..=columns)
            .map(|c| match backend {
                Backend::Sqlite => "?".to_owned(),
                Backend::Postgres => format!("${}", r * columns + c),
            })
            .collect();
        format!("({})", values.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl Storage for SqlStorage {
    async fn create_user(&self, user: &UserRecord, now: i64) -> Result<(), StorageError> {
        let result = sqlx::query(
            "INSERT INTO users (username, password_hash, credits, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.credits)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StorageError::UserExists(user.username.clone()));
        }
        Ok(())
    }

    async fn user(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        let row =
            sqlx::query("SELECT username, password_hash, credits FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(UserRecord {
                username: row.try_get("username")?,
                password_hash: row.try_get("password_hash")?,
                credits: row.try_get("credits")?,
            })
        })
        .transpose()
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StorageError> {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT jti FROM revoked_tokens").fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get("jti").map_err(StorageError::from)).collect()
    }

    async fn put_result(&self, task_no: &str, bytes: &[u8], now: i64) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO results (task_no, bytes, stored_at) VALUES ($1, $2, $3) \
             ON CONFLICT (task_no) DO UPDATE SET bytes = excluded.bytes, \
             stored_at = excluded.stored_at",
        )
        .bind(task_no)
        .bind(bytes)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn result(&self, task_no: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(sqlx::query_scalar("SELECT bytes FROM results WHERE task_no = $1")
            .bind(task_no)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn renew_leases(
        &self,
        node: &str,
        tasks: &[String],
        until: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM task_leases WHERE task_no IN \
             (SELECT task_no FROM tasks WHERE status IN ('completed', 'failed'))",
        )
        .execute(&mut *tx)
        .await?;
        let mut lost = Vec::new();
        for task_no in tasks {
            // A task that ended meanwhile (another node took it over and finished it) gets
            // no lease: it is lost too.
            let holder: Option<String> = sqlx::query_scalar(
                "INSERT INTO task_leases (task_no, node, until) SELECT $1, $2, $3 \
                 WHERE EXISTS (SELECT 1 FROM tasks WHERE task_no = $1 \
                 AND status NOT IN ('completed', 'failed')) \
                 ON CONFLICT (task_no) DO UPDATE SET until = excluded.until \
                 WHERE task_leases.node = excluded.node RETURNING node",
            )
            .bind(task_no)
            .bind(node)
            .bind(until)
            .fetch_optional(&mut *tx)
            .await?;
            // No row back: the conflict's WHERE refused, another node holds it.
            if holder.is_none() {
                lost.push(task_no.clone());
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn take_over(
        &self,
        node: &str,
        now: i64,
        unleased_before: i64,
        until: i64,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut taken: Vec<String> = sqlx::query_scalar(
            "UPDATE task_leases SET node = $1, until = $2 WHERE until < $3 AND node <> $1 \
             AND task_no IN (SELECT task_no FROM tasks WHERE status NOT IN ('completed', 'failed')) \
             RETURNING task_no",
        )
        .bind(node)
        .bind(until)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let unleased: Vec<String> = sqlx::query_scalar(
            "INSERT INTO task_leases (task_no, node, until) \
             SELECT t.task_no, $1, $2 FROM tasks t \
             WHERE t.status NOT IN ('completed', 'failed') AND t.created_at < $3 \
             AND NOT EXISTS (SELECT 1 FROM task_leases l WHERE l.task_no = t.task_no) \
             ON CONFLICT (task_no) DO NOTHING RETURNING task_no",
        )
        .bind(node)
        .bind(until)
        .bind(unleased_before)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        taken.extend(unleased);
        let mut records = Vec::with_capacity(taken.len());
        for task_no in taken {
            if let Some(record) = self.task(&task_no).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.id);
        Ok(records)
    }

    async fn put_share(&self, share: &ShareRecord) -> Result<Option<String>, StorageError> {
        // Writing first: a SQLite transaction that read before it writes can fail with
        // SQLITE_BUSY when another connection writes meanwhile (the lock cannot upgrade).
        let mut tx = self.pool.begin().await?;
        let replaced: Option<String> =
            sqlx::query_scalar("DELETE FROM task_shares WHERE task_no = $1 RETURNING id")
                .bind(&share.task_no)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO task_shares (task_no, owner, id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&share.task_no)
        .bind(&share.owner)
        .bind(&share.id)
        .bind(share.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn delete_share(&self, task_no: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar("DELETE FROM task_shares WHERE task_no = $1 RETURNING id")
            .bind(task_no)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn shares(&self) -> Result<Vec<ShareRecord>, StorageError> {
        let rows = sqlx::query("SELECT task_no, owner, id, created_at FROM task_shares")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ShareRecord {
                    task_no: row.try_get("task_no")?,
                    owner: row.try_get("owner")?,
                    id: row.try_get("id")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StorageError> {
        let key = format!("secret:{name}");
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(&key)
            .bind(candidate)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(&key)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn epoch(&self) -> Result<String, StorageError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn append(&self, group: &mut [Append]) -> Result<Vec<Appended>, StorageError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let outcomes = super::group::append(&mut tx, self.backend, group).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn users_with_log(&self) -> Result<Vec<String>, StorageError> {
        // Every entry took a number from user_seqs; tasks stored before the log existed
        // (migration 0002) may have none.
        Ok(sqlx::query_scalar("SELECT username FROM user_seqs UNION SELECT owner FROM tasks")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn log_range(&self, user: &str) -> Result<(i64, i64), StorageError> {
        let row = sqlx::query(
            "SELECT COALESCE(MIN(seq), 0) AS low, COALESCE(MAX(seq), 0) AS high \
             FROM user_log WHERE username = $1",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("low")?, row.try_get("high")?))
    }

    async fn log_after(
        &self,
        user: &str,
        path: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let query = match path {
            Some(path) => sqlx::query(
                "SELECT seq, at, path, content_type, body, task_no FROM user_log \
                 WHERE username = $1 AND path = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            )
            .bind(user)
            .bind(path),
            None => sqlx::query(
                "SELECT seq, at, path, content_type, body, task_no FROM user_log \
                 WHERE username = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(user),
        };
        let rows = query.bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(LogEntry {
                    user: user.to_owned(),
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    path: row.try_get("path")?,
                    content_type: row.try_get("content_type")?,
                    body: row.try_get("body")?,
                    task_no: row.try_get("task_no")?,
                })
            })
            .collect()
    }

    async fn prune_log(&self, before: i64, keep: u32) -> Result<u64, StorageError> {
        let newest = "SELECT MAX(seq) FROM user_log AS n WHERE n.username = user_log.username";
        let old = sqlx::query(&format!("DELETE FROM user_log WHERE at < $1 AND seq < ({newest})"))
            .bind(before)
            .execute(&self.pool)
            .await?;
        let many = sqlx::query(&format!("DELETE FROM user_log WHERE seq <= ({newest}) - $1"))
            .bind(i64::from(keep.max(1)))
            .execute(&self.pool)
            .await?;
        Ok(old.rows_affected() + many.rows_affected())
    }

    async fn prune_events(&self, before: i64) -> Result<u64, StorageError> {
        let done = sqlx::query("DELETE FROM task_events WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn log_size(&self) -> Result<u64, StorageError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM user_log").fetch_one(&self.pool).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn mark_offline_many(&self, marks: &[OfflineMark]) -> Result<(), StorageError> {
        for chunk in marks.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO offline_marks (username, path, first_seq) VALUES {} \
                 ON CONFLICT DO NOTHING",
                placeholders(self.backend, chunk.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for mark in chunk {
                query = query.bind(&mark.user).bind(&mark.path).bind(mark.seq);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn take_offline(&self, user: &str, path: &str) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(
            "DELETE FROM offline_marks WHERE username = $1 AND path = $2 RETURNING first_seq",
        )
        .bind(user)
        .bind(path)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn offline_paths(&self) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar("SELECT DISTINCT path FROM offline_marks")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn snapshot_tasks(
        &self,
        owner: &str,
        finished_since: i64,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM (SELECT * FROM tasks WHERE owner = $1 \
             AND (finished_at IS NULL OR finished_at >= $2) ORDER BY id DESC LIMIT $3) AS recent \
             ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(finished_since)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn set_external_ref(
        &self,
        task_no: &str,
        external_ref: &str,
    ) -> Result<(), StorageError> {
        sqlx::query("UPDATE tasks SET external_ref = $1 WHERE task_no = $2")
            .bind(external_ref)
            .bind(task_no)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task(&self, task_no: &str) -> Result<Option<TaskRecord>, StorageError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_no = $1");
        let row = sqlx::query(&sql).bind(task_no).fetch_optional(&self.pool).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn tasks(&self, query: TaskQuery<'_>) -> Result<Vec<TaskRecord>, StorageError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id < $2 \
             AND (CAST($3 AS TEXT) IS NULL OR status = $3) ORDER BY id DESC LIMIT $4"
        );
        let status = query.status.map(TaskStatus::as_str);
        let rows = sqlx::query(&sql)
            .bind(query.owner)
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(status)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn events(&self, task_no: &str) -> Result<Vec<TaskEvent>, StorageError> {
        let rows = sqlx::query("SELECT at, dto FROM task_events WHERE task_no = $1 ORDER BY id")
            .bind(task_no)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let progress = serde_json::from_str(row.try_get::<&str, _>("dto")?)
                    .map_err(|e| corrupt(task_no, e))?;
                Ok(TaskEvent { at: row.try_get("at")?, progress })
            })
            .collect()
    }

    async fn unfinished_tasks(&self) -> Result<Vec<TaskRecord>, StorageError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE status NOT IN ('completed', 'failed') ORDER BY id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(task_from_row).collect()
    }
}

/// Creates `path` readable by its owner only if it does not exist; tightens it (and any
/// `-wal`/`-shm` beside it) if it does.
fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            crate::secret::owner_only(&file)?;
        }
    }
    Ok(())
}
