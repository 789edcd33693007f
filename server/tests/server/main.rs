//! Integration tests of the real server on an ephemeral port (one test binary).

mod fixture;
mod http;
mod stomp;
mod tasks;
