//! The storage conformance suite: every `Storage` method and its edge cases, run against
//! SQLite (in memory) and against a throw-away PostgreSQL, through the same trait object the
//! server uses.

use std::{future::Future, sync::Arc};

use taskpulse_server::storage::{
    Append, Appended, LogEntry, OfflineMark, ShareRecord, SqlStorage, Storage, StorageError,
    TaskChange, TaskQuery, TaskRecord, UserRecord,
};
use taskpulse_shared::{
    TaskProgressDto, TaskStatus,
    dto::{AspectRatio, SubmitTaskRequest},
};

use crate::fixture::Postgres;

type Db = Arc<dyn Storage>;

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

fn entry(user: &str, at: i64, path: &str) -> LogEntry {
    LogEntry {
        user: user.into(),
        // Storage numbers; what a caller puts here does not matter.
        seq: 999,
        at,
        path: path.into(),
        content_type: "application/json".into(),
        body: format!("{{\"at\":{at}}}").into_bytes(),
        task_no: None,
    }
}

async fn insert(db: &Db, task: &TaskRecord) -> Result<i64, StorageError> {
    db.insert_task(task, &entry(&task.owner, task.created_at, "/queue/p")).await
}

async fn update(db: &Db, state: &TaskProgressDto, at: i64) -> Option<i64> {
    db.update_task(state, &entry("alice", at, "/queue/p")).await.unwrap()
}

async fn with_alice(db: &Db, credits: i64) {
    let user = UserRecord { username: "alice".into(), password_hash: "h".into(), credits };
    db.create_user(&user, 0).await.unwrap();
}

