//! The real binary killed with SIGKILL in the middle of running tasks and started again on
//! the same data directory.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::{
    comfyui_sim::ComfySim,
    fixture::{Api, StompClient},
};

struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failed assertion must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `taskpulse-server` on an ephemeral port and waits for its "listening" line.
fn spawn(data: &Path) -> Process {
    spawn_with(data, &[])
}

fn spawn_with(data: &Path, env: &[(&str, &str)]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskpulse-server"))
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--ui-dir")
        .arg(data.join("no-ui"))
        .env("TASKPULSE_JWT_SECRET", "restart-secret")
        .env("TASKPULSE_DEMO_DURATION_MS", "1500")
        .env("TASKPULSE_DEMO_CONCURRENCY", "1")
        .env("TASKPULSE_TASKS_PROGRESS_INTERVAL_MS", "20")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Process { child, addr }
}

async fn subscriber(addr: SocketAddr, token: &str) -> StompClient {
    let mut client = StompClient::open(&format!("ws://{addr}/ws"), &["v12.stomp"]).await;
    client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    client.subscribe("tasks", "/user/queue/tasks-progress", "auto").await;
    client
}

#[tokio::test]
async fn tasks_survive_kill_9_and_run_again() {
    let data = tempfile::tempdir().unwrap();
    let mut first = spawn(data.path());
    let api = Api::new(first.addr);
    let token = api.register("alice").await;
    let mut client = subscriber(first.addr, &token).await;
    let tasks = [
        api.submit(&token, "one").await,
        api.submit(&token, "two").await,
        api.submit(&token, "three").await,
    ];
    // Wait until the first task is well under way.
    loop {
        let frame = client.recv().await;
        let update: TaskProgressDto = serde_json::from_slice(&frame.body).unwrap();
        if update.task_no == tasks[0]
            && update.status == TaskStatus::Processing
            && update.progress >= 20
        {
            break;
        }
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    drop(first);

    let second = spawn(data.path());
    let api = Api::new(second.addr);
    let mut client = subscriber(second.addr, &token).await;
    let last = client.updates_until_done(&tasks[2]).await;
    assert_eq!(last.last().unwrap().status, TaskStatus::Completed, "{last:#?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = api.get("/api/tasks", Some(&token)).await;
        let done =
            page["tasks"].as_array().unwrap().iter().filter(|t| t["status"] == "completed").count();
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not all tasks completed after the restart: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The owner was told why the running task started over.
    let (_, events) = api.get(&format!("/api/tasks/{}/events", tasks[0]), Some(&token)).await;
    let messages: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(
        messages.iter().any(|m| m.contains("server restarted while this task ran")),
        "{messages:#?}"
    );
    let statuses: Vec<&Value> = events.as_array().unwrap().iter().map(|e| &e["status"]).collect();
    assert_eq!(statuses.last().unwrap().as_str(), Some("completed"));
    drop(second);
}

#[tokio::test]
async fn a_comfyui_prompt_is_followed_again_after_kill_9() {
    let sim = ComfySim::start().await;
    let data = tempfile::tempdir().unwrap();
    let url = sim.url();
    let env = [("TASKPULSE_COMFYUI_URL", url.as_str())];
    let mut first = spawn_with(data.path(), &env);
    let api = Api::new(first.addr);
    let token = api.register("alice").await;
    let mut client = subscriber(first.addr, &token).await;
    let task_no = api.submit(&token, "hang until released").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == task_no && update.message.starts_with("sampling") {
            break;
        }
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(first);

    let second = spawn_with(data.path(), &env);
    let mut client = subscriber(second.addr, &token).await;
    sim.state.release.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert_eq!(sim.state.prompts.lock().unwrap().len(), 1, "the prompt was not submitted twice");
    let (status, _, bytes) =
        Api::new(second.addr).download(done.result_url.as_deref().unwrap()).await;
    assert_eq!((status, bytes), (200, crate::comfyui_sim::png(1)));
}
