//! The `queue` scenario: competing consumers. `--queue-consumers` subscribers (spread over
//! `--subscriber-urls`, so over the nodes of a cluster) consume `/queue/bench.work` in `auto`
//! mode while one publisher on `--url` SENDs `--queue-messages` messages to it as fast as it
//! can. Each message must reach exactly one consumer: reported as deliveries/s, latency
//! from SEND to delivery, lost, duplicated, out of order within a consumer, and how evenly
//! the consumers shared the work.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;

use crate::{
    Args, Seen, cpu_per, now_ns, open_many, open_subscribers, percentile, publish, server_cpu,
};

const QUEUE: &str = "/queue/bench.work";

/// How long the consumers wait for the last messages.
const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) async fn run(args: &Args) {
    let consumers = args.queue_consumers;
    let messages = args.queue_messages as u64;
    let (subs, _) =
        open_subscribers(args, |i| format!("worker{i}"), consumers, |_| QUEUE.into()).await;
    let (mut publisher, _) = open_many(&args.url, &args.secret, |_| "bench".into(), 1, 1).await;
    let Some(publisher) = publisher.pop() else {
        eprintln!("queue: the publisher could not connect");
        return;
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let copies: Arc<Vec<AtomicU8>> = Arc::new((0..messages).map(|_| AtomicU8::new(0)).collect());
    let epoch = Instant::now();
    let deadline = Instant::now() + PATIENCE;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut bodies| {
            let (delivered, copies) = (delivered.clone(), copies.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut last = None;
                while delivered.load(Ordering::Relaxed) < messages && Instant::now() < deadline {
                    let next = tokio::time::timeout(Duration::from_millis(100), bodies.next());
                    let Ok(Some(body)) = next.await else { continue };
                    let arrived = now_ns(epoch);
                    seen.record(&body, arrived, &mut last);
                    let seq = body.split(':').next().and_then(|s| s.parse::<usize>().ok());
                    if let Some(copy) = seq.and_then(|s| copies.get(s)) {
                        copy.fetch_add(1, Ordering::Relaxed);
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    let started = Instant::now();
    let cpu_start = server_cpu();
    tokio::spawn(publish(publisher, messages, 0, 1, |_| QUEUE.into(), &[], None, epoch));
    let mut seen = Vec::with_capacity(readers.len());
    for reader in readers {
        if let Ok(s) = reader.await {
            seen.push(s);
        }
    }
    let elapsed = started.elapsed();
    let total: u64 = seen.iter().map(|s| s.received).sum();
    let lost = copies.iter().filter(|c| c.load(Ordering::Relaxed) == 0).count();
    let duplicated: u64 =
        copies.iter().map(|c| u64::from(c.load(Ordering::Relaxed)).saturating_sub(1)).sum();
    let reordered: u64 = seen.iter().map(|s| s.duplicates_or_reordered).sum();
    let mut shares: Vec<u64> = seen.iter().map(|s| s.received).collect();
    shares.sort_unstable();
    let mut latencies: Vec<u32> = seen.into_iter().flat_map(|s| s.latencies_us).collect();
    latencies.sort_unstable();
    println!(
        "queue ({consumers} {:?} consumers, auto, x {messages} messages from one publisher): {total} deliveries in {:.3} s = {:.0} deliveries/s; latency p50 {:.2} ms, p99 {:.2} ms; lost {lost}, duplicated {duplicated}, out of order within a consumer {reordered}; per consumer min {} max {}{}",
        args.transport,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        shares.first().copied().unwrap_or(0),
        shares.last().copied().unwrap_or(0),
        cpu_per(cpu_start, total, "delivery"),
    );
}
