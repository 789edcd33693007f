//! Yardstick for the storage path on SQLite: the same durable push (the user's counter row
//! upsert and the log insert, in one transaction) through `SqlStorage::append_log` (sqlx's
//! `Any` driver, what the server runs), through sqlx's native SQLite driver with the same
//! SQL and settings, and the native driver with one statement and no explicit transaction.
//! Measures and prints; asserts nothing. `cargo bench -p taskpulse-server --bench
//! storage_drivers`.

use std::{sync::Arc, time::Instant};

use sqlx::{
    Executor, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use taskpulse_server::storage::{LogEntry, SqlStorage, Storage};

const PUSHES: usize = 5_000;
const CONCURRENT: usize = 32;

fn entry(n: usize) -> LogEntry {
    LogEntry {
        user: format!("user{}", n % 1000),
        seq: 0,
        at: n as i64,
        path: "/queue/notices".into(),
        content_type: "application/json".into(),
        body: format!(r#"{{"n":{n},"text":"{}"}}"#, "x".repeat(64)).into_bytes(),
        task_no: None,
    }
}

/// Runs `push` PUSHES times from CONCURRENT tasks; prints pushes/s.
async fn measure<F, Fut>(name: &str, push: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let push = Arc::new(push);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (push, next) = (push.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= PUSHES {
                        return;
                    }
                    push(n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{name}: {PUSHES} pushes in {elapsed:.3} s = {:.0} pushes/s", PUSHES as f64 / elapsed);
}

async fn native(dir: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("native.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    sqlx::migrate!("./migrations/sqlite").run(&pool).await.unwrap();
    pool
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("any.db").display());
    let storage = Arc::new(SqlStorage::open(&url).await.unwrap());
    let warm = storage.clone();
    warm.append_log(&entry(0)).await.unwrap();
    measure("SqlStorage::append_log (sqlx Any, counter row, transaction)", move |n| {
        let storage = storage.clone();
        async move {
            storage.append_log(&entry(n)).await.unwrap();
        }
    })
    .await;

    let pool = native(dir.path()).await;
    let transaction = pool.clone();
    measure("native sqlx SQLite, same SQL (counter row, transaction)", move |n| {
        let pool = transaction.clone();
        async move {
            let e = entry(n);
            let mut tx = pool.begin().await.unwrap();
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO user_seqs (username, seq) VALUES ($1, 1) \
                 ON CONFLICT (username) DO UPDATE SET seq = user_seqs.seq + 1 RETURNING seq",
            )
            .bind(&e.user)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO user_log (username, seq, at, path, content_type, body) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&e.user)
            .bind(seq)
            .bind(e.at)
            .bind(&e.path)
            .bind(&e.content_type)
            .bind(&e.body)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await;

    pool.execute("DELETE FROM user_log").await.unwrap();
    let single = pool.clone();
    measure("native sqlx SQLite, one INSERT ... SELECT MAX(seq)+1, autocommit", move |n| {
        let pool = single.clone();
        async move {
            let e = entry(n);
            sqlx::query(
                "INSERT INTO user_log (username, seq, at, path, content_type, body) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM user_log \
                 WHERE username = $1",
            )
            .bind(&e.user)
            .bind(e.at)
            .bind(&e.path)
            .bind(&e.content_type)
            .bind(&e.body)
            .execute(&pool)
            .await
            .unwrap();
        }
    })
    .await;
}
