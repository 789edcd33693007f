//! Durable pushes through `POST /api/publish`: each notice is stored, numbered in its user's
//! log and handed to the user's sessions. Two scenarios:
//!
//! - `publish`, nobody online (each push is also marked for the user's next SUBSCRIBE): one
//!   user, then 1,000 users, the single form and then the batch form (`--publish-batch` per
//!   request), as fast as 32 keep-alive clients go; pushes/s and request latency.
//! - `durable`, every user online: `--durable-users` users each hold one STOMP subscription
//!   to `/user/queue/notices`. Unlimited in the single form, unlimited in the batch form,
//!   then at `--rate` pushes/s for 5 s in the batch form. Every delivery is checked (per
//!   user: lost, duplicated, out of order) and timed from its request to its subscriber.
//!   With `--rabbitmq-url`, RabbitMQ runs first as the yardstick: as many persistent
//!   messages to as many durable queues, one consumer each, over its Web-STOMP; a `compare
//!   durable` line gives the ratio of the unlimited batch-form rate to RabbitMQ's.
//!
//! In `durable`, client c publishes for the users u with u % 32 == c, one request at a time,
//! so each user's notices are sent, stored and delivered in a defined order.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::{
    Args, Outcome, SERVER_PID, cpu_per, join_readers, now_ns, open_many, open_subscribers,
    percentile, report, server_cpu, spawn_publishers, start_readers, transport::Transport,
};

/// Requests in flight (one per client).
const CLIENTS: usize = 32;

/// The destination of every push, under `/user` for the subscribers.
const NOTICES: &str = "/queue/notices";

/// How long the `durable` scenario's fixed-rate phase lasts.
const PACED: Duration = Duration::from_secs(5);

/// One notice: for user `user`, its `k`-th in this run.
#[derive(Debug, Clone, Copy)]
struct Item {
    user: u32,
    k: u64,
}

/// Which client sends which notices, in order.
fn by_client(users: usize, total: usize, ordered: bool) -> Vec<Vec<Item>> {
    let mut plan = vec![Vec::new(); CLIENTS];
    if ordered {
        // Client c owns the users u with u % CLIENTS == c and sends their k-th notices
        // round by round.
        let per_user = (total / users.max(1)) as u64;
        for k in 0..per_user {
            for user in 0..users {
                plan[user % CLIENTS].push(Item { user: user as u32, k });
            }
        }
    } else {
        for n in 0..total {
            plan[n % CLIENTS].push(Item { user: (n % users.max(1)) as u32, k: n as u64 });
        }
    }
    plan
}

/// What the publishers of one run saw.
#[derive(Debug, Default)]
struct Sent {
    /// Items answered `delivered` (stored).
    stored: usize,
    failed: usize,
    /// Per stored item, its request's latency, µs.
    request_us: Vec<u32>,
}

/// Publishes `plan` for users named `{prefix}{user}`, `batch` per request (1: the single
/// form), unpaced or spread evenly over `paced`.
async fn push(
    args: &Args,
    prefix: &str,
    plan: Vec<Vec<Item>>,
    batch: usize,
    paced: Option<Duration>,
    epoch: Instant,
) -> Sent {
    let base = args.url.replacen("ws://", "http://", 1).trim_end_matches("/ws").to_owned();
    let http = reqwest::Client::new();
    let sent = Arc::new(Mutex::new(Sent::default()));
    let started = Instant::now();
    let clients: Vec<_> = plan
        .into_iter()
        .map(|items| {
            let (http, url, key) =
                (http.clone(), format!("{base}/api/publish"), args.api_key.clone());
            let (sent, prefix) = (sent.clone(), prefix.to_owned());
            tokio::spawn(async move {
                let requests = items.len().div_ceil(batch);
                for (r, chunk) in items.chunks(batch).enumerate() {
                    if let Some(paced) = paced {
                        let due = started + paced.mul_f64(r as f64 / requests as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let at = now_ns(epoch);
                    let notice = |item: &Item| {
                        serde_json::json!({
                            "user": format!("{prefix}{}", item.user),
                            "destination": NOTICES,
                            "payload": format!("{}:{at}:{}", item.k, "x".repeat(64)),
                        })
                    };
                    let body = match chunk {
                        [one] => notice(one),
                        many => serde_json::Value::Array(many.iter().map(notice).collect()),
                    };
                    let request = Instant::now();
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
                    let us = request.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
                    sent.stored += stored;
                    sent.failed += chunk.len().saturating_sub(stored);
                    sent.request_us.extend(std::iter::repeat_n(us, stored));
                }
            })
        })
        .collect();
    for client in clients {
        let _ = client.await;
    }
    let mut sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|e| e.into_inner()));
    sent.request_us.sort_unstable();
    sent
}

/// The `publish` scenario's runs: `pushes` notices spread round-robin over `users` users
/// nobody follows.
async fn offline(args: &Args, users: usize, pushes: usize, batch: usize) {
    let started = Instant::now();
    let cpu_start = server_cpu();
    let sent =
        push(args, "push", by_client(users, pushes, false), batch, None, Instant::now()).await;
    let elapsed = started.elapsed();
    let form = if batch == 1 { "single".to_owned() } else { format!("batches of {batch}") };
    println!(
        "publish ({users} user{}, {form}, {CLIENTS} clients): {} durable pushes in {:.3} s = {:.0} pushes/s; request p50 {:.2} ms, p99 {:.2} ms; failed {}{}",
        if users == 1 { "" } else { "s" },
        sent.stored,
        elapsed.as_secs_f64(),
        sent.stored as f64 / elapsed.as_secs_f64(),
        percentile(&sent.request_us, 0.50),
        percentile(&sent.request_us, 0.99),
        sent.failed,
        cpu_per(cpu_start, sent.stored as u64, "push"),
    );
}

