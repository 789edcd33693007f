//! The server's figures: one [`Metrics`] per server, counted where things happen (broker,
//! transports, user log, task service, storage) and read by `GET /metrics` (Prometheus text,
//! through `prometheus-client`) and `GET /api/admin/stats` ([`Stats`], JSON).
//!
//! Label values are the server's own words (transport names, ERROR codes, statuses), never
//! client text; each labelled family also keeps at most [`MAX_SERIES`] label sets, so no
//! client can make the server hold an unbounded number of series.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder},
    metrics::{
        TypedMetric,
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
pub use taskpulse_shared::stats::{
    AuthStats, CatchUpStats, ConnectionStats, ErrorStats, LogStats, MessageStats, RunningTask,
    Stats,
};
use taskpulse_shared::stomp::Command;

/// Most label sets one family keeps; later new ones are counted under `other`.
pub const MAX_SERIES: usize = 256;

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// STOMP over WebSocket at `/ws`.
    #[default]
    Stomp,
    /// The JSON protocol at `/ws/json`.
    Json,
    /// SockJS's WebSocket transport.
    SockJsWebSocket,
    /// SockJS's HTTP transports (streaming, polling, eventsource, htmlfile, jsonp).
    SockJsHttp,
    /// Server-Sent Events at `/sse/tasks`.
    Sse,
}

