//! `taskpulse-load`: opens real connections to a running TaskPulse server (STOMP over
//! WebSocket, or the subscribers' `--transport`: the JSON protocol, SockJS, SSE) and reports
//! delivered messages/s, end-to-end latency, lost/duplicated/out-of-order deliveries,
//! connections/s and server RSS per idle subscribed connection; and, through the task API,
//! task submissions/s and submit-to-`completed` latency (see `tasks.rs`).
//!
//! It measures and prints; it asserts nothing. `cargo xtask load` starts a release server
//! and runs every scenario; the figures go to docs/BENCHMARKS.md.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod publish;
mod queue;
mod replay;
mod tasks;
mod transport;

use clap::Parser;
use futures_util::StreamExt;
use taskpulse_shared::{resume::TASKS_DESTINATION, stomp::Command};
use taskpulse_testkit::{StompClient, frame, token};
use tokio::task::JoinHandle;
use transport::{Bodies, Server, Transport};

/// Tokens the load tool mints live this long, seconds.
const TOKEN_TTL_S: i64 = 3600;

/// Subscribes `client` to `destination` (auto ack), waiting for the RECEIPT.
async fn subscribe(client: &mut StompClient, destination: &str) -> Result<(), String> {
    client.try_subscribe("0", destination, "auto", &[]).await.map_err(|e| e.to_string())
}

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskpulse-load", about = "Load generator for the TaskPulse STOMP broker")]
struct Args {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// WebSocket URLs the subscribers of broadcast, destinations, latency, connect and idle
    /// are spread over, in turn (comma-separated; other nodes of a cluster); `--url` when
    /// empty. Publishers always use `--url`.
    #[arg(long, value_delimiter = ',')]
    subscriber_urls: Vec<String>,
    /// The server's HS256 secret (tokens are signed here).
    #[arg(long, env = "TASKPULSE_JWT_SECRET")]
    secret: String,
    /// The server's process id, to read its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Which scenarios: broadcast, destinations, latency, connect, idle, tasks, replay,
    /// publish, durable, queue (comma-separated).
    #[arg(
        long,
        default_value = "broadcast,destinations,latency,connect,idle,tasks,replay,publish,durable,queue"
    )]
    scenarios: String,
    /// The subscribers' transport in broadcast, destinations, latency, connect and idle
    /// (publishers always speak STOMP over WebSocket). SSE carries task updates only, so
    /// with it only connect and idle run.
    #[arg(long, value_enum, default_value_t = Transport::Stomp)]
    transport: Transport,
    /// Durable pushes per run of the publish scenario (five times as many in batch form).
    #[arg(long, default_value_t = 20_000)]
    pushes: usize,
    /// Notices per request in the publish scenario's batch form (at most 1,000).
    #[arg(long, default_value_t = 100)]
    publish_batch: usize,
    /// Users online in the durable scenario, one subscription each.
    #[arg(long, default_value_t = 1000)]
    durable_users: usize,
    /// RabbitMQ's Web-STOMP URL: the durable scenario runs against it first (persistent
    /// messages to durable queues) and prints the ratio.
    #[arg(long)]
    rabbitmq_url: Option<String>,
    /// RabbitMQ's process id, for its CPU time.
    #[arg(long)]
    rabbitmq_pid: Option<u32>,
    /// X-API-Key of the server, for publishing (the replay scenario).
    #[arg(long, env = "TASKPULSE_LOAD_API_KEY", default_value = "")]
    api_key: String,
    /// Clients reconnecting at once in the replay scenario.
    #[arg(long, default_value_t = 10_000)]
    replay_clients: usize,
    /// Subscribers for the broadcast scenario.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Messages the broadcast scenario publishes.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Destinations (one subscriber each) for the destinations scenario.
    #[arg(long, default_value_t = 1000)]
    destinations: usize,
    /// Messages per destination in the destinations scenario.
    #[arg(long, default_value_t = 200)]
    per_destination: usize,
    /// Target deliveries per second in the latency scenario, and pushes per second in the
    /// durable scenario's paced run.
    #[arg(long, default_value_t = 20_000)]
    rate: usize,
    /// Connections opened in the connect scenario.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Idle subscribed connections in the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Tasks submitted at once in the tasks scenario's burst.
    #[arg(long, default_value_t = 2000)]
    tasks: usize,
    /// Tasks per second in the tasks scenario's paced phase (for latency).
    #[arg(long, default_value_t = 50)]
    task_rate: usize,
    /// Consumers of the queue scenario.
    #[arg(long, default_value_t = 100)]
    queue_consumers: usize,
    /// Messages the queue scenario sends.
    #[arg(long, default_value_t = 50_000)]
    queue_messages: usize,
    /// A yardstick server (`taskpulse-yardstick`): broadcast, destinations, latency and
    /// connect run against it first, then against TaskPulse, and a `compare` line gives
    /// TaskPulse's deliveries/s (connections/s) and server CPU per delivery (connection) as a
    /// share of the yardstick's.
    #[arg(long)]
    compare_url: Option<String>,
    /// The yardstick's process id, for its CPU time.
    #[arg(long)]
    compare_pid: Option<u32>,
}

