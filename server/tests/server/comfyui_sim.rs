//! A ComfyUI simulator for the tests (a real ComfyUI needs a GPU and model weights; the real
//! one on CPU runs in `cargo xtask test-comfyui`). It speaks ComfyUI's HTTP and WebSocket
//! protocol as the executor uses it, and behaves like ComfyUI 0.3.64 where it matters:
//!
//! - `POST /prompt {prompt, client_id, prompt_id?}` -> `{prompt_id, number, node_errors}`;
//!   400 `{error: {type, message, details}, node_errors}` for a workflow without nodes, or a
//!   checkpoint not in its (one-element) list, with the reason only in `node_errors`;
//! - one prompt runs at a time, the others wait (`GET /queue`: `queue_running`,
//!   `queue_pending` as `[number, prompt_id, ...]`; `POST /queue {delete}` drops waiting
//!   ones);
//! - `GET /ws?clientId=`: `status`, `execution_start`, `execution_cached` (the nodes cached;
//!   a cached output node's `executed` is sent again), `executing` (node, then `null`),
//!   `progress` and `progress_state` (per node, floats), `executed`, `execution_success`,
//!   `execution_error`, `execution_interrupted`. As in ComfyUI's server, one socket per
//!   client id: a new one replaces the old, and when any socket of a client id ends, the
//!   client id's entry goes, whichever socket it points to by then. Sockets answer pings
//!   (they read), unless stalled (`stall`);
//! - `GET /history/{prompt_id}`, written about 0.3 s after `execution_success` (as the real
//!   one, whose history is written after the event); `GET /view`, `POST /upload/image`;
//! - `POST /interrupt {prompt_id?}`: by id when `targeted_interrupt` (ComfyUI >= 0.3.57,
//!   whose version `/system_stats` reports), else whatever runs.
//!
//! The positive prompt steers a run: "fail" ends in `execution_error` (a message with a
//! server path), "disconnect" closes the WebSocket half-way and finishes while the client
//! is away, "hang" runs until interrupted or `release`, "twice" has a second sampler,
//! "float" reports fractional progress, "cached" finds its output node cached, "forget"
//! vanishes half-way as a restarted ComfyUI forgets its queue, "silent" hangs in a node
//! without a word until interrupted.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, Query, State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// The checkpoints the simulator "has".
const CHECKPOINTS: [&str; 1] = ["v1-5-pruned-emaonly.safetensors"];

/// A prompt waiting or running.
#[derive(Clone)]
struct Queued {
    number: usize,
    id: String,
    client: String,
    text: String,
}

/// An open WebSocket: its connection number and the sender of its events (`None` closes).
type Socket = (usize, mpsc::UnboundedSender<Option<String>>);

#[derive(Default)]
pub(crate) struct SimState {
    /// The open WebSocket of each client id: its connection number and sender.
    sockets: Mutex<HashMap<String, Socket>>,
    pub(crate) history: Mutex<HashMap<String, Value>>,
    /// Every accepted /prompt body.
    pub(crate) prompts: Mutex<Vec<Value>>,
    /// `prompt_id`s given to /interrupt (or "" for a global one).
    pub(crate) interrupt_requests: Mutex<Vec<String>>,
    /// Prompts that were interrupted while running.
    pub(crate) interrupted: Mutex<Vec<String>>,
    /// `prompt_id`s given to `POST /queue {delete}`.
    pub(crate) deleted: Mutex<Vec<String>>,
    pub(crate) uploads: Mutex<Vec<String>>,
    /// Output images by file name.
    images: Mutex<HashMap<String, Vec<u8>>>,
    /// How many WebSockets were opened.
    pub(crate) connections: Mutex<usize>,
    /// Set to let "hang" prompts finish.
    pub(crate) release: AtomicBool,
    /// `/interrupt` honours `prompt_id` (ComfyUI >= 0.3.57).
    pub(crate) targeted_interrupt: AtomicBool,
    /// `/prompt` ignores the `prompt_id` it is given (an old ComfyUI).
    pub(crate) rename: AtomicBool,
    /// Sockets with a connection number below this neither read nor write (half-open, as a
    /// lost network leaves them) until `unstall`.
    stalled_below: AtomicUsize,
    /// `/history` answers 500 this many more times.
    pub(crate) history_failures: AtomicUsize,
    queue: Mutex<VecDeque<Queued>>,
    running: Mutex<Option<Queued>>,
    work: Notify,
    interrupt_now: AtomicBool,
}

pub(crate) struct ComfySim {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<SimState>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ComfySim {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// A small real PNG (2x2 RGB), different per prompt number.
pub(crate) fn png(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 2, 2);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[seed; 12]).unwrap();
    writer.finish().unwrap();
    out
}