impl Transport {
    /// Every transport, in the order reports list them.
    pub const ALL: [Transport; 5] = [
        Transport::Stomp,
        Transport::Json,
        Transport::SockJsWebSocket,
        Transport::SockJsHttp,
        Transport::Sse,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stomp => "stomp",
            Transport::Json => "json",
            Transport::SockJsWebSocket => "sockjs-websocket",
            Transport::SockJsHttp => "sockjs-http",
            Transport::Sse => "sse",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of one series: `(name, value)` pairs. Names are the server's constants; values
/// are bounded words (see [`Labelled`]).
type Labels = Vec<(&'static str, String)>;

/// A family that remembers which label sets it has (for [`Stats`]) and keeps at most
/// [`MAX_SERIES`] of them.
#[derive(Debug)]
struct Labelled<M, C = fn() -> M> {
    family: Family<Labels, M, C>,
    seen: Mutex<Vec<Labels>>,
}

impl<M: Default + Clone + TypedMetric + prometheus_client::encoding::EncodeMetric>
    Labelled<M, fn() -> M>
{
    fn new() -> Self {
        Labelled { family: Family::new_with_constructor(M::default), seen: Mutex::default() }
    }
}

impl<M: Clone, C: prometheus_client::metrics::family::MetricConstructor<M>> Labelled<M, C> {
    fn with(constructor: C) -> Self {
        Labelled { family: Family::new_with_constructor(constructor), seen: Mutex::default() }
    }

    /// The series of `labels` (values past [`MAX_SERIES`] series become `other`).
    fn get(&self, labels: &[(&'static str, &str)]) -> M {
        let mut owned: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if self.family.get(&owned).is_none() {
            let mut seen = self.seen.lock();
            if !seen.contains(&owned) {
                if seen.len() >= MAX_SERIES {
                    for (_, value) in &mut owned {
                        *value = "other".into();
                    }
                }
                if !seen.contains(&owned) {
                    seen.push(owned.clone());
                }
            }
        }
        self.family.get_or_create_owned(&owned)
    }

    /// The family, to register for one exposition (a clone shares the series).
    fn family(&self) -> Family<Labels, M, C>
    where
        C: Clone,
    {
        self.family.clone()
    }

    /// Every series with its labels, in the order they first appeared.
    fn series(&self) -> Vec<(Labels, M)> {
        let seen = self.seen.lock().clone();
        seen.into_iter()
            .filter_map(|labels| {
                let metric = self.family.get(&labels)?.clone();
                Some((labels, metric))
            })
            .collect()
    }
}

fn buckets_from(start: f64, count: u16) -> impl Iterator<Item = f64> {
    exponential_buckets(start, 2.0, count)
}

fn storage_histogram() -> Histogram {
    // 100 µs .. ~3.3 s.
    Histogram::new(buckets_from(0.0001, 16))
}

fn task_histogram() -> Histogram {
    // 10 ms .. ~5.8 h.
    Histogram::new(buckets_from(0.01, 21))
}

/// Every figure the server keeps. Cheap to update: counters are atomics, labelled ones a
/// read-locked map lookup.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    connections: Labelled<Gauge>,
    connects: Labelled<Counter>,
    disconnects: Labelled<Counter>,
    auth: Labelled<Counter>,
    frames_in: Labelled<Counter>,
    /// `frames_in`'s STOMP series, by `Command::ALL` index, looked up on first use.
    stomp_in: [OnceLock<Counter>; Command::ALL.len()],
    frames_out: Labelled<Counter>,
    errors: Labelled<Counter>,
    slow_consumers: Counter,
    coalesced: Counter,
    published: Counter,
    deliveries: Counter,
    catch_ups: Labelled<Counter>,
    log_entries: Gauge,
    log_pruned: Counter,
    events_pruned: Counter,
    tasks: Labelled<Gauge>,
    tasks_ended: Labelled<Counter>,
    tasks_stalled: Labelled<Counter>,
    queue_wait: Labelled<Histogram>,
    task_duration: Labelled<Histogram>,
    storage: Labelled<Histogram>,
    storage_errors: Labelled<Counter>,
    bus_lag: Histogram,
    bus_dropped: Counter,
    bus_filled: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            connections: Labelled::new(),
            connects: Labelled::new(),
            disconnects: Labelled::new(),
            auth: Labelled::new(),
            frames_in: Labelled::new(),
            stomp_in: Default::default(),
            frames_out: Labelled::new(),
            errors: Labelled::new(),
            slow_consumers: Counter::default(),
            coalesced: Counter::default(),
            published: Counter::default(),
            deliveries: Counter::default(),
            catch_ups: Labelled::new(),
            log_entries: Gauge::default(),
            log_pruned: Counter::default(),
            events_pruned: Counter::default(),
            tasks: Labelled::new(),
            tasks_ended: Labelled::new(),
            tasks_stalled: Labelled::new(),
            queue_wait: Labelled::with(task_histogram),
            task_duration: Labelled::with(task_histogram),
            storage: Labelled::with(storage_histogram),
            storage_errors: Labelled::new(),
            bus_lag: storage_histogram(),
            bus_dropped: Counter::default(),
            bus_filled: Counter::default(),
        }
    }
}

/// An open connection, counted while it lives (see [`Metrics::open`]); when it drops, its
/// end is counted with the reason [`OpenConnection::end`] gave first, else
/// `connection-lost`.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<Metrics>,
    transport: Transport,
    gauge: Gauge,
    reason: Mutex<Option<String>>,
}

impl OpenConnection {
    /// Says why the connection ends (the first reason given counts). An ERROR code is also
    /// counted as an ERROR sent.
    pub fn end(&self, reason: &str, error: bool) {
        let mut kept = self.reason.lock();
        if kept.is_none() {
            *kept = Some(reason.to_owned());
            if error {
                self.metrics.error(reason);
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
        let reason = self.reason.lock().take();
        self.metrics.disconnected(self.transport, reason.as_deref().unwrap_or("connection-lost"));
    }
}

impl Metrics {
    /// Counts a connection through `transport` as open until the guard drops.
    pub fn open(self: &Arc<Self>, transport: Transport) -> OpenConnection {
        let label = [("transport", transport.as_str())];
        self.connects.get(&label).inc();
        let gauge = self.connections.get(&label);
        gauge.inc();
        OpenConnection { metrics: self.clone(), transport, gauge, reason: Mutex::new(None) }
    }

    /// A connection through `transport` ended; `reason` is an ERROR code or one of the
    /// transport's words (`client-closed`, `connection-lost`, `disconnect`).
    fn disconnected(&self, transport: Transport, reason: &str) {
        self.disconnects.get(&[("transport", transport.as_str()), ("reason", reason)]).inc();
        if reason == "slow-consumer" {
            self.slow_consumers.inc();
        }
    }

    /// An authentication attempt on a connection: `outcome` is `success` or why it failed.
    pub fn authentication(&self, outcome: &'static str) {
        self.auth.get(&[("outcome", outcome)]).inc();
    }

    /// A client message of `kind` (a JSON `type`) arrived.
    pub fn received(&self, protocol: &'static str, kind: &'static str) {
        self.frames_in.get(&[("protocol", protocol), ("kind", kind)]).inc();
    }

    /// A STOMP frame arrived (the per-frame path: one atomic add after the first).
    pub fn received_stomp(&self, command: Command) {
        let index = Command::ALL.iter().position(|c| *c == command).unwrap_or(0);
        self.stomp_in[index]
            .get_or_init(|| {
                self.frames_in.get(&[("protocol", "stomp"), ("kind", command.as_str())])
            })
            .inc();
    }

    /// The counter of frames of `kind` written to clients of `protocol` (a writer looks
    /// its counters up once, then adds to them).
    pub fn sent_counter(&self, protocol: &'static str, kind: &'static str) -> Counter {
        self.frames_out.get(&[("protocol", protocol), ("kind", kind)])
    }

    /// An ERROR (or a JSON `error`) with this code was sent.
    pub fn error(&self, code: &str) {
        self.errors.get(&[("code", code)]).inc();
    }

    /// One message was routed and handed to `deliveries` subscriptions, `coalesced` of
    /// them by replacing an older, unwritten progress value.
    pub fn fanned_out(&self, deliveries: u64, coalesced: u64) {
        self.published.inc();
        self.deliveries.inc_by(deliveries);
        if coalesced > 0 {
            self.coalesced.inc_by(coalesced);
        }
    }

    /// A subscription's catch-up was served: `replay` or `snapshot`, with `entries` items.
    pub fn caught_up(&self, kind: &'static str, entries: u64) {
        self.catch_ups.get(&[("kind", kind)]).inc();
        self.catch_ups.get(&[("kind", "entries")]).inc_by(entries);
    }

    /// The user log was pruned: `removed` entries went, `left` remain.
    pub fn log_pruned(&self, removed: u64, left: u64) {
        self.log_pruned.inc_by(removed);
        self.log_entries.set(i64::try_from(left).unwrap_or(i64::MAX));
    }

    /// `removed` task events went by `tasks.events_retention_s`.
    pub fn task_events_pruned(&self, removed: u64) {
        self.events_pruned.inc_by(removed);
    }

    /// A task of `executor` entered `status` (from `from`, if it had one).
    pub fn task_status(&self, executor: &str, from: Option<&str>, status: &str, terminal: bool) {
        if let Some(from) = from {
            self.tasks.get(&[("executor", executor), ("status", from)]).dec();
        }
        if terminal {
            self.tasks_ended.get(&[("executor", executor), ("status", status)]).inc();
        } else {
            self.tasks.get(&[("executor", executor), ("status", status)]).inc();
        }
    }

    /// A task of `executor` in `status` left this node unfinished (another node took it
    /// over): it no longer counts here.
    pub fn task_left(&self, executor: &str, status: &str) {
        self.tasks.get(&[("executor", executor), ("status", status)]).dec();
    }

    /// A task of `executor` failed as stalled (also counted as `failed`).
    pub fn task_stalled(&self, executor: &str) {
        self.tasks_stalled.get(&[("executor", executor)]).inc();
    }

    /// A task of `executor` waited `waited` in its queue before it started.
    pub fn task_started(&self, executor: &str, waited: Duration) {
        self.queue_wait.get(&[("executor", executor)]).observe(waited.as_secs_f64());
    }

    /// A task of `executor` ran for `ran` and ended `status`.
    pub fn task_ended(&self, executor: &str, status: &str, ran: Duration) {
        let labels = [("executor", executor), ("status", status)];
        self.task_duration.get(&labels).observe(ran.as_secs_f64());
    }

    /// A storage operation took `took`; `failed` when it returned an error.
    pub fn storage(&self, operation: &'static str, took: Duration, failed: bool) {
        self.storage.get(&[("operation", operation)]).observe(took.as_secs_f64());
        if failed {
            self.storage_errors.get(&[("operation", operation)]).inc();
        }
    }

    /// A message from another node arrived `lag` seconds after it was sent.
    pub fn bus_received(&self, lag: f64) {
        self.bus_lag.observe(lag);
    }

    /// A publication could not be queued for the bus.
    pub fn bus_dropped(&self) {
        self.bus_dropped.inc();
    }

    /// `entries` missing from the bus were read from storage.
    pub fn bus_filled(&self, entries: u64) {
        self.bus_filled.inc_by(entries);
    }

    /// The Prometheus text exposition (format 0.0.4) of every figure.
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("taskpulse");
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        uptime.set(self.started.elapsed().as_secs_f64());
        registry.register_with_unit(
            "uptime",
            "Time since the server started",
            Unit::Seconds,
            uptime,
        );
        let r = &mut registry;
        r.register("connections", "Open connections by transport", self.connections.family());
        r.register("connects", "Connections opened, by transport", self.connects.family());
        r.register(
            "disconnects",
            "Connections ended, by transport and reason (an ERROR code, client-closed, \
             connection-lost or disconnect)",
            self.disconnects.family(),
        );
        r.register(
            "auth_attempts",
            "Authentication attempts of connections, by outcome",
            self.auth.family(),
        );
        r.register(
            "frames_received",
            "Client frames or messages, by protocol and kind",
            self.frames_in.family(),
        );
        r.register(
            "frames_sent",
            "Frames written to clients, by protocol and kind",
            self.frames_out.family(),
        );
        r.register("errors", "ERRORs (and JSON errors) sent, by code", self.errors.family());
        r.register(
            "slow_consumer_disconnects",
            "Connections closed because too much waited to be sent to them",
            self.slow_consumers.clone(),
        );
        r.register(
            "progress_coalesced",
            "Progress updates merged into an older unwritten one for a slow consumer",
            self.coalesced.clone(),
        );
        r.register(
            "messages_published",
            "Messages routed to topics and user destinations",
            self.published.clone(),
        );
        r.register("deliveries", "Messages handed to subscriptions", self.deliveries.clone());
        r.register(
            "catch_ups",
            "Catch-ups served to subscriptions: replays, snapshots, and their entries",
            self.catch_ups.family(),
        );
        r.register(
            "user_log_entries",
            "Entries in the per-user log after the last prune",
            self.log_entries.clone(),
        );
        r.register(
            "user_log_pruned",
            "Entries pruned from the per-user log",
            self.log_pruned.clone(),
        );
        r.register(
            "task_events_pruned",
            "Task events deleted by tasks.events_retention_s",
            self.events_pruned.clone(),
        );
        r.register("tasks", "Unfinished tasks by executor and status", self.tasks.family());
        r.register(
            "tasks_ended",
            "Tasks that reached a final status, by executor and status",
            self.tasks_ended.family(),
        );
        r.register(
            "tasks_stalled",
            "Tasks failed because their executor or worker went silent (tasks.stall_timeout_s)",
            self.tasks_stalled.family(),
        );
        r.register(
            "bus_dropped",
            "Publications this node could not queue for the bus (clustered)",
            self.bus_dropped.clone(),
        );
        r.register(
            "bus_filled",
            "User messages missing from the bus, read from storage instead (clustered)",
            self.bus_filled.clone(),
        );
        r.register(
            "storage_errors",
            "Storage operations that failed, by operation",
            self.storage_errors.family(),
        );
        let timed: [(&str, &str, &Labelled<Histogram>); 3] = [
            (
                "task_queue_wait",
                "Time tasks waited in their executor's queue, by executor",
                &self.queue_wait,
            ),
            (
                "task_duration",
                "Time from a task's start to its final status, by executor and status",
                &self.task_duration,
            ),
            ("storage_operation", "Storage operation latency, by operation", &self.storage),
        ];
        for (name, help, family) in timed {
            registry.register_with_unit(name, help, Unit::Seconds, family.family());
        }
        registry.register_with_unit(
            "bus_lag",
            "Time from another node's publication to its arrival here (clustered)",
            Unit::Seconds,
            self.bus_lag.clone(),
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The figures as [`Stats`].
    pub fn stats(&self) -> Stats {
        let by = |family: &Labelled<Counter>, key: &str| -> BTreeMap<String, u64> {
            let mut map = BTreeMap::new();
            for (labels, counter) in family.series() {
                let name = label(&labels, key);
                *map.entry(name).or_insert(0) += counter.get();
            }
            map
        };
        let open: BTreeMap<String, i64> = self
            .connections
            .series()
            .into_iter()
            .map(|(labels, gauge)| (label(&labels, "transport"), gauge.get()))
            .collect();
        let outcomes = by(&self.auth, "outcome");
        let successes = outcomes.get("success").copied().unwrap_or(0);
        let attempts: u64 = outcomes.values().sum();
        let kinds = |family: &Labelled<Counter>| -> BTreeMap<String, u64> {
            family
                .series()
                .into_iter()
                .map(|(labels, c)| {
                    (format!("{}/{}", label(&labels, "protocol"), label(&labels, "kind")), c.get())
                })
                .collect()
        };
        let received = kinds(&self.frames_in);
        let sent = kinds(&self.frames_out);
        let mut tasks: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (labels, gauge) in self.tasks.series() {
            let entry = tasks.entry(label(&labels, "executor")).or_default();
            *entry.entry(label(&labels, "status")).or_insert(0) += gauge.get();
        }
        for (labels, counter) in self.tasks_ended.series() {
            let entry = tasks.entry(label(&labels, "executor")).or_default();
            let ended = i64::try_from(counter.get()).unwrap_or(i64::MAX);
            *entry.entry(label(&labels, "status")).or_insert(0) += ended;
        }
        for (labels, counter) in self.tasks_stalled.series() {
            let entry = tasks.entry(label(&labels, "executor")).or_default();
            *entry.entry("stalled".into()).or_insert(0) +=
                i64::try_from(counter.get()).unwrap_or(i64::MAX);
        }
        let catch_ups = by(&self.catch_ups, "kind");
        let errors = by(&self.errors, "code");
        Stats {
            uptime_seconds: self.started.elapsed().as_secs(),
            connections: ConnectionStats {
                open: open.values().sum(),
                by_transport: open,
                connects: by(&self.connects, "transport").values().sum(),
                disconnects: by(&self.disconnects, "transport").values().sum(),
                disconnects_by_reason: by(&self.disconnects, "reason"),
            },
            authentication: AuthStats {
                attempts,
                successes,
                failures: attempts - successes,
                success_rate: (attempts > 0).then(|| successes as f64 / attempts as f64),
                by_outcome: outcomes,
            },
            messages: MessageStats {
                received: received.values().sum(),
                sent: sent.values().sum(),
                received_by_kind: received,
                sent_by_kind: sent,
                published: self.published.get(),
                deliveries: self.deliveries.get(),
                coalesced_progress: self.coalesced.get(),
            },
            errors: ErrorStats {
                total: errors.values().sum(),
                by_code: errors,
                slow_consumer_disconnects: self.slow_consumers.get(),
            },
            catch_ups: CatchUpStats {
                replays: catch_ups.get("replay").copied().unwrap_or(0),
                snapshots: catch_ups.get("snapshot").copied().unwrap_or(0),
                entries: catch_ups.get("entries").copied().unwrap_or(0),
            },
            user_log: LogStats { entries: self.log_entries.get(), pruned: self.log_pruned.get() },
            tasks,
            slowest_tasks: Vec::new(),
            cluster: None,
        }
    }
}

/// The value of label `key` (empty when absent).
fn label(labels: &Labels, key: &str) -> String {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// Times a storage call into [`Metrics::storage`].
pub(crate) async fn timed<T, E>(
    metrics: &Metrics,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = call.await;
    metrics.storage(operation, start.elapsed(), result.is_err());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_past_the_cap_are_counted_as_other() {
        let metrics = Metrics::default();
        for n in 0..MAX_SERIES + 10 {
            metrics.error(&format!("code-{n}"));
        }
        let stats = metrics.stats();
        assert_eq!(stats.errors.by_code.len(), MAX_SERIES + 1);
        assert_eq!(stats.errors.by_code["other"], 10);
        assert_eq!(stats.errors.total, (MAX_SERIES + 10) as u64);
    }

    #[test]
    fn the_exposition_names_follow_prometheus_conventions() {
        let metrics = Arc::new(Metrics::default());
        let _open = metrics.open(Transport::Stomp);
        metrics.authentication("success");
        metrics.authentication("expired-token");
        metrics.storage("append", Duration::from_millis(3), false);
        let text = metrics.prometheus();
        assert!(text.contains("taskpulse_connections{transport=\"stomp\"} 1\n"), "{text}");
        assert!(text.contains("taskpulse_connects_total{transport=\"stomp\"} 1\n"), "{text}");
        assert!(text.contains("taskpulse_auth_attempts_total{outcome=\"success\"} 1\n"), "{text}");
        assert!(
            text.contains("taskpulse_storage_operation_seconds_count{operation=\"append\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE taskpulse_uptime_seconds gauge\n"), "{text}");
        let stats = metrics.stats();
        assert_eq!(stats.authentication.success_rate, Some(0.5));
        assert_eq!(stats.connections.by_transport["stomp"], 1);
    }

    #[test]
    fn every_series_the_grafana_dashboard_queries_exists() {
        let metrics = Arc::new(Metrics::default());
        {
            let open = metrics.open(Transport::Sse);
            open.end("slow-consumer", true);
        }
        metrics.authentication("success");
        metrics.received_stomp(Command::Send);
        metrics.sent_counter("stomp", "message").inc();
        metrics.fanned_out(3, 1);
        metrics.caught_up("replay", 2);
        metrics.log_pruned(1, 5);
        metrics.task_status("demo", None, "queued", false);
        metrics.task_status("demo", Some("queued"), "completed", true);
        metrics.task_started("demo", Duration::from_millis(5));
        metrics.task_ended("demo", "completed", Duration::from_millis(50));
        metrics.storage("append", Duration::from_millis(1), true);
        let text = metrics.prometheus();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana/taskpulse.json"))
                .expect("the dashboard is JSON");
        let mut names = Vec::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let mut rest = expr;
                while let Some(at) = rest.find("taskpulse_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    names.push(name);
                }
            }
        }
        assert!(names.len() > 15, "{names:?}");
        for name in names {
            let sampled = text.lines().any(|line| {
                line.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with(['{', ' ']))
            });
            assert!(sampled, "the dashboard queries {name}, which /metrics does not have:\n{text}");
        }
    }
}
