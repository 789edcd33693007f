//! The real binary killed with SIGKILL in the middle of running tasks and started again on
//! the same data directory.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::{
    comfyui_sim::ComfySim,
    fixture::{Api, Postgres, StompClient, spawn_with},
};

async fn subscriber(addr: SocketAddr, token: &str) -> StompClient {
    let mut client = StompClient::open(&format!("ws://{addr}/ws"), &["v12.stomp"]).await;
    client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    client.subscribe("tasks", "/user/queue/tasks-progress", "auto").await;
    client
}

#[tokio::test]
async fn tasks_survive_kill_9_and_run_again_on_sqlite() {
    kill_9_and_run_again(&[]).await;
}

#[tokio::test]
async fn tasks_survive_kill_9_and_run_again_on_postgresql() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    kill_9_and_run_again(&[("TASKPULSE_STORAGE_URL", &url)]).await;
}

/// Running, queued and pending tasks across a SIGKILL of the server, with the settings of
/// `env` (the storage backend).
async fn kill_9_and_run_again(env: &[(&str, &str)]) {
    let data = tempfile::tempdir().unwrap();
    let mut first = spawn_with(data.path(), env);
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

    let second = spawn_with(data.path(), env);
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
    let messages: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("server restarted while this task ran")),
        "{messages:#?}"
    );
    let statuses: Vec<&Value> =
        events["events"].as_array().unwrap().iter().map(|e| &e["status"]).collect();
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
        if update.task_no == task_no && update.message.starts_with("KSampler: step") {
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

/// Sends SIGTERM to `pid`.
fn terminate(pid: u32) {
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM {pid}");
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_and_queued_ones_run_after_the_restart() {
    let data = tempfile::tempdir().unwrap();
    let env = [("TASKPULSE_SERVER_DRAIN_TIMEOUT_S", "20")];
    let mut first = spawn_with(data.path(), &env);
    let addr = first.addr;
    let api = Api::new(addr);
    let token = api.register("alice").await;
    let mut client = subscriber(addr, &token).await;
    // Concurrency 1 and 1.5 s each: the first runs while the second waits.
    let running = api.submit(&token, "one").await;
    let queued = api.submit(&token, "two").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == running && update.status == TaskStatus::Processing {
            break;
        }
    }
    terminate(first.pid());
    // New connections are refused at once; the open one keeps receiving.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    let error = loop {
        let frame = client.recv().await;
        if frame.command == taskpulse_shared::stomp::Command::Error {
            break frame;
        }
        seen.push(serde_json::from_slice::<TaskProgressDto>(&frame.body).unwrap());
    };
    let last = seen.iter().rfind(|u| u.task_no == running).expect("updates of the running task");
    assert_eq!(last.status, TaskStatus::Completed, "it finished before the close: {seen:#?}");
    let started = |u: &&TaskProgressDto| {
        u.task_no == queued && u.status != TaskStatus::Created && u.status != TaskStatus::Queued
    };
    assert!(!seen.iter().any(|u| started(&u)), "the queued one did not start: {seen:#?}");
    assert_eq!(error.header("message"), Some("server is shutting down"));
    let exited = tokio::task::spawn_blocking(move || first.child.wait()).await.unwrap().unwrap();
    assert!(exited.success(), "a clean exit: {exited:?}");

    // The queued task runs after the restart.
    let second = spawn_with(data.path(), &env);
    let api = Api::new(second.addr);
    let mut client = subscriber(second.addr, &token).await;
    let end = client.updates_until_done(&queued).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Completed, "{end:?}");
    let (_, details) = api.get(&format!("/api/tasks/{running}"), Some(&token)).await;
    assert_eq!(details["status"], "completed", "{details}");
}
