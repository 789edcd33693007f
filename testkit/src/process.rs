//! The server binary as a child process on a loopback port, killed when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How long the server gets to log the address it listens on.
const READY: Duration = Duration::from_secs(30);

/// A running `taskpulse-server`; killed (SIGKILL) and reaped when dropped, so a failed test
/// never leaves one behind.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process (for its pid, or to kill it on purpose).
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `binary` with `--listen listen --data-dir data_dir --ui-dir ui_dir` and the
    /// `TASKPULSE_*` variables `env` only (inherited ones, such as a test's own, would be
    /// refused as unknown settings), and waits for its "listening on" line.
    ///
    /// # Errors
    /// The binary cannot be started or does not report its address within 30 s.
    pub fn start(
        binary: &Path,
        listen: &str,
        data_dir: &Path,
        ui_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, String> {
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("TASKPULSE_")) {
            command.env_remove(name);
        }
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--ui-dir")
            .arg(ui_dir)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        ServerProcess::spawn(command)
    }

    /// Starts `command` (any program that prints "listening on http://ADDR" once it listens,
    /// such as the load tool's yardstick) and waits for that line.
    ///
    /// # Errors
    /// The program cannot be started or does not report its address within 30 s.
    pub fn spawn(mut command: Command) -> Result<ServerProcess, String> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the address, then keeps draining so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        match rx.recv_timeout(READY) {
            Ok(addr) => Ok(ServerProcess { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{program} did not report its address within 30 s"))
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in the server's "listening on http://ADDR" log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "listening on http://";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let end =
        rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::listening_address;

    #[test]
    fn the_address_is_read_from_the_ready_line() {
        let line = "2026-11-30T20:00:00Z  INFO taskpulse_server: listening on http://127.0.0.1:4321 (ui ./x)";
        assert_eq!(listening_address(line), Some("127.0.0.1:4321".parse().unwrap()));
        assert_eq!(listening_address("starting"), None);
    }
}
