//! The ComfyUI executor against the simulator in `comfyui_sim.rs`.

use serde_json::{Value, json};
use taskpulse_server::Config;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::{
    comfyui_sim::{ComfySim, png},
    fixture::{StompClient, TestServer},
};

async fn setup(url: String) -> (TestServer, String, StompClient) {
    setup_with(url, |_| {}).await
}

/// A server using the ComfyUI at `url` (settings for tests, then `tweak`), a user and its
/// subscription to its task updates.
pub(crate) async fn setup_with(
    url: String,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> (TestServer, String, StompClient) {
    let server = TestServer::stomp(move |c: &mut Config| {
        c.settings.comfyui.url = url;
        c.settings.comfyui.reconnect_max_ms = 200;
        c.settings.comfyui.timeout_s = 20;
        c.settings.tasks.progress_interval_ms = 10;
        // The simulator also serves the input images, on loopback.
        c.settings.tasks.image_fetch_allow = vec!["127.0.0.1".into()];
        tweak(c);
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
    // Every report pushed: on a busy machine events arrive in bursts, and coalescing would
    // merge the ones this test looks for.
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.tasks.progress_interval_ms = 0).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "a red fox in snow").await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert!(updates.iter().any(|u| u.message == "KSampler: step 3 of 5"), "{updates:#?}");
    assert!(updates.iter().any(|u| u.message == "running KSampler"), "{updates:#?}");

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
    // The node's class and ComfyUI's reason, without the server's file paths.
    assert_eq!(
        end.error_message.as_deref(),
        Some(
            "ComfyUI execution error in KSampler: Error while deserializing header: \
             v1-5-pruned-emaonly.safetensors: CUDA out of memory. Tried to allocate 2.00 GiB"
        )
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
        if update.task_no == hanging && update.message.starts_with("KSampler: step") {
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
async fn a_comfyui_node_that_goes_silent_fails_its_task_as_stalled_and_is_interrupted() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.comfyui.stall_timeout_s = 1).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "silent").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed, "{end:?}");
    let why = end.error_message.as_deref().unwrap();
    assert!(why.starts_with("stalled: the comfyui executor reported no progress for 1 s"), "{why}");
    for _ in 0..100 {
        if !sim.state.interrupted.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sim.state.interrupted.lock().unwrap().len(), 1, "ComfyUI was told to stop it");
    // The executor is free again: the next prompt runs to its end.
    let next = server.api().submit(&token, "a lighthouse").await;
    let end = client.updates_until_done(&next).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Completed, "{end:?}");
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

/// Every update's progress, which must never go back.
fn assert_monotonic(updates: &[TaskProgressDto]) {
    for pair in updates.windows(2) {
        assert!(pair[0].progress <= pair[1].progress, "progress went back: {updates:#?}");
    }
}

#[tokio::test]
async fn a_refused_workflow_says_which_node_and_why() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.comfyui.checkpoint = "missing.safetensors".into())
            .await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "a lighthouse").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    let reason = end.error_message.unwrap();
    assert!(
        reason.contains(
            "Prompt outputs failed validation: CheckpointLoaderSimple (node 4): Value not in \
             list: ckpt_name: 'missing.safetensors' not in"
        ),
        "{reason}"
    );
    server.stop().await;
}

#[tokio::test]
async fn progress_never_goes_back_over_two_samplers_and_fractional_steps() {
    let sim = ComfySim::start().await;
    // Every report pushed (no coalescing), so that the steps looked for are all seen.
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.tasks.progress_interval_ms = 0).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "twice, with float steps").await;
    let updates = client.updates_until_done(&task_no).await;
    assert_eq!(updates.last().unwrap().status, TaskStatus::Completed, "{updates:#?}");
    assert_monotonic(&updates);
    assert!(updates.iter().any(|u| u.message == "KSampler: step 4.5 of 5"), "{updates:#?}");
    let second = updates.iter().position(|u| u.message.starts_with("running KSampler")).unwrap();
    let last_step = updates.iter().rposition(|u| u.message.starts_with("KSampler: step"));
    assert!(last_step.unwrap() > second, "the second sampler reported: {updates:#?}");
    // Whole steps too: the second sampler starting at step 1 does not take it back.
    let task_no = server.api().submit(&token, "twice over").await;
    let updates = client.updates_until_done(&task_no).await;
    assert_monotonic(&updates);
    server.stop().await;
}

#[tokio::test]
async fn a_cached_output_node_still_gives_the_result() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "cached again").await;
    let updates = client.updates_until_done(&task_no).await;
    let done = updates.last().unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{updates:#?}");
    assert_monotonic(&updates);
    let (status, _, bytes) = server.api().download(done.result_url.as_deref().unwrap()).await;
    assert_eq!((status, bytes), (200, png(1)));
    server.stop().await;
}

