//! The group commit's SQL ([`Storage::append`](super::Storage::append)): a group of numbered
//! pushes, with the task changes they announce, in one transaction and a handful of
//! statements whatever the group's size.
//!
//! Why set-based: every statement is a round trip (to sqlx's SQLite worker thread, or to
//! PostgreSQL), about 0.1 ms each on this 2-core machine, so one statement per task change
//! made a group of 30 take 8-10 ms. Here a group takes, per round (below): one multi-row
//! INSERT of new tasks, one `UPDATE ... FROM` of changed ones, one upsert of result files;
//! then one INSERT of history rows, one counter upsert and one log INSERT per 500 rows.
//!
//! A group may hold several changes of one task (`processing`, then `completed`). The k-th
//! change of each task goes to round k, and rounds run in order, so a task's changes apply
//! in the order given while each statement touches a task at most once.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyConnection, Row};
use taskpulse_shared::{TaskProgressDto, dto::TaskStatus};

use super::{
    Append, Appended, StorageError, TaskChange, TaskRecord,
    sql::{Backend, ROWS_PER_INSERT, event_json, placeholders},
};

/// Stores `group` in the caller's transaction; see [`super::Storage::append`].
pub(super) async fn append(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &mut [Append],
) -> Result<Vec<Appended>, StorageError> {
    let mut outcomes = vec![Appended::Stored; group.len()];
    for round in rounds(group) {
        apply_round(conn, backend, group, &round, &mut outcomes).await?;
    }
    insert_events(conn, backend, group, &outcomes).await?;
    let mut entries: Vec<&mut super::LogEntry> = group
        .iter_mut()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Appended::Stored)
        .map(|(a, _)| &mut a.entry)
        .collect();
    number(conn, backend, &mut entries).await?;
    insert_log(conn, backend, &entries).await?;
    Ok(outcomes)
}

