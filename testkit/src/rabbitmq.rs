//! A throw-away RabbitMQ for the load tool's durable comparison: Debian's `rabbitmq-server`
//! with its Web-STOMP plugin, on free loopback ports, in a temporary directory, killed (and
//! the directory removed) when dropped. Needs Debian's `rabbitmq-server` package (`cargo
//! xtask load --rabbitmq` installs it). Not used by `cargo xtask test`. The Erlang port
//! mapper (`epmd`) it starts as a daemon on 127.0.0.1:4369 stays up: it may be shared with
//! another Erlang node, so it is not ours to stop.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where Debian's package puts the server's start script.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How long the node gets to boot (about 15 s on this machine).
const BOOT: Duration = Duration::from_secs(90);

/// A running throw-away RabbitMQ node.
#[derive(Debug)]
pub struct RabbitMq {
    dir: PathBuf,
    web_stomp_port: u16,
    child: Child,
}

impl RabbitMq {
    /// Starts a node with Web-STOMP on a free port of 127.0.0.1. STOMP clients need no
    /// credentials (`stomp.default_user` is `guest`) and their CONNECT's `host` header,
    /// `localhost`, is the node's default virtual host.
    ///
    /// # Errors
    /// It is not installed, or its Web-STOMP port did not accept connections within 90 s.
    pub fn start() -> Result<RabbitMq, String> {
        if !std::path::Path::new(SERVER).is_file() {
            return Err(format!("{SERVER} is missing (install Debian's rabbitmq-server)"));
        }
        let dir = crate::postgres::unique_dir("rabbitmq")?;
        let [amqp, dist, web_stomp] =
            [crate::free_port()?, crate::free_port()?, crate::free_port()?];
        let config = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             web_stomp.tcp.ip = 127.0.0.1\n\
             web_stomp.tcp.port = {web_stomp}\n\
             stomp.default_user = guest\n\
             stomp.default_pass = guest\n\
             default_vhost = localhost\n"
        );
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
        };
        write("rabbitmq.conf", &config)?;
        write("enabled_plugins", "[rabbitmq_web_stomp].\n")?;
        let node = format!("taskpulse-load-{}@localhost", std::process::id());
        let child = Command::new(SERVER)
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RABBITMQ_NODENAME", node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            // The script then execs the Erlang VM instead of waiting on it, so the child's
            // pid is the broker's (for its CPU time) and killing it stops the node.
            .env("RUNNING_UNDER_SYSTEMD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {SERVER}: {e}"))?;
        let rabbit = RabbitMq { dir, web_stomp_port: web_stomp, child };
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", web_stomp)).is_ok() {
                return Ok(rabbit);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("RabbitMQ's Web-STOMP port {web_stomp} did not open within {BOOT:?}"))
    }

    /// `ws://127.0.0.1:<port>/ws`, its Web-STOMP endpoint.
    pub fn web_stomp_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.web_stomp_port)
    }

    /// The broker's (Erlang VM's) process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
