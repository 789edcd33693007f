//! The server's settings: one typed [`Config`], from flags, then [`Settings`] layered by
//! figment: the defaults (each written once, in its `Default`), an optional TOML file, and
//! `TASKPULSE_<SECTION>_<KEY>` variables, in rising precedence, validated at start-up.
//!
//! Unknown keys and invalid values stop start-up with a message that names the key and the
//! file or variable it came from.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize};

/// Every setting, as `--help` shows it. Kept beside the structs; a test checks that each key
/// of [`Settings`] is listed here with its default as `Settings::default()` has it.
pub const SETTINGS_HELP: &str = "\
Settings (TOML file given by --config, each also an environment variable
TASKPULSE_<SECTION>_<KEY>, e.g. TASKPULSE_JWT_SECRET; variables win over the file):

[storage]
  url = \"\"                 the database: sqlite://<path>, or postgres://user:pass@host/db
                           (postgresql:// too); empty: sqlite://<data-dir>/taskpulse.db

[jwt]
  secret = \"\"              HS256 signing secret (TASKPULSE_JWT_SECRET), at least 32 bytes.
                           Empty: one is generated once and kept in the database, so every
                           server sharing it accepts the tokens any of them issued
  algorithm = \"HS256\"      HS256, RS256 or ES256; tokens with any other alg are refused
  public_key_file = \"\"     PEM public key for RS256/ES256
  issuer = \"\"              required `iss` claim, if set
  audience = \"\"            required `aud` claim, if set
  leeway_s = 5             clock skew allowed on exp/nbf, seconds

[auth]
  users = []               login/passcode users, e.g. [{ login = \"guest\", passcode = \"guest\" }]
                           (off by default); they may also sign in to the web UI and the API
                           (POST /api/auth/login with their passcode as the password)
  operators = []           principals with the operator role: GET /api/admin/stats and
                           POST /api/admin/disconnect with their token, and the operator
                           page; [auth] users logins (or, with RS256/ES256, the external
                           issuer's subjects), never a registered account, and these names
                           cannot be registered

[authorization]
  send = [\"/queue/**\", \"/topic/chat.**\"]
                           destinations every user may SEND to (`*` one segment, `**` any rest;
                           /app/** is always allowed, it is routed to the server's handlers)
  send_by_user = {}        extra patterns per configured principal, e.g.
                           { backend = [\"/topic/**\"] }; they apply to [auth] users logins
                           (and to tokens of an external RS256/ES256 issuer), never to a
                           registered account, and these names cannot be registered

[stomp]
  connect_timeout_ms = 10000   close connections that have not sent CONNECT by then
  heartbeat_min_ms = 1000      heart-beat intervals a client proposes are clamped to
  heartbeat_max_ms = 60000     [min, max]; a client offering 0 gets none
  heartbeat_tolerance = 2.0    silence allowed = negotiated interval x tolerance
  always_binary = false        send every frame as a binary WebSocket message
  queue_pending = 10000        messages one /queue/** destination keeps while nobody consumes

[limits]
  frame_size = 65536               largest inbound frame, bytes
  headers = 64                     headers per inbound frame
  header_line = 8192               longest header line, bytes
  subscriptions_per_connection = 256
  connections_per_user = 32
  unacked_per_subscription = 1024  client/client-individual deliveries awaiting ACK
  outbound_buffer = 1048576        bytes waiting to be written to one connection, counting
                                   every frame (headers, receipts, replays, snapshots); beyond
                                   it task progress is coalesced, anything else disconnects
                                   (ERROR slow consumer). Deliveries awaiting ACK may hold as
                                   much again
  transactions_per_connection = 16  open STOMP transactions (BEGIN without COMMIT/ABORT)
  transaction_bytes = 1048576      bytes the frames of a connection's open transactions hold
  queues = 10000                   /queue/** destinations that exist at once (an empty one
                                   without consumers is dropped)
  queue_bytes = 16777216           bytes the messages waiting in all queues hold together
  max_connections = 15000          TCP connections open at once (under the process's file
                                   descriptor limit); past it new ones are closed at once
  http_reserve = 256               of those, kept for plain HTTP: a WebSocket upgrade that
                                   would take one gets 503, so /healthz and the API answer
  header_timeout_ms = 10000        time a client has to send a request's headers
  ws_read_buffer = 4096            WebSocket read buffer per connection, bytes
  ws_write_buffer = 4096           WebSocket write buffer per connection, bytes

[accounts]
  registration = true      POST /api/auth/register is open; false refuses it (403)
  token_ttl_s = 86400      lifetime of the tokens this server issues, seconds
  attempts_per_minute = 10  login/register attempts per client address and per user name
                            per minute; more get 429 with Retry-After

[tasks]
  progress_interval_ms = 100   at most one progress push per task per interval (the latest
                               value wins; status changes are never held back)
  page_size = 20               default page of GET /api/tasks (at most 100)
  max_prompt_chars = 2000      longest prompt accepted
  result_url_ttl_s = 86400     lifetime of the signed resultUrl that <img src> can load
  image_fetch_bytes = 10485760  largest input image fetched for image-to-image
  image_fetch_timeout_ms = 10000
  image_max_pixels = 16000000  largest input image decoded (width x height), checked before
                               any pixel buffer is allocated
  image_fetch_allow = []       hosts or CIDR ranges imageUrl may reach although they are not
                               public, e.g. [\"127.0.0.1/32\", \"images.internal\"]; by default
                               loopback, private, link-local and other non-public addresses
                               are refused (every resolved address and redirect hop)
  max_active_per_user = 100    unfinished tasks one user may have; more get 429
  submissions_per_minute = 120  tasks one user may submit per minute; more get 429
  events_retention_s = 604800  GET /api/tasks/{taskNo}/events keeps a task's updates this
                               long (then says \"pruned\": true); 0: forever
  stall_timeout_s = 300        a running task (or an external one, in any unfinished status)
                               that reports no progress for this long fails as stalled: its
                               executor's work is stopped and its credits refunded (0: never)

[demo]
  concurrency = 2          demo tasks running at once; the rest wait in a queue
  duration_ms = 3000       how long one demo task takes (0: as fast as possible)
  steps = 10               progress steps per demo task
  size = 512               long edge of the rendered PNG, pixels
  stall_timeout_s = 0      tasks.stall_timeout_s for demo tasks (0: that one)

[comfyui]
  url = \"\"                 base URL of a ComfyUI server, e.g. \"http://127.0.0.1:8188\";
                           when set, image tasks run there instead of on the demo executor
  workflow_file = \"\"       text-to-image workflow (API format JSON) with {{prompt}},
                           {{width}}, {{height}}, {{seed}} and {{checkpoint}} placeholders;
                           empty: the built-in Stable Diffusion 1.5 workflow
  img2img_workflow_file = \"\"  the same for image-to-image, with {{image}} (the uploaded
                           input); empty: the built-in one
  checkpoint = \"v1-5-pruned-emaonly.safetensors\"
  concurrency = 1          prompts queued at ComfyUI at once (the GPU's semaphore)
  timeout_s = 600          a prompt taking longer fails
  reconnect_max_ms = 30000  longest wait between reconnects to ComfyUI's WebSocket
  liveness_ms = 15000      ping ComfyUI's WebSocket after this much silence; one that stays
                           silent as long again is taken for dead and replaced
  stall_timeout_s = 0      tasks.stall_timeout_s for ComfyUI tasks (0: that one)

[credits]
  enabled = false          charge credits per task (reserved on submit, refunded on failure)
  initial = 100            balance of a new account
  text_to_image = 1        cost of one task of each kind
  image_to_image = 2
  external = 0

[replay]
  max_entries = 10000      messages kept per user in the log (the newest always stays)
  max_age_s = 86400        messages older than this are forgotten
  max_replay = 1000        a resume missing more than this gets a snapshot instead
  snapshot_finished_s = 3600   a snapshot holds unfinished tasks and those finished this
                               recently
  snapshot_limit = 200     most tasks in one snapshot (the newest)

[api]
  keys = []                keys accepted in X-API-Key by POST /api/publish and
                           POST /api/tasks/{taskNo}/progress (empty: both refuse)
  cors_origins = []        other origins whose pages may call the HTTP API, e.g.
                           [\"http://localhost:5173\"]; [\"*\"] allows any (no cookies are
                           used: the API takes Bearer tokens)
  body_limit = 1048576     largest HTTP request body, bytes; larger ones get 413

[sockjs]
  heartbeat_s = 25         an `h` frame on a SockJS HTTP stream or poll after this much
                           silence, so that proxies keep it open
  disconnect_delay_s = 5   a SockJS HTTP session whose client stopped receiving (no poll or
                           stream open) ends after this long
  stream_bytes = 131072    a streaming response (xhr_streaming, eventsource, htmlfile) ends
                           after this many bytes and the client opens the next, so that no
                           proxy buffers it forever
  client_url = \"https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js\"
                           the sockjs-client script /ws/iframe.html loads (the iframe-based
                           transports of old browsers); point it at a local copy offline

[server]
  drain_timeout_s = 30     on SIGTERM or ctrl-c: new connections and tasks are refused at
                           once, running tasks get this long to finish (their clients see
                           them end), then sessions are closed; what is left starts again on
                           the next start

[metrics]
  enabled = true           GET /metrics answers in the Prometheus text format (false: 404)
  token = \"\"               when set, GET /metrics requires Authorization: Bearer <token>

[cluster]
  redis_url = \"\"           redis://host:port: this server is one node of several sharing Redis
                           (the bus) and [storage] url's PostgreSQL; empty: a single node
  gap_wait_ms = 50         how long a node holds a user's message whose predecessor has not
                           arrived before it reads the missing ones from storage
  lease_s = 30             a node holds a lease on each task it runs, renewed every third of
                           this; a task whose lease ran out (its node died) is taken over by
                           another node and restarted or followed again
  sharded = false          redis_url is one node of a Redis Cluster: the bus uses sharded
                           pub/sub (SPUBLISH/SSUBSCRIBE), each channel on its slot's shard
";

/// The command line. Everything else comes from [`Settings`].
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "taskpulse-server",
    version,
    about = "TaskPulse: real-time task progress over STOMP",
    after_help = SETTINGS_HELP
)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "TASKPULSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for durable state; created if missing.
    #[arg(long, env = "TASKPULSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory holding the built web UI (trunk's dist); served at `/`.
    #[arg(long, env = "TASKPULSE_UI_DIR", default_value = "./frontend/dist")]
    pub ui_dir: PathBuf,

    /// TOML file with the settings listed below.
    #[arg(long, env = "TASKPULSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines for people (text) or for machines (json: one object per line).
    #[arg(long, env = "TASKPULSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, with its span fields (request id, session).
    Json,
}

/// Variables that are flags (read by clap), not `<SECTION>_<KEY>` settings; lower case, as
/// figment compares them.
const FLAG_VARIABLES: [&str; 5] = ["listen", "data_dir", "ui_dir", "config", "log_format"];

/// The prefix of every variable.
const ENV_PREFIX: &str = "TASKPULSE_";

/// Everything the server reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for durable state.
    pub data_dir: PathBuf,
    /// Directory holding the built web UI.
    pub ui_dir: PathBuf,
    /// The sectioned settings.
    pub settings: Settings,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file does not exist.
    #[error("cannot read config file {path}: no such file")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file or a variable has an unknown key or a bad value.
    #[error("invalid setting in {origin}: {message}")]
    Invalid {
        /// Which file or variables.
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// A configuration with default settings.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            ui_dir: PathBuf::from("./frontend/dist"),
            settings: Settings::default(),
        }
    }

    /// The database to open: `[storage] url`, or the SQLite file in the data directory.
    pub fn storage_url(&self) -> String {
        if self.settings.storage.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("taskpulse.db").display())
        } else {
            self.settings.storage.url.clone()
        }
    }

    /// Layers the defaults, the `--config` file named by `cli` and the process's
    /// `TASKPULSE_*` variables.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or variable and the key.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &cli.config {
            // figment treats a missing file as empty; a named one must exist.
            if !path.is_file() {
                return Err(ConfigError::Missing { path: path.clone() });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // `TASKPULSE_LIMITS_FRAME_SIZE` is `limits.frame_size`: the section ends at the first
        // underscore, keys keep theirs.
        let env = Env::prefixed(ENV_PREFIX)
            .ignore(&FLAG_VARIABLES)
            .map(|key| key.as_str().to_ascii_lowercase().replacen('_', ".", 1).into());
        let settings: Settings = figment.merge(env).extract().map_err(|error| {
            let origin = match &error.metadata {
                Some(meta) => match &meta.source {
                    Some(source) => format!("{} {source}", meta.name),
                    None => meta.name.to_string(),
                },
                None => "settings".to_owned(),
            };
            let key = error.path.join(".");
            let message = if key.is_empty() {
                error.kind.to_string()
            } else {
                format!("{key}: {}", error.kind)
            };
            let unknown = matches!(error.kind, figment::error::Kind::UnknownField(..));
            let message = match &error.metadata {
                Some(meta) if meta.name.contains("environment") && !unknown => {
                    let variable = format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase());
                    format!("{message} (from {variable})")
                }
                _ => message,
            };
            ConfigError::Invalid { origin, message }
        })?;
        settings.validate()?;
        Ok(Config { listen: cli.listen, data_dir: cli.data_dir, ui_dir: cli.ui_dir, settings })
    }
}

/// Deserializes a text setting that a variable may have given as a number or a boolean
/// (`TASKPULSE_JWT_SECRET=12345...`): figment reads variables as typed values.
fn text<'de, D: Deserializer<'de>, T: From<String>>(deserializer: D) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(T::from(match Text::deserialize(deserializer)? {
        Text::String(s) => s,
        Text::Unsigned(n) => n.to_string(),
        Text::Signed(n) => n.to_string(),
        Text::Float(n) => n.to_string(),
        Text::Bool(b) => b.to_string(),
    }))
}

/// The sectioned settings of [`SETTINGS_HELP`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The database.
    pub storage: StorageSettings,
    /// Token validation.
    pub jwt: JwtSettings,
    /// Configured login/passcode users.
    pub auth: AuthSettings,
    /// Who may SEND where.
    pub authorization: AuthorizationSettings,
    /// Protocol timing and behaviour.
    pub stomp: StompSettings,
    /// Resource limits.
    pub limits: LimitSettings,
    /// Registration and issued tokens.
    pub accounts: AccountSettings,
    /// The task service.
    pub tasks: TaskSettings,
    /// The built-in demo executor.
    pub demo: DemoSettings,
    /// The ComfyUI executor.
    pub comfyui: ComfyUiSettings,
    /// Per-user credits.
    pub credits: CreditSettings,
    /// The per-user log, replay and snapshots.
    pub replay: ReplaySettings,
    /// Keys of backends that push progress or publish.
    pub api: ApiSettings,
    /// SockJS's HTTP transports.
    pub sockjs: SockJsSettings,
    /// `GET /metrics`.
    pub metrics: MetricsSettings,
    /// Stopping.
    pub server: ServerSettings,
    /// Several nodes sharing Redis and PostgreSQL.
    pub cluster: ClusterSettings,
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            origin: "settings".into(),
            message: format!("{key}: {message}"),
        };
        if self.jwt.algorithm != JwtAlgorithm::HS256
            && self.jwt.public_key_file.as_os_str().is_empty()
        {
            return Err(invalid("jwt.public_key_file", "required for RS256 and ES256"));
        }
        if self.cluster.enabled() {
            let url = &self.storage.url;
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "cluster.redis_url",
                    "several nodes need [storage] url = \"postgres://...\": they share one \
                     log, one task table and one set of secrets, and SQLite is a file on one \
                     machine",
                ));
            }
            if self.cluster.lease_s < 3 {
                return Err(invalid("cluster.lease_s", "must be at least 3 seconds"));
            }
            if !(self.cluster.redis_url.starts_with("redis://")
                || self.cluster.redis_url.starts_with("rediss://"))
            {
                return Err(invalid("cluster.redis_url", "must start with redis:// or rediss://"));
            }
        }
        if self.stomp.heartbeat_min_ms > self.stomp.heartbeat_max_ms {
            return Err(invalid("stomp.heartbeat_min_ms", "must not exceed heartbeat_max_ms"));
        }
        if self.stomp.heartbeat_tolerance.is_nan() || self.stomp.heartbeat_tolerance < 1.0 {
            return Err(invalid("stomp.heartbeat_tolerance", "must be at least 1.0"));
        }
        if self.limits.http_reserve >= self.limits.max_connections {
            return Err(invalid("limits.http_reserve", "must be below limits.max_connections"));
        }
        if self.limits.header_timeout_ms == 0 {
            return Err(invalid("limits.header_timeout_ms", "must be at least 1"));
        }
        if self.sockjs.heartbeat_s == 0 || self.sockjs.disconnect_delay_s == 0 {
            return Err(invalid(
                "sockjs.heartbeat_s/sockjs.disconnect_delay_s",
                "must be at least 1 second",
            ));
        }
        if self.sockjs.stream_bytes < 4096 {
            return Err(invalid("sockjs.stream_bytes", "must be at least 4096 bytes"));
        }
        if self.jwt.algorithm == JwtAlgorithm::HS256
            && let Some(name) = self
                .auth
                .operators
                .iter()
                .find(|op| !self.auth.users.iter().any(|u| u.login == **op))
        {
            return Err(invalid(
                "auth.operators",
                &format!(
                    "{name:?} is not an [auth] users login; operators are configured \
                     identities and sign in with their passcode"
                ),
            ));
        }
        let demo_stall = match self.demo.stall_timeout_s {
            0 => self.tasks.stall_timeout_s,
            own => own,
        };
        let demo_gap = self.demo.duration_ms / u64::from(self.demo.steps.max(1));
        if demo_stall > 0 && demo_gap >= demo_stall.saturating_mul(1000) {
            return Err(invalid(
                "demo.stall_timeout_s/tasks.stall_timeout_s",
                &format!(
                    "demo tasks report progress every {demo_gap} ms (demo.duration_ms / \
                     demo.steps), so a stall timeout of {demo_stall} s would fail every one; \
                     raise it, set it to 0, or add steps"
                ),
            ));
        }
        if self.limits.frame_size < 1024 {
            return Err(invalid("limits.frame_size", "must be at least 1024 bytes"));
        }
        if self.tasks.page_size == 0 || self.tasks.page_size > 100 {
            return Err(invalid("tasks.page_size", "must be between 1 and 100"));
        }
        let url = &self.storage.url;
        let schemes = ["sqlite://", "postgres://", "postgresql://"];
        if !url.is_empty() && !schemes.iter().any(|s| url.starts_with(s)) {
            return Err(invalid(
                "storage.url",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        }
        for entry in &self.tasks.image_fetch_allow {
            if crate::tasks::HostRule::parse(entry).is_none() {
                return Err(invalid(
                    "tasks.image_fetch_allow",
                    &format!("{entry:?} is neither a host name nor an address or CIDR range"),
                ));
            }
        }
        if self.accounts.attempts_per_minute == 0 || self.tasks.submissions_per_minute == 0 {
            return Err(invalid(
                "accounts.attempts_per_minute/tasks.submissions_per_minute",
                "must be at least 1",
            ));
        }
        if self.demo.concurrency == 0 || self.comfyui.concurrency == 0 {
            return Err(invalid("demo.concurrency/comfyui.concurrency", "must be at least 1"));
        }
        if self.comfyui.liveness_ms < 100 {
            return Err(invalid("comfyui.liveness_ms", "must be at least 100"));
        }
        if self.demo.steps == 0 || self.demo.size < 16 || self.demo.size > 2048 {
            return Err(invalid("demo.steps/demo.size", "steps >= 1, size in 16..=2048"));
        }
        let url = &self.comfyui.url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(invalid("comfyui.url", "must start with http:// or https://"));
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            return Err(invalid("api.keys", "each key must have at least 16 characters"));
        }
        for origin in &self.api.cors_origins {
            let (scheme, host) = origin.split_once("://").unwrap_or(("", ""));
            let well_formed = matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.contains(['/', '?', '#']);
            if origin != "*" && !well_formed {
                return Err(invalid(
                    "api.cors_origins",
                    &format!("{origin:?} is not an origin like \"http://localhost:5173\" or \"*\""),
                ));
            }
        }
        for pattern in self.authorization.patterns() {
            if !pattern.starts_with('/') {
                return Err(invalid(
                    "authorization",
                    &format!("pattern {pattern:?} must start with /"),
                ));
            }
        }
        Ok(())
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `sqlite://<path>` or `postgres://...`; empty for the file in the data directory.
    #[serde(deserialize_with = "text")]
    pub url: String,
}

/// `[jwt]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// HS256 secret; empty means generated and kept in the data directory.
    #[serde(deserialize_with = "text")]
    pub secret: String,
    /// The one algorithm accepted.
    pub algorithm: JwtAlgorithm,
    /// PEM public key for RS256/ES256.
    #[serde(deserialize_with = "text")]
    pub public_key_file: PathBuf,
    /// Required issuer, if not empty.
    #[serde(deserialize_with = "text")]
    pub issuer: String,
    /// Required audience, if not empty.
    #[serde(deserialize_with = "text")]
    pub audience: String,
    /// Allowed clock skew, seconds.
    pub leeway_s: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            secret: String::new(),
            algorithm: JwtAlgorithm::HS256,
            public_key_file: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 5,
        }
    }
}

/// The one JWT algorithm accepted: `"HS256"` (the server issues tokens too), `"RS256"` or
/// `"ES256"` (tokens come from another system; only validated here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, with a public key.
    RS256,
    /// ECDSA P-256 with SHA-256, with a public key.
    ES256,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// RabbitMQ-style users.
    pub users: Vec<ConfigUser>,
    /// Principals with the operator role.
    pub operators: Vec<String>,
}

/// A login/passcode user from the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUser {
    /// The `login` header and the principal.
    pub login: String,
    /// The `passcode` header.
    pub passcode: String,
}

/// `[authorization]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationSettings {
    /// Patterns everyone may SEND to.
    pub send: Vec<String>,
    /// Further patterns per principal.
    pub send_by_user: BTreeMap<String, Vec<String>>,
}

impl AuthorizationSettings {
    fn patterns(&self) -> impl Iterator<Item = &String> {
        self.send.iter().chain(self.send_by_user.values().flatten())
    }
}

impl Default for AuthorizationSettings {
    fn default() -> Self {
        AuthorizationSettings {
            send: vec!["/queue/**".into(), "/topic/chat.**".into()],
            send_by_user: BTreeMap::new(),
        }
    }
}

/// `[stomp]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompSettings {
    /// Deadline for CONNECT after the WebSocket opens.
    pub connect_timeout_ms: u64,
    /// Lower bound on negotiated heart-beat intervals.
    pub heartbeat_min_ms: u32,
    /// Upper bound on negotiated heart-beat intervals.
    pub heartbeat_max_ms: u32,
    /// Silence allowed, as a multiple of the negotiated interval.
    pub heartbeat_tolerance: f64,
    /// Send every frame as a binary message.
    pub always_binary: bool,
    /// Messages a queue keeps while it has no consumer.
    pub queue_pending: usize,
}

impl Default for StompSettings {
    fn default() -> Self {
        StompSettings {
            connect_timeout_ms: 10_000,
            heartbeat_min_ms: 1_000,
            heartbeat_max_ms: 60_000,
            heartbeat_tolerance: 2.0,
            always_binary: false,
            queue_pending: 10_000,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest inbound frame.
    pub frame_size: usize,
    /// Headers per inbound frame.
    pub headers: usize,
    /// Longest header line.
    pub header_line: usize,
    /// Subscriptions one connection may hold.
    pub subscriptions_per_connection: usize,
    /// Connections one principal may hold.
    pub connections_per_user: usize,
    /// Deliveries awaiting ACK per subscription.
    pub unacked_per_subscription: usize,
    /// Bytes waiting to be written to one connection.
    pub outbound_buffer: usize,
    /// WebSocket read buffer per connection.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection.
    pub ws_write_buffer: usize,
    /// Open transactions per connection.
    pub transactions_per_connection: usize,
    /// Bytes held by one connection's open transactions.
    pub transaction_bytes: usize,
    /// `/queue/**` destinations at once.
    pub queues: usize,
    /// Bytes of the messages waiting in all queues.
    pub queue_bytes: usize,
    /// TCP connections at once.
    pub max_connections: usize,
    /// Connections kept for plain HTTP.
    pub http_reserve: usize,
    /// Time allowed for a request's headers.
    pub header_timeout_ms: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            frame_size: 64 * 1024,
            headers: 64,
            header_line: 8 * 1024,
            subscriptions_per_connection: 256,
            connections_per_user: 32,
            unacked_per_subscription: 1024,
            outbound_buffer: 1024 * 1024,
            ws_read_buffer: 4096,
            ws_write_buffer: 4096,
            transactions_per_connection: 16,
            transaction_bytes: 1024 * 1024,
            queues: 10_000,
            queue_bytes: 16 * 1024 * 1024,
            max_connections: 15_000,
            http_reserve: 256,
            header_timeout_ms: 10_000,
        }
    }
}

/// `[accounts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountSettings {
    /// Whether anyone may register.
    pub registration: bool,
    /// Lifetime of issued tokens, seconds.
    pub token_ttl_s: u64,
    /// Login and registration attempts per client address and per user name per minute.
    pub attempts_per_minute: u32,
}

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings { registration: true, token_ttl_s: 86_400, attempts_per_minute: 10 }
    }
}

/// `[tasks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// Least time between two progress pushes of one task.
    pub progress_interval_ms: u64,
    /// Default page size of the task list.
    pub page_size: u32,
    /// Longest prompt.
    pub max_prompt_chars: usize,
    /// Lifetime of signed result URLs.
    pub result_url_ttl_s: u64,
    /// Largest input image.
    pub image_fetch_bytes: usize,
    /// Time allowed to fetch an input image.
    pub image_fetch_timeout_ms: u64,
    /// Largest input image decoded, in pixels.
    pub image_max_pixels: u64,
    /// Non-public hosts or ranges image URLs may reach.
    pub image_fetch_allow: Vec<String>,
    /// Unfinished tasks per user.
    pub max_active_per_user: u32,
    /// Submissions per user per minute.
    pub submissions_per_minute: u32,
    /// Silence after which a task fails as stalled; 0 for never.
    pub stall_timeout_s: u64,
    /// How long task events are kept; 0 for ever.
    pub events_retention_s: u64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            progress_interval_ms: 100,
            page_size: 20,
            max_prompt_chars: 2000,
            result_url_ttl_s: 86_400,
            image_fetch_bytes: 10 * 1024 * 1024,
            image_fetch_timeout_ms: 10_000,
            image_max_pixels: 16_000_000,
            image_fetch_allow: Vec::new(),
            max_active_per_user: 100,
            submissions_per_minute: 120,
            stall_timeout_s: 300,
            events_retention_s: 7 * 86_400,
        }
    }
}

/// `[demo]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Tasks running at once.
    pub concurrency: usize,
    /// Duration of one task.
    pub duration_ms: u64,
    /// Progress steps per task.
    pub steps: u32,
    /// Long edge of the image.
    pub size: u32,
    /// `tasks.stall_timeout_s` for demo tasks; 0 for that one.
    pub stall_timeout_s: u64,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings { concurrency: 2, duration_ms: 3000, steps: 10, size: 512, stall_timeout_s: 0 }
    }
}

/// `[comfyui]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComfyUiSettings {
    /// Base URL; empty disables the executor.
    #[serde(deserialize_with = "text")]
    pub url: String,
    /// Text-to-image workflow template.
    #[serde(deserialize_with = "text")]
    pub workflow_file: PathBuf,
    /// Image-to-image workflow template.
    #[serde(deserialize_with = "text")]
    pub img2img_workflow_file: PathBuf,
    /// Checkpoint substituted for `{{checkpoint}}`.
    #[serde(deserialize_with = "text")]
    pub checkpoint: String,
    /// Prompts queued at once.
    pub concurrency: usize,
    /// Longest a prompt may run.
    pub timeout_s: u64,
    /// Longest reconnect backoff.
    pub reconnect_max_ms: u64,
    /// Silence before a ping, and after it before the socket is replaced.
    pub liveness_ms: u64,
    /// `tasks.stall_timeout_s` for ComfyUI tasks; 0 for that one.
    pub stall_timeout_s: u64,
}

impl Default for ComfyUiSettings {
    fn default() -> Self {
        ComfyUiSettings {
            url: String::new(),
            workflow_file: PathBuf::new(),
            img2img_workflow_file: PathBuf::new(),
            checkpoint: "v1-5-pruned-emaonly.safetensors".into(),
            concurrency: 1,
            timeout_s: 600,
            reconnect_max_ms: 30_000,
            liveness_ms: 15_000,
            stall_timeout_s: 0,
        }
    }
}

/// `[credits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditSettings {
    /// Whether tasks cost credits.
    pub enabled: bool,
    /// Balance of a new account.
    pub initial: i64,
    /// Cost of a text-to-image task.
    pub text_to_image: i64,
    /// Cost of an image-to-image task.
    pub image_to_image: i64,
    /// Cost of an external task.
    pub external: i64,
}

impl Default for CreditSettings {
    fn default() -> Self {
        CreditSettings {
            enabled: false,
            initial: 100,
            text_to_image: 1,
            image_to_image: 2,
            external: 0,
        }
    }
}

/// `[replay]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySettings {
    /// Entries kept per user.
    pub max_entries: u32,
    /// Age limit of entries, seconds.
    pub max_age_s: u64,
    /// Longest replay; beyond it a snapshot is sent.
    pub max_replay: u32,
    /// How long finished tasks stay in snapshots, seconds.
    pub snapshot_finished_s: u64,
    /// Most tasks in a snapshot.
    pub snapshot_limit: u32,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            max_entries: 10_000,
            max_age_s: 86_400,
            max_replay: 1000,
            snapshot_finished_s: 3600,
            snapshot_limit: 200,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Accepted `X-API-Key` values.
    pub keys: Vec<String>,
    /// Origins allowed by CORS (`*`: any).
    pub cors_origins: Vec<String>,
    /// Largest HTTP request body.
    pub body_limit: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings { keys: Vec::new(), cors_origins: Vec::new(), body_limit: 1024 * 1024 }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// How long a SIGTERM waits for running tasks.
    pub drain_timeout_s: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings { drain_timeout_s: 30 }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The bus; empty for a single node.
    #[serde(deserialize_with = "text")]
    pub redis_url: String,
    /// How long a user's message waits for its predecessor before the gap is read from
    /// storage, milliseconds.
    pub gap_wait_ms: u64,
    /// How long a node's lease on a task lasts unless renewed, seconds.
    pub lease_s: u64,
    /// `redis_url` is one node of a Redis Cluster: sharded pub/sub, commands by slot.
    pub sharded: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings { redis_url: String::new(), gap_wait_ms: 50, lease_s: 30, sharded: false }
    }
}

impl ClusterSettings {
    /// Whether this server is one node of several.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Whether `GET /metrics` answers.
    pub enabled: bool,
    /// When set, `GET /metrics` requires `Authorization: Bearer <token>`.
    #[serde(deserialize_with = "text")]
    pub token: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { enabled: true, token: String::new() }
    }
}

/// `[sockjs]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SockJsSettings {
    /// Silence before an `h` frame, seconds.
    pub heartbeat_s: u64,
    /// How long a session without a receiving request lives, seconds.
    pub disconnect_delay_s: u64,
    /// Bytes after which a streaming response ends.
    pub stream_bytes: usize,
    /// The sockjs-client script of `/ws/iframe.html`.
    #[serde(deserialize_with = "text")]
    pub client_url: String,
}

impl Default for SockJsSettings {
    fn default() -> Self {
        SockJsSettings {
            heartbeat_s: 25,
            disconnect_delay_s: 5,
            stream_bytes: 128 * 1024,
            client_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1.6.1/dist/sockjs.min.js"
                .into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err, reason = "figment::Jail's closures return its error type")]
mod tests {
    use figment::{Jail, value::Value};

    use super::*;

    fn cli(config: Option<&str>) -> Cli {
        Cli {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: "data".into(),
            ui_dir: "ui".into(),
            config: config.map(PathBuf::from),
            log_format: LogFormat::Text,
        }
    }

    /// A default as `--help` writes it.
    fn shown(value: &Value) -> String {
        match value {
            Value::String(_, s) => format!("{s:?}"),
            Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
                (Some(u), _, _) => u.to_string(),
                (None, Some(i), _) => i.to_string(),
                (None, None, Some(f)) => format!("{f:?}"),
                _ => panic!("no help form for {n:?}"),
            },
            Value::Bool(_, b) => b.to_string(),
            Value::Array(_, items) => {
                format!("[{}]", items.iter().map(shown).collect::<Vec<_>>().join(", "))
            }
            Value::Dict(_, dict) if dict.is_empty() => "{}".into(),
            other => panic!("no help form for {other:?}"),
        }
    }

    #[test]
    fn every_setting_is_in_the_help_with_its_real_default() {
        let defaults = Value::serialize(Settings::default()).unwrap();
        let sections = defaults.as_dict().unwrap();
        let help = SETTINGS_HELP.replace("\\\"", "\"");
        let mut wrong = Vec::new();
        for (section, keys) in sections {
            let at =
                help.find(&format!("\n[{section}]\n")).unwrap_or_else(|| panic!("[{section}]"));
            let body = &help[at..];
            let body = &body[..body[1..].find("\n[").map_or(body.len(), |end| end + 1)];
            for (key, value) in keys.as_dict().unwrap() {
                let prefix = format!("\n  {key} = ");
                let line_at = body.find(&prefix).unwrap_or_else(|| panic!("{section}.{key}"));
                let rest = &body[line_at + prefix.len()..];
                let line = rest.lines().next().unwrap();
                // The default ends where two spaces start the description.
                let written = line.split("  ").next().unwrap().trim_end();
                if written != shown(value) {
                    wrong.push(format!("{section}.{key}: --help {written:?}, default {value:?}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn environment_overrides_file_and_is_typed() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "taskpulse.toml",
                "[stomp]\nheartbeat_max_ms = 30000\n[jwt]\nsecret = \"file\"\n",
            )?;
            jail.set_env("TASKPULSE_JWT_SECRET", "12345");
            jail.set_env("TASKPULSE_LIMITS_FRAME_SIZE", "2048");
            jail.set_env("TASKPULSE_AUTHORIZATION_SEND", "[\"/topic/**\"]");
            jail.set_env("TASKPULSE_LISTEN", "ignored-here");
            let config = Config::load(cli(Some("taskpulse.toml"))).unwrap();
            assert_eq!(config.settings.jwt.secret, "12345", "a number-looking text stays text");
            assert_eq!(config.settings.stomp.heartbeat_max_ms, 30_000);
            assert_eq!(config.settings.limits.frame_size, 2048);
            assert_eq!(config.settings.authorization.send, ["/topic/**"]);
            assert_eq!(config.settings.limits.headers, LimitSettings::default().headers);
            Ok(())
        });
    }

    #[test]
    fn unknown_or_invalid_settings_are_named_with_their_source() {
        let err = |pairs: &[(&str, &str)]| {
            let mut message = String::new();
            Jail::expect_with(|jail| {
                for (name, value) in pairs {
                    jail.set_env(name, value);
                }
                message = Config::load(cli(None)).unwrap_err().to_string();
                Ok(())
            });
            message
        };
        let unknown = err(&[("TASKPULSE_LIMITS_FRAMESIZE", "1")]);
        assert!(unknown.contains("framesize") && unknown.contains("TASKPULSE_"), "{unknown}");
        let section = err(&[("TASKPULSE_NOPE_X", "1")]);
        assert!(section.contains("unknown field: found `nope`"), "{section}");
        let bad = err(&[("TASKPULSE_LIMITS_FRAME_SIZE", "big")]);
        assert!(
            bad.contains("TASKPULSE_LIMITS_FRAME_SIZE") && bad.contains("limits.frame_size"),
            "{bad}"
        );
        assert!(err(&[("TASKPULSE_JWT_ALGORITHM", "none")]).contains("jwt.algorithm"));
        let operator = err(&[("TASKPULSE_AUTH_OPERATORS", r#"["ops"]"#)]);
        assert!(operator.contains("auth.operators") && operator.contains("\"ops\""), "{operator}");
        let stall = err(&[("TASKPULSE_DEMO_DURATION_MS", "600000"), ("TASKPULSE_DEMO_STEPS", "1")]);
        assert!(stall.contains("demo.stall_timeout_s") && stall.contains("600000 ms"), "{stall}");
        let sqlite = err(&[("TASKPULSE_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379")]);
        assert!(sqlite.contains("cluster.redis_url") && sqlite.contains("postgres://"), "{sqlite}");
        let scheme = err(&[
            ("TASKPULSE_CLUSTER_REDIS_URL", "127.0.0.1:6379"),
            ("TASKPULSE_STORAGE_URL", "postgres://u@127.0.0.1/db"),
        ]);
        assert!(scheme.contains("redis://"), "{scheme}");
        let cors = err(&[("TASKPULSE_API_CORS_ORIGINS", r#"["localhost:5173"]"#)]);
        assert!(cors.contains("api.cors_origins") && cors.contains("localhost:5173"), "{cors}");
        Jail::expect_with(|jail| {
            jail.set_env("TASKPULSE_API_CORS_ORIGINS", r#"["*", "http://localhost:5173"]"#);
            assert!(Config::load(cli(None)).is_ok());
            jail.create_file("bad.toml", "[stomp]\nheartbeat_mx_ms = 1\n")?;
            let message = Config::load(cli(Some("bad.toml"))).unwrap_err().to_string();
            assert!(
                message.contains("heartbeat_mx_ms") && message.contains("bad.toml"),
                "{message}"
            );
            let missing = Config::load(cli(Some("nowhere.toml"))).unwrap_err().to_string();
            assert!(missing.contains("nowhere.toml"), "{missing}");
            Ok(())
        });
    }
}
