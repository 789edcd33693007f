//! The TaskPulse server as a library: [`AppState::new`] opens storage and starts the broker
//! and task service, [`app`] builds the HTTP router, [`run`] serves it.
//!
//! `main.rs` only loads the [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`
//! (registering handlers on the [`broker::Broker`] first if they need to) or send requests
//! straight to [`app`].

pub mod accounts;
mod api;
pub mod broker;
pub mod cluster;
mod config;
mod error;
pub mod metrics;
pub mod replay;
mod secret;
mod serve;
pub mod storage;
pub mod tasks;
mod throttle;
mod transport;
mod web;

use std::{future::Future, io, sync::Arc, time::Duration};

pub use config::{
    AccountSettings, ApiSettings, AuthSettings, AuthorizationSettings, Cli, ClusterSettings,
    ComfyUiSettings, Config, ConfigError, ConfigUser, CreditSettings, DemoSettings, JwtAlgorithm,
    JwtSettings, LimitSettings, LogFormat, MetricsSettings, ReplaySettings, SETTINGS_HELP,
    ServerSettings, Settings, SockJsSettings, StompSettings, StorageSettings, TaskSettings,
};
pub use error::AppError;
use tokio::net::TcpListener;
pub use web::{app, openapi};

use crate::{
    accounts::Accounts,
    broker::{Authenticator, Broker, Fanout, KeyError},
    metrics::Metrics,
    replay::UserLog,
    secret::random_hex,
    storage::{Metered, SqlStorage, Storage, StorageError},
    tasks::{ResultStore, ServiceError, TaskService, TaskShares, TaskSnapshots},
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
    /// Tasks' share links.
    pub shares: TaskShares,
    /// The bus, when this is one node of several.
    pub bus: Option<cluster::Bus>,
    /// The per-user log: seq/epoch, replay, snapshots.
    pub log: UserLog,
    /// Where pushes go: to the sessions of this process (and, clustered, of the others).
    pub fanout: Arc<dyn Fanout>,
    /// The database (for `/readyz`; everything else reaches it through its service).
    storage: Arc<dyn Storage>,
    /// Open TCP connections (see `limits.max_connections`).
    connections: Arc<serve::Connections>,
    /// Tickets and stream passes of `/sse/tasks`.
    passes: Arc<transport::sse::Passes>,
    /// Sessions of SockJS's HTTP transports.
    sockjs: Arc<transport::sockjs::http::SockJsSessions>,
    /// The figures of `/metrics` and `/api/admin/stats`.
    pub metrics: Arc<Metrics>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl AppState {
    /// TCP connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.connections.open()
    }
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
    /// The bus of several nodes cannot be reached.
    #[error(transparent)]
    Cluster(#[from] cluster::BusError),
    /// The task service cannot start.
    #[error(transparent)]
    Tasks(#[from] ServiceError),
    /// The system has no randomness for a generated secret.
    #[error("no randomness for a generated secret: {0}")]
    Randomness(String),
}

impl AppState {
    /// Creates the data directory, opens the database of `[storage] url` (by default
    /// `<data-dir>/taskpulse.db`, migrating it), and
    /// starts the broker and the task service, which resumes unfinished tasks.
    ///
    /// # Errors
    /// A [`StartError`] naming what is missing or invalid.
    pub async fn new(config: Config) -> Result<AppState, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
        let metrics = Arc::new(Metrics::default());
        let storage: Arc<dyn Storage> = Arc::new(Metered::new(
            Arc::new(SqlStorage::open(&config.storage_url()).await?),
            metrics.clone(),
        ));
        let mut config = config;
        let jwt = &mut config.settings.jwt;
        if jwt.algorithm == JwtAlgorithm::HS256 && jwt.secret.is_empty() {
            jwt.secret = shared_secret(&*storage, &config.data_dir, "jwt-secret").await?;
        }
        let result_key = shared_secret(&*storage, &config.data_dir, "result-key").await?;
        let settings = &config.settings;
        let auth = Authenticator::new(&settings.jwt, &settings.auth)?;
        let broker = Broker::new(settings.clone(), auth, metrics.clone());
        let bus = match settings.cluster.enabled() {
            true => {
                Some(cluster::Bus::start(&settings.cluster, broker.clone(), storage.clone()).await?)
            }
            false => None,
        };
        let fanout: Arc<dyn Fanout> = Arc::new(broker.clone());
        let accounts =
            Accounts::start(storage.clone(), broker.clone(), fanout.clone(), settings.clone())
                .await?;
        let results = ResultStore::new(
            storage.clone(),
            result_key.into_bytes(),
            settings.tasks.result_url_ttl_s,
            &config.data_dir,
        )
        .await?;
        let snapshots = Arc::new(TaskSnapshots::new(storage.clone(), results.clone()));
        let log = UserLog::start(
            storage.clone(),
            &broker,
            fanout.clone(),
            snapshots,
            settings.replay.clone(),
        )
        .await?;
        let tasks = TaskService::start(
            storage.clone(),
            log.clone(),
            settings.clone(),
            results,
            metrics.clone(),
            bus.as_ref().map(|bus| bus.node().to_owned()),
        )
        .await?;
        if let Some(bus) = &bus {
            bus.serve(&tasks);
        }
        let shares =
            TaskShares::start(storage.clone(), broker.clone(), fanout.clone(), tasks.clone())
                .await?;
        let sockjs = transport::sockjs::http::SockJsSessions::start(
            settings.sockjs.clone(),
            settings.limits.max_connections,
        );
        let passes = Arc::new(transport::sse::Passes::new(
            settings.limits.max_connections.saturating_mul(2),
        ));
        Ok(AppState {
            config: Arc::new(config),
            broker,
            tasks,
            accounts,
            shares,
            bus,
            log,
            fanout,
            connections: Arc::default(),
            passes,
            sockjs,
            storage,
            metrics,
        })
    }
}

/// The secret `name` every server sharing `storage` uses: the stored one, or else the one an
/// older version kept in `<data-dir>/<name>`, or else a new random one.
async fn shared_secret(
    storage: &dyn Storage,
    data_dir: &std::path::Path,
    name: &str,
) -> Result<String, StartError> {
    let legacy = std::fs::read_to_string(data_dir.join(name)).unwrap_or_default();
    let candidate = match legacy.trim() {
        "" => random_hex(32).map_err(|e| StartError::Randomness(e.to_string()))?,
        kept => kept.to_owned(),
    };
    Ok(storage.shared_secret(name, &candidate).await?)
}

/// How long STOMP sessions get to receive their shutdown ERROR.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long open HTTP requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves [`app`] on `listener` until `shutdown` completes; then accepts no connection, lets
/// running tasks finish (`server.drain_timeout_s`), tells every session that the server is
/// shutting down and drains open requests.
///
/// # Errors
/// Accepting connections failed.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let broker = state.broker.clone();
    let tasks = state.tasks.clone();
    let drain_tasks = Duration::from_secs(state.config.settings.server.drain_timeout_s);
    // Once the listener is closed: running tasks finish while their clients still watch,
    // then the sessions hear why they close.
    let closing = async move {
        tasks.drain(drain_tasks).await;
        broker.shutdown("server is shutting down", SHUTDOWN_GRACE).await;
    };
    let limits = &state.config.settings.limits;
    let door = serve::DoorLimits {
        max_connections: limits.max_connections,
        header_timeout: Duration::from_millis(limits.header_timeout_ms),
    };
    let connections = state.connections.clone();
    serve::serve(listener, app(state), connections, door, shutdown, closing, DRAIN).await
}
