//! [`Storage`] on SQLite through sqlx: one file, WAL journal, migrations from
//! `server/migrations/` compiled into the binary.
//!
//! A transaction committed before a `kill -9` survives it (WAL with `synchronous=NORMAL`
//! loses at most the last commits on a power failure, never on a process crash).

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};
use taskpulse_shared::{
    TaskProgressDto,
    dto::{TaskEvent, TaskStatus},
};

use super::{LogEntry, Storage, StorageError, TaskQuery, TaskRecord, UserRecord};

/// SQLite-backed storage.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const TASK_COLUMNS: &str = "id, task_no, owner, request, status, progress, message, result_url, \
     error_message, cost, executor, external_ref, created_at, updated_at, finished_at";

impl SqliteStorage {
    /// Opens (creating if needed) the database file and applies pending migrations.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::connect(options).await
    }

    /// A private in-memory database, for tests.
    ///
    /// # Errors
    /// A migration fails.
    pub async fn in_memory() -> Result<SqliteStorage, StorageError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        Self::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqliteStorage, StorageError> {
        // SQLite serialises writers; a few connections let reads proceed beside one write.
        // An in-memory database exists per connection, so it gets exactly one.
        let memory = options.get_filename() == Path::new(":memory:");
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 4 })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStorage { pool })
    }
}

fn corrupt(task_no: &str, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(task_no.to_owned(), what.to_string())
}

fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, StorageError> {
    let task_no: String = row.try_get("task_no")?;
    let request = serde_json::from_str(row.try_get::<&str, _>("request")?)
        .map_err(|e| corrupt(&task_no, e))?;
    let status: TaskStatus =
        serde_json::from_value(serde_json::Value::String(row.try_get("status")?))
            .map_err(|e| corrupt(&task_no, e))?;
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

/// The task's history row and, when given, the user's log entry for the same push.
/// Appends a task's new state to its history and `log` to its owner's log; returns the
/// entry's `seq`.
async fn record_push(
    conn: &mut sqlx::SqliteConnection,
    state: &TaskProgressDto,
    at: i64,
    log: &LogEntry,
) -> Result<i64, StorageError> {
    sqlx::query("INSERT INTO task_events (task_no, at, dto) VALUES (?, ?, ?)")
        .bind(&state.task_no)
        .bind(at)
        .bind(event_json(state))
        .execute(&mut *conn)
        .await?;
    insert_log(conn, log).await
}

/// Appends `entry` as the next `seq` of its user, numbered here, in the caller's
/// transaction: nothing in memory decides it. (Pruning always keeps a user's newest entry, so
/// the highest `seq` never goes back.)
async fn insert_log(
    conn: &mut sqlx::SqliteConnection,
    entry: &LogEntry,
) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO user_log (username, seq, at, path, content_type, body) \
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM user_log WHERE username = ?1 \
         RETURNING seq",
    )
    .bind(&entry.user)
    .bind(entry.at)
    .bind(&entry.path)
    .bind(&entry.content_type)
    .bind(&entry.body)
    .fetch_one(conn)
    .await?)
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_user(&self, user: &UserRecord, now: i64) -> Result<(), StorageError> {
        let result = sqlx::query(
            "INSERT INTO users (username, password_hash, credits, created_at) VALUES (?, ?, ?, ?) \
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
            sqlx::query("SELECT username, password_hash, credits FROM users WHERE username = ?")
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
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StorageError> {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < ?")
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
                "UPDATE users SET credits = credits - ?1 WHERE username = ?2 AND credits >= ?1",
            )
            .bind(task.cost)
            .bind(&task.owner)
            .execute(&mut *tx)
            .await?;
            if charged.rows_affected() == 0 {
                let balance: Option<i64> =
                    sqlx::query_scalar("SELECT credits FROM users WHERE username = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE tasks SET status = ?, progress = ?, message = ?, result_url = ?, \
             error_message = ?, updated_at = ?, finished_at = ? \
             WHERE task_no = ? AND status NOT IN ('completed', 'failed')",
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
                 (SELECT cost FROM tasks WHERE task_no = ?1) \
                 WHERE username = (SELECT owner FROM tasks WHERE task_no = ?1)",
            )
            .bind(&state.task_no)
            .execute(&mut *tx)
            .await?;
        }
        let seq = record_push(&mut tx, state, at, log).await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    async fn epoch(&self) -> Result<String, StorageError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn append_log(&self, entry: &LogEntry) -> Result<i64, StorageError> {
        let mut conn = self.pool.acquire().await?;
        insert_log(&mut conn, entry).await
    }

    async fn log_range(&self, user: &str) -> Result<(i64, i64), StorageError> {
        let row = sqlx::query(
            "SELECT COALESCE(MIN(seq), 0) AS low, COALESCE(MAX(seq), 0) AS high \
             FROM user_log WHERE username = ?",
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
             WHERE username = ? AND path = ? AND seq > ? ORDER BY seq LIMIT ?",
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
        let old = sqlx::query(&format!("DELETE FROM user_log WHERE at < ? AND seq < ({newest})"))
            .bind(before)
            .execute(&self.pool)
            .await?;
        let many = sqlx::query(&format!("DELETE FROM user_log WHERE seq <= ({newest}) - ?"))
            .bind(i64::from(keep.max(1)))
            .execute(&self.pool)
            .await?;
        Ok(old.rows_affected() + many.rows_affected())
    }

    async fn mark_offline(&self, user: &str, path: &str, seq: i64) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO offline_marks (username, path, first_seq) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(path)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_offline(&self, user: &str, path: &str) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(
            "DELETE FROM offline_marks WHERE username = ? AND path = ? RETURNING first_seq",
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
            "SELECT {TASK_COLUMNS} FROM (SELECT * FROM tasks WHERE owner = ? \
             AND (finished_at IS NULL OR finished_at >= ?) ORDER BY id DESC LIMIT ?) ORDER BY id"
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
        sqlx::query("UPDATE tasks SET external_ref = ? WHERE task_no = ?")
            .bind(external_ref)
            .bind(task_no)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task(&self, task_no: &str) -> Result<Option<TaskRecord>, StorageError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_no = ?");
        let row = sqlx::query(&sql).bind(task_no).fetch_optional(&self.pool).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn tasks(&self, query: TaskQuery<'_>) -> Result<Vec<TaskRecord>, StorageError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = ? AND id < ? \
             AND (? IS NULL OR status = ?) ORDER BY id DESC LIMIT ?"
        );
        let status = query.status.map(TaskStatus::as_str);
        let rows = sqlx::query(&sql)
            .bind(query.owner)
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(status)
            .bind(status)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn events(&self, task_no: &str) -> Result<Vec<TaskEvent>, StorageError> {
        let rows = sqlx::query("SELECT at, dto FROM task_events WHERE task_no = ? ORDER BY id")
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

#[cfg(test)]
mod tests {
    use taskpulse_shared::dto::{AspectRatio, SubmitTaskRequest};

    use super::*;

    fn task(no: &str, owner: &str, cost: i64) -> TaskRecord {
        TaskRecord {
            id: 0,
            owner: owner.into(),
            request: SubmitTaskRequest::TextToImage {
                prompt: "a lighthouse".into(),
                aspect_ratio: AspectRatio::Square,
            },
            state: TaskProgressDto::new(no, TaskStatus::Created, 0, "created"),
            cost,
            executor: "demo".into(),
            external_ref: None,
            created_at: 1,
            updated_at: 1,
            finished_at: None,
        }
    }

    impl SqliteStorage {
        async fn insert_task_plain(&self, task: &TaskRecord) -> Result<(), StorageError> {
            self.insert_task(task, &entry(&task.owner, 0, task.created_at, "/queue/p")).await?;
            Ok(())
        }

        async fn update_task_plain(
            &self,
            state: &TaskProgressDto,
            at: i64,
        ) -> Result<bool, StorageError> {
            let stored = self.update_task(state, at, &entry("alice", 0, at, "/queue/p")).await?;
            Ok(stored.is_some())
        }
    }

    fn entry(user: &str, seq: i64, at: i64, path: &str) -> LogEntry {
        LogEntry {
            user: user.into(),
            seq,
            at,
            path: path.into(),
            content_type: "application/json".into(),
            body: format!("{{\"n\":{seq}}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn the_log_keeps_order_bounds_and_its_newest_entry() {
        let db = with_user(0).await;
        let epoch = db.epoch().await.unwrap();
        assert_eq!(epoch.len(), 16);
        assert_eq!(db.log_range("alice").await.unwrap(), (0, 0));
        for seq in 1..=10 {
            let path = if seq % 2 == 0 { "/queue/a" } else { "/queue/b" };
            // Storage numbers: what the caller put in `seq` does not matter.
            let given = db.append_log(&entry("alice", 99, seq * 100, path)).await.unwrap();
            assert_eq!(given, seq);
        }
        assert_eq!(db.append_log(&entry("bob", 0, 50, "/queue/a")).await.unwrap(), 1);
        let evens: Vec<i64> =
            db.log_after("alice", "/queue/a", 4, 10).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(evens, [6, 8, 10]);
        assert_eq!(db.log_range("alice").await.unwrap(), (1, 10));
        // Keep 4 per user, and nothing older than 350 ms.
        db.prune_log(350, 4).await.unwrap();
        assert_eq!(db.log_range("alice").await.unwrap(), (7, 10));
        // Age alone never removes a user's newest entry.
        db.prune_log(i64::MAX, 100).await.unwrap();
        assert_eq!(db.log_range("alice").await.unwrap(), (10, 10));
        assert_eq!(db.log_range("bob").await.unwrap(), (1, 1));
        assert_eq!(db.epoch().await.unwrap(), epoch);
        // Numbering goes on above the newest kept entry: seq never restarts.
        assert_eq!(db.append_log(&entry("alice", 0, 2000, "/queue/a")).await.unwrap(), 11);
    }

    #[tokio::test]
    async fn offline_marks_keep_the_first_seq_until_taken() {
        let db = with_user(0).await;
        db.mark_offline("alice", "/queue/n", 4).await.unwrap();
        db.mark_offline("alice", "/queue/n", 9).await.unwrap();
        assert_eq!(db.offline_paths().await.unwrap(), ["/queue/n"]);
        assert_eq!(db.take_offline("alice", "/queue/n").await.unwrap(), Some(4));
        assert_eq!(db.take_offline("alice", "/queue/n").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_task_change_and_its_log_entry_commit_together() {
        let db = with_user(0).await;
        let (t1, first) = (task("T1", "alice", 0), entry("alice", 0, 1, "/queue/p"));
        assert_eq!(db.insert_task(&t1, &first).await.unwrap(), 1);
        let done = TaskProgressDto::completed("T1", "/r");
        let stored = db.update_task(&done, 2, &entry("alice", 0, 2, "/queue/p")).await.unwrap();
        assert_eq!(stored, Some(2));
        // Refused (already terminal): the entry is not written either.
        let refused = db.update_task(&done, 3, &entry("alice", 0, 3, "/queue/p")).await.unwrap();
        assert_eq!(refused, None);
        assert_eq!(db.log_range("alice").await.unwrap(), (1, 2));
        let snapshot = db.snapshot_tasks("alice", 3, 10).await.unwrap();
        assert!(snapshot.is_empty(), "finished before the window");
        let snapshot = db.snapshot_tasks("alice", 2, 10).await.unwrap();
        assert_eq!(snapshot.len(), 1);
    }

    async fn with_user(credits: i64) -> SqliteStorage {
        let db = SqliteStorage::in_memory().await.unwrap();
        let user = UserRecord { username: "alice".into(), password_hash: "h".into(), credits };
        db.create_user(&user, 0).await.unwrap();
        db
    }

    #[tokio::test]
    async fn duplicate_user_is_refused() {
        let db = with_user(0).await;
        let again = UserRecord { username: "alice".into(), password_hash: "x".into(), credits: 0 };
        assert!(matches!(db.create_user(&again, 0).await, Err(StorageError::UserExists(_))));
        assert_eq!(db.user("alice").await.unwrap().unwrap().password_hash, "h");
        assert_eq!(db.user("bob").await.unwrap(), None);
    }

    #[tokio::test]
    async fn credits_are_reserved_and_refunded_once_on_failure() {
        let db = with_user(3).await;
        db.insert_task_plain(&task("T1", "alice", 2)).await.unwrap();
        assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 1);
        let refused = db.insert_task_plain(&task("T2", "alice", 2)).await.unwrap_err();
        assert!(matches!(refused, StorageError::InsufficientCredits { cost: 2, balance: 1 }));
        assert!(db.task("T2").await.unwrap().is_none(), "a refused task is not stored");

        let failed = TaskProgressDto::failed("T1", 10, "cancelled");
        assert!(db.update_task_plain(&failed, 5).await.unwrap());
        assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 3);
        // A second terminal update changes nothing and refunds nothing.
        assert!(!db.update_task_plain(&failed, 6).await.unwrap());
        assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 3);
    }

    #[tokio::test]
    async fn completion_spends_the_reservation() {
        let db = with_user(3).await;
        db.insert_task_plain(&task("T1", "alice", 2)).await.unwrap();
        assert!(db.update_task_plain(&TaskProgressDto::completed("T1", "/r"), 9).await.unwrap());
        assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 1);
        let stored = db.task("T1").await.unwrap().unwrap();
        assert_eq!(stored.state.status, TaskStatus::Completed);
        assert_eq!(stored.finished_at, Some(9));
        assert!(db.unfinished_tasks().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn history_and_pages_are_ordered() {
        let db = with_user(0).await;
        for n in 1..=5 {
            db.insert_task_plain(&task(&format!("T{n}"), "alice", 0)).await.unwrap();
        }
        db.insert_task_plain(&task("B1", "bob", 0)).await.unwrap();
        db.update_task_plain(&TaskProgressDto::new("T1", TaskStatus::Queued, 0, "queued"), 2)
            .await
            .unwrap();
        let events = db.events("T1").await.unwrap();
        let statuses: Vec<_> = events.iter().map(|e| e.progress.status).collect();
        assert_eq!(statuses, [TaskStatus::Created, TaskStatus::Queued]);

        let page = |before| db.tasks(TaskQuery { owner: "alice", before, status: None, limit: 2 });
        let first = page(None).await.unwrap();
        let names: Vec<_> = first.iter().map(|t| t.state.task_no.as_str()).collect();
        assert_eq!(names, ["T5", "T4"]);
        let second = page(Some(first[1].id)).await.unwrap();
        assert_eq!(second[0].state.task_no, "T3");
        let queued = db
            .tasks(TaskQuery {
                owner: "alice",
                before: None,
                status: Some(TaskStatus::Queued),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(db.unfinished_tasks().await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn revocations_expire() {
        let db = with_user(0).await;
        db.revoke_token("a", 100).await.unwrap();
        db.revoke_token("b", 10).await.unwrap();
        assert_eq!(db.revoked_tokens(50).await.unwrap(), ["a"]);
    }
}
