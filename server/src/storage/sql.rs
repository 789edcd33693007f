//! [`Storage`] in SQL, one implementation for both backends through sqlx's `Any` driver:
//! SQLite (one file, WAL journal; the embedded default) or PostgreSQL (`postgres://`).
//! Migrations per backend live in `server/migrations/{sqlite,postgres}/` and are compiled into
//! the binary; every query is written in the SQL both accept.
//!
//! A transaction committed before a `kill -9` survives it (SQLite's WAL with
//! `synchronous=NORMAL` loses at most the last commits on a power failure, never on a process
//! crash; PostgreSQL commits are durable).

use std::{collections::HashMap, path::Path};

use async_trait::async_trait;
use sqlx::{
    AnyConnection, AnyPool, Executor, Row,
    any::{AnyPoolOptions, AnyRow},
};
use taskpulse_shared::{
    TaskProgressDto,
    dto::{TaskEvent, TaskStatus},
};

use super::{LogEntry, OfflineMark, Storage, StorageError, TaskQuery, TaskRecord, UserRecord};

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
fn event_json(state: &TaskProgressDto) -> String {
    let mut state = state.clone();
    state.queue_position = None;
    serde_json::to_string(&state).expect("a DTO serialises")
}

/// Appends a task's new state to its history and `log` to its owner's log; returns the
/// entry's `seq`.
async fn record_push(
    conn: &mut AnyConnection,
    state: &TaskProgressDto,
    at: i64,
    log: &LogEntry,
) -> Result<i64, StorageError> {
    sqlx::query("INSERT INTO task_events (task_no, at, dto) VALUES ($1, $2, $3)")
        .bind(&state.task_no)
        .bind(at)
        .bind(event_json(state))
        .execute(&mut *conn)
        .await?;
    insert_log(conn, log).await
}

/// Appends `entry` as the next `seq` of its user, numbered here in the caller's
/// transaction: nothing in memory decides it. The counter row is an upsert, which locks it,
/// so two transactions appending for one user (two servers on one PostgreSQL) serialise
/// rather than collide, and `seq` order is commit order.
async fn insert_log(conn: &mut AnyConnection, entry: &LogEntry) -> Result<i64, StorageError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO user_seqs (username, seq) VALUES ($1, 1) \
         ON CONFLICT (username) DO UPDATE SET seq = user_seqs.seq + 1 RETURNING seq",
    )
    .bind(&entry.user)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO user_log (username, seq, at, path, content_type, body) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&entry.user)
    .bind(seq)
    .bind(entry.at)
    .bind(&entry.path)
    .bind(&entry.content_type)
    .bind(&entry.body)
    .execute(conn)
    .await?;
    Ok(seq)
}