async fn the_log_numbers_keeps_order_bounds_and_its_newest_entry(db: Db) {
    let epoch = db.epoch().await.unwrap();
    assert_eq!(epoch.len(), 16);
    assert_eq!(db.log_range("alice").await.unwrap(), (0, 0));
    for seq in 1..=10 {
        let path = if seq % 2 == 0 { "/queue/a" } else { "/queue/b" };
        assert_eq!(db.append_log(&entry("alice", seq * 100, path)).await.unwrap(), seq);
    }
    assert_eq!(db.append_log(&entry("bob", 50, "/queue/a")).await.unwrap(), 1);
    let evens: Vec<i64> = db
        .log_after("alice", Some("/queue/a"), 4, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(evens, [6, 8, 10]);
    let limited = db.log_after("alice", Some("/queue/a"), 0, 2).await.unwrap();
    assert_eq!(limited.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 4]);
    let every_path: Vec<i64> =
        db.log_after("alice", None, 7, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(every_path, [8, 9, 10], "every path, in seq order");
    assert_eq!(limited[0].body, b"{\"at\":200}");
    assert_eq!(db.log_range("alice").await.unwrap(), (1, 10));
    // Keep 4 per user, and nothing older than 350 ms.
    db.prune_log(350, 4).await.unwrap();
    assert_eq!(db.log_range("alice").await.unwrap(), (7, 10));
    // Age alone never removes a user's newest entry.
    db.prune_log(i64::MAX, 100).await.unwrap();
    assert_eq!(db.log_range("alice").await.unwrap(), (10, 10));
    assert_eq!(db.log_range("bob").await.unwrap(), (1, 1));
    assert_eq!(db.epoch().await.unwrap(), epoch);
    // Numbering goes on above the newest entry: seq never restarts.
    assert_eq!(db.append_log(&entry("alice", 2000, "/queue/a")).await.unwrap(), 11);
}

async fn users_with_log_are_those_with_entries_or_tasks(db: Db) {
    assert!(db.users_with_log().await.unwrap().is_empty());
    db.append_log(&entry("alice", 1, "/queue/a")).await.unwrap();
    db.append_log(&entry("alice", 2, "/queue/a")).await.unwrap();
    insert(&db, &task("T1", "bob", 0)).await.unwrap();
    // Pruning keeps each user's newest entry, and the counter, so nobody drops out.
    db.prune_log(i64::MAX, 0).await.unwrap();
    let mut users = db.users_with_log().await.unwrap();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
}

async fn concurrent_appends_of_one_user_get_distinct_increasing_numbers(db: Db) {
    let appends = (0..20).map(|n| {
        let db = db.clone();
        async move { db.append_log(&entry("alice", n, "/queue/a")).await.unwrap() }
    });
    let mut seqs = futures_util::future::join_all(appends).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
}

async fn offline_marks_keep_the_first_seq_until_taken(db: Db) {
    db.mark_offline("alice", "/queue/n", 4).await.unwrap();
    db.mark_offline("alice", "/queue/n", 9).await.unwrap();
    assert_eq!(db.offline_paths().await.unwrap(), ["/queue/n"]);
    assert_eq!(db.take_offline("alice", "/queue/n").await.unwrap(), Some(4));
    assert_eq!(db.take_offline("alice", "/queue/n").await.unwrap(), None);
}

async fn a_group_is_numbered_per_user_in_order_and_stored_whole(db: Db) {
    db.append_log(&entry("bob", 1, "/queue/n")).await.unwrap();
    // 1,200 entries (more than one multi-row INSERT) for three users, interleaved.
    let users = ["alice", "bob", "carol"];
    let mut group: Vec<Append> = (0..1200)
        .map(|i| Append { entry: entry(users[i % 3], 10 + i as i64, "/queue/n"), task: None })
        .collect();
    let outcomes = db.append(&mut group).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == Appended::Stored));
    let group: Vec<LogEntry> = group.into_iter().map(|a| a.entry).collect();
    for user in users {
        let seqs: Vec<i64> = group.iter().filter(|e| e.user == user).map(|e| e.seq).collect();
        let first = if user == "bob" { 2 } else { 1 };
        assert_eq!(seqs, (first..first + 400).collect::<Vec<i64>>(), "{user}");
        let stored = db.log_after(user, Some("/queue/n"), 0, 10_000).await.unwrap();
        let stored_at: Vec<i64> = stored.iter().map(|e| e.at).collect();
        let given_at: Vec<i64> = group.iter().filter(|e| e.user == user).map(|e| e.at).collect();
        assert!(stored_at.ends_with(&given_at), "{user}: stored in the order given");
    }
    assert_eq!(db.append_log(&entry("carol", 5000, "/queue/n")).await.unwrap(), 401);
    assert!(db.append(&mut []).await.unwrap().is_empty());
    // Marks of one group: one statement, the first of a path counts, a set one is kept.
    let mark = |user: &str, seq| OfflineMark { user: user.into(), path: "/queue/n".into(), seq };
    db.mark_offline_many(&[mark("alice", 7), mark("bob", 3), mark("alice", 9)]).await.unwrap();
    db.mark_offline_many(&[mark("alice", 1)]).await.unwrap();
    assert_eq!(db.take_offline("alice", "/queue/n").await.unwrap(), Some(7));
    assert_eq!(db.take_offline("bob", "/queue/n").await.unwrap(), Some(3));
}

async fn a_task_change_and_its_log_entry_commit_together(db: Db) {
    with_alice(&db, 0).await;
    assert_eq!(insert(&db, &task("T1", "alice", 0)).await.unwrap(), 1);
    let done = TaskProgressDto::completed("T1", "/r");
    assert_eq!(update(&db, &done, 2).await, Some(2));
    // Refused (already terminal): the entry is not written either.
    assert_eq!(update(&db, &done, 3).await, None);
    assert_eq!(db.log_range("alice").await.unwrap(), (1, 2));
    assert!(db.snapshot_tasks("alice", 3, 10).await.unwrap().is_empty(), "finished before");
    assert_eq!(db.snapshot_tasks("alice", 2, 10).await.unwrap().len(), 1);
}

