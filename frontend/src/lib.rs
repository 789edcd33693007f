//! The TaskPulse task monitor, a Yew single-page app: sign in, submit tasks, watch them live.
//!
//! `state` is the board (a reducer), `components/` render it, `services/` are the only code
//! that talks HTTP or WebSocket (the latter through `client-wasm`'s Rust client).

pub mod app;
pub mod components;
pub mod services;
pub mod state;

/// Mounts the app on `<body>`.
pub fn run() {
    yew::Renderer::<app::App>::new().render();
}
