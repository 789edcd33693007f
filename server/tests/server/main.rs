//! Integration tests of the real server on an ephemeral port (one test binary).

mod chaos;
mod cluster;
mod comfyui;
mod comfyui_real;
mod comfyui_sim;
mod fixture;
mod hardening;
mod http;
mod json;
mod metrics;
mod openapi;
mod replay;
mod restart;
mod share;
mod sockjs;
mod sse;
mod stomp;
mod storage;
mod tasks;
