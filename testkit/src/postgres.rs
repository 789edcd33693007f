//! A throw-away PostgreSQL: a cluster `initdb` makes in a temporary directory, serving on a
//! free loopback port, stopped (and its files removed) when dropped. As root it runs as the
//! `postgres` user, which PostgreSQL requires. Needs Debian's `postgresql` package
//! (`cargo xtask test` installs it).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A running throw-away PostgreSQL cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    databases: AtomicUsize,
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it on a free port of
    /// 127.0.0.1, with durability off (fsync, synchronous commit: it is thrown away).
    ///
    /// # Errors
    /// PostgreSQL is not installed, or `initdb`/`pg_ctl` failed (their output is included).
    pub fn start() -> Result<Postgres, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("PostgreSQL is not installed (/usr/lib/postgresql: {e})"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("postgres").is_file())
            .max()
            .ok_or("no PostgreSQL version with bin/postgres under /usr/lib/postgresql")?;
        let dir = unique_dir("pg")?;
        if is_root() {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to postgres: {e}", dir.display()))?;
        }
        let port = crate::free_port()?;
        let server = Postgres { dir, port, bin, databases: AtomicUsize::new(0) };
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &["-D", path(&data)?, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        )?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            path(&server.dir)?
        );
        let log = server.dir.join("postgres.log");
        server.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", path(&data)?, "-l", path(&log)?, "-o", &options],
        )?;
        Ok(server)
    }

    /// The URL of a new, empty database on this server.
    ///
    /// # Errors
    /// `createdb` failed.
    pub fn fresh_database(&self) -> Result<String, String> {
        let name = format!("test{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let port = self.port.to_string();
        self.run("createdb", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name])?;
        Ok(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
    }

    /// One of PostgreSQL's programs, run as `postgres` when this is root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.current_dir(&self.dir);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.command("pg_ctl").args(["stop", "-m", "immediate", "-D"]).arg(&data).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory under the system's temporary directory, named after `kind`.
pub(crate) fn unique_dir(kind: &str) -> Result<PathBuf, String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("taskpulse-{kind}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The `postgres` account's uid and gid.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| "no postgres user (install Debian's postgresql package)".into())
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}
