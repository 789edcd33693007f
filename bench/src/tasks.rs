//! The `tasks` scenario: tasks submitted through `POST /api/tasks` by several users, each
//! watching `/user/queue/tasks-progress` on STOMP.
//!
//! Phase 1 (burst) submits `--tasks` tasks with 32 requests in flight and reports
//! submissions/s (202 answers) and completions/s. Phase 2 (paced) submits `--task-rate`
//! tasks/s for 5 s and reports submit-to-`completed` latency as a subscriber sees it. The
//! server should run the demo executor in no-delay mode (`cargo xtask load` does).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use taskpulse_shared::{TaskProgressDto, TaskStatus, resume::TASKS_DESTINATION, stomp::Command};

use taskpulse_testkit::{StompClient, token};

use crate::{Args, TOKEN_TTL_S, percentile, subscribe};

const USERS: usize = 10;

/// When each task was submitted and when its `completed` arrived.
#[derive(Default)]
struct Timeline {
    submitted: HashMap<String, Instant>,
    completed: HashMap<String, Instant>,
    /// Completions seen before their submit answer (the task ran faster than the 202).
    early: HashMap<String, Instant>,
    failed: usize,
}

fn http_base(ws_url: &str) -> String {
    ws_url.replacen("ws://", "http://", 1).trim_end_matches("/ws").to_owned()
}

/// Opens one subscriber per user that records completions in `timeline`.
async fn watch(args: &Args, timeline: &Arc<Mutex<Timeline>>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut watchers = Vec::new();
    for user in 0..USERS {
        let token = token(&args.secret, &format!("tasks{user}"), TOKEN_TTL_S);
        let mut conn =
            StompClient::try_signed_in(&args.url, &token).await.expect("subscriber connects");
        subscribe(&mut conn, TASKS_DESTINATION).await.expect("subscribe");
        let timeline = timeline.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(frame) = conn.next().await {
                if frame.command != Command::Message {
                    continue;
                }
                let Ok(update) = serde_json::from_slice::<TaskProgressDto>(&frame.body) else {
                    continue;
                };
                let now = Instant::now();
                let mut t = timeline.lock().unwrap();
                match update.status {
                    TaskStatus::Completed if t.submitted.contains_key(&update.task_no) => {
                        t.completed.insert(update.task_no, now);
                    }
                    TaskStatus::Completed => {
                        t.early.insert(update.task_no, now);
                    }
                    TaskStatus::Failed => t.failed += 1,
                    _ => {}
                }
            }
        }));
    }
    watchers
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    bearer: &str,
    n: usize,
    timeline: &Mutex<Timeline>,
) -> Result<(), String> {
    let started = Instant::now();
    let body = serde_json::json!({"kind": "text-to-image", "prompt": format!("load task {n}")});
    let response = http
        .post(format!("{base}/api/tasks"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 202 {
        return Err(format!("submit answered {}", response.status()));
    }
    let answer: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    let task_no = answer["taskNo"].as_str().ok_or("no taskNo")?.to_owned();
    let mut t = timeline.lock().unwrap();
    if let Some(at) = t.early.remove(&task_no) {
        t.completed.insert(task_no.clone(), at);
    }
    t.submitted.insert(task_no, started);
    Ok(())
}

async fn wait_for(timeline: &Mutex<Timeline>, expected: usize, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        {
            let t = timeline.lock().unwrap();
            if t.completed.len() + t.failed >= expected || Instant::now() > deadline {
                return t.completed.values().max().copied().unwrap_or_else(Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn run(args: &Args) {
    let base = http_base(&args.url);
    let http = reqwest::Client::new();
    let tokens: Vec<String> =
        (0..USERS).map(|u| token(&args.secret, &format!("tasks{u}"), TOKEN_TTL_S)).collect();

    // Phase 1: burst.
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let watchers = watch(args, &timeline).await;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (http, base, tokens, next, timeline, total) = (
            http.clone(),
            base.clone(),
            tokens.clone(),
            next.clone(),
            timeline.clone(),
            args.tasks,
        );
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return;
                }
                if let Err(e) = submit(&http, &base, &tokens[n % USERS], n, &timeline).await {
                    eprintln!("tasks: {e}");
                }
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
    let submitted_in = started.elapsed();
    let last = wait_for(&timeline, args.tasks, Duration::from_secs(120)).await;
    let (completed, failed) = {
        let t = timeline.lock().unwrap();
        (t.completed.len(), t.failed)
    };
    println!(
        "tasks burst: {} submissions in {:.3} s = {:.0} submissions/s; {completed} completed (failed {failed}, missing {}) in {:.3} s = {:.0} completions/s",
        args.tasks,
        submitted_in.as_secs_f64(),
        args.tasks as f64 / submitted_in.as_secs_f64(),
        args.tasks.saturating_sub(completed + failed),
        (last - started).as_secs_f64(),
        completed as f64 / (last - started).as_secs_f64(),
    );
    for w in watchers {
        w.abort();
    }

    // Phase 2: paced, for latency.
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let watchers = watch(args, &timeline).await;
    let total = args.task_rate * 5;
    let every = Duration::from_secs_f64(1.0 / args.task_rate.max(1) as f64);
    let mut ticker = tokio::time::interval(every);
    let mut pending = Vec::new();
    for n in 0..total {
        ticker.tick().await;
        let (http, base, bearer, timeline) =
            (http.clone(), base.clone(), tokens[n % USERS].clone(), timeline.clone());
        pending.push(tokio::spawn(async move {
            if let Err(e) = submit(&http, &base, &bearer, n, &timeline).await {
                eprintln!("tasks: {e}");
            }
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    wait_for(&timeline, total, Duration::from_secs(60)).await;
    let t = timeline.lock().unwrap();
    let mut latencies: Vec<u32> = t
        .completed
        .iter()
        .filter_map(|(no, done)| Some((*done - *t.submitted.get(no)?).as_micros() as u32))
        .collect();
    latencies.sort_unstable();
    println!(
        "tasks paced: {} tasks at {}/s; submit -> completed on the subscriber p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; missing {}",
        total,
        args.task_rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        total.saturating_sub(latencies.len() + t.failed),
    );
    drop(t);
    for w in watchers {
        w.abort();
    }
}
