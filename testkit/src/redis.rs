//! A throw-away Redis: Debian's `redis-server` on a free loopback port, persistence off, in a
//! temporary directory, stopped (and the directory removed) when dropped. It can be stopped
//! and started again on the same port, for tests of a bus outage. Needs Debian's
//! `redis-server` package (`cargo xtask test` installs it).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running throw-away Redis.
#[derive(Debug)]
pub struct Redis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// It is not installed, or did not answer PING within 10 s.
    pub fn start() -> Result<Redis, String> {
        let dir = crate::postgres::unique_dir("redis")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut redis = Redis { dir, port, child: None };
        redis.start_again()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`Redis::stop`]); waits until it
    /// answers PING.
    ///
    /// # Errors
    /// It could not be started, or did not answer within 10 s.
    pub fn start_again(&mut self) -> Result<(), String> {
        self.stop();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (install Debian's redis-server): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {port} did not answer PING within 10 s"))
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