/// Rows per multi-row INSERT: far below both backends' bind limits (SQLite 32,766,
/// PostgreSQL 65,535 parameters).
const ROWS_PER_INSERT: usize = 500;

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` values; `(?, ?), (?, ?)` on SQLite,
/// whose lookup of numbered parameters is linear per parameter (quadratic for a statement of
/// thousands: a third of the CPU of a group commit, measured with `perf`).
fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
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

    async fn insert_task(&self, task: &TaskRecord, log: &LogEntry) -> Result<i64, StorageError> {
        let mut tx = self.pool.begin().await?;
        if task.cost > 0 {
            let charged = sqlx::query(
                "UPDATE users SET credits = credits - $1 WHERE username = $2 AND credits >= $1",
            )
            .bind(task.cost)
            .bind(&task.owner)
            .execute(&mut *tx)
            .await?;
            if charged.rows_affected() == 0 {
                let balance: Option<i64> =
                    sqlx::query_scalar("SELECT credits FROM users WHERE username = $1")
                        .bind(&task.owner)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(StorageError::InsufficientCredits {
                    cost: task.cost,
                    balance: balance.unwrap_or(0),
                });
            }
        }
        let request = serde_json::to_string(&task.request).expect("a request serialises");
        let state = &task.state;
        sqlx::query(
            "INSERT INTO tasks (task_no, owner, kind, request, status, progress, message, \
             result_url, error_message, cost, executor, external_ref, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&state.task_no)
        .bind(&task.owner)
        .bind(task.request.kind().as_str())
        .bind(request)
        .bind(state.status.as_str())
        .bind(i64::from(state.progress))
        .bind(&state.message)
        .bind(&state.result_url)
        .bind(&state.error_message)
        .bind(task.cost)
        .bind(&task.executor)
        .bind(&task.external_ref)
        .bind(task.created_at)
        .bind(task.updated_at)
        .execute(&mut *tx)
        .await?;
        let seq = record_push(&mut tx, state, task.created_at, log).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn update_task(
        &self,
        state: &TaskProgressDto,
        at: i64,
        log: &LogEntry,
    ) -> Result<Option<i64>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let terminal = state.status.is_terminal();
        let updated = sqlx::query(
            "UPDATE tasks SET status = $1, progress = $2, message = $3, result_url = $4, \
             error_message = $5, updated_at = $6, finished_at = $7 \
             WHERE task_no = $8 AND status NOT IN ('completed', 'failed')",
        )
        .bind(state.status.as_str())
        .bind(i64::from(state.progress))
        .bind(&state.message)
        .bind(&state.result_url)
        .bind(&state.error_message)
        .bind(at)
        .bind(terminal.then_some(at))
        .bind(&state.task_no)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        if state.status == TaskStatus::Failed {
            sqlx::query(
                "UPDATE users SET credits = credits + \
                 (SELECT cost FROM tasks WHERE task_no = $1) \
                 WHERE username = (SELECT owner FROM tasks WHERE task_no = $1)",
            )
            .bind(&state.task_no)
            .execute(&mut *tx)
            .await?;
        }
        let seq = record_push(&mut tx, state, at, log).await?;
        tx.commit().await?;
        Ok(Some(seq))
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

    async fn append_logs(&self, entries: &mut [LogEntry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Each user's counter moves once by the number of its entries; the entries take the
        // numbers in the order given.
        let mut counts: Vec<(&str, i64)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for entry in entries.iter() {
            match index.get(entry.user.as_str()) {
                Some(&i) => counts[i].1 += 1,
                None => {
                    index.insert(&entry.user, counts.len());
                    counts.push((&entry.user, 1));
                }
            }
        }
        // One multi-row upsert per chunk of users; RETURNING's order is unspecified, so the
        // rows are matched by name.
        let mut next: HashMap<String, i64> = HashMap::with_capacity(counts.len());
        for chunk in counts.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO user_seqs (username, seq) VALUES {} ON CONFLICT (username) \
                 DO UPDATE SET seq = user_seqs.seq + excluded.seq RETURNING username, seq",
                placeholders(self.backend, chunk.len(), 2)
            );
            let mut query = sqlx::query(&sql);
            for (user, n) in chunk {
                query = query.bind(*user).bind(*n);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let user: String = row.try_get("username")?;
                let last: i64 = row.try_get("seq")?;
                let n = index.get(user.as_str()).map_or(0, |&i| counts[i].1);
                next.insert(user, last - n + 1);
            }
        }
        for entry in entries.iter_mut() {
            let Some(seq) = next.get_mut(&entry.user) else {
                return Err(StorageError::Corrupt(entry.user.clone(), "no counter row".into()));
            };
            entry.seq = *seq;
            *seq += 1;
        }
        for chunk in entries.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO user_log (username, seq, at, path, content_type, body) VALUES {}",
                placeholders(self.backend, chunk.len(), 6)
            );
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(&entry.user)
                    .bind(entry.seq)
                    .bind(entry.at)
                    .bind(&entry.path)
                    .bind(&entry.content_type)
                    .bind(&entry.body);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
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
        path: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, at, path, content_type, body FROM user_log \
             WHERE username = $1 AND path = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(user)
        .bind(path)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LogEntry {
                    user: user.to_owned(),
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    path: row.try_get("path")?,
                    content_type: row.try_get("content_type")?,
                    body: row.try_get("body")?,
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
