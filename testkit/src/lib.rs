//! Dev-only helpers shared by the server's tests, the load tool (`bench/`) and xtask, so each
//! exists once: [`ServerProcess`] (the real binary as a child process), [`Postgres`] (a
//! throw-away PostgreSQL cluster), [`Redis`] (a throw-away redis-server), [`RabbitMq`] (a
//! throw-away RabbitMQ, for the load tool's comparison) and, with the
//! `client` feature, [`StompClient`] and [`token`].
//!
//! Not part of the product; never a dependency of `server`'s library or binary.

mod postgres;
mod process;
mod rabbitmq;
mod redis;
#[cfg(feature = "client")]
mod stomp;

pub use postgres::Postgres;
pub use process::ServerProcess;
pub use rabbitmq::RabbitMq;
pub use redis::{Redis, RedisCluster};
#[cfg(feature = "client")]
pub use stomp::{PATIENCE, Socket, StompClient, StompError, frame, token};

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
