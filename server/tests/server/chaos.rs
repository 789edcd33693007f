//! Chaos: several users, each with several resuming STOMP clients, hundreds of demo tasks;
//! clients drop their sockets at random, an operator kicks users' connections, and the
//! server binary is killed with SIGKILL and restarted on the same data directory. At the
//! end every client must hold the database's final state of every task of its user, have
//! received each terminal status at most once as a numbered message (after dropping
//! duplicates by `seq`), and never have seen `seq` go backwards on one connection.
//!
//! The cluster form runs three nodes on one PostgreSQL and one Redis: each client session
//! goes to a random node, tasks are submitted to random nodes, a random node is killed and
//! restarted each time, and Redis is killed and restarted once in the middle.
//!
//! `cargo xtask test` runs a short form. `cargo xtask chaos [--cluster]` runs a long one
//! through these variables: TASKPULSE_CHAOS_USERS, _CLIENTS, _TASKS, _KILLS.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskpulse_shared::{
    TaskProgressDto,
    stomp::{Command, Decoder, Frame, Limits, Version},
};
use tokio_tungstenite::tungstenite::Message;

use taskpulse_testkit::Redis;

use crate::fixture::{Api, Postgres, Process, spawn_at};

const KEY: &str = "chaos-operator-key-0123";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(format!("TASKPULSE_CHAOS_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What one client holds and counted.
#[derive(Debug, Default)]
struct Holder {
    epoch: Option<String>,
    last_seq: i64,
    states: HashMap<String, TaskProgressDto>,
    /// Numbered terminal messages per task, after dropping duplicates.
    terminal_messages: HashMap<String, u32>,
    messages: u64,
    sessions: u64,
    replays: u64,
    snapshots: u64,
    duplicates: u64,
    out_of_order: u64,
    replayed_messages: u64,
    /// Tasks told that a restart or another node took them up.
    recovered: std::collections::HashSet<String>,
}

/// One STOMP session: connect, subscribe (resuming when it can), read until `until` or the
/// server closes. Errors are the normal life of a client under chaos.
async fn session(
    addr: SocketAddr,
    token: &str,
    holder: &Mutex<Holder>,
    until: Instant,
) -> Result<(), String> {
    let url = format!("ws://{addr}/ws");
    let connect = tokio_tungstenite::connect_async(url.as_str());
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| e.to_string())?;
    let mut decoder = Decoder::new(Version::V1_2, Limits::unbounded());
    let send = |frame: Frame| Message::Binary(frame.to_bytes(Version::V1_2).unwrap());
    let mut connect = Frame::new(Command::Connect);
    connect.headers.push("accept-version", "1.2");
    connect.headers.push("heart-beat", "0,0");
    connect.headers.push("Authorization", &format!("Bearer {token}"));
    socket.send(send(connect)).await.map_err(|e| e.to_string())?;
    let mut subscribe = Frame::new(Command::Subscribe);
    subscribe.headers.push("id", "tasks");
    subscribe.headers.push("destination", "/user/queue/tasks-progress");
    subscribe.headers.push("receipt", "caught-up");
    {
        let mut h = holder.lock().unwrap();
        h.sessions += 1;
        if let Some(epoch) = h.epoch.clone() {
            subscribe.headers.push("x-resume-epoch", &epoch);
            subscribe.headers.push("x-resume-seq", &h.last_seq.to_string());
            h.replays += 1;
        }
    }
    socket.send(send(subscribe)).await.map_err(|e| e.to_string())?;
    let mut connection_last = i64::MIN;
    let mut in_snapshot = false;
    loop {
        let frame = loop {
            match decoder.decode().map_err(|e| e.to_string())? {
                Some(frame) => break frame,
                None => {
                    let left = until.saturating_duration_since(Instant::now());
                    let next = tokio::time::timeout(left, socket.next()).await;
                    match next {
                        Err(_) => return Ok(()), // client-side drop: the socket just goes
                        Ok(Some(Ok(Message::Binary(b)))) => decoder.feed(&b),
                        Ok(Some(Ok(Message::Text(t)))) => decoder.feed(t.as_bytes()),
                        Ok(Some(Ok(_))) => {}
                        Ok(_) => return Err("closed by the server".into()),
                    }
                }
            }
        };
        let mut h = holder.lock().unwrap();
        match frame.command {
            Command::Message => {}
            Command::Error => return Err(format!("ERROR {:?}", frame.header("message"))),
            _ => continue,
        }
        h.messages += 1;
        if frame.header("x-replayed").is_some() {
            h.replayed_messages += 1;
        }
        let update: TaskProgressDto =
            serde_json::from_slice(&frame.body).map_err(|e| e.to_string())?;
        if let Some(epoch) = frame.header("epoch") {
            h.epoch = Some(epoch.to_owned());
        }
        if frame.header("x-snapshot").is_some() {
            if !in_snapshot {
                in_snapshot = true;
                h.snapshots += 1;
            }
            let position: i64 = frame.header("x-snapshot-seq").unwrap().parse().unwrap();
            h.last_seq = position;
            connection_last = connection_last.max(position);
            h.states.insert(update.task_no.clone(), update);
            continue;
        }
        in_snapshot = false;
        let seq: i64 = frame.header("seq").ok_or("a task update without seq")?.parse().unwrap();
        if seq <= connection_last {
            h.out_of_order += 1;
            eprintln!("chaos: seq {seq} after {connection_last} on one connection: {frame:?}");
        }
        connection_last = seq;
        if seq <= h.last_seq {
            h.duplicates += 1;
            continue;
        }
        h.last_seq = seq;
        if update.status.is_terminal() {
            *h.terminal_messages.entry(update.task_no.clone()).or_default() += 1;
        }
        if update.message.contains("restarted") || update.message.contains("stopped") {
            h.recovered.insert(update.task_no.clone());
        }
        h.states.insert(update.task_no.clone(), update);
    }
}

fn now_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The fields both sides must agree on (the signature of a result URL may differ by the hour
/// it was signed in).
fn essence(state: &TaskProgressDto) -> (String, u8, String, Option<String>, Option<String>) {
    let url = state.result_url.as_deref().map(|u| u.split('?').next().unwrap().to_owned());
    (
        state.status.to_string(),
        state.progress,
        state.message.clone(),
        url,
        state.error_message.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_ends_with_the_true_final_state_through_chaos_on_sqlite() {
    chaos(None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_ends_with_the_true_final_state_through_chaos_on_postgresql() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    chaos(Some(&url), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_ends_with_the_true_final_state_through_chaos_on_a_cluster() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    chaos(Some(&url), Some(Redis::start().unwrap())).await;
}

/// A random element of `items`.
fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// Users with resuming clients, random drops, kicks and SIGKILL restarts, on SQLite or on the
/// PostgreSQL database at `storage`; with `redis`, on three nodes sharing it.
async fn chaos(storage: Option<&str>, redis: Option<Redis>) {
    let (users, clients, tasks, kills) =
        (setting("USERS", 3), setting("CLIENTS", 3), setting("TASKS", 120), setting("KILLS", 2));
    let seed = now_seed();
    let nodes = if redis.is_some() { 3 } else { 1 };
    println!(
        "chaos: {users} users x {clients} clients, {tasks} tasks, {kills} server kills, \
         {nodes} node(s), seed {seed}"
    );
    let redis_url = redis.as_ref().map(Redis::url).unwrap_or_default();
    let mut env = vec![
        ("TASKPULSE_DEMO_DURATION_MS", "150"),
        ("TASKPULSE_DEMO_STEPS", "5"),
        ("TASKPULSE_DEMO_CONCURRENCY", "4"),
        ("TASKPULSE_DEMO_SIZE", "32"),
        ("TASKPULSE_API_KEYS", "[\"chaos-operator-key-0123\"]"),
        ("RUST_LOG", "warn,taskpulse_server=info"),
        ("TASKPULSE_STORAGE_URL", storage.unwrap_or_default()),
    ];
    if redis.is_some() {
        env.push(("TASKPULSE_CLUSTER_REDIS_URL", &redis_url));
        // A killed node's tasks are taken over within seconds.
        env.push(("TASKPULSE_CLUSTER_LEASE_S", "3"));
    }
    let redis = Arc::new(Mutex::new(redis));
    let datas: Vec<tempfile::TempDir> = (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
    let listens: Vec<String> = (0..nodes)
        .map(|_| {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            format!("127.0.0.1:{port}")
        })
        .collect();
    let servers: Vec<Option<Process>> = datas
        .iter()
        .zip(&listens)
        .map(|(data, listen)| Some(spawn_at(data.path(), listen, &env)))
        .collect();
    let server: Arc<Mutex<Vec<Option<Process>>>> = Arc::new(Mutex::new(servers));
    let addrs: Arc<Vec<SocketAddr>> =
        Arc::new(listens.iter().map(|l| l.parse().unwrap()).collect());
    let api = Api::new(addrs[0]);
    let mut tokens = Vec::new();
    for u in 0..users {
        tokens.push(api.register(&format!("chaos{u}")).await);
    }

    // Clients: sessions of random length until told to settle.
    let settle = Arc::new(AtomicBool::new(false));
    let mut holders = Vec::new();
    let mut runners = Vec::new();
    for (u, token) in tokens.iter().enumerate() {
        for c in 0..clients {
            let holder = Arc::new(Mutex::new(Holder::default()));
            holders.push((u, holder.clone()));
            let (token, settle, addrs) = (token.clone(), settle.clone(), addrs.clone());
            let mut rng = Rng(seed ^ ((u * 100 + c) as u64 + 1));
            runners.push(tokio::spawn(async move {
                loop {
                    let settling = settle.load(Ordering::Relaxed);
                    let life = if settling { 3000 } else { 100 + rng.below(1400) };
                    let until = Instant::now() + Duration::from_millis(life);
                    let _ = session(pick(&mut rng, &addrs), &token, &holder, until).await;
                    if settling {
                        return;
                    }
                    // A little pause before reconnecting, as a backoff would.
                    tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
                }
            }));
        }
    }

    // Operator kicks and server kills while tasks are submitted.
    let submitting = Arc::new(AtomicBool::new(true));
    let chaos = {
        let (server, submitting, addrs, redis) =
            (server.clone(), submitting.clone(), addrs.clone(), redis.clone());
        let dirs: Vec<std::path::PathBuf> = datas.iter().map(|d| d.path().to_owned()).collect();
        let listens = listens.clone();
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut rng = Rng(seed.rotate_left(17));
        tokio::spawn(async move {
            let mut kicks = 0u64;
            let mut killed = 0;
            let mut redis_restarted = false;
            let step = Duration::from_millis(150);
            let mut next_kill = Instant::now() + Duration::from_millis(1500);
            while submitting.load(Ordering::Relaxed) || killed < kills {
                tokio::time::sleep(step).await;
                let user = format!("chaos{}", rng.below(users as u64));
                let api = Api::new(pick(&mut rng, &addrs));
                let kick = api
                    .post_as_backend_quiet("/api/admin/disconnect", KEY, json!({ "user": user }))
                    .await;
                kicks += u64::from(kick);
                if killed < kills && Instant::now() >= next_kill {
                    let node = rng.below(addrs.len() as u64) as usize;
                    let old = server.lock().unwrap()[node].take();
                    drop(old); // SIGKILL
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let fresh =
                        tokio::task::block_in_place(|| spawn_at(&dirs[node], &listens[node], &env));
                    server.lock().unwrap()[node] = Some(fresh);
                    killed += 1;
                    next_kill = Instant::now() + Duration::from_millis(2000 + rng.below(2000));
                }
                if !redis_restarted && killed * 2 >= kills && redis.lock().unwrap().is_some() {
                    redis_restarted = true;
                    let mut redis = redis.lock().unwrap();
                    if let Some(redis) = redis.as_mut() {
                        redis.stop();
                        tokio::task::block_in_place(|| {
                            std::thread::sleep(Duration::from_millis(500));
                            redis.start_again().unwrap();
                        });
                        println!("chaos: Redis killed and restarted");
                    }
                }
            }
            (kicks, killed)
        })
    };

    // Submit, retrying while the server is down.
    let mut submitted: Vec<(usize, String)> = Vec::new();
    let mut rng = Rng(seed.rotate_left(31));
    for n in 0..tasks {
        let u = rng.below(users as u64) as usize;
        let body = json!({"kind": "text-to-image", "prompt": format!("chaos task {n}")});
        loop {
            let api = Api::new(pick(&mut rng, &addrs));
            if let Some((202, answer)) =
                api.post_quiet("/api/tasks", &tokens[u], body.clone()).await
            {
                submitted.push((u, answer["taskNo"].as_str().unwrap().to_owned()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
    }
    submitting.store(false, Ordering::Relaxed);
    let (kicks, killed) = chaos.await.unwrap();

    // Wait for the database to have every task of every user terminal. The truth is each
    // user's task list, not `submitted`: a submit whose answer a SIGKILL swallowed was
    // retried, so the first attempt's task exists too.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut truth: Vec<HashMap<String, TaskProgressDto>> = Vec::new();
    'wait: loop {
        truth.clear();
        for token in &tokens {
            let mut tasks = HashMap::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/api/tasks?limit=100&before={c}"),
                    None => "/api/tasks?limit=100".to_owned(),
                };
                let Some((200, page)) = api.get_quiet(&path, token).await else {
                    panic!("GET {path} failed");
                };
                for task in page["tasks"].as_array().unwrap() {
                    let state: TaskProgressDto = serde_json::from_value(task.clone()).unwrap();
                    if !state.status.is_terminal() {
                        assert!(Instant::now() < deadline, "task never ended: {state:?}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'wait;
                    }
                    tasks.insert(state.task_no.clone(), state);
                }
                match page["nextCursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            truth.push(tasks);
        }
        break;
    }
    let orphans = truth.iter().map(HashMap::len).sum::<usize>() - submitted.len();
    // Let every client settle with one long, undisturbed session.
    settle.store(true, Ordering::Relaxed);
    for runner in runners {
        runner.await.unwrap();
    }

    let mut totals = Holder::default();
    for (u, holder) in &holders {
        let h = holder.lock().unwrap();
        for (task_no, state) in &truth[*u] {
            let held = h
                .states
                .get(task_no)
                .unwrap_or_else(|| panic!("a client of chaos{u} never heard of {task_no}"));
            assert_eq!(essence(held), essence(state), "client of chaos{u}, task {task_no}");
        }
        for (task_no, count) in &h.terminal_messages {
            assert!(*count <= 1, "terminal status of {task_no} received {count} times after dedup");
        }
        assert_eq!(h.out_of_order, 0, "seq went backwards on a connection");
        assert!(
            h.states.keys().all(|t| truth[*u].contains_key(t)),
            "a foreign task reached chaos{u}"
        );
        totals.messages += h.messages;
        totals.sessions += h.sessions;
        totals.replays += h.replays;
        totals.snapshots += h.snapshots;
        totals.duplicates += h.duplicates;
        totals.replayed_messages += h.replayed_messages;
        totals.recovered.extend(h.recovered.iter().cloned());
    }
    let all: Vec<&TaskProgressDto> = truth.iter().flat_map(HashMap::values).collect();
    let completed = all.iter().filter(|s| s.status.to_string() == "completed").count();
    println!(
        "chaos: {} tasks ({completed} completed, {} failed; {orphans} from submits whose answer a kill swallowed); {} messages ({} replayed); {} sessions ({} reconnects), {} resumes, {} snapshots, {} duplicates suppressed; {kicks} operator kicks, {killed} SIGKILL restarts, {} tasks taken up again after one",
        all.len(),
        all.len() - completed,
        totals.messages,
        totals.replayed_messages,
        totals.sessions,
        totals.sessions - holders.len() as u64,
        totals.replays,
        totals.snapshots,
        totals.duplicates,
        totals.recovered.len(),
    );
    server.lock().unwrap().clear();
}

impl Api {
    /// POST that tolerates a server that is down: `None` instead of a panic.
    async fn post_quiet(&self, path: &str, token: &str, body: Value) -> Option<(u16, Value)> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().ok()?;
        let response =
            client.post(self.url(path)).bearer_auth(token).json(&body).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    async fn get_quiet(&self, path: &str, token: &str) -> Option<(u16, Value)> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().ok()?;
        let response = client.get(self.url(path)).bearer_auth(token).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// An operator POST; true when it went through.
    async fn post_as_backend_quiet(&self, path: &str, key: &str, body: Value) -> bool {
        let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else {
            return false;
        };
        client
            .post(self.url(path))
            .header("x-api-key", key)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// A benchmark, not a check (ignored; `cargo nextest run -p taskpulse-server --run-ignored
/// only failover`): how long the clients of a node that dies take to be resumed on another,
/// with nothing lost. CLIENTS clients (default 300) follow their user's tasks destination on
/// a node process; each user gets 5 numbered messages, the node is SIGKILLed, 5 more are
/// published through another node, and each client reconnects there with its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures, run on demand"]
async fn failover_of_a_killed_nodes_clients() {
    let clients = setting("CLIENTS", 300);
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    let redis = Redis::start().unwrap();
    let redis_url = redis.url();
    let env = [
        ("TASKPULSE_STORAGE_URL", url.as_str()),
        ("TASKPULSE_CLUSTER_REDIS_URL", redis_url.as_str()),
        ("TASKPULSE_API_KEYS", "[\"chaos-operator-key-0123\"]"),
        ("RUST_LOG", "warn,taskpulse_server=info"),
    ];
    let (doomed_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (doomed_addr, other_addr) = (port(0), port(1));
    let mut doomed = Some(spawn_at(doomed_dir.path(), &doomed_addr.to_string(), &env));
    let other = spawn_at(other_dir.path(), &other_addr.to_string(), &env);
    let api = Api::new(other_addr);
    let mut tokens = Vec::new();
    for c in 0..clients {
        tokens.push(api.register(&format!("failover{c}")).await);
    }
    let publish = |round: usize| {
        let api = api.clone();
        async move {
            for chunk in (0..clients).collect::<Vec<_>>().chunks(20) {
                let items: Vec<Value> = chunk
                    .iter()
                    .flat_map(|c| {
                        (0..5).map(move |i| {
                            let n = round * 5 + i;
                            json!({"user": format!("failover{c}"), "destination": "/queue/tasks-progress",
                                   "payload": {"taskNo": format!("n{n}"), "status": "processing", "progress": n, "message": "m"}})
                        })
                    })
                    .collect();
                let (status, answer) =
                    api.post_as_backend("/api/publish", KEY, Value::Array(items)).await;
                assert_eq!(status, 200, "{answer}");
            }
        }
    };
    let holders: Vec<Arc<Mutex<Holder>>> =
        (0..clients).map(|_| Arc::new(Mutex::new(Holder::default()))).collect();
    let mut runners = Vec::new();
    for (token, holder) in tokens.iter().zip(&holders) {
        let (token, holder) = (token.clone(), holder.clone());
        runners.push(tokio::spawn(async move {
            let far = Instant::now() + Duration::from_secs(120);
            // On the doomed node until it dies, then on the other until all 10 arrived.
            let _ = session(doomed_addr, &token, &holder, far).await;
            while holder.lock().unwrap().states.len() < 10 {
                let until = Instant::now() + Duration::from_secs(3);
                let _ = session(other_addr, &token, &holder, until).await;
            }
        }));
    }
    // Every client connected and subscribed (a subscription's catch-up is a snapshot of the
    // tasks table, which does not hold notices sent before it).
    let stats = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = stats
            .get(format!("http://{doomed_addr}/api/admin/stats"))
            .header("x-api-key", KEY)
            .send()
            .await;
        let open = match answer {
            Ok(r) => r.json::<Value>().await.ok().and_then(|v| v["connections"]["open"].as_u64()),
            Err(_) => None,
        };
        if open == Some(clients as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "only {open:?} of {clients} clients connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while holders.iter().any(|h| h.lock().unwrap().states.len() < 5) {
        assert!(Instant::now() < deadline, "the first messages never all arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    drop(doomed.take()); // SIGKILL
    publish(1).await;
    // When each client had all 10, from the kill (polled every 10 ms).
    let mut times: Vec<Option<Duration>> = vec![None; clients];
    let deadline = Instant::now() + Duration::from_secs(120);
    while times.iter().any(Option::is_none) {
        for (time, holder) in times.iter_mut().zip(&holders) {
            if time.is_none() && holder.lock().unwrap().states.len() == 10 {
                *time = Some(killed.elapsed());
            }
        }
        assert!(Instant::now() < deadline, "not every client resumed with everything");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut times: Vec<Duration> = times.into_iter().flatten().collect();
    for runner in runners {
        runner.abort();
    }
    times.sort();
    let at = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64();
    let (replays, snapshots, duplicates): (u64, u64, u64) =
        holders.iter().fold((0, 0, 0), |t, h| {
            let h = h.lock().unwrap();
            (t.0 + h.replayed_messages, t.1 + h.snapshots, t.2 + h.duplicates)
        });
    println!(
        "failover: {clients} clients of a SIGKILLed node resumed on another with all 10 messages: \
         p50 {:.2} s, p99 {:.2} s, last {:.2} s after the kill; {replays} messages replayed, \
         {snapshots} snapshots, {duplicates} duplicates suppressed",
        at(0.5),
        at(0.99),
        at(1.0),
    );
    drop(other);
}
