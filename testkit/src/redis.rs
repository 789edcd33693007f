//! A throw-away Redis: Debian's `redis-server` on a free loopback port, persistence off, in a
//! temporary directory, stopped (and the directory removed) when dropped. It can be stopped
//! and started again on the same port, for tests of a bus outage. [`RedisCluster`] is three
//! of them joined as a Redis Cluster. Needs Debian's `redis-server` package (with its
//! `redis-cli`; `cargo xtask test` installs it).

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
    /// Started with `--cluster-enabled yes`.
    cluster: bool,
}

impl Redis {
    /// Starts `redis-server` on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// It is not installed, or did not answer PING within 10 s.
    pub fn start() -> Result<Redis, String> {
        let dir = crate::postgres::unique_dir("redis")?;
        let port = crate::free_port()?;
        let mut redis = Redis { dir, port, child: None, cluster: false };
        redis.start_again()?;
        Ok(redis)
    }

    /// Starts one node of a Redis Cluster on `port` (whose cluster bus port, `port` +
    /// 10,000, must be free too).
    fn start_clustered(port: u16) -> Result<Redis, String> {
        let dir = crate::postgres::unique_dir("redis-cluster")?;
        let mut redis = Redis { dir, port, child: None, cluster: true };
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
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
        }
        let child =
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| {
                format!("cannot run redis-server (install Debian's redis-server): {e}")
            })?;
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

/// A throw-away Redis Cluster: three shards (no replicas), each a [`Redis`] on a free port,
/// joined by `redis-cli --cluster create`; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    shards: Vec<Redis>,
}

impl RedisCluster {
    /// Starts three shards and waits until the cluster says it is ok.
    ///
    /// # Errors
    /// A shard could not start, or the cluster did not form within 30 s.
    pub fn start() -> Result<RedisCluster, String> {
        let mut shards = Vec::new();
        for _ in 0..3 {
            shards.push(Redis::start_clustered(cluster_port()?)?);
        }
        let addresses: Vec<String> =
            shards.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run redis-cli (install Debian's redis-tools): {e}"))?;
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if shards.iter().all(|s| s.cluster_ok()) {
                return Ok(RedisCluster { shards });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the Redis Cluster did not reach cluster_state:ok within 30 s".into())
    }

    /// The first shard's `redis://127.0.0.1:<port>` (a client finds the others from it).
    pub fn url(&self) -> String {
        self.shards[0].url()
    }

    /// Kills shard `index` (SIGKILL), for tests of an outage.
    pub fn stop_shard(&mut self, index: usize) {
        self.shards[index].stop();
    }

    /// Starts shard `index` again on its port with its cluster identity, and waits until
    /// the cluster says it is ok.
    ///
    /// # Errors
    /// It could not be started, or the cluster did not recover within 30 s.
    pub fn start_shard_again(&mut self, index: usize) -> Result<(), String> {
        self.shards[index].start_again()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.shards.iter().all(|s| s.cluster_ok()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the Redis Cluster did not recover within 30 s".into())
    }

    /// Each shard's sharded pub/sub channels with a subscriber (`PUBSUB SHARDCHANNELS`).
    pub fn shard_channels(&self) -> Vec<Vec<String>> {
        self.shards
            .iter()
            .map(|shard| {
                Command::new("redis-cli")
                    .args(["-p", &shard.port.to_string(), "pubsub", "shardchannels"])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Redis {
    /// Whether this cluster node says `cluster_state:ok`.
    fn cluster_ok(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }
}

/// A free loopback port whose cluster bus port (+10,000) is free too.
fn cluster_port() -> Result<u16, String> {
    for _ in 0..100 {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
        let port = listener.local_addr().map_err(|e| format!("no free port: {e}"))?.port();
        let Some(bus) = port.checked_add(10_000) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port with a free cluster bus port (+10,000)".into())
}
