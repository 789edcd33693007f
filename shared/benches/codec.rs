//! Decode and encode throughput for a typical ~300-byte task-progress MESSAGE and a 64 KiB
//! one. Decoding includes copying the input into the decoder, as a socket read would.
//! Run with `cargo xtask bench`; figures go to docs/BENCHMARKS.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use taskpulse_shared::stomp::{Command, Decoder, Frame, Limits, ServerCommand, Version, encode};

fn message(body: Bytes) -> taskpulse_shared::stomp::Frame {
    ServerCommand::Message {
        destination: "/user/queue/tasks-progress".into(),
        message_id: "b9f3c2d4-17".into(),
        subscription: "sub-0".into(),
        ack: None,
        headers: [("content-type", "application/json"), ("seq", "18342"), ("epoch", "5f1c0d2a")]
            .into_iter()
            .collect(),
        body,
    }
    .into_frame()
}

fn small_frame() -> taskpulse_shared::stomp::Frame {
    let body = br#"{"taskNo":"T20261122-8f3a1c9e","status":"processing","progress":42,"message":"sampling step 21 of 50","resultUrl":null}"#;
    message(Bytes::from_static(body))
}

fn large_frame() -> taskpulse_shared::stomp::Frame {
    message(Bytes::from(vec![b'x'; 64 * 1024]))
}

/// A client SEND without content-length: the decoder must scan the body for its NUL.
fn large_send_without_length() -> taskpulse_shared::stomp::Frame {
    Frame::new(Command::Send)
        .with_header("destination", "/app/tasks")
        .with_body(Bytes::from(vec![b'x'; 64 * 1024]))
}

fn bench_codec(c: &mut Criterion) {
    let limits = Limits { max_frame_bytes: 1 << 20, ..Limits::default() };
    let cases = [
        ("300B", small_frame()),
        ("64KiB", large_frame()),
        ("64KiB-no-content-length", large_send_without_length()),
    ];
    for (name, frame) in cases {
        let wire = frame.to_bytes(Version::V1_2).expect("encodable");
        let mut group = c.benchmark_group(format!("frame-{name}"));
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function("decode", |b| {
            let mut decoder = Decoder::new(Version::V1_2, limits);
            b.iter(|| {
                decoder.feed(black_box(&wire));
                black_box(decoder.decode().expect("valid").expect("complete"))
            });
        });
        group.bench_function("encode", |b| {
            let mut out = Vec::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                encode(black_box(&frame), Version::V1_2, &mut out).expect("encodable");
                black_box(out.len())
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
