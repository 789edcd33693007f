//! The TaskPulse server as a library: [`app`] builds the HTTP router, [`run`] serves it.
//!
//! `main.rs` only parses [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`
//! or send requests straight to [`app`].

mod config;
mod error;
mod web;

use std::{future::Future, io, sync::Arc};

pub use config::Config;
pub use error::AppError;
use tokio::net::TcpListener;
pub use web::app;

/// Shared, read-mostly state handed to every request handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The settings the server started with.
    pub config: Arc<Config>,
}

/// Serves [`app`] on `listener` until `shutdown` completes, then drains open requests.
///
/// # Errors
/// Creating the data directory or accepting connections failed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let state = AppState { config: Arc::new(config) };
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
