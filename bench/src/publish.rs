//! The `publish` scenario: the raw durable-push rate. `POST /api/publish` notices to
//! `/queue/notices` of one user, then of 1,000 users in turn; each is stored, numbered in
//! the user's log and handed to the user's sessions (none here: this measures the durable
//! path). 32 keep-alive clients keep requests in flight; reported as pushes/s (2xx answers)
//! and request latency p50/p99.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Args, percentile};

/// Requests in flight.
const CLIENTS: usize = 32;

/// One run: `pushes` notices spread round-robin over `users` users.
async fn run_one(args: &Args, base: &str, users: usize, pushes: usize) {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(pushes)));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, key) =
                (http.clone(), format!("{base}/api/publish"), args.api_key.clone());
            let (next, failed, latencies) = (next.clone(), failed.clone(), latencies.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= pushes {
                        return;
                    }
                    let body = serde_json::json!({
                        "user": format!("push{}", n % users),
                        "destination": "/queue/notices",
                        "payload": {"n": n, "text": "x".repeat(64)},
                    });
                    let sent = Instant::now();
                    let answer = http.post(&url).header("x-api-key", &key).json(&body).send().await;
                    match answer {
                        Ok(response) if response.status().is_success() => {
                            let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                            latencies.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                        }
                        other => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("publish: a push failed: {other:?}");
                            }
                        }
                    }
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
    println!(
        "publish ({users} user{}, {CLIENTS} clients): {} durable pushes in {:.3} s = {:.0} pushes/s; request p50 {:.2} ms, p99 {:.2} ms; failed {}",
        if users == 1 { "" } else { "s" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        failed.load(Ordering::Relaxed),
    );
}

pub(crate) async fn run(args: &Args) {
    let base = args.url.replacen("ws://", "http://", 1).trim_end_matches("/ws").to_owned();
    // A short warm-up (connections, prepared statements, the page cache).
    run_one(args, &base, 1, 500).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    run_one(args, &base, 1, args.pushes).await;
    run_one(args, &base, 1000, args.pushes).await;
}
