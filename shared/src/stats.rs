//! What `GET /api/admin/stats` answers: the server's figures since it started (the same as
//! its `/metrics`), for backends and the operator page.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /api/admin/stats`: what the server has seen since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Connections.
    pub connections: ConnectionStats,
    /// Authentication of connections (the seed's success rate).
    pub authentication: AuthStats,
    /// Frames in and out, routing.
    pub messages: MessageStats,
    /// ERRORs sent.
    pub errors: ErrorStats,
    /// Catch-ups of subscriptions.
    pub catch_ups: CatchUpStats,
    /// The per-user log.
    pub user_log: LogStats,
    /// Tasks by executor, then status: unfinished ones now, finished ones since the start.
    pub tasks: BTreeMap<String, BTreeMap<String, i64>>,
    /// The tasks running longest now (filled in by the task service).
    pub slowest_tasks: Vec<RunningTask>,
    /// When this server is one node of several: every node heard from and its connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// The nodes of a cluster in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    /// This node's id.
    pub node: String,
    /// Open connections on every node together.
    pub connections: u64,
    /// Each node (this one first) and its open connections.
    pub nodes: Vec<NodeStats>,
}

/// One node in [`ClusterStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// Its id on the bus.
    pub node: String,
    /// Its open connections.
    pub connections: u64,
}

/// A running task in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunningTask {
    /// Its number.
    pub task_no: String,
    /// Whose it is.
    pub owner: String,
    /// Which executor runs it (`external`: a worker of its own).
    pub executor: String,
    /// How far it is, percent.
    pub progress: u8,
    /// Seconds since it started.
    pub running_seconds: f64,
}

/// Connections in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStats {
    /// Open now.
    pub open: i64,
    /// Open now, by transport.
    pub by_transport: BTreeMap<String, i64>,
    /// Opened since the start.
    pub connects: u64,
    /// Ended since the start.
    pub disconnects: u64,
    /// Ended, by reason.
    pub disconnects_by_reason: BTreeMap<String, u64>,
}

/// Authentication in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuthStats {
    /// Attempts.
    pub attempts: u64,
    /// Successful ones.
    pub successes: u64,
    /// Failed ones.
    pub failures: u64,
    /// `successes / attempts`; null before the first attempt.
    pub success_rate: Option<f64>,
    /// Attempts by outcome.
    pub by_outcome: BTreeMap<String, u64>,
}

/// Messages in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MessageStats {
    /// Client frames and messages received.
    pub received: u64,
    /// Frames sent to clients.
    pub sent: u64,
    /// Received, by `protocol/kind`.
    pub received_by_kind: BTreeMap<String, u64>,
    /// Sent, by `protocol/kind`.
    pub sent_by_kind: BTreeMap<String, u64>,
    /// Messages routed to topics and user destinations.
    pub published: u64,
    /// Messages handed to subscriptions.
    pub deliveries: u64,
    /// Progress updates merged for slow consumers.
    pub coalesced_progress: u64,
}

/// ERRORs in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ErrorStats {
    /// ERRORs sent.
    pub total: u64,
    /// By code.
    pub by_code: BTreeMap<String, u64>,
    /// Connections closed as slow consumers.
    pub slow_consumer_disconnects: u64,
}

/// Catch-ups in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CatchUpStats {
    /// Subscriptions that got a replay of what they missed.
    pub replays: u64,
    /// Subscriptions that got a snapshot instead.
    pub snapshots: u64,
    /// Entries served by both.
    pub entries: u64,
}

/// The user log in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogStats {
    /// Entries after the last prune.
    pub entries: i64,
    /// Entries pruned since the start.
    pub pruned: u64,
}