impl Args {
    /// The connection settings only, for tasks that need their own copy.
    fn for_replay(url: String, secret: String, api_key: String) -> Args {
        Args::parse_from([
            "taskpulse-load",
            "--url",
            &url,
            "--secret",
            &secret,
            "--api-key",
            &api_key,
        ])
    }
}

/// The process id whose CPU time is measured (`--server-pid`, or `--compare-pid` while the
/// yardstick runs); 0 for none.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

/// The server's CPU time so far (user + system, from `/proc/<pid>/stat`), in seconds; `None`
/// without `--server-pid`.
fn server_cpu() -> Option<f64> {
    let pid = SERVER_PID.load(Ordering::Relaxed);
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime (fields 14 and 15) are the 12th and 13th of them.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, 100 per second.
    Some(ticks as f64 / 100.0)
}

/// Server CPU µs per counted thing since `start` (a [`server_cpu`] reading).
fn cpu_us_per(start: Option<f64>, count: u64) -> Option<f64> {
    match (start, server_cpu()) {
        (Some(start), Some(now)) if count > 0 => Some((now - start) * 1e6 / count as f64),
        _ => None,
    }
}

/// ", server CPU N µs per <unit>" since `start` (a [`server_cpu`] reading), or nothing.
fn cpu_per(start: Option<f64>, count: u64, unit: &str) -> String {
    cpu_text(cpu_us_per(start, count), unit)
}

/// ", server CPU N µs per <unit>", or nothing without a figure.
fn cpu_text(us: Option<f64>, unit: &str) -> String {
    us.map(|us| format!("; server CPU {us:.1} µs per {unit}")).unwrap_or_default()
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    duplicates_or_reordered: u64,
    latencies_us: Vec<u32>,
}

/// Nanoseconds since `epoch`, the shared clock of publishers and subscribers.
fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Reads deliveries with bodies `seq:sent_ns:padding` until `expected` arrived or the
/// deadline passes.
async fn consume(bodies: &mut Bodies, expected: u64, epoch: Instant, deadline: Instant) -> Seen {
    let mut seen = Seen::default();
    let mut last: Option<u64> = None;
    while seen.received < expected {
        let next = tokio::time::timeout_at(deadline.into(), bodies.next()).await;
        let Ok(Some(body)) = next else { break };
        let arrived = now_ns(epoch);
        seen.record(&body, arrived, &mut last);
    }
    seen
}

impl Seen {
    /// Counts one delivery whose text is `seq:sent_ns:padding`, arrived at `arrived` ns;
    /// `last` is the previous delivery's `seq` on the same connection. The text may be a
    /// JSON string (a published payload), quotes and all.
    fn record(&mut self, text: &str, arrived: u64, last: &mut Option<u64>) {
        let text = text.trim_matches('"');
        let mut parts = text.splitn(3, ':');
        let seq: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(arrived);
        if last.is_some_and(|l| seq <= l) {
            self.duplicates_or_reordered += 1;
        }
        *last = Some(seq);
        self.received += 1;
        self.latencies_us.push(((arrived.saturating_sub(sent)) / 1000) as u32);
    }
}

