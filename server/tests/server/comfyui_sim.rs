//! A ComfyUI simulator for the tests (a real ComfyUI needs a GPU and model weights). It
//! speaks ComfyUI's HTTP and WebSocket protocol as the executor uses it:
//!
//! - `POST /prompt {prompt, client_id, prompt_id?}` -> `{prompt_id, number, node_errors}`, or
//!   400 `{error: {type, message}, node_errors}` for a workflow without nodes;
//! - `GET /ws?clientId=` -> `status` (queue_remaining), `execution_start`, `executing`
//!   (node, then `null`), `progress` (value/max), `executed` (output images),
//!   `execution_success`, `execution_error`, `execution_interrupted`;
//! - `GET /history/{prompt_id}`, `GET /view?filename&subfolder&type`, `POST /upload/image`
//!   (multipart), `POST /interrupt`, `POST /queue {delete: [...]}`.
//!
//! The positive prompt steers a run: "fail" ends in `execution_error`, "disconnect" closes
//! the WebSocket half-way and finishes while the client is away, "hang" runs until
//! `/interrupt` or until the test sets `release`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
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
use tokio::sync::mpsc;

#[derive(Default)]
pub(crate) struct SimState {
    /// Open WebSockets by clientId.
    sockets: Mutex<HashMap<String, mpsc::UnboundedSender<Option<String>>>>,
    pub(crate) history: Mutex<HashMap<String, Value>>,
    /// Every accepted /prompt body.
    pub(crate) prompts: Mutex<Vec<Value>>,
    pub(crate) interrupted: Mutex<Vec<String>>,
    pub(crate) uploads: Mutex<Vec<String>>,
    /// Output images by file name.
    images: Mutex<HashMap<String, Vec<u8>>>,
    /// How many WebSockets were opened.
    pub(crate) connections: Mutex<usize>,
    /// Set to let "hang" prompts finish.
    pub(crate) release: std::sync::atomic::AtomicBool,
}

pub(crate) struct ComfySim {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<SimState>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for ComfySim {
    fn drop(&mut self) {
        self.handle.abort();
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
        let app = Router::new()
            .route("/prompt", post(prompt))
            .route("/ws", get(ws))
            .route("/history/{id}", get(history))
            .route("/view", get(view))
            .route("/upload/image", post(upload))
            .route("/interrupt", post(interrupt))
            .route("/queue", post(queue))
            .route("/input.png", get(|| async { ([("content-type", "image/png")], png(7)) }))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ComfySim { addr, state, handle }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn send(state: &SimState, client_id: &str, kind: &str, data: Value) {
    if let Some(socket) = lock(&state.sockets).get(client_id) {
        let _ = socket.send(Some(json!({"type": kind, "data": data}).to_string()));
    }
}

async fn prompt(State(state): State<Arc<SimState>>, Json(body): Json<Value>) -> Response {
    let workflow = body.get("prompt").and_then(Value::as_object);
    let Some(workflow) =
        workflow.filter(|w| w.values().all(|n| n.get("class_type").is_some()) && !w.is_empty())
    else {
        let error = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because the prompt has no nodes.", "details": ""}, "node_errors": {}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    let text = workflow
        .values()
        .find(|n| n["class_type"] == "CLIPTextEncode")
        .and_then(|n| n["inputs"]["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    let prompt_id = body
        .get("prompt_id")
        .and_then(Value::as_str)
        .map_or_else(|| "sim-generated".to_owned(), str::to_owned);
    let client_id = body.get("client_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let number = {
        let mut prompts = lock(&state.prompts);
        prompts.push(body.clone());
        prompts.len()
    };
    tokio::spawn(execute(state.clone(), client_id, prompt_id.clone(), text, number));
    Json(json!({"prompt_id": prompt_id, "number": number, "node_errors": {}})).into_response()
}

async fn execute(state: Arc<SimState>, client: String, id: String, text: String, number: usize) {
    let pause = || tokio::time::sleep(Duration::from_millis(30));
    let status = |remaining: u32| json!({"status": {"exec_info": {"queue_remaining": remaining}}});
    send(&state, &client, "status", status(1));
    send(&state, &client, "execution_start", json!({"prompt_id": id, "timestamp": 1}));
    send(
        &state,
        &client,
        "execution_cached",
        json!({"nodes": [], "prompt_id": id, "timestamp": 1}),
    );
    for node in ["4", "6", "7", "5", "3"] {
        send(
            &state,
            &client,
            "executing",
            json!({"node": node, "display_node": node, "prompt_id": id}),
        );
    }
    let hang = text.contains("hang");
    let steps = if hang { 1000 } else { 5 };
    for value in 1..=steps {
        pause().await;
        if hang && state.release.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if lock(&state.interrupted).iter().any(|i| i == &id) {
            send(
                &state,
                &client,
                "execution_interrupted",
                json!({"prompt_id": id, "node_id": "3", "node_type": "KSampler", "executed": []}),
            );
            let entry = json!({"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [["execution_interrupted", {"prompt_id": id}]]}});
            lock(&state.history).insert(id, entry);
            return;
        }
        send(
            &state,
            &client,
            "progress",
            json!({"value": value, "max": steps, "prompt_id": id, "node": "3"}),
        );
        if value == 2 && text.contains("disconnect") {
            // Close the socket server-side; the rest happens while the client is away.
            if let Some(socket) = lock(&state.sockets).remove(&client) {
                let _ = socket.send(None);
            }
        }
        if value == 3 && text.contains("fail") {
            let error = json!({"prompt_id": id, "node_id": "3", "node_type": "KSampler", "executed": [],
                "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB\n", "exception_type": "torch.OutOfMemoryError",
                "traceback": ["..."], "current_inputs": {}, "current_outputs": {}});
            send(&state, &client, "execution_error", error.clone());
            let entry = json!({"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": false,
                "messages": [["execution_start", {"prompt_id": id}], ["execution_error", error]]}});
            lock(&state.history).insert(id, entry);
            send(&state, &client, "status", status(0));
            return;
        }
    }
    let filename = format!("ComfyUI_{number:05}_.png");
    lock(&state.images).insert(filename.clone(), png(number as u8));
    let images = json!([{"filename": filename, "subfolder": "", "type": "output"}]);
    for node in ["8", "9"] {
        send(
            &state,
            &client,
            "executing",
            json!({"node": node, "display_node": node, "prompt_id": id}),
        );
    }
    let entry = json!({"prompt": [], "outputs": {"9": {"images": images}},
        "status": {"status_str": "success", "completed": true, "messages": []}});
    lock(&state.history).insert(id.clone(), entry);
    send(
        &state,
        &client,
        "executed",
        json!({"node": "9", "display_node": "9", "output": {"images": images}, "prompt_id": id}),
    );
    send(&state, &client, "execution_success", json!({"prompt_id": id, "timestamp": 2}));
    send(&state, &client, "executing", json!({"node": null, "prompt_id": id}));
    send(&state, &client, "status", status(0));
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
    lock(&state.sockets).insert(client_id.clone(), sender);
    *lock(&state.connections) += 1;
    let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}});
    if socket.send(Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    while let Some(Some(text)) = outgoing.recv().await {
        if socket.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn history(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Json<Value> {
    let entry = lock(&state.history).get(&id).cloned();
    Json(entry.map_or_else(|| json!({}), |e| json!({ id: e })))
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
    if let Some(id) = body.get("prompt_id").and_then(Value::as_str) {
        lock(&state.interrupted).push(id.to_owned());
    }
    StatusCode::OK
}

async fn queue(Json(_body): Json<Value>) -> StatusCode {
    StatusCode::OK
}
