//! The ComfyUI executor against a real ComfyUI on CPU, with workflows that need no model
//! weights (`server/tests/comfyui/*.json`: `EmptyImage`, `ImageAddNoise`, `ImageBlur`,
//! `SaveImage`, and `TaskPulseSteps`, this project's node that sleeps in steps and reports
//! them through ComfyUI's own progress hook). Ignored by default: ComfyUI is not on any
//! registry CI can reach. `cargo xtask test-comfyui --comfyui DIR` runs them, one at a
//! time, with `REAL_COMFYUI_DIR` (a ComfyUI checkout) and `REAL_COMFYUI_PYTHON` (its
//! Python, with torch and ComfyUI's requirements) set.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use taskpulse_server::Config;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::fixture::{Api, StompClient, TestServer, spawn_with};

/// How long ComfyUI may take to start (it imports torch).
const STARTUP: Duration = Duration::from_secs(180);

const WHY: &str = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR";

/// A real ComfyUI on a loopback port, with its own base directory (this project's test node
/// in `custom_nodes/`, empty `models/`, fresh input and output) and an in-memory database;
/// killed when dropped.
struct RealComfy {
    dir: PathBuf,
    python: PathBuf,
    base: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl RealComfy {
    fn start() -> RealComfy {
        let dir = PathBuf::from(std::env::var("REAL_COMFYUI_DIR").expect(WHY));
        let python = PathBuf::from(std::env::var("REAL_COMFYUI_PYTHON").expect(WHY));
        let base = tempfile::tempdir().unwrap();
        let nodes = base.path().join("custom_nodes");
        std::fs::create_dir_all(&nodes).unwrap();
        let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/comfyui/custom_nodes");
        std::fs::copy(ours.join("taskpulse_steps.py"), nodes.join("taskpulse_steps.py")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut comfy = RealComfy { dir, python, base, port, child: None };
        comfy.spawn();
        comfy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts ComfyUI (again, on the same port and directories) and waits until it answers.
    fn spawn(&mut self) {
        let child = Command::new(&self.python)
            .current_dir(&self.dir)
            .arg("main.py")
            .args(["--cpu", "--listen", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--disable-auto-launch", "--database-url", "sqlite:///:memory:"])
            .arg("--base-directory")
            .arg(self.base.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.python.display()));
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        let stats = format!("{}/system_stats", self.url());
        while Instant::now() < deadline {
            if answers(&stats) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("ComfyUI in {} did not answer within {STARTUP:?}", self.dir.display());
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.url())).await.unwrap();
        response.json().await.unwrap()
    }
}

impl Drop for RealComfy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `GET url` answers 200 (std only: the polling runs before any runtime).
fn answers(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else { return false };
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// A workflow of `server/tests/comfyui/`, with `steps` x `step_ms` in its test node, written
/// to `dir`; its path.
fn workflow(name: &str, dir: &Path, steps: u32, step_ms: u32) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/comfyui").join(name);
    let mut workflow: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    workflow["3"]["inputs"]["steps"] = json!(steps);
    workflow["3"]["inputs"]["step_ms"] = json!(step_ms);
    let out = dir.join(name);
    std::fs::write(&out, workflow.to_string()).unwrap();
    out
}

/// A server using `comfy` with the test workflows (`steps` x `step_ms` each), a user and
/// its subscription.
async fn setup(
    comfy: &RealComfy,
    steps: u32,
    step_ms: u32,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> (TestServer, String, StompClient, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let t2i = workflow("text-to-image.json", files.path(), steps, step_ms);
    let i2i = workflow("image-to-image.json", files.path(), steps, step_ms);
    let (server, token, client) = crate::comfyui::setup_with(comfy.url(), move |c: &mut Config| {
        c.settings.comfyui.workflow_file = t2i;
        c.settings.comfyui.img2img_workflow_file = i2i;
        c.settings.comfyui.reconnect_max_ms = 500;
        c.settings.comfyui.timeout_s = 120;
        tweak(c);
    })
    .await;
    (server, token, client, files)
}

/// The first output image ComfyUI's own `/history` and `/view` give for the only prompt.
async fn comfy_output(comfy: &RealComfy) -> Vec<u8> {
    let history = comfy.get("/history").await;
    let (_, entry) = history.as_object().unwrap().iter().next().expect("a prompt ran");
    let image =
        entry["outputs"].as_object().unwrap().values().find_map(|o| o["images"].get(0)).unwrap();
    let url = format!(
        "{}/view?filename={}&subfolder={}&type={}",
        comfy.url(),
        image["filename"].as_str().unwrap(),
        image["subfolder"].as_str().unwrap(),
        image["type"].as_str().unwrap()
    );
    reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec()
}

/// A 32x32 gradient PNG (the blur needs more than a few pixels).
fn input_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 32, 32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| (i % 251) as u8).collect();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();
    out
}

fn assert_in_order(updates: &[TaskProgressDto]) {
    for pair in updates.windows(2) {
        assert!(pair[0].progress <= pair[1].progress, "progress went back: {updates:#?}");
        let rank = |s: TaskStatus| TaskStatus::ALL.iter().position(|a| *a == s);
        assert!(rank(pair[0].status) <= rank(pair[1].status), "status went back: {updates:#?}");
    }
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_text_to_image_with_progress_in_order() {
    let comfy = RealComfy::start();
    let (server, token, mut client, _files) = setup(&comfy, 8, 200, |_| {}).await;
    let task_no = server.api().submit(&token, "a lighthouse").await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert_in_order(&updates);
    let steps: Vec<&str> = updates
        .iter()
        .filter(|u| u.message.starts_with("TaskPulseSteps: step"))
        .map(|u| u.message.as_str())
        .collect();
    assert!(steps.len() >= 3, "the node's steps reached the user: {updates:#?}");
    let (status, content_type, bytes) =
        server.api().download(done.result_url.as_deref().unwrap()).await;
    assert_eq!((status, content_type.as_deref()), (200, Some("image/png")));
    assert_eq!(bytes, comfy_output(&comfy).await, "byte for byte what ComfyUI's /view gives");
    println!("text-to-image: {} updates, steps seen: {steps:?}", updates.len());
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_image_to_image_uploads_its_input() {
    let comfy = RealComfy::start();
    // The input image, served on loopback.
    let images = axum::Router::new().route(
        "/input.png",
        axum::routing::get(|| async { ([("content-type", "image/png")], input_png()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let input = format!("http://{}/input.png", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, images).await.unwrap() });
    let (server, token, mut client, _files) = setup(&comfy, 3, 50, |_| {}).await;
    let body = json!({"kind": "image-to-image", "prompt": "blurred", "imageUrl": input});
    let (status, answer) = server.api().post("/api/tasks", Some(&token), body).await;
    assert_eq!(status, 202, "{answer}");
    let task_no = answer["taskNo"].as_str().unwrap().to_owned();
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    let (_, _, bytes) = server.api().download(done.result_url.as_deref().unwrap()).await;
    assert_eq!(bytes, comfy_output(&comfy).await);
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_cancel_of_a_queued_and_of_a_running_prompt() {
    let comfy = RealComfy::start();
    let (server, token, mut client, _files) =
        setup(&comfy, 300, 100, |c| c.settings.comfyui.concurrency = 2).await;
    let running = server.api().submit(&token, "first").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == running && update.message.contains("step") {
            break;
        }
    }
    let waiting = server.api().submit(&token, "second").await;
    loop {
        let queue = comfy.get("/queue").await;
        if queue["queue_pending"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancel = |task: String| {
        let api = server.api();
        let token = token.clone();
        async move { api.post(&format!("/api/tasks/{task}/cancel"), Some(&token), json!({})).await }
    };
    assert_eq!(cancel(waiting.clone()).await.0, 200);
    // The waiting one left ComfyUI's queue; the running one still runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queue = comfy.get("/queue").await;
    assert_eq!(queue["queue_pending"], json!([]), "{queue}");
    assert_eq!(queue["queue_running"].as_array().map(Vec::len), Some(1), "{queue}");
    assert_eq!(cancel(running.clone()).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queue = comfy.get("/queue").await;
        if queue["queue_running"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "ComfyUI still runs the cancelled prompt: {queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = comfy.get("/history").await;
    let statuses: Vec<&str> = history
        .as_object()
        .unwrap()
        .values()
        .filter_map(|e| e["status"]["status_str"].as_str())
        .collect();
    println!("cancel: ComfyUI's history says {statuses:?}");
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_an_invalid_workflow_fails_with_its_reason() {
    let comfy = RealComfy::start();
    // The built-in Stable Diffusion workflow: this ComfyUI has no checkpoint at all.
    let (server, token, mut client, _files) = setup(&comfy, 1, 1, |c| {
        c.settings.comfyui.workflow_file = PathBuf::new();
    })
    .await;
    let task_no = server.api().submit(&token, "a lighthouse").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    let reason = end.error_message.unwrap();
    println!("invalid workflow: {reason}");
    assert!(reason.contains("CheckpointLoaderSimple (node 4)"), "{reason}");
    assert!(reason.contains("ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in"), "{reason}");
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_killed_and_restarted_mid_task_fails_the_task_with_the_reason() {
    let mut comfy = RealComfy::start();
    let (server, token, mut client, _files) = setup(&comfy, 200, 100, |_| {}).await;
    let task_no = server.api().submit(&token, "doomed").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == task_no && update.message.contains("step") {
            break;
        }
    }
    comfy.kill();
    comfy.spawn();
    let started = Instant::now();
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    let reason = end.error_message.unwrap();
    println!("ComfyUI restarted: failed after {:?}: {reason}", started.elapsed());
    assert!(reason.contains("no longer knows this prompt"), "{reason}");
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs a real ComfyUI: cargo xtask test-comfyui --comfyui DIR"]
async fn real_comfyui_prompt_is_followed_again_after_taskpulse_is_killed() {
    let comfy = RealComfy::start();
    let files = tempfile::tempdir().unwrap();
    let t2i = workflow("text-to-image.json", files.path(), 30, 200);
    let data = tempfile::tempdir().unwrap();
    let url = comfy.url();
    let t2i = t2i.to_string_lossy().into_owned();
    let env = [("TASKPULSE_COMFYUI_URL", url.as_str()), ("TASKPULSE_COMFYUI_WORKFLOW_FILE", &t2i)];
    let mut first = spawn_with(data.path(), &env);
    let api = Api::new(first.addr);
    let token = api.register("alice").await;
    let mut client = subscribe(first.addr, &token).await;
    let task_no = api.submit(&token, "survivor").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == task_no && update.message.contains("step") {
            break;
        }
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(first);
    let second = spawn_with(data.path(), &env);
    let mut client = subscribe(second.addr, &token).await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    let (_, _, bytes) = Api::new(second.addr).download(done.result_url.as_deref().unwrap()).await;
    assert_eq!(bytes, comfy_output(&comfy).await);
    let prompts = comfy.get("/history").await.as_object().map(|h| h.len());
    assert_eq!(prompts, Some(1), "the prompt was not submitted twice");
}

async fn subscribe(addr: std::net::SocketAddr, token: &str) -> StompClient {
    let mut client = StompClient::open(&format!("ws://{addr}/ws"), &["v12.stomp"]).await;
    client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    client.subscribe("tasks", "/user/queue/tasks-progress", "auto").await;
    client
}
