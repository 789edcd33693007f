//! Dev-only helpers shared by the server's tests, the load tool (`bench/`) and xtask, so each
//! exists once: [`ServerProcess`] (the real binary as a child process), [`Postgres`] (a
//! throw-away PostgreSQL cluster), [`Redis`] (a throw-away redis-server) and, with the
//! `client` feature, [`StompClient`] and [`token`].
//!
//! Not part of the product; never a dependency of `server`'s library or binary.

mod postgres;
mod process;
mod redis;
#[cfg(feature = "client")]
mod stomp;

pub use postgres::Postgres;
pub use process::ServerProcess;
pub use redis::{Redis, RedisCluster};
#[cfg(feature = "client")]
pub use stomp::{PATIENCE, Socket, StompClient, StompError, frame, token};