impl ComfySim {
    pub(crate) async fn start() -> ComfySim {
        let state = Arc::new(SimState::default());
        state.targeted_interrupt.store(true, Ordering::Relaxed);
        let app = Router::new()
            .route("/prompt", post(prompt))
            .route("/ws", get(ws))
            .route("/history/{id}", get(history))
            .route("/view", get(view))
            .route("/upload/image", post(upload))
            .route("/interrupt", post(interrupt))
            .route("/queue", get(queue).post(queue_delete))
            .route("/system_stats", get(system_stats))
            .route("/input.png", get(|| async { ([("content-type", "image/png")], png(7)) }))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let worker = tokio::spawn(work(state.clone()));
        ComfySim { addr, state, handles: vec![server, worker] }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every socket open now goes silent without closing: no events, no pongs.
    pub(crate) fn stall(&self) {
        let next = *lock(&self.state.connections) + 1;
        self.state.stalled_below.store(next, Ordering::Relaxed);
    }

    /// The stalled sockets end (as ComfyUI's handler does when it finally notices).
    pub(crate) fn unstall(&self) {
        self.state.stalled_below.store(0, Ordering::Relaxed);
    }
}

/// Sends an event to the socket of `client_id`, if one is registered.
fn send(state: &SimState, client_id: &str, kind: &str, data: Value) {
    if let Some((_, socket)) = lock(&state.sockets).get(client_id) {
        let _ = socket.send(Some(json!({"type": kind, "data": data}).to_string()));
    }
}

fn invalid(message: &str, node_errors: Value) -> Response {
    let error = json!({"error": {"type": "prompt_outputs_failed_validation", "message": message, "details": ""}, "node_errors": node_errors});
    (StatusCode::BAD_REQUEST, Json(error)).into_response()
}

async fn prompt(State(state): State<Arc<SimState>>, Json(body): Json<Value>) -> Response {
    let workflow = body.get("prompt").and_then(Value::as_object);
    let Some(workflow) =
        workflow.filter(|w| w.values().all(|n| n.get("class_type").is_some()) && !w.is_empty())
    else {
        let error = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because the prompt has no nodes.", "details": ""}, "node_errors": {}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    for (id, node) in workflow {
        let name = node["inputs"]["ckpt_name"].as_str();
        if node["class_type"] == "CheckpointLoaderSimple"
            && name.is_some_and(|n| !CHECKPOINTS.contains(&n))
        {
            let details = format!("ckpt_name: '{}' not in {:?}", name.unwrap_or(""), CHECKPOINTS);
            let errors = json!({ id: {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": details, "extra_info": {"input_name": "ckpt_name"}}],
                "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}});
            return invalid("Prompt outputs failed validation", errors);
        }
    }
    let text = workflow
        .values()
        .find(|n| n["class_type"] == "CLIPTextEncode")
        .and_then(|n| n["inputs"]["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    let number = {
        let mut prompts = lock(&state.prompts);
        prompts.push(body.clone());
        prompts.len()
    };
    let prompt_id = match body.get("prompt_id").and_then(Value::as_str) {
        Some(id) if !state.rename.load(Ordering::Relaxed) => id.to_owned(),
        _ => format!("sim-generated-{number}"),
    };
    let client = body.get("client_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    lock(&state.queue).push_back(Queued { number, id: prompt_id.clone(), client, text });
    state.work.notify_one();
    Json(json!({"prompt_id": prompt_id, "number": number, "node_errors": {}})).into_response()
}

/// Runs the queued prompts one at a time.
async fn work(state: Arc<SimState>) {
    loop {
        let next = lock(&state.queue).pop_front();
        let Some(job) = next else {
            state.work.notified().await;
            continue;
        };
        *lock(&state.running) = Some(job.clone());
        state.interrupt_now.store(false, Ordering::Relaxed);
        execute(&state, &job).await;
        *lock(&state.running) = None;
    }
}

fn progress_state(id: &str, nodes: &[(&str, f64, f64, &str)]) -> Value {
    let nodes: serde_json::Map<String, Value> = nodes
        .iter()
        .map(|(node, value, max, phase)| {
            let entry = json!({"value": value, "max": max, "state": phase, "node_id": node,
                "prompt_id": id, "display_node_id": node, "parent_node_id": null, "real_node_id": node});
            ((*node).to_owned(), entry)
        })
        .collect();
    json!({"prompt_id": id, "nodes": nodes})
}

/// Ends the running prompt as ComfyUI does when `/interrupt` asked for it (at `node`):
/// `execution_interrupted`, and a history entry saying so.
fn interrupted(state: &SimState, client: &str, id: &str, node: &str) -> bool {
    if !state.interrupt_now.swap(false, Ordering::Relaxed) {
        return false;
    }
    lock(&state.interrupted).push(id.to_owned());
    send(
        state,
        client,
        "execution_interrupted",
        json!({"prompt_id": id, "node_id": node, "node_type": "KSampler", "executed": []}),
    );
    let entry = json!({"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [["execution_interrupted", {"prompt_id": id}]]}});
    lock(&state.history).insert(id.to_owned(), entry);
    true
}

async fn execute(state: &Arc<SimState>, job: &Queued) {
    let Queued { number, id, client, text } = job;
    let (number, id, client) = (*number, id.clone(), client.as_str());
    let pause = || tokio::time::sleep(Duration::from_millis(30));
    let status =
        |remaining: usize| json!({"status": {"exec_info": {"queue_remaining": remaining}}});
    send(state, client, "status", status(lock(&state.queue).len() + 1));
    send(state, client, "execution_start", json!({"prompt_id": id, "timestamp": 1}));
    let cached = text.contains("cached");
    let cached_nodes: Vec<&str> = if cached { vec!["4", "5", "9"] } else { vec![] };
    send(
        state,
        client,
        "execution_cached",
        json!({"nodes": cached_nodes, "prompt_id": id, "timestamp": 1}),
    );
    let filename = format!("ComfyUI_{number:05}_.png");
    lock(&state.images).insert(filename.clone(), png(number as u8));
    let images = json!([{"filename": filename, "subfolder": "", "type": "output"}]);
    if cached {
        // ComfyUI replays a cached output node's `executed`.
        send(
            state,
            client,
            "executed",
            json!({"node": "9", "display_node": "9", "output": {"images": images}, "prompt_id": id}),
        );
    }
    let mut finished: Vec<(&str, f64, f64, &str)> = Vec::new();
    for node in ["4", "6", "7", "5"].into_iter().filter(|n| !cached_nodes.contains(n)) {
        send(
            state,
            client,
            "executing",
            json!({"node": node, "display_node": node, "prompt_id": id}),
        );
        finished.push((node, 1.0, 1.0, "finished"));
        send(state, client, "progress_state", progress_state(&id, &finished));
    }
    if text.contains("silent") {
        // A node that hangs without a word: no progress, no end, until interrupted.
        loop {
            pause().await;
            if interrupted(state, client, &id, "3") {
                return;
            }
        }
    }
    let hang = text.contains("hang");
    let samplers: &[&str] = if text.contains("twice") { &["3", "10"] } else { &["3"] };
    let steps = if hang { 1000 } else { 5 };
    for sampler in samplers {
        send(
            state,
            client,
            "executing",
            json!({"node": sampler, "display_node": sampler, "prompt_id": id}),
        );
        for step in 1..=steps {
            pause().await;
            if hang && state.release.load(Ordering::Relaxed) {
                break;
            }
            if interrupted(state, client, &id, sampler) {
                return;
            }
            let (value, max) = if text.contains("float") {
                (f64::from(step) - 0.5, f64::from(steps))
            } else {
                (f64::from(step), f64::from(steps))
            };
            let value_json = if text.contains("float") { json!(value) } else { json!(step) };
            send(
                state,
                client,
                "progress",
                json!({"value": value_json, "max": steps, "prompt_id": id, "node": sampler}),
            );
            let mut nodes = finished.clone();
            nodes.push((sampler, value, max, "running"));
            send(state, client, "progress_state", progress_state(&id, &nodes));
            if step == 2 && text.contains("disconnect") {
                // Close the socket server-side; the rest happens while the client is away.
                if let Some((_, socket)) = lock(&state.sockets).remove(client) {
                    let _ = socket.send(None);
                }
            }
            if step == 2 && text.contains("forget") {
                // As a ComfyUI that restarted: no history, no queue, no more events.
                return;
            }
            if step == 3 && text.contains("fail") {
                let error = json!({"prompt_id": id, "node_id": sampler, "node_type": "KSampler", "executed": [],
                    "exception_message": "Error while deserializing header: /home/comfy/ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors: CUDA out of memory. Tried to allocate 2.00 GiB\n",
                    "exception_type": "torch.OutOfMemoryError", "traceback": ["  File \"/home/comfy/ComfyUI/execution.py\", line 496\n"], "current_inputs": {}, "current_outputs": {}});
                send(state, client, "execution_error", error.clone());
                let entry = json!({"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false,
                    "messages": [["execution_start", {"prompt_id": id}], ["execution_error", error]]}});
                lock(&state.history).insert(id, entry);
                send(state, client, "status", status(lock(&state.queue).len()));
                return;
            }
        }
        finished.push((sampler, f64::from(steps), f64::from(steps), "finished"));
    }
    if !cached {
        for node in ["8", "9"] {
            send(
                state,
                client,
                "executing",
                json!({"node": node, "display_node": node, "prompt_id": id}),
            );
        }
        send(
            state,
            client,
            "executed",
            json!({"node": "9", "display_node": "9", "output": {"images": images}, "prompt_id": id}),
        );
    }
    send(state, client, "execution_success", json!({"prompt_id": id, "timestamp": 2}));
    send(state, client, "executing", json!({"node": null, "prompt_id": id}));
    send(state, client, "status", status(lock(&state.queue).len()));
    // The real server writes the history after the events above.
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let entry = json!({"prompt": [], "outputs": {"9": {"images": images}},
            "status": {"status_str": "success", "completed": true, "messages": []}});
        lock(&state.history).insert(id, entry);
    });
}

async fn ws(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client_id = query.get("clientId").cloned().unwrap_or_default();
    upgrade.on_upgrade(move |socket| follow(state, client_id, socket))
}

async fn follow(state: Arc<SimState>, client_id: String, mut socket: WebSocket) {
    let (sender, mut outgoing) = mpsc::unbounded_channel();
    let number = {
        let mut connections = lock(&state.connections);
        *connections += 1;
        *connections
    };
    // ComfyUI: "Reusing existing session, remove old".
    lock(&state.sockets).insert(client_id.clone(), (number, sender));
    let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}});
    if socket.send(Message::Text(hello.to_string().into())).await.is_ok() {
        loop {
            if number < state.stalled_below.load(Ordering::Relaxed) {
                // Half-open: nothing read (so no pong), nothing sent, until unstalled.
                while number < state.stalled_below.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                break;
            }
            tokio::select! {
                next = outgoing.recv() => {
                    let Some(Some(text)) = next else { break };
                    if number < state.stalled_below.load(Ordering::Relaxed) {
                        continue;
                    }
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                read = socket.recv() => match read {
                    // Reading answers pings.
                    Some(Ok(_)) => {}
                    _ => break,
                },
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    // ComfyUI's `finally: self.sockets.pop(sid, None)`: whichever socket holds it now.
    lock(&state.sockets).remove(&client_id);
}

async fn history(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    let failing = state.history_failures.load(Ordering::Relaxed);
    if failing > 0 {
        state.history_failures.store(failing - 1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, "500 Internal Server Error").into_response();
    }
    let entry = lock(&state.history).get(&id).cloned();
    Json(entry.map_or_else(|| json!({}), |e| json!({ id: e }))).into_response()
}

async fn view(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let name = query.get("filename").cloned().unwrap_or_default();
    if query.get("type").map(String::as_str) != Some("output") {
        return StatusCode::NOT_FOUND.into_response();
    }
    match lock(&state.images).get(&name) {
        Some(bytes) => ([("content-type", "image/png")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn upload(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let multipart = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let text = String::from_utf8_lossy(&body);
    let name =
        text.split("filename=\"").nth(1).and_then(|rest| rest.split('"').next()).map(str::to_owned);
    match (multipart, name, text.contains("name=\"image\"")) {
        (true, Some(name), true) => {
            lock(&state.uploads).push(name.clone());
            Json(json!({"name": name, "subfolder": "", "type": "input"})).into_response()
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn interrupt(State(state): State<Arc<SimState>>, body: Bytes) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let asked = body.get("prompt_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    lock(&state.interrupt_requests).push(asked.clone());
    let running = lock(&state.running).as_ref().map(|r| r.id.clone());
    let targeted = state.targeted_interrupt.load(Ordering::Relaxed) && !asked.is_empty();
    // Before 0.3.57 ComfyUI ignored prompt_id: whatever runs stops.
    if running.is_some() && (!targeted || running.as_deref() == Some(asked.as_str())) {
        state.interrupt_now.store(true, Ordering::Relaxed);
    }
    StatusCode::OK
}

fn entry(queued: &Queued) -> Value {
    json!([queued.number, queued.id, {}, {"client_id": queued.client}, ["9"]])
}

async fn queue(State(state): State<Arc<SimState>>) -> Json<Value> {
    let running: Vec<Value> = lock(&state.running).iter().map(entry).collect();
    let pending: Vec<Value> = lock(&state.queue).iter().map(entry).collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

async fn queue_delete(State(state): State<Arc<SimState>>, Json(body): Json<Value>) -> StatusCode {
    let ids: Vec<String> = body
        .get("delete")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    lock(&state.queue).retain(|q| !ids.contains(&q.id));
    lock(&state.deleted).extend(ids);
    StatusCode::OK
}

async fn system_stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    let version =
        if state.targeted_interrupt.load(Ordering::Relaxed) { "0.3.64" } else { "0.3.50" };
    Json(
        json!({"system": {"os": "posix", "comfyui_version": version, "python_version": "3.11.7"}, "devices": []}),
    )
}
