//! Fuzzes whole STOMP sessions: several connections of one broker driven by a script of
//! arbitrary bytes (CONNECTs in every version, raw frame bytes, writer drains, abrupt ends,
//! heart-beat/CONNECT/token clocks, server publications, operator kicks). Nothing may
//! panic, the broker must never count a session that is gone, and every outbox stays under
//! its ceiling (see `taskpulse_server::broker::exercise`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: &[u8]| {
    taskpulse_server::broker::exercise::run(script);
});