/// The `publish` scenario.
pub(crate) async fn run(args: &Args) {
    // A short warm-up (connections, prepared statements, the page cache).
    offline(args, 1, 500, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    offline(args, 1, args.pushes, 1).await;
    offline(args, 1000, args.pushes, 1).await;
    let batch = args.publish_batch.clamp(1, 1000);
    offline(args, 1, args.pushes * 5, batch).await;
    offline(args, 1000, args.pushes * 5, batch).await;
}

/// One run of the `durable` scenario over the open subscriptions `subs` (subscriber u is
/// user `durable{u}`); gives the subscriptions back with the pushes/s delivered.
async fn online(
    args: &Args,
    subs: Vec<crate::transport::Bodies>,
    total: usize,
    batch: usize,
    paced: Option<Duration>,
) -> (Vec<crate::transport::Bodies>, f64) {
    let users = subs.len();
    let plan = by_client(users, total, true);
    let per_user = (total / users.max(1)) as u64;
    let epoch = Instant::now();
    let readers = start_readers(subs, per_user, epoch);
    let started = Instant::now();
    let cpu_start = server_cpu();
    let sent = push(args, "durable", plan, batch, paced, epoch).await;
    let (subs, seen) = join_readers(readers).await;
    let elapsed = started.elapsed();
    let form = if batch == 1 { "single".to_owned() } else { format!("batches of {batch}") };
    let pace = paced.map_or_else(String::new, |p| {
        format!(", at {:.0} pushes/s", (per_user * users as u64) as f64 / p.as_secs_f64())
    });
    let outcome = report(
        &format!(
            "durable ({users} users online, {form}{pace}, {CLIENTS} clients; request to delivery)"
        ),
        seen,
        &vec![per_user; users],
        elapsed,
        cpu_start,
    );
    println!(
        "  requests: {} durable pushes stored = {:.0} pushes/s; request p50 {:.2} ms, p99 {:.2} ms; failed {}",
        sent.stored,
        sent.stored as f64 / elapsed.as_secs_f64(),
        percentile(&sent.request_us, 0.50),
        percentile(&sent.request_us, 0.99),
        sent.failed,
    );
    (subs, outcome.deliveries_per_s)
}

/// RabbitMQ's persistent deliveries: `total` messages over `queues` durable queues, one
/// consumer each (auto ack), from 4 publisher connections, `persistent:true`.
async fn rabbitmq(args: &Args, url: &str, queues: usize, total: usize) -> Option<Outcome> {
    let mut rabbit = args.clone();
    rabbit.url = url.to_owned();
    rabbit.subscriber_urls.clear();
    rabbit.transport = Transport::Stomp;
    SERVER_PID.store(args.rabbitmq_pid.unwrap_or(0), Ordering::Relaxed);
    let (subs, _) =
        open_subscribers(&rabbit, |i| format!("r{i}"), queues, |i| format!("/queue/durable.{i}"))
            .await;
    if subs.len() < queues {
        eprintln!("RabbitMQ: {} of {queues} consumers subscribed; skipped", subs.len());
        return None;
    }
    let publishers = 4;
    let (pubs, _) = open_many(url, &args.secret, |_| "bench".into(), publishers, publishers).await;
    let per = (total / queues) as u64;
    let epoch = Instant::now();
    let readers = start_readers(subs, per, epoch);
    let started = Instant::now();
    let cpu_start = server_cpu();
    let q = queues as u64;
    let destination = move |seq| format!("/queue/durable.{}", seq % q);
    spawn_publishers(pubs, per * q, destination, &[("persistent", "true")], epoch);
    let (_, seen) = join_readers(readers).await;
    let outcome = report(
        &format!(
            "RabbitMQ durable ({queues} durable queues x {per} persistent messages, 4 publishers, Web-STOMP)"
        ),
        seen,
        &vec![per; queues],
        started.elapsed(),
        cpu_start,
    );
    SERVER_PID.store(args.server_pid.unwrap_or(0), Ordering::Relaxed);
    Some(outcome)
}

/// The `durable` scenario.
pub(crate) async fn run_durable(args: &Args) {
    let users = args.durable_users.max(CLIENTS);
    let batch = args.publish_batch.clamp(1, 1000);
    let unlimited = args.pushes * 5;
    let theirs = match &args.rabbitmq_url {
        Some(url) => rabbitmq(args, url, users - users % 4, unlimited).await,
        None => None,
    };
    let (subs, _) =
        open_subscribers(args, |u| format!("durable{u}"), users, |_| format!("/user{NOTICES}"))
            .await;
    if subs.len() < users {
        eprintln!("durable: {} of {users} subscribers connected; skipped", subs.len());
        return;
    }
    let (subs, _) = online(args, subs, users * 10, 1, None).await; // warm-up
    let (subs, _) = online(args, subs, args.pushes, 1, None).await;
    let (subs, ours) = online(args, subs, unlimited, batch, None).await;
    let _ = online(args, subs, args.rate * PACED.as_secs() as usize, batch, Some(PACED)).await;
    if let Some(theirs) = theirs {
        println!(
            "compare durable: TaskPulse {ours:.0} durable pushes/s delivered (batches of {batch}) = {:.2}x RabbitMQ's {:.0} persistent deliveries/s{}",
            ours / theirs.deliveries_per_s,
            theirs.deliveries_per_s,
            crate::cpu_text(theirs.cpu_us_per_delivery, "delivery (RabbitMQ)"),
        );
    }
}