async fn a_mixed_group_stores_what_it_may_and_numbers_only_that(db: Db) {
    with_alice(&db, 3).await;
    insert(&db, &task("T0", "alice", 0)).await.unwrap();
    db.update_task(&TaskProgressDto::completed("T0", "/r"), &entry("alice", 2, "/queue/p"))
        .await
        .unwrap();
    let change = |user: &str, at, change| Append {
        entry: entry(user, at, "/queue/tasks-progress"),
        task: Some(change),
    };
    let state = |no: &str, status| TaskProgressDto::new(no, status, 0, "x");
    let mut group = vec![
        change("alice", 10, TaskChange::Insert(Box::new(task("T1", "alice", 2)))),
        Append { entry: entry("alice", 11, "/queue/n"), task: None },
        // T0 ended before this group; T2 costs more than what is left.
        change("alice", 12, TaskChange::Update(state("T0", TaskStatus::Processing))),
        change("alice", 13, TaskChange::Insert(Box::new(task("T2", "alice", 2)))),
        change("bob", 14, TaskChange::Insert(Box::new(task("B1", "bob", 0)))),
        // Two changes of one task in one group, in order; the third is refused.
        change("alice", 15, TaskChange::Update(state("T1", TaskStatus::Processing))),
        change("alice", 16, TaskChange::Update(TaskProgressDto::failed("T1", 0, "boom"))),
        change("alice", 17, TaskChange::Update(state("T1", TaskStatus::Processing))),
        change("bob", 18, TaskChange::Update(state("B1", TaskStatus::Queued))),
    ];
    let outcomes = db.append(&mut group).await.unwrap();
    use Appended::{Ended, Stored, Unpaid};
    let unpaid = Unpaid { cost: 2, balance: 1 };
    assert_eq!(outcomes, [Stored, Stored, Ended, unpaid, Stored, Stored, Stored, Ended, Stored]);
    let seqs: Vec<i64> = group
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Stored)
        .map(|(a, _)| a.entry.seq)
        .collect();
    // alice had 1 and 2 (T0); bob starts at 1.
    assert_eq!(seqs, [3, 4, 1, 5, 6, 2]);
    assert_eq!(db.log_range("alice").await.unwrap(), (1, 6));
    assert!(db.task("T2").await.unwrap().is_none(), "the unpaid task is not stored");
    let t1 = db.task("T1").await.unwrap().unwrap();
    assert_eq!((t1.state.status, t1.finished_at), (TaskStatus::Failed, Some(16)));
    // Charged 2 for T1, refunded on its failure.
    assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 3);
    let history: Vec<(TaskStatus, i64)> =
        db.events("T1").await.unwrap().iter().map(|e| (e.progress.status, e.at)).collect();
    assert_eq!(
        history,
        [(TaskStatus::Created, 1), (TaskStatus::Processing, 15), (TaskStatus::Failed, 16)]
    );
    assert_eq!(db.events("T0").await.unwrap().len(), 2, "nothing added to an ended task");
}

async fn snapshots_hold_the_newest_unfinished_and_recent_tasks_oldest_first(db: Db) {
    with_alice(&db, 0).await;
    for n in 1..=4 {
        insert(&db, &task(&format!("T{n}"), "alice", 0)).await.unwrap();
    }
    update(&db, &TaskProgressDto::completed("T2", "/r"), 10).await;
    let names = |tasks: Vec<TaskRecord>| -> Vec<String> {
        tasks.into_iter().map(|t| t.state.task_no).collect()
    };
    assert_eq!(names(db.snapshot_tasks("alice", 11, 10).await.unwrap()), ["T1", "T3", "T4"]);
    assert_eq!(names(db.snapshot_tasks("alice", 0, 2).await.unwrap()), ["T3", "T4"]);
}

async fn duplicate_users_are_refused(db: Db) {
    with_alice(&db, 0).await;
    let again = UserRecord { username: "alice".into(), password_hash: "x".into(), credits: 0 };
    assert!(matches!(db.create_user(&again, 0).await, Err(StorageError::UserExists(_))));
    assert_eq!(db.user("alice").await.unwrap().unwrap().password_hash, "h");
    assert_eq!(db.user("bob").await.unwrap(), None);
}

async fn credits_are_reserved_and_refunded_once_on_failure(db: Db) {
    with_alice(&db, 3).await;
    insert(&db, &task("T1", "alice", 2)).await.unwrap();
    assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 1);
    let refused = insert(&db, &task("T2", "alice", 2)).await.unwrap_err();
    assert!(matches!(refused, StorageError::InsufficientCredits { cost: 2, balance: 1 }));
    assert!(db.task("T2").await.unwrap().is_none(), "a refused task is not stored");
    assert_eq!(db.log_range("alice").await.unwrap(), (1, 1), "nor its log entry");

    let failed = TaskProgressDto::failed("T1", 10, "cancelled");
    assert!(update(&db, &failed, 5).await.is_some());
    assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 3);
    // A second terminal update changes nothing and refunds nothing.
    assert!(update(&db, &failed, 6).await.is_none());
    assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 3);
}

