//! The `publish` scenario: the raw durable-push rate. `POST /api/publish` notices to
//! `/queue/notices` of one user, then of 1,000 users in turn, one per request and then in
//! the batch form (`--publish-batch` per request); each is stored, numbered in the user's
//! log and handed to the user's sessions (none here: this measures the durable path). 32
//! keep-alive clients keep requests in flight; reported as pushes/s (items answered with
//! `delivered`) and request latency p50/p99.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Args, cpu_per, percentile, server_cpu};

/// Requests in flight.
const CLIENTS: usize = 32;

/// One run: `pushes` notices spread round-robin over `users` users, `batch` per request
/// (1: the single form).
async fn run_one(args: &Args, base: &str, users: usize, pushes: usize, batch: usize) {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(pushes)));
    let started = Instant::now();
    let cpu_start = server_cpu();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, key) =
                (http.clone(), format!("{base}/api/publish"), args.api_key.clone());
            let (next, failed, latencies) = (next.clone(), failed.clone(), latencies.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= pushes {
                        return;
                    }
                    let notice = |n: usize| {
                        serde_json::json!({
                            "user": format!("push{}", n % users),
                            "destination": "/queue/notices",
                            "payload": {"n": n, "text": "x".repeat(64)},
                        })
                    };
                    let items: Vec<_> = (first..(first + batch).min(pushes)).map(notice).collect();
                    let count = items.len();
                    let body = if batch == 1 {
                        items.into_iter().next().unwrap_or_default()
                    } else {
                        serde_json::Value::Array(items)
                    };
                    let sent = Instant::now();
                    let answer = http.post(&url).header("x-api-key", &key).json(&body).send().await;
                    let stored = match answer {
                        Ok(response) if response.status().is_success() => {
                            let text = response.text().await.unwrap_or_default();
                            text.matches("\"delivered\"").count()
                        }
                        other => {
                            eprintln!("publish: a request failed: {other:?}");
                            0
                        }
                    };
                    if stored < count {
                        failed.fetch_add(count - stored, Ordering::Relaxed);
                    }
                    let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner());
                    latencies.extend(std::iter::repeat_n(us, stored));
                }
            })
        })
        .collect();
    for client in clients {
        let _ = client.await;
    }
    let elapsed = started.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    let form = if batch == 1 { "single".to_owned() } else { format!("batches of {batch}") };
    println!(
        "publish ({users} user{}, {form}, {CLIENTS} clients): {} durable pushes in {:.3} s = {:.0} pushes/s; request p50 {:.2} ms, p99 {:.2} ms; failed {}{}",
        if users == 1 { "" } else { "s" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        failed.load(Ordering::Relaxed),
        cpu_per(cpu_start, latencies.len() as u64, "push"),
    );
}

pub(crate) async fn run(args: &Args) {
    let base = args.url.replacen("ws://", "http://", 1).trim_end_matches("/ws").to_owned();
    // A short warm-up (connections, prepared statements, the page cache).
    run_one(args, &base, 1, 500, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    run_one(args, &base, 1, args.pushes, 1).await;
    run_one(args, &base, 1000, args.pushes, 1).await;
    let batch = args.publish_batch.clamp(1, 1000);
    run_one(args, &base, 1, args.pushes * 5, batch).await;
    run_one(args, &base, 1000, args.pushes * 5, batch).await;
}
