//! The ComfyUI executor against the simulator in `comfyui_sim.rs`.

use serde_json::{Value, json};
use taskpulse_server::Config;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::{
    comfyui_sim::{ComfySim, png},
    fixture::{StompClient, TestServer},
};

async fn setup(url: String) -> (TestServer, String, StompClient) {
    let server = TestServer::stomp(move |c: &mut Config| {
        c.settings.comfyui.url = url;
        c.settings.comfyui.reconnect_max_ms = 200;
        c.settings.comfyui.timeout_s = 20;
        c.settings.tasks.progress_interval_ms = 10;
        // The simulator also serves the input images, on loopback.
        c.settings.tasks.image_fetch_allow = vec!["127.0.0.1".into()];
    })
    .await;
    let token = server.api().register("alice").await;
    let mut client = server.client_with(&token).await;
    client.subscribe("tasks", "/user/queue/tasks-progress", "auto").await;
    (server, token, client)
}

async fn wait_connected(sim: &ComfySim, at_least: usize) {
    for _ in 0..200 {
        if *sim.state.connections.lock().unwrap() >= at_least {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the executor never connected to the simulator's WebSocket");
}

#[tokio::test]
async fn a_prompt_runs_on_comfyui_with_progress_and_its_image() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "a red fox in snow").await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert!(updates.iter().any(|u| u.message == "sampling, step 3 of 5"), "{updates:#?}");

    let (status, content_type, bytes) =
        server.api().download(done.result_url.as_deref().unwrap()).await;
    assert_eq!((status, content_type.as_deref()), (200, Some("image/png")));
    assert_eq!(bytes, png(1), "the image ComfyUI made, fetched through /view");

    let prompts = sim.state.prompts.lock().unwrap().clone();
    let workflow = &prompts[0]["prompt"];
    assert_eq!(workflow["6"]["inputs"]["text"], "a red fox in snow");
    assert_eq!(
        (workflow["5"]["inputs"]["width"].clone(), workflow["5"]["inputs"]["height"].clone()),
        (json!(512), json!(288))
    );
    assert!(prompts[0]["client_id"].as_str().unwrap().starts_with("taskpulse-"));
    let (_, details) = server.api().get(&format!("/api/tasks/{task_no}"), Some(&token)).await;
    assert_eq!(details["status"], "completed");
    server.stop().await;
}

#[tokio::test]
async fn an_execution_error_fails_the_task_with_comfyuis_reason() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "please fail").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    assert_eq!(
        end.error_message.as_deref(),
        Some("ComfyUI execution error: CUDA out of memory. Tried to allocate 2.00 GiB")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_comfyui_disconnect_is_repaired_through_history() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "disconnect half way").await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert!(*sim.state.connections.lock().unwrap() >= 2, "the executor reconnected");
    let (status, _, bytes) = server.api().download(done.result_url.as_deref().unwrap()).await;
    assert_eq!((status, bytes), (200, png(1)));
    server.stop().await;
}

#[tokio::test]
async fn image_to_image_uploads_the_input_and_cancel_interrupts() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let body = json!({"kind": "image-to-image", "prompt": "as a watercolour", "imageUrl": format!("{}/input.png", sim.url())});
    let (status, answer) = server.api().post("/api/tasks", Some(&token), body).await;
    assert_eq!(status, 202, "{answer}");
    let task_no = answer["taskNo"].as_str().unwrap().to_owned();
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Completed, "{end:?}");
    let uploads = sim.state.uploads.lock().unwrap().clone();
    assert_eq!(uploads, [format!("{task_no}.png")]);
    let prompts = sim.state.prompts.lock().unwrap().clone();
    assert_eq!(prompts[0]["prompt"]["10"]["inputs"]["image"], Value::String(uploads[0].clone()));

    let hanging = server.api().submit(&token, "hang forever").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == hanging && update.message.starts_with("sampling") {
            break;
        }
    }
    let (status, answer) =
        server.api().post(&format!("/api/tasks/{hanging}/cancel"), Some(&token), json!({})).await;
    assert_eq!((status, answer["errorMessage"].as_str()), (200, Some("cancelled")), "{answer}");
    for _ in 0..100 {
        if !sim.state.interrupted.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sim.state.interrupted.lock().unwrap().len(), 1, "ComfyUI was told to interrupt");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_comfyui_fails_tasks_with_a_clear_error() {
    // Bind and drop a listener: a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (server, token, mut client) = setup(format!("http://127.0.0.1:{port}")).await;
    let task_no = server.api().submit(&token, "anything").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    assert!(end.error_message.as_deref().unwrap().starts_with("ComfyUI is unreachable"), "{end:?}");
    server.stop().await;
}
