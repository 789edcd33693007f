//! Runs in headless Chromium (`wasm-bindgen-test-runner`): the shared codec and the task
//! update reader work inside a real browser's wasm engine, not only natively.
#![cfg(target_arch = "wasm32")]

use taskpulse_client::task_update;
use taskpulse_shared::{
    TaskStatus,
    stomp::{Command, Decoder, Frame, Version},
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[path = "browser/live.rs"]
mod live;

const MESSAGE: &[u8] = b"MESSAGE\ndestination:/user/queue/tasks-progress\nmessage-id:7\n\
subscription:sub-0\ncontent-type:application/json\n\n\
{\"taskNo\":\"T-1\",\"status\":\"completed\",\"progress\":100,\"message\":\"done\",\
\"resultUrl\":\"/results/T-1.png\"}\0\n";

#[wasm_bindgen_test]
fn decodes_a_task_update_fed_byte_by_byte() {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    for byte in MESSAGE {
        decoder.feed(std::slice::from_ref(byte));
        while let Some(frame) = decoder.decode().expect("valid frame") {
            frames.push(frame);
        }
    }
    assert_eq!(frames.len(), 1);
    let update = task_update(&frames[0]).expect("task update");
    assert_eq!(update.task_no, "T-1");
    assert_eq!(update.status, TaskStatus::Completed);
    assert_eq!(update.result_url.as_deref(), Some("/results/T-1.png"));
}

#[wasm_bindgen_test]
fn rejects_a_frame_that_is_not_a_message() {
    let receipt = Frame::new(Command::Receipt).with_header("receipt-id", "1");
    let err = task_update(&receipt).expect_err("not a message");
    assert_eq!(err.to_string(), "expected a MESSAGE frame, got RECEIPT");
}

#[wasm_bindgen_test]
fn bodies_that_are_not_task_updates_are_named_not_guessed() {
    let cases: [(&str, &str); 7] = [
        ("not json", "the body is not JSON"),
        ("[1]", "the body is not a JSON object"),
        (r#"{"status":"queued","progress":0}"#, "taskNo is missing"),
        (r#"{"taskNo":"T","status":"done","progress":0}"#, "status is not one of"),
        (r#"{"taskNo":"T","status":"queued","progress":101}"#, "progress is not an integer"),
        (r#"{"taskNo":"T","status":"queued","progress":1.5}"#, "progress is not an integer"),
        (r#"{"taskNo":7,"status":"queued","progress":0}"#, "taskNo is not a string"),
    ];
    for (body, expected) in cases {
        let frame = Frame::new(Command::Message).with_body(body.as_bytes().to_vec());
        let err = task_update(&frame).expect_err(body).to_string();
        assert!(err.contains(expected), "{body}: {err}");
    }
    // The optional fields, present and absent, as the shared DTO defines them.
    let full =
        r#"{"taskNo":"T","status":"queued","progress":0,"message":"waiting","queuePosition":3}"#;
    let frame = Frame::new(Command::Message).with_body(full.as_bytes().to_vec());
    let update = task_update(&frame).unwrap();
    assert_eq!((update.queue_position, update.message.as_str()), (Some(3), "waiting"));
    assert_eq!((update.result_url, update.error_message), (None, None));
}

#[wasm_bindgen_test]
fn encodes_the_same_bytes_as_natively() {
    let frame = Frame::new(Command::Send)
        .with_header("destination", "/app/tasks")
        .with_header("note", "a:b\nc")
        .with_body(&b"{}"[..]);
    let bytes = frame.to_bytes(Version::V1_2).expect("encodable");
    assert_eq!(&bytes[..], b"SEND\ndestination:/app/tasks\nnote:a\\cb\\nc\n\n{}\0");
}
