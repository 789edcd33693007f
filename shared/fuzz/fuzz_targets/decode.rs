//! Fuzzes the STOMP decoder: arbitrary bytes, split at an arbitrary point, under every
//! version and small limits. It must never panic, never return a frame over the limits,
//! and every frame it returns must survive encode -> decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpulse_shared::stomp::{Decoder, Limits, Version, encode};

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else { return };
    let version = Version::ALL[usize::from(control % 3)];
    let split = usize::from(control / 3) % (data.len() + 1);
    let limits = Limits { max_frame_bytes: 2048, max_headers: 16, max_header_line_bytes: 512 };
    let mut decoder = Decoder::new(version, limits);
    for piece in [&data[..split], &data[split..]] {
        decoder.feed(piece);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(frame.headers.len() <= limits.max_headers);
                    assert!(frame.body.len() < limits.max_frame_bytes);
                    let mut wire = Vec::new();
                    if encode(&frame, version, &mut wire).is_ok() {
                        let mut again = Decoder::new(version, Limits::unbounded());
                        again.feed(&wire);
                        let back = again.decode().expect("re-encoded frame decodes");
                        assert_eq!(back.as_ref(), Some(&frame));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
});