#[tokio::test]
async fn a_half_open_socket_is_replaced_and_later_prompts_are_heard() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.comfyui.liveness_ms = 200).await;
    wait_connected(&sim, 1).await;
    // The socket goes silent without closing (a lost network): the ping goes unanswered,
    // and the executor opens another.
    sim.stall();
    wait_connected(&sim, 2).await;
    // Then ComfyUI notices the old socket is gone, and forgets its client id: with one
    // fixed id, that was the new socket's too.
    sim.unstall();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let task_no = server.api().submit(&token, "a lighthouse").await;
    let updates = client.updates_until_done(&task_no).await;
    assert_eq!(updates.last().unwrap().status, TaskStatus::Completed, "{updates:#?}");
    assert!(
        updates.iter().any(|u| u.message.starts_with("KSampler: step")),
        "the new socket hears the prompt's progress: {updates:#?}"
    );
    let prompts = sim.state.prompts.lock().unwrap().clone();
    let ids: Vec<&str> = prompts.iter().filter_map(|p| p["client_id"].as_str()).collect();
    assert!(ids.iter().all(|id| id.starts_with("taskpulse-")), "{ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_prompt_comfyui_forgot_fails_with_the_reason_instead_of_waiting_out_the_timeout() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.comfyui.timeout_s = 600).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "forget me").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    assert!(end.error_message.unwrap().contains("ComfyUI no longer knows this prompt"));
    server.stop().await;
}

#[tokio::test]
async fn a_failed_history_lookup_is_asked_again() {
    let sim = ComfySim::start().await;
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    sim.state.history_failures.store(2, std::sync::atomic::Ordering::Relaxed);
    let task_no = server.api().submit(&token, "disconnect half way").await;
    let updates = client.updates_until_done(&task_no).await;
    assert_eq!(updates.last().unwrap().status, TaskStatus::Completed, "{updates:#?}");
    assert_eq!(sim.state.history_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    server.stop().await;
}

/// Waits for an update of `task_no` whose message contains `text`.
async fn until_message(client: &mut StompClient, task_no: &str, text: &str) {
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&client.recv().await.body).unwrap();
        if update.task_no == task_no && update.message.contains(text) {
            return;
        }
    }
}

#[tokio::test]
async fn cancelling_a_queued_prompt_leaves_the_running_one_alone_on_an_old_comfyui() {
    let sim = ComfySim::start().await;
    // An old ComfyUI: /interrupt stops whatever runs, whatever prompt_id says.
    sim.state.targeted_interrupt.store(false, std::sync::atomic::Ordering::Relaxed);
    let (server, token, mut client) =
        setup_with(sim.url(), |c| c.settings.comfyui.concurrency = 2).await;
    wait_connected(&sim, 1).await;
    let running = server.api().submit(&token, "hang while running").await;
    until_message(&mut client, &running, "step").await;
    let waiting = server.api().submit(&token, "hang while waiting").await;
    until_message(&mut client, &waiting, "queued at ComfyUI").await;
    let (status, _) =
        server.api().post(&format!("/api/tasks/{waiting}/cancel"), Some(&token), json!({})).await;
    assert_eq!(status, 200);
    for _ in 0..100 {
        if !sim.state.deleted.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sim.state.deleted.lock().unwrap().len(), 1, "the waiting prompt left the queue");
    assert!(sim.state.interrupt_requests.lock().unwrap().is_empty(), "nothing was interrupted");
    sim.state.release.store(true, std::sync::atomic::Ordering::Relaxed);
    let end = client.updates_until_done(&running).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Completed, "{end:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_prompt_an_old_comfyui_renamed_is_withdrawn() {
    let sim = ComfySim::start().await;
    sim.state.rename.store(true, std::sync::atomic::Ordering::Relaxed);
    let (server, token, mut client) = setup(sim.url()).await;
    wait_connected(&sim, 1).await;
    let task_no = server.api().submit(&token, "hang unless withdrawn").await;
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    assert!(end.error_message.unwrap().contains("renamed the prompt to sim-generated-1"));
    let withdrawn = || {
        sim.state.deleted.lock().unwrap().iter().any(|id| id == "sim-generated-1")
            || sim.state.interrupted.lock().unwrap().iter().any(|id| id == "sim-generated-1")
    };
    for _ in 0..100 {
        if withdrawn() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(withdrawn(), "the renamed prompt does not run for nobody");
    server.stop().await;
}
