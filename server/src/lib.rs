//! The TaskPulse server as a library: [`AppState::new`] opens storage and starts the broker
//! and task service, [`app`] builds the HTTP router, [`run`] serves it.
//!
//! `main.rs` only loads the [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`
//! (registering handlers on the [`broker::Broker`] first if they need to) or send requests
//! straight to [`app`].

pub mod accounts;
mod api;
pub mod broker;
mod config;
mod error;
pub mod replay;
mod secret;
pub mod storage;
pub mod tasks;
mod throttle;
mod web;
mod ws;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::serve::ListenerExt;
pub use config::{
    AccountSettings, ApiSettings, AuthSettings, AuthorizationSettings, Cli, ComfyUiSettings,
    Config, ConfigError, ConfigUser, CreditSettings, DemoSettings, JwtSettings, LimitSettings,
    ReplaySettings, SETTINGS_HELP, Settings, StompSettings, TaskSettings,
};
pub use error::AppError;
use tokio::net::TcpListener;
pub use web::app;

use crate::{
    accounts::Accounts,
    broker::{Authenticator, Broker, KeyError},
    replay::UserLog,
    storage::{SqliteStorage, Storage, StorageError},
    tasks::{ResultStore, ServiceError, TaskService},
};

/// Shared state handed to every request handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The settings the server started with.
    pub config: Arc<Config>,
    /// The STOMP broker.
    pub broker: Broker,
    /// Tasks: submission, lifecycle, executors.
    pub tasks: TaskService,
    /// Registration, login, logout.
    pub accounts: Accounts,
    /// The per-user log: seq/epoch, replay, snapshots.
    pub log: UserLog,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The JWT settings are unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The database cannot be opened or migrated.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The task service cannot start.
    #[error(transparent)]
    Tasks(#[from] ServiceError),
}

impl AppState {
    /// Creates the data directory, opens `<data-dir>/taskpulse.db` (migrating it), and
    /// starts the broker and the task service, which resumes unfinished tasks.
    ///
    /// # Errors
    /// A [`StartError`] naming what is missing or invalid.
    pub async fn new(config: Config) -> Result<AppState, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
        let storage: Arc<dyn Storage> =
            Arc::new(SqliteStorage::open(&config.data_dir.join("taskpulse.db")).await?);
        let settings = &config.settings;
        let auth = Authenticator::new(&settings.jwt, &settings.auth, &config.data_dir)?;
        let broker = Broker::new(settings.clone(), auth);
        let accounts = Accounts::start(storage.clone(), broker.clone(), settings.clone()).await?;
        let results = ResultStore::new(&config.data_dir, settings.tasks.result_url_ttl_s)?;
        let log = UserLog::start(
            storage.clone(),
            broker.clone(),
            results.clone(),
            settings.replay.clone(),
        )
        .await?;
        let tasks =
            TaskService::start(storage, log.clone(), settings.clone(), results, &config.data_dir)
                .await?;
        Ok(AppState { config: Arc::new(config), broker, tasks, accounts, log })
    }
}

/// How long STOMP sessions get to receive their shutdown ERROR.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves [`app`] on `listener` until `shutdown` completes; then tells every STOMP session
/// that the server is shutting down and drains open requests.
///
/// # Errors
/// Accepting connections failed.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let broker = state.broker.clone();
    let shutdown = async move {
        shutdown.await;
        broker.shutdown("server is shutting down", SHUTDOWN_GRACE).await;
    };
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    // Without TCP_NODELAY, a push written right after another waits for the client's
    // delayed ACK (40 ms on Linux): Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}
