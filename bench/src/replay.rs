//! The `replay` scenario: how fast missed messages are replayed on resume, and how long
//! 10,000 clients reconnecting at once take to be resynchronised.
//!
//! Messages are notices published with `POST /api/publish` (numbered and logged like task
//! updates). Phase 1: four users with 1,000 logged notices each; 25 clients per user (the
//! server allows 32 per user) resume from `seq` 0 at once; replayed messages/s until every
//! client has all 1,000. Phase 2: `--replay-clients` clients (10 per user) resume at once, each having missed 5 notices; the time until every
//! client's SUBSCRIBE RECEIPT (which follows its catch-up) arrived, and its p50/p99.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use taskpulse_shared::{resume, stomp::Command};

use taskpulse_testkit::{StompClient, frame, token};

use crate::{Args, TOKEN_TTL_S, percentile, subscribe};

const PATH: &str = "/queue/notices";

async fn publish(http: &reqwest::Client, base: &str, key: &str, user: &str, n: usize) {
    let body = serde_json::json!({"user": user, "destination": PATH, "payload": {"n": n, "pad": "x".repeat(100)}});
    let response =
        http.post(format!("{base}/api/publish")).header("x-api-key", key).json(&body).send().await;
    match response {
        Ok(r) if r.status().is_success() => {}
        other => eprintln!("replay: publish failed: {other:?}"),
    }
}

/// Publishes `per_user` notices to each user, 32 requests in flight.
async fn fill(args: &Args, base: &str, users: &[String], per_user: usize) {
    let http = reqwest::Client::new();
    let jobs: Arc<Vec<(String, usize)>> =
        Arc::new(users.iter().flat_map(|u| (0..per_user).map(move |n| (u.clone(), n))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (http, base, key, jobs, next) =
                (http.clone(), base.to_owned(), args.api_key.clone(), jobs.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((user, n)) = jobs.get(i) else { return };
                    publish(&http, &base, &key, user, *n).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// The log's epoch, read from one live notice.
async fn epoch(args: &Args, base: &str) -> String {
    let probe = token(&args.secret, "replay-probe", TOKEN_TTL_S);
    let mut conn = StompClient::try_signed_in(&args.url, &probe).await.expect("probe connects");
    subscribe(&mut conn, &format!("/user{PATH}")).await.expect("probe subscribes");
    publish(&reqwest::Client::new(), base, &args.api_key, "replay-probe", 0).await;
    loop {
        let frame = conn.next().await.expect("the probe's notice");
        if let Some(epoch) = frame.header(resume::EPOCH) {
            return epoch.to_owned();
        }
    }
}

/// Connects as `user`, resumes at `seq` 0 and reads until the RECEIPT and `expect` messages.
async fn resume(
    args: &Args,
    user: &str,
    epoch: &str,
    expect: usize,
) -> Result<(usize, Duration), String> {
    let started = Instant::now();
    let mut conn = StompClient::try_signed_in(&args.url, &token(&args.secret, user, TOKEN_TTL_S))
        .await
        .map_err(|e| e.to_string())?;
    let destination = format!("/user{PATH}");
    let subscribe = frame(
        Command::Subscribe,
        &[
            ("id", "0"),
            ("destination", &destination),
            ("receipt", "r"),
            (resume::RESUME_EPOCH, epoch),
            (resume::RESUME_SEQ, "0"),
        ],
        Vec::new(),
    );
    conn.try_send(&subscribe).await.map_err(|e| e.to_string())?;
    let mut messages = 0;
    loop {
        let frame = conn.next().await.ok_or("closed during the catch-up")?;
        match frame.command {
            Command::Message => messages += 1,
            Command::Receipt if messages >= expect => return Ok((messages, started.elapsed())),
            Command::Receipt => return Err(format!("caught up with {messages} of {expect}")),
            _ => return Err(format!("{:?}", frame.header("message"))),
        }
    }
}

pub(crate) async fn run(args: &Args) {
    let base = args.url.replacen("ws://", "http://", 1).trim_end_matches("/ws").to_owned();
    let epoch = epoch(args, &base).await;

    // Phase 1: replay throughput.
    let big: Vec<String> = (0..4).map(|u| format!("replay-big{u}")).collect();
    fill(args, &base, &big, 1000).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let (args_url, secret, key, epoch, user) = (
                args.url.clone(),
                args.secret.clone(),
                args.api_key.clone(),
                epoch.clone(),
                big[i % 4].clone(),
            );
            tokio::spawn(async move {
                let args = Args::for_replay(args_url, secret, key);
                resume(&args, &user, &epoch, 1000).await
            })
        })
        .collect();
    let mut replayed = 0;
    for c in clients {
        match c.await {
            Ok(Ok((n, _))) => replayed += n,
            other => eprintln!("replay: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    println!(
        "replay throughput: 100 clients resumed 1,000 missed messages each: {replayed} messages in {:.3} s = {:.0} replayed messages/s",
        elapsed.as_secs_f64(),
        replayed as f64 / elapsed.as_secs_f64()
    );

    // Phase 2: many clients reconnecting at once.
    let users: Vec<String> =
        (0..args.replay_clients.div_ceil(10)).map(|u| format!("replay{u}")).collect();
    fill(args, &base, &users, 5).await;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let total = args.replay_clients;
    let workers: Vec<_> = (0..512)
        .map(|_| {
            let (url, secret, key, epoch, users, next) = (
                args.url.clone(),
                args.secret.clone(),
                args.api_key.clone(),
                epoch.clone(),
                users.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let args = Args::for_replay(url, secret, key);
                let mut times = Vec::new();
                let mut held = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return (times, held.len());
                    }
                    match resume(&args, &users[i / 10], &epoch, 5).await {
                        Ok((_, t)) => {
                            times.push(t.as_micros() as u32);
                            held.push(());
                        }
                        Err(e) => eprintln!("replay: client {i}: {e}"),
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for w in workers {
        if let Ok((t, _)) = w.await {
            times.extend(t);
        }
    }
    let elapsed = started.elapsed();
    times.sort_unstable();
    println!(
        "reconnect storm: {} of {total} clients resumed (5 missed messages each, 512 connecting at a time) and were resynchronised in {:.3} s; per client connect+catch-up p50 {:.1} ms, p99 {:.1} ms",
        times.len(),
        elapsed.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    );
}