async fn completion_spends_the_reservation(db: Db) {
    with_alice(&db, 3).await;
    insert(&db, &task("T1", "alice", 2)).await.unwrap();
    assert!(update(&db, &TaskProgressDto::completed("T1", "/r"), 9).await.is_some());
    assert_eq!(db.user("alice").await.unwrap().unwrap().credits, 1);
    let stored = db.task("T1").await.unwrap().unwrap();
    assert_eq!(stored.state.status, TaskStatus::Completed);
    assert_eq!(stored.state.result_url.as_deref(), Some("/r"));
    assert_eq!(stored.finished_at, Some(9));
    assert!(db.unfinished_tasks().await.unwrap().is_empty());
    db.set_external_ref("T1", "prompt-7").await.unwrap();
    assert_eq!(db.task("T1").await.unwrap().unwrap().external_ref.as_deref(), Some("prompt-7"));
}

async fn history_and_pages_are_ordered(db: Db) {
    with_alice(&db, 0).await;
    for n in 1..=5 {
        insert(&db, &task(&format!("T{n}"), "alice", 0)).await.unwrap();
    }
    insert(&db, &task("B1", "bob", 0)).await.unwrap();
    update(&db, &TaskProgressDto::new("T1", TaskStatus::Queued, 0, "queued"), 2).await;
    let events = db.events("T1").await.unwrap();
    let statuses: Vec<_> = events.iter().map(|e| e.progress.status).collect();
    assert_eq!(statuses, [TaskStatus::Created, TaskStatus::Queued]);
    assert_eq!(events[1].at, 2);

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

async fn revocations_expire(db: Db) {
    db.revoke_token("a", 100).await.unwrap();
    db.revoke_token("b", 10).await.unwrap();
    db.revoke_token("a", 100).await.unwrap();
    assert_eq!(db.revoked_tokens(50).await.unwrap(), ["a"]);
}

async fn results_and_shared_secrets_are_kept_for_every_server(db: Db) {
    assert_eq!(db.result("T1").await.unwrap(), None);
    let png: Vec<u8> = (0..=255).cycle().take(300_000).collect();
    db.put_result("T1", &png, 1).await.unwrap();
    assert_eq!(db.result("T1").await.unwrap().as_deref(), Some(&png[..]), "bytes intact");
    db.put_result("T1", b"again", 2).await.unwrap();
    assert_eq!(db.result("T1").await.unwrap().as_deref(), Some(&b"again"[..]));
    // The first server's candidate wins; later ones get it instead of their own.
    assert_eq!(db.shared_secret("result-key", "first").await.unwrap(), "first");
    assert_eq!(db.shared_secret("result-key", "second").await.unwrap(), "first");
    assert_eq!(db.shared_secret("other", "x").await.unwrap(), "x");
    assert_ne!(db.epoch().await.unwrap(), "first", "secrets do not clash with the epoch");
}

async fn a_task_has_one_share_link_until_it_is_revoked(db: Db) {
    let share = |task: &str, id: &str| ShareRecord {
        task_no: task.into(),
        owner: "alice".into(),
        id: id.into(),
        created_at: 7,
    };
    assert!(db.shares().await.unwrap().is_empty());
    assert_eq!(db.put_share(&share("T1", "a")).await.unwrap(), None);
    assert_eq!(db.put_share(&share("T2", "b")).await.unwrap(), None);
    // A new link replaces the task's old one, and says which it replaced.
    assert_eq!(db.put_share(&share("T1", "c")).await.unwrap().as_deref(), Some("a"));
    let mut all = db.shares().await.unwrap();
    all.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(all, [share("T2", "b"), share("T1", "c")]);
    assert_eq!(db.delete_share("T1").await.unwrap().as_deref(), Some("c"));
    assert_eq!(db.delete_share("T1").await.unwrap(), None, "nothing left to revoke");
    assert_eq!(db.shares().await.unwrap(), [share("T2", "b")]);
}

async fn a_tasks_lease_moves_only_when_it_expired(db: Db) {
    with_alice(&db, 0).await;
    let mut young = task("T3", "alice", 0);
    young.created_at = 900;
    for record in [task("T1", "alice", 0), task("T2", "alice", 0), young] {
        insert(&db, &record).await.unwrap();
    }
    let done = TaskProgressDto::new("T4", TaskStatus::Created, 0, "created");
    insert(&db, &task("T4", "alice", 0)).await.unwrap();
    update(&db, &TaskProgressDto { status: TaskStatus::Failed, ..done }, 2).await;

    assert!(db.renew_leases("n1", &["T1".into()], 1_000).await.unwrap().is_empty());
    assert_eq!(db.renew_leases("n2", &["T1".into()], 2_000).await.unwrap(), ["T1"], "n1 holds it");
    // At 500: T1's lease runs; T2 has none and is old enough; T3 is too young (its node may
    // not have renewed yet); T4 ended.
    let taken = db.take_over("n2", 500, 800, 5_000).await.unwrap();
    assert_eq!(taken.iter().map(|t| t.state.task_no.as_str()).collect::<Vec<_>>(), ["T2"]);
    assert!(db.take_over("n3", 500, 800, 5_000).await.unwrap().is_empty(), "taken once");
    // At 1,500 n1's lease on T1 expired; n2's on T2 has not.
    let taken = db.take_over("n3", 1_500, 1_000, 6_000).await.unwrap();
    let names: Vec<&str> = taken.iter().map(|t| t.state.task_no.as_str()).collect();
    assert_eq!(names, ["T1", "T3"]);
    assert_eq!(db.renew_leases("n1", &["T1".into()], 9_000).await.unwrap(), ["T1"], "lost");
    // A task that ended (another node finished it) is lost too, and gets no lease again.
    assert_eq!(db.renew_leases("n1", &["T4".into()], 9_000).await.unwrap(), ["T4"], "ended");
    assert_eq!(db.renew_leases("n1", &["T4".into()], 9_000).await.unwrap(), ["T4"], "no lease");
}

/// Runs every check, each on a database from `fresh`.
async fn every_check<F: Future<Output = Db>>(fresh: impl Fn() -> F) {
    the_log_numbers_keeps_order_bounds_and_its_newest_entry(fresh().await).await;
    users_with_log_are_those_with_entries_or_tasks(fresh().await).await;
    concurrent_appends_of_one_user_get_distinct_increasing_numbers(fresh().await).await;
    offline_marks_keep_the_first_seq_until_taken(fresh().await).await;
    a_group_is_numbered_per_user_in_order_and_stored_whole(fresh().await).await;
    a_task_change_and_its_log_entry_commit_together(fresh().await).await;
    a_mixed_group_stores_what_it_may_and_numbers_only_that(fresh().await).await;
    snapshots_hold_the_newest_unfinished_and_recent_tasks_oldest_first(fresh().await).await;
    duplicate_users_are_refused(fresh().await).await;
    credits_are_reserved_and_refunded_once_on_failure(fresh().await).await;
    completion_spends_the_reservation(fresh().await).await;
    history_and_pages_are_ordered(fresh().await).await;
    revocations_expire(fresh().await).await;
    results_and_shared_secrets_are_kept_for_every_server(fresh().await).await;
    a_task_has_one_share_link_until_it_is_revoked(fresh().await).await;
    a_tasks_lease_moves_only_when_it_expired(fresh().await).await;
}

#[tokio::test]
async fn storage_conformance_on_sqlite() {
    every_check(|| async { Arc::new(SqlStorage::in_memory().await.unwrap()) as Db }).await;
    // A file, as the server opens it, reopened: migrations are idempotent, data stays.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let db: Db = Arc::new(SqlStorage::open(&url).await.unwrap());
    db.append_log(&entry("alice", 1, "/queue/a")).await.unwrap();
    drop(db);
    let db = SqlStorage::open(&url).await.unwrap();
    assert_eq!(db.log_range("alice").await.unwrap(), (1, 1));
    assert!(matches!(SqlStorage::open("mysql://x").await, Err(StorageError::Url(_))));
}

#[tokio::test]
async fn storage_conformance_on_postgresql() {
    let postgres = Postgres::start().unwrap();
    every_check(|| async {
        let url = postgres.fresh_database().unwrap();
        Arc::new(SqlStorage::open(&url).await.unwrap()) as Db
    })
    .await;
}
