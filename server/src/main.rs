//! `taskpulse-server`: parses the configuration, binds, logs the address, serves until
//! SIGTERM or ctrl-c.

use clap::Parser;
use taskpulse_server::{AppState, Cli, Config, LogFormat};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Span fields (the request id) on every line, flattened beside the event's own.
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("taskpulse-server: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("cannot listen on {}: {err}", config.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let state = match AppState::new(config).await {
        Ok(state) => state,
        Err(err) => {
            tracing::error!("cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!("TaskPulse listening on http://{addr}");
    match taskpulse_server::run(listener, state, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("TaskPulse stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("server failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
