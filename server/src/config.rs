//! The server's settings: one typed struct, filled from flags and `TASKPULSE_*` variables.
//!
//! Unknown flags and invalid values stop start-up with a message that names them (clap).

use std::{net::SocketAddr, path::PathBuf};

/// Every setting the server reads at start-up.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "taskpulse-server",
    version,
    about = "TaskPulse: real-time task progress over STOMP"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TASKPULSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for durable state; created if missing.
    #[arg(long, env = "TASKPULSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory holding the built web UI (trunk's dist); served at `/`.
    #[arg(long, env = "TASKPULSE_UI_DIR", default_value = "./frontend/dist")]
    pub ui_dir: PathBuf,
}