/// The indices of the appends with a task change, by round: the k-th change of a task is in
/// round k.
fn rounds(group: &[Append]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, append) in group.iter().enumerate() {
        let Some(change) = &append.task else { continue };
        let k = seen.entry(change.state().task_no.as_str()).or_default();
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// One round's task changes: new tasks, then changed ones (a task is in a round once).
async fn apply_round(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &[Append],
    round: &[usize],
    outcomes: &mut [Appended],
) -> Result<(), StorageError> {
    let mut free = Vec::new();
    let mut changed = Vec::new();
    for &i in round {
        match &group[i].task {
            Some(TaskChange::Insert(task)) if task.cost > 0 => {
                outcomes[i] = charge(conn, task).await?;
                if outcomes[i] == Appended::Stored {
                    free.push(&**task);
                }
            }
            Some(TaskChange::Insert(task)) => free.push(&**task),
            Some(TaskChange::Update(_) | TaskChange::Complete(..)) => changed.push(i),
            None => {}
        }
    }
    insert_tasks(conn, backend, &free).await?;
    for chunk in changed.chunks(ROWS_PER_INSERT) {
        let updated = update_tasks(conn, backend, group, chunk).await?;
        for &i in chunk {
            let Some(change) = &group[i].task else { continue };
            let state = change.state();
            if !updated.contains(state.task_no.as_str()) {
                outcomes[i] = Appended::Ended;
            } else if state.status == TaskStatus::Failed {
                refund(conn, &state.task_no).await?;
            }
        }
        let results: Vec<(&str, &[u8], i64)> = chunk
            .iter()
            .filter(|&&i| outcomes[i] == Appended::Stored)
            .filter_map(|&i| match &group[i].task {
                Some(TaskChange::Complete(state, bytes)) => {
                    Some((state.task_no.as_str(), bytes.as_slice(), group[i].entry.at))
                }
                _ => None,
            })
            .collect();
        put_results(conn, backend, &results).await?;
    }
    Ok(())
}

/// Takes a new task's cost from its owner's credits, if they have enough.
async fn charge(conn: &mut AnyConnection, task: &TaskRecord) -> Result<Appended, StorageError> {
    let charged = sqlx::query(
        "UPDATE users SET credits = credits - $1 WHERE username = $2 AND credits >= $1",
    )
    .bind(task.cost)
    .bind(&task.owner)
    .execute(&mut *conn)
    .await?;
    if charged.rows_affected() > 0 {
        return Ok(Appended::Stored);
    }
    let balance: Option<i64> = sqlx::query_scalar("SELECT credits FROM users WHERE username = $1")
        .bind(&task.owner)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(Appended::Unpaid { cost: task.cost, balance: balance.unwrap_or(0) })
}

/// Gives a failed task's cost back to its owner (the task was charged when stored).
async fn refund(conn: &mut AnyConnection, task_no: &str) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE users SET credits = credits + (SELECT cost FROM tasks WHERE task_no = $1) \
         WHERE username = (SELECT owner FROM tasks WHERE task_no = $1)",
    )
    .bind(task_no)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_tasks(
    conn: &mut AnyConnection,
    backend: Backend,
    tasks: &[&TaskRecord],
) -> Result<(), StorageError> {
    for chunk in tasks.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO tasks (task_no, owner, kind, request, status, progress, message, \
             result_url, error_message, cost, executor, external_ref, created_at, updated_at) \
             VALUES {}",
            placeholders(backend, chunk.len(), 14)
        );
        let mut query = sqlx::query(&sql);
        for task in chunk {
            let request = serde_json::to_string(&task.request).expect("a request serialises");
            let state = &task.state;
            query = query
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
                .bind(task.updated_at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the new states of `chunk`'s tasks (each at most once), except tasks already
/// terminal; returns the task numbers it changed.
async fn update_tasks(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &[Append],
    chunk: &[usize],
) -> Result<HashSet<String>, StorageError> {
    let sql = format!(
        "WITH v (task_no, status, progress, message, result_url, error_message, at, \
         finished_at) AS (VALUES {}) \
         UPDATE tasks SET status = v.status, progress = v.progress, message = v.message, \
         result_url = v.result_url, error_message = v.error_message, updated_at = v.at, \
         finished_at = v.finished_at \
         FROM v WHERE tasks.task_no = v.task_no AND tasks.status NOT IN ('completed', 'failed') \
         RETURNING tasks.task_no",
        placeholders(backend, chunk.len(), 8)
    );
    let mut query = sqlx::query(&sql);
    for &i in chunk {
        let Some(change) = &group[i].task else { continue };
        let state: &TaskProgressDto = change.state();
        let at = group[i].entry.at;
        query = query
            .bind(&state.task_no)
            .bind(state.status.as_str())
            .bind(i64::from(state.progress))
            .bind(&state.message)
            .bind(&state.result_url)
            .bind(&state.error_message)
            .bind(at)
            .bind(state.status.is_terminal().then_some(at));
    }
    let mut updated = HashSet::with_capacity(chunk.len());
    for row in query.fetch_all(&mut *conn).await? {
        updated.insert(row.try_get::<String, _>(0)?);
    }
    Ok(updated)
}

async fn put_results(
    conn: &mut AnyConnection,
    backend: Backend,
    results: &[(&str, &[u8], i64)],
) -> Result<(), StorageError> {
    if results.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO results (task_no, bytes, stored_at) VALUES {} \
         ON CONFLICT (task_no) DO UPDATE SET bytes = excluded.bytes, \
         stored_at = excluded.stored_at",
        placeholders(backend, results.len(), 3)
    );
    let mut query = sqlx::query(&sql);
    for (task_no, bytes, at) in results {
        query = query.bind(*task_no).bind(*bytes).bind(*at);
    }
    query.execute(conn).await?;
    Ok(())
}

/// A history row for every stored task change.
async fn insert_events(
    conn: &mut AnyConnection,
    backend: Backend,
    group: &[Append],
    outcomes: &[Appended],
) -> Result<(), StorageError> {
    let events: Vec<(&str, i64, String)> = group
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == Appended::Stored)
        .filter_map(|(append, _)| match &append.task {
            Some(TaskChange::Insert(task)) => {
                Some((task.state.task_no.as_str(), task.created_at, event_json(&task.state)))
            }
            Some(TaskChange::Update(state) | TaskChange::Complete(state, _)) => {
                Some((state.task_no.as_str(), append.entry.at, event_json(state)))
            }
            None => None,
        })
        .collect();
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO task_events (task_no, at, dto) VALUES {}",
            placeholders(backend, chunk.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for (task_no, at, dto) in chunk {
            query = query.bind(*task_no).bind(*at).bind(dto.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Gives each entry its user's next `seq`, in the order given: each user's counter moves
/// once by the number of its entries. The counter upsert locks each row, so two
/// transactions appending for one user (two servers on one PostgreSQL) serialise rather
/// than collide, and `seq` order is commit order.
async fn number(
    conn: &mut AnyConnection,
    backend: Backend,
    entries: &mut [&mut super::LogEntry],
) -> Result<(), StorageError> {
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
    // One multi-row upsert per chunk of users; RETURNING's order is unspecified, so the rows
    // are matched by name.
    let mut next: HashMap<String, i64> = HashMap::with_capacity(counts.len());
    for chunk in counts.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO user_seqs (username, seq) VALUES {} ON CONFLICT (username) \
             DO UPDATE SET seq = user_seqs.seq + excluded.seq RETURNING username, seq",
            placeholders(backend, chunk.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for (user, n) in chunk {
            query = query.bind(*user).bind(*n);
        }
        for row in query.fetch_all(&mut *conn).await? {
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
    Ok(())
}

async fn insert_log(
    conn: &mut AnyConnection,
    backend: Backend,
    entries: &[&mut super::LogEntry],
) -> Result<(), StorageError> {
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO user_log (username, seq, at, path, content_type, body, task_no) \
             VALUES {}",
            placeholders(backend, chunk.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        for entry in chunk {
            query = query
                .bind(&entry.user)
                .bind(entry.seq)
                .bind(entry.at)
                .bind(&entry.path)
                .bind(&entry.content_type)
                .bind(&entry.body)
                .bind(&entry.task_no);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LogEntry;

    fn append(task_no: Option<&str>) -> Append {
        let entry = LogEntry {
            user: "u".into(),
            seq: 0,
            at: 0,
            path: "/queue/p".into(),
            content_type: "text/plain".into(),
            body: Vec::new(),
            task_no: None,
        };
        let task = task_no
            .map(|no| TaskChange::Update(TaskProgressDto::new(no, TaskStatus::Processing, 0, "x")));
        Append { entry, task }
    }

    #[test]
    fn the_kth_change_of_a_task_is_in_round_k_and_notices_in_none() {
        let group = [Some("a"), None, Some("b"), Some("a"), Some("a"), None, Some("c"), Some("b")]
            .map(append);
        assert_eq!(rounds(&group), [vec![0, 2, 6], vec![3, 7], vec![4]]);
        assert!(rounds(&[append(None)]).is_empty());
    }
}