/// Starts one reader per subscriber, each expecting `expected` messages within 120 s.
fn start_readers(
    subs: Vec<Bodies>,
    expected: u64,
    epoch: Instant,
) -> Vec<JoinHandle<(Bodies, Seen)>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    subs.into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let seen = consume(&mut conn, expected, epoch, deadline).await;
                (conn, seen)
            })
        })
        .collect()
}

/// Waits for every reader; gives back the subscriptions, for another run, and what each saw.
async fn join_readers(readers: Vec<JoinHandle<(Bodies, Seen)>>) -> (Vec<Bodies>, Vec<Seen>) {
    let mut subs = Vec::with_capacity(readers.len());
    let mut seen = Vec::with_capacity(readers.len());
    for reader in readers {
        let (conn, saw) = reader.await.expect("reader");
        subs.push(conn);
        seen.push(saw);
    }
    (subs, seen)
}

fn body(seq: u64, epoch: Instant, size: usize) -> String {
    let head = format!("{seq}:{}:", now_ns(epoch));
    let pad = size.saturating_sub(head.len());
    head + &"x".repeat(pad)
}

/// Opens `n` connections `concurrency` at a time; returns them and the elapsed time.
async fn open_many(
    url: &str,
    secret: &str,
    users: impl Fn(usize) -> String,
    n: usize,
    concurrency: usize,
) -> (Vec<StompClient>, Duration) {
    let results = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let tokens: Arc<Vec<String>> =
        Arc::new((0..n).map(|i| token(secret, &users(i), TOKEN_TTL_S)).collect());
    let started_open = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (url, results, next, tokens) =
                (url.to_owned(), results.clone(), next.clone(), tokens.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= tokens.len() {
                        break;
                    }
                    match StompClient::try_signed_in(&url, &tokens[i]).await {
                        Ok(conn) => results.lock().unwrap().push(conn),
                        Err(e) => eprintln!("connection {i} failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started_open.elapsed();
    let conns = std::mem::take(&mut *results.lock().unwrap());
    (conns, elapsed)
}

/// Opens `n` subscriptions to `destination` over `--transport`, `concurrency` at a time;
/// returns them and the elapsed time.
async fn open_subscribers(
    args: &Args,
    users: impl Fn(usize) -> String,
    n: usize,
    destination: impl Fn(usize) -> String,
) -> (Vec<Bodies>, Duration) {
    let concurrency = 64;
    let urls = if args.subscriber_urls.is_empty() {
        std::slice::from_ref(&args.url)
    } else {
        args.subscriber_urls.as_slice()
    };
    let servers: Arc<Vec<Server>> = Arc::new(urls.iter().map(|url| Server::new(url)).collect());
    let results = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let jobs: Arc<Vec<(String, String)>> = Arc::new(
        (0..n).map(|i| (token(&args.secret, &users(i), TOKEN_TTL_S), destination(i))).collect(),
    );
    let started_open = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (servers, results, next, jobs) =
                (servers.clone(), results.clone(), next.clone(), jobs.clone());
            let transport = args.transport;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((token, destination)) = jobs.get(i) else { break };
                    let server = &servers[i % servers.len()];
                    match transport.subscribe(server, token, destination).await {
                        Ok(bodies) => results.lock().unwrap().push(bodies),
                        Err(e) => eprintln!("subscriber {i} failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started_open.elapsed();
    let subs = std::mem::take(&mut *results.lock().unwrap());
    (subs, elapsed)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

/// A delivery scenario's two figures that `--compare` puts side by side.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    deliveries_per_s: f64,
    p99_ms: f64,
    cpu_us_per_delivery: Option<f64>,
}

/// Prints one result line from the subscribers' observations and returns its figures;
/// `cpu_start` is the server's CPU time when publishing began.
fn report(
    name: &str,
    seen: Vec<Seen>,
    expected_each: &[u64],
    elapsed: Duration,
    cpu_start: Option<f64>,
) -> Outcome {
    let delivered: u64 = seen.iter().map(|s| s.received).sum();
    let cpu_us_per_delivery = cpu_us_per(cpu_start, delivered);
    let expected: u64 = expected_each.iter().sum();
    let reordered: u64 = seen.iter().map(|s| s.duplicates_or_reordered).sum();
    let mut latencies: Vec<u32> = seen.into_iter().flat_map(|s| s.latencies_us).collect();
    latencies.sort_unstable();
    let p99_ms = percentile(&latencies, 0.99);
    println!(
        "{name}: {delivered} deliveries in {:.3} s = {:.0} deliveries/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; lost {}, duplicated or out of order {}{}",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        expected.saturating_sub(delivered),
        reordered,
        cpu_text(cpu_us_per_delivery, "delivery"),
    );
    Outcome {
        deliveries_per_s: delivered as f64 / elapsed.as_secs_f64(),
        p99_ms,
        cpu_us_per_delivery,
    }
}

/// Publishes `count` messages to destinations chosen by `destination(seq)`, with `headers`
/// besides `destination`, as fast as possible or at `rate` messages/s, from one connection.
#[allow(clippy::too_many_arguments)]
async fn publish(
    mut conn: StompClient,
    count: u64,
    first: u64,
    step: u64,
    destination: impl Fn(u64) -> String,
    headers: &'static [(&'static str, &'static str)],
    rate: Option<f64>,
    epoch: Instant,
) {
    let started = Instant::now();
    for n in 0..count {
        let seq = first + n * step;
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let dest = destination(seq);
        let mut message = frame(Command::Send, &[("destination", &dest)], body(seq, epoch, 200));
        for (name, value) in headers {
            message.headers.push(name, value);
        }
        if conn.feed(&message).await.is_err() {
            eprintln!("publisher connection closed");
            return;
        }
        if rate.is_some() || n % 32 == 31 {
            let _ = conn.flush().await;
        }
    }
    let _ = conn.flush().await;
    // Keep the connection open until the server has read everything.
    let receipt = frame(Command::Disconnect, &[("receipt", "bye")], Vec::new());
    let _ = conn.try_send(&receipt).await;
    let _ = tokio::time::timeout(Duration::from_secs(60), conn.next()).await;
}

/// Sends seqs `0..total` from `pubs` at full speed: publisher p sends p, p+P, p+2P, … (P
/// publishers) to `destination(seq)`. With `seq % N` destinations and N a multiple of P,
/// each destination's seqs come from one publisher, increasing, so their order is checked.
fn spawn_publishers(
    pubs: Vec<StompClient>,
    total: u64,
    destination: impl Fn(u64) -> String + Clone + Send + 'static,
    headers: &'static [(&'static str, &'static str)],
    epoch: Instant,
) {
    let publishers = pubs.len() as u64;
    for (p, conn) in pubs.into_iter().enumerate() {
        let count = total.saturating_sub(p as u64).div_ceil(publishers);
        let destination = destination.clone();
        tokio::spawn(publish(conn, count, p as u64, publishers, destination, headers, None, epoch));
    }
}

async fn broadcast(
    args: &Args,
    subscribers: usize,
    messages: u64,
    rate: Option<f64>,
    name: &str,
) -> Outcome {
    let (subs, _) = open_subscribers(
        args,
        |i| format!("sub{i}"),
        subscribers,
        |_| "/topic/bench.broadcast".into(),
    )
    .await;
    let (mut publisher, _) = open_many(&args.url, &args.secret, |_| "bench".into(), 1, 1).await;
    let publisher = publisher.pop().expect("publisher connected");
    let epoch = Instant::now();
    let readers = start_readers(subs, messages, epoch);
    let started = Instant::now();
    let cpu_start = server_cpu();
    tokio::spawn(publish(
        publisher,
        messages,
        0,
        1,
        |_| "/topic/bench.broadcast".into(),
        &[],
        rate,
        epoch,
    ));
    let (_, seen) = join_readers(readers).await;
    let expected = vec![messages; seen.len().max(subscribers)];
    report(
        &format!("{name} ({subscribers} {:?} subscribers x {messages} messages)", args.transport),
        seen,
        &expected,
        started.elapsed(),
        cpu_start,
    )
}

async fn destinations(args: &Args, label: &str) -> Outcome {
    let d = args.destinations;
    let per = args.per_destination as u64;
    let (subs, _) =
        open_subscribers(args, |i| format!("dest{i}"), d, |i| format!("/topic/bench.d{i}")).await;
    let publishers = 4;
    let (pubs, _) =
        open_many(&args.url, &args.secret, |_| "bench".into(), publishers, publishers).await;
    let epoch = Instant::now();
    let readers = start_readers(subs, per, epoch);
    let started = Instant::now();
    let cpu_start = server_cpu();
    let n = d as u64;
    spawn_publishers(pubs, n * per, move |seq| format!("/topic/bench.d{}", seq % n), &[], epoch);
    let (_, seen) = join_readers(readers).await;
    // Destination i receives seqs i, i+d, i+2d…; with d a multiple of the publisher count
    // they all come from publisher i % 4, so their order is defined and checked.
    let expected = vec![per; d];
    report(
        &format!(
            "{label}destinations ({d} destinations x {per} messages, 4 publishers, {:?} subscribers)",
            args.transport
        ),
        seen,
        &expected,
        started.elapsed(),
        cpu_start,
    )
}

/// broadcast, destinations or latency against `args.url`, its result line prefixed by `label`.
async fn topic_scenario(args: &Args, scenario: &str, label: &str) -> Outcome {
    match scenario {
        "broadcast" => {
            let name = format!("{label}broadcast");
            broadcast(args, args.subscribers, args.messages as u64, None, &name).await
        }
        "destinations" => destinations(args, label).await,
        _ => {
            // `rate` deliveries/s as 100 subscribers x rate/100 messages/s, for 5 s.
            let subscribers = 100;
            let per_second = args.rate as f64 / subscribers as f64;
            let messages = (per_second * 5.0) as u64;
            let name = format!("{label}latency at {} deliveries/s", args.rate);
            broadcast(args, subscribers, messages, Some(per_second), &name).await
        }
    }
}

/// The connect scenario: `--connections` new connections, each with a token in CONNECT and
/// a confirmed subscription to the tasks destination, 64 at a time; returns connections/s
/// and the server's CPU µs per connection.
async fn connect(args: &Args, label: &str) -> (f64, Option<f64>) {
    let cpu_start = server_cpu();
    let (conns, elapsed) =
        open_subscribers(args, |i| format!("c{i}"), args.connections, |_| TASKS_DESTINATION.into())
            .await;
    let cpu = cpu_us_per(cpu_start, conns.len() as u64);
    let rate = conns.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{label}connect ({:?}): {} connections (handshake + token + subscription to the tasks destination, confirmed) in {:.3} s = {rate:.0} connections/s{}",
        args.transport,
        conns.len(),
        elapsed.as_secs_f64(),
        cpu_text(cpu, "connection"),
    );
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    (rate, cpu)
}

/// `--compare` for connect: the yardstick, then TaskPulse, then the ratios.
async fn compare_connect(args: &Args, yardstick_url: &str) {
    let (theirs, their_cpu) = connect(&yardstick_args(args, yardstick_url), "yardstick: ").await;
    SERVER_PID.store(args.server_pid.unwrap_or(0), Ordering::Relaxed);
    let (ours, our_cpu) = connect(args, "TaskPulse: ").await;
    let cpu = cpu_ratio(our_cpu, their_cpu, "connection", 0);
    println!(
        "compare connect: TaskPulse {ours:.0} connections/s = {:.1}% of the yardstick's {theirs:.0}{cpu}",
        100.0 * ours / theirs
    );
}

/// "; server CPU per <unit> N µs vs M µs = R x" (µs with `decimals`), or nothing without
/// both figures.
fn cpu_ratio(ours: Option<f64>, theirs: Option<f64>, unit: &str, decimals: usize) -> String {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!(
            "; server CPU per {unit} {ours:.decimals$} µs vs {theirs:.decimals$} µs = {:.2}x",
            ours / theirs
        ),
        _ => String::new(),
    }
}

/// `args` aimed at the yardstick, whose process is then the one measured.
fn yardstick_args(args: &Args, yardstick_url: &str) -> Args {
    let mut yardstick = args.clone();
    yardstick.url = yardstick_url.to_owned();
    yardstick.subscriber_urls.clear();
    SERVER_PID.store(args.compare_pid.unwrap_or(0), Ordering::Relaxed);
    yardstick
}

/// `--compare`: the scenario against the yardstick, then against TaskPulse, then the ratios.
async fn compare(args: &Args, yardstick_url: &str, scenario: &str) {
    let theirs =
        topic_scenario(&yardstick_args(args, yardstick_url), scenario, "yardstick: ").await;
    SERVER_PID.store(args.server_pid.unwrap_or(0), Ordering::Relaxed);
    let ours = topic_scenario(args, scenario, "TaskPulse: ").await;
    let cpu = cpu_ratio(ours.cpu_us_per_delivery, theirs.cpu_us_per_delivery, "delivery", 2);
    // The latency scenario publishes at a fixed rate: there the rates match by design and
    // CPU and p99 are what differ.
    let share = if scenario == "latency" {
        String::from(" (a fixed rate)")
    } else {
        format!(
            " = {:.1}% of the yardstick's {:.0}",
            100.0 * ours.deliveries_per_s / theirs.deliveries_per_s,
            theirs.deliveries_per_s
        )
    };
    println!(
        "compare {scenario}: TaskPulse {:.0} deliveries/s{share}; p99 {:.2} ms vs {:.2} ms{cpu}",
        ours.deliveries_per_s, ours.p99_ms, theirs.p99_ms,
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    SERVER_PID.store(args.server_pid.unwrap_or(0), Ordering::Relaxed);
    let scenarios: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    for scenario in &scenarios {
        let topics = ["broadcast", "destinations", "latency"];
        if args.transport == Transport::Sse && topics.contains(scenario) {
            eprintln!("{scenario}: skipped, SSE carries task updates only (no topics)");
            continue;
        }
        match *scenario {
            "broadcast" | "destinations" | "latency" => match &args.compare_url {
                Some(yardstick) => compare(&args, yardstick, scenario).await,
                None => {
                    topic_scenario(&args, scenario, "").await;
                }
            },
            "connect" => match &args.compare_url {
                Some(yardstick) => compare_connect(&args, yardstick).await,
                None => {
                    connect(&args, "").await;
                }
            },
            "idle" => {
                let before = args.server_pid.and_then(rss_kib);
                let (conns, _) = open_subscribers(
                    &args,
                    |i| format!("idle{i}"),
                    args.idle,
                    |_| TASKS_DESTINATION.into(),
                )
                .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let after = args.server_pid.and_then(rss_kib);
                match (before, after) {
                    (Some(b), Some(a)) => println!(
                        "idle ({:?}): {} subscribed connections; server RSS {b} KiB -> {a} KiB = {:.1} KiB per connection",
                        args.transport,
                        conns.len(),
                        (a.saturating_sub(b)) as f64 / conns.len() as f64
                    ),
                    _ => println!(
                        "idle: {} subscribed connections (pass --server-pid for RSS)",
                        conns.len()
                    ),
                }
                drop(conns);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            "tasks" => tasks::run(&args).await,
            "replay" => replay::run(&args).await,
            "publish" => publish::run(&args).await,
            "durable" => publish::run_durable(&args).await,
            "queue" => queue::run(&args).await,
            other => eprintln!("unknown scenario {other:?}"),
        }
    }
}
