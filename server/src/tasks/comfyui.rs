//! The ComfyUI executor. TaskPulse is a client of ComfyUI: it submits a workflow to
//! `POST /prompt` with its `client_id`, follows `/ws?clientId=` for `execution_start`,
//! `executing`, `progress`, `executed`, `execution_success`, `execution_error` and
//! `execution_interrupted`, matched to tasks by `prompt_id`, and fetches images from `/view`.
//!
//! The WebSocket is kept open by one background task that reconnects with exponential
//! backoff, under a new `client_id` each time: ComfyUI keeps one socket per client id, and
//! when an old socket it still held ends, it forgets whichever socket holds that id by then,
//! which would silence the new one for good. A socket silent for `comfyui.liveness_ms`
//! gets a ping; one silent as long again is replaced. Messages sent while it was down (and
//! those of prompts submitted under an earlier client id) are lost, so after every
//! reconnect and every quiet spell each waiting task asks `/history/{prompt_id}` what became
//! of its prompt, and `/queue` whether ComfyUI still knows it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use taskpulse_shared::dto::SubmitTaskRequest;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{Artifact, Executor, Job, Progress, fetch::ImageFetcher};
use crate::{ComfyUiSettings, Settings};

/// How long a followed prompt may stay silent before `/history` is asked.
const HISTORY_POLL: Duration = Duration::from_secs(5);

/// Failed `/history` or `/queue` requests in a row before a task gives up on ComfyUI.
const LOOKUP_ATTEMPTS: u32 = 5;

/// How long ComfyUI may take to write a finished prompt's history after saying so
/// (`execution_success` comes first; about 0.3 s on a real server).
const HISTORY_LAG: Duration = Duration::from_secs(2);

/// The first ComfyUI release whose `/interrupt` honours `prompt_id` (0.3.57, 2025-09-04);
/// an older one stops whatever runs.
const TARGETED_INTERRUPT: (u32, u32, u32) = (0, 3, 57);

/// The largest WebSocket message taken from ComfyUI (its binary previews included); a larger
/// one ends the connection, which is then opened again.
const MAX_WS_MESSAGE: usize = 16 * 1024 * 1024;

/// Events one prompt's task may have waiting; more are dropped (the `/history` lookup after
/// a quiet spell finds what they would have said).
const EVENT_QUEUE: usize = 1024;

/// Nodes one prompt's progress keeps track of; ComfyUI naming more (it cannot, for a
/// workflow of ours) is ignored beyond it.
const MAX_NODES: usize = 1024;

/// The longest reason from ComfyUI a task's `errorMessage` carries.
const MAX_REASON: usize = 1000;

const TEXT_TO_IMAGE: &str = include_str!("workflows/text-to-image.json");
const IMAGE_TO_IMAGE: &str = include_str!("workflows/image-to-image.json");

/// Runs image tasks on a ComfyUI server.
#[derive(Debug, Clone)]
pub struct ComfyUiExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: reqwest::Url,
    http: reqwest::Client,
    /// The client id of the WebSocket open now (a new one per connection).
    client_id: Mutex<String>,
    /// Whether `/interrupt` takes a `prompt_id`, once `/system_stats` said.
    targeted_interrupt: tokio::sync::OnceCell<bool>,
    text_to_image: Value,
    image_to_image: Value,
    checkpoint: String,
    timeout: Duration,
    fetcher: ImageFetcher,
    /// Event channels of running prompts, by `prompt_id`.
    waiters: Mutex<HashMap<String, mpsc::Sender<Event>>>,
    /// `prompt_id`s of running tasks, for cancel.
    prompts: Mutex<HashMap<String, String>>,
}

/// An image in ComfyUI's output, as `executed` and `/history` name it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct ImageRef {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(default, rename = "type")]
    kind: String,
}

/// What the WebSocket said about one prompt.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Started,
    /// Nodes ComfyUI will not run again (`execution_cached`).
    Cached(Vec<String>),
    /// A node started (`executing`).
    Node(String),
    /// A node's progress (`progress`; values may be fractional).
    Progress {
        node: Option<String>,
        value: f64,
        max: f64,
    },
    /// Every started node's fraction done (`progress_state`).
    NodeStates(Vec<(String, f64)>),
    Images(Vec<ImageRef>),
    Finished,
    Error {
        node_type: Option<String>,
        message: String,
    },
    Interrupted,
    /// The WebSocket came back after a gap: ask /history.
    Reconnected,
}

/// Reads a workflow file, or the built-in one.
fn workflow(path: &std::path::Path, builtin: &str) -> Result<Value, String> {
    let text = if path.as_os_str().is_empty() {
        builtin.to_owned()
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("comfyui: cannot read workflow {}: {e}", path.display()))?
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("comfyui: workflow {} is not JSON: {e}", path.display()))?;
    if !value.is_object() {
        return Err(format!("comfyui: workflow {} must be an API-format object", path.display()));
    }
    Ok(value)
}

/// Substitutes `{{prompt}}`, `{{checkpoint}}`, `{{image}}` inside strings and replaces the
/// strings `"{{width}}"`, `"{{height}}"`, `"{{seed}}"` by numbers. One pass over the
/// template's text: what a value brings in (a prompt containing `{{checkpoint}}`) is never
/// expanded again.
fn fill(template: &Value, vars: &HashMap<&str, Value>) -> Value {
    match template {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && let Some(value) = vars.get(name)
            {
                return value.clone();
            }
            Value::String(substitute(s, vars))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, vars)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, vars))).collect())
        }
        other => other.clone(),
    }
}

/// `text` with each `{{name}}` of a text variable replaced, left to right, once.
fn substitute(text: &str, vars: &HashMap<&str, Value>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let value = after.find("}}").and_then(|close| match vars.get(&after[..close]) {
            Some(Value::String(value)) => Some((value, close)),
            _ => None,
        });
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A reason from ComfyUI as users may read it: server file paths cut to their file name,
/// and not longer than [`MAX_REASON`].
fn clean_reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.trim().split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_start_matches(['\'', '"', '(', '[']);
        let lead = &word[..word.len() - core.len()];
        let core = core.trim_end_matches(['\'', '"', ')', ']', ':', ',', ';', '.']);
        let tail = &word[lead.len() + core.len()..];
        let unix = core.starts_with('/') && core[1..].contains('/');
        let windows = core.len() > 3 && core.as_bytes()[1] == b':' && core[2..].starts_with('\\');
        let home = core.starts_with("~/");
        if unix || windows || home {
            let name = core.rsplit(['/', '\\']).next().unwrap_or_default();
            out.push_str(lead);
            out.push_str(name);
            out.push_str(tail);
        } else {
            out.push_str(word);
        }
    }
    if out.chars().count() > MAX_REASON {
        out = out.chars().take(MAX_REASON).collect::<String>() + "...";
    }
    out
}

/// The reason of a 400 from `/prompt`: ComfyUI's message and, per node, what it refused
/// (`node_errors`: the real reason, such as a checkpoint that is not installed).
fn refusal(answer: &Value) -> String {
    let message =
        answer.pointer("/error/message").and_then(Value::as_str).unwrap_or("no reason given");
    let mut reasons = Vec::new();
    if let Some(nodes) = answer.get("node_errors").and_then(Value::as_object) {
        for (node, entry) in nodes {
            let class = entry.get("class_type").and_then(Value::as_str).unwrap_or("a node");
            for error in entry.get("errors").and_then(Value::as_array).into_iter().flatten() {
                let what = error.get("message").and_then(Value::as_str).unwrap_or("invalid");
                let details = error.get("details").and_then(Value::as_str).unwrap_or_default();
                let details =
                    if details.is_empty() { String::new() } else { format!(": {details}") };
                reasons.push(format!("{class} (node {node}): {what}{details}"));
            }
        }
    }
    if reasons.is_empty() {
        let details = answer.pointer("/error/details").and_then(Value::as_str).unwrap_or_default();
        if !details.is_empty() {
            reasons.push(details.to_owned());
        }
    }
    let reasons =
        if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) };
    clean_reason(&format!("{message}{reasons}"))
}

/// Parses one WebSocket text message into `(prompt_id, event)`.
fn parse_message(text: &str) -> Option<(String, Event)> {
    let message: Value = serde_json::from_str(text).ok()?;
    let data = message.get("data")?;
    let prompt_id = data.get("prompt_id")?.as_str()?.to_owned();
    let node = || data.get("node").and_then(Value::as_str).map(str::to_owned);
    let event = match message.get("type")?.as_str()? {
        "execution_start" => Event::Started,
        "execution_cached" => Event::Cached(
            data.get("nodes")?
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
        ),
        "executing" => match node() {
            Some(node) => Event::Node(node),
            None => Event::Finished,
        },
        "progress" => Event::Progress {
            node: node(),
            value: data.get("value")?.as_f64()?,
            max: data.get("max")?.as_f64()?,
        },
        "progress_state" => Event::NodeStates(
            data.get("nodes")?
                .as_object()?
                .iter()
                .map(|(node, state)| {
                    let fraction = match state.get("state").and_then(Value::as_str) {
                        Some("finished") => 1.0,
                        _ => {
                            let value = state.get("value").and_then(Value::as_f64).unwrap_or(0.0);
                            let max = state.get("max").and_then(Value::as_f64).unwrap_or(1.0);
                            fraction(value, max)
                        }
                    };
                    (node.clone(), fraction)
                })
                .collect(),
        ),
        "executed" => {
            Event::Images(serde_json::from_value(data.get("output")?.get("images")?.clone()).ok()?)
        }
        "execution_success" => Event::Finished,
        "execution_error" => Event::Error {
            node_type: data.get("node_type").and_then(Value::as_str).map(str::to_owned),
            message: data
                .get("exception_message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned(),
        },
        "execution_interrupted" => Event::Interrupted,
        _ => return None,
    };
    Some((prompt_id, event))
}

/// `value` of `max` as a fraction in `0..=1` (0 for nonsense).
fn fraction(value: f64, max: f64) -> f64 {
    if max > 0.0 && value.is_finite() && max.is_finite() {
        (value / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A step count as people write it: `3`, or `2.5`.
fn step(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value:.1}")
    }
}

/// How far one prompt is: every node of its workflow that runs counts the same, a running
/// node by its own progress; the figure never goes back.
#[derive(Debug, Default)]
struct Tracker {
    /// Class of each node of the workflow.
    classes: HashMap<String, String>,
    cached: std::collections::HashSet<String>,
    /// Fraction done of each node that started.
    done: HashMap<String, f64>,
    /// The node running now.
    current: Option<String>,
    percent: u8,
}

impl Tracker {
    fn new(workflow: &Value) -> Tracker {
        let classes = workflow
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(id, node)| {
                Some((id.clone(), node.get("class_type")?.as_str()?.to_owned()))
            })
            .collect();
        Tracker { classes, ..Tracker::default() }
    }

    fn class(&self, node: &str) -> String {
        self.classes.get(node).cloned().unwrap_or_else(|| format!("node {node}"))
    }

    /// Takes `event` in; the message to show, if it changes what users see.
    fn apply(&mut self, event: &Event) -> Option<String> {
        match event {
            Event::Cached(nodes) => {
                let room = MAX_NODES.saturating_sub(self.cached.len());
                self.cached.extend(nodes.iter().take(room).cloned());
                None
            }
            Event::Node(node) => {
                if let Some(previous) = self.current.replace(node.clone()) {
                    self.advance(&previous, 1.0);
                }
                self.advance(node, 0.0);
                Some(format!("running {}", self.class(node)))
            }
            Event::Progress { node, value, max } => {
                let node = node.clone().or_else(|| self.current.clone())?;
                self.advance(&node, fraction(*value, *max));
                Some(format!("{}: step {} of {}", self.class(&node), step(*value), step(*max)))
            }
            Event::NodeStates(states) => {
                for (node, fraction) in states {
                    self.advance(node, *fraction);
                }
                None
            }
            _ => None,
        }
    }

    /// Raises `node`'s fraction done to `fraction` (a node beyond [`MAX_NODES`] is not kept).
    fn advance(&mut self, node: &str, fraction: f64) {
        if let Some(known) = self.done.get_mut(node) {
            *known = known.max(fraction);
        } else if self.done.len() < MAX_NODES {
            self.done.insert(node.to_owned(), fraction);
        }
    }

    /// Percent done, below 100 (the end is the result, not a node).
    fn percent(&mut self) -> u8 {
        let runs = self.classes.keys().filter(|n| !self.cached.contains(*n)).count();
        let runs = runs.max(self.done.keys().filter(|n| !self.cached.contains(*n)).count()).max(1);
        let done: f64 =
            self.done.iter().filter(|(n, _)| !self.cached.contains(*n)).map(|(_, f)| f).sum();
        let now = (95.0 * done / runs as f64).floor().clamp(0.0, 95.0) as u8;
        self.percent = self.percent.max(now);
        self.percent
    }
}

/// What `/history/{prompt_id}` says.
#[derive(Debug, PartialEq)]
enum History {
    /// Not there: still queued or running.
    Pending,
    Succeeded(Vec<ImageRef>),
    Failed(String),
}

fn parse_history(prompt_id: &str, body: &Value) -> History {
    let Some(entry) = body.get(prompt_id) else { return History::Pending };
    let status = entry.get("status");
    let status_str = status.and_then(|s| s.get("status_str")).and_then(Value::as_str);
    if status_str == Some("error") {
        let message = status
            .and_then(|s| s.get("messages"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|m| m.get(0).and_then(Value::as_str) == Some("execution_error"))
            .and_then(|m| m.get(1)?.get("exception_message")?.as_str())
            .unwrap_or("the prompt failed");
        return History::Failed(message.trim().to_owned());
    }
    let completed = status.and_then(|s| s.get("completed")).and_then(Value::as_bool);
    if completed == Some(false) && status_str.is_some() {
        return History::Failed("ComfyUI did not complete the prompt".into());
    }
    let images = entry
        .get("outputs")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|outputs| outputs.values())
        .filter_map(|o| o.get("images"))
        .filter_map(|i| serde_json::from_value::<Vec<ImageRef>>(i.clone()).ok())
        .flatten()
        .collect();
    History::Succeeded(images)
}

impl ComfyUiExecutor {
    /// Submits (or, after a restart, looks up) the prompt and follows it to its end.
    async fn run_prompt(
        &self,
        job: &Job,
        progress: &Progress,
        prompt_id: &str,
        sender: &mpsc::Sender<Event>,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<Artifact, String> {
        let inner = &*self.inner;
        let tracker = Tracker::new(inner.template(job));
        if job.external_ref.is_some() {
            // After a restart: what happened while nobody listened is in /history.
            let _ = sender.try_send(Event::Reconnected);
        } else {
            progress.report(0, "sending the workflow to ComfyUI").await;
            let workflow = inner.workflow_for(job).await?;
            inner.submit(workflow, prompt_id).await?;
            progress.set_external_ref(prompt_id).await;
            progress.report(0, "queued at ComfyUI").await;
        }
        let followed = tokio::time::timeout(
            inner.timeout,
            inner.follow_prompt(prompt_id, events, progress, tracker),
        )
        .await;
        match followed {
            Ok(outcome) => outcome,
            Err(_) => {
                self.cancel(job).await;
                Err(format!(
                    "ComfyUI did not finish within {} s (comfyui.timeout_s)",
                    inner.timeout.as_secs()
                ))
            }
        }
    }

    /// The executor's name.
    pub const NAME: &'static str = "comfyui";

    /// Reads the workflows and starts the WebSocket follower.
    ///
    /// # Errors
    /// The URL or a workflow file is unusable.
    pub fn start(settings: &Settings) -> Result<ComfyUiExecutor, String> {
        let comfy: &ComfyUiSettings = &settings.comfyui;
        let mut base = reqwest::Url::parse(&comfy.url)
            .map_err(|e| format!("comfyui.url {:?}: {e}", comfy.url))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let inner = Arc::new(Inner {
            base,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("comfyui: {e}"))?,
            client_id: Mutex::new(new_client_id()?),
            targeted_interrupt: tokio::sync::OnceCell::new(),
            text_to_image: workflow(&comfy.workflow_file, TEXT_TO_IMAGE)?,
            image_to_image: workflow(&comfy.img2img_workflow_file, IMAGE_TO_IMAGE)?,
            checkpoint: comfy.checkpoint.clone(),
            timeout: Duration::from_secs(comfy.timeout_s),
            fetcher: ImageFetcher::new(settings),
            waiters: Mutex::default(),
            prompts: Mutex::default(),
        });
        let backoff = Duration::from_millis(comfy.reconnect_max_ms);
        let liveness = Duration::from_millis(comfy.liveness_ms);
        tokio::spawn(follow(Arc::downgrade(&inner), backoff, liveness));
        Ok(ComfyUiExecutor { inner })
    }
}

/// A fresh client id for one WebSocket connection.
fn new_client_id() -> Result<String, String> {
    crate::secret::random_hex(16)
        .map(|hex| format!("taskpulse-{hex}"))
        .map_err(|e| format!("comfyui: no randomness: {e}"))
}

/// Keeps a WebSocket open (each under a new client id) and routes its messages, until the
/// executor is dropped.
async fn follow(inner: std::sync::Weak<Inner>, max_backoff: Duration, liveness: Duration) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let client_id = match new_client_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("{e}");
                strong.client_id.lock().clone()
            }
        };
        let mut url = strong.base.join("ws").expect("a relative path joins");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("ws and wss are valid schemes");
        url.query_pairs_mut().append_pair("clientId", &client_id);
        drop(strong);
        let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        let connecting =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(limits), false);
        match connecting.await {
            Ok((mut socket, _)) => {
                tracing::info!(%url, "connected to ComfyUI");
                backoff = Duration::from_millis(250);
                let Some(strong) = inner.upgrade() else { return };
                // Prompts submitted from now on name this socket.
                *strong.client_id.lock() = client_id;
                // Prompts followed before this connection may have moved meanwhile.
                for waiter in strong.waiters.lock().values() {
                    let _ = waiter.try_send(Event::Reconnected);
                }
                drop(strong);
                let mut pinged = false;
                loop {
                    let next = match tokio::time::timeout(liveness, socket.next()).await {
                        Ok(next) => next,
                        Err(_) if !pinged => {
                            pinged = true;
                            let ping = Message::Ping(Vec::new().into());
                            if futures_util::SinkExt::send(&mut socket, ping).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Err(_) => {
                            tracing::warn!(
                                "ComfyUI's WebSocket did not answer a ping within {liveness:?}; \
                                 replacing it"
                            );
                            break;
                        }
                    };
                    pinged = false;
                    let Some(Ok(message)) = next else { break };
                    let Message::Text(text) = message else { continue };
                    let Some(strong) = inner.upgrade() else { return };
                    if let Some((prompt_id, event)) = parse_message(&text)
                        && let Some(waiter) = strong.waiters.lock().get(&prompt_id)
                    {
                        // Full (a flood): dropped; a quiet spell's lookup repairs it.
                        let _ = waiter.try_send(event);
                    }
                }
                tracing::warn!("ComfyUI WebSocket closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(%url, "cannot connect to ComfyUI: {e}; retrying in {backoff:?}")
            }
        }
        // Whatever happens meanwhile is found through /history after the reconnect.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Unregisters a prompt's waiter when its task stops waiting (also when the run is dropped
/// because the task was cancelled; `cancel` then still finds the prompt in `prompts`).
struct Registration<'a> {
    inner: &'a Inner,
    prompt_id: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.inner.waiters.lock().remove(&self.prompt_id);
    }
}

/// Where a prompt is in ComfyUI's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Running,
    Waiting,
    /// In neither list.
    Absent,
}

impl Inner {
    fn url(&self, path: &str) -> reqwest::Url {
        self.base.join(path).expect("relative API paths join")
    }

    async fn history(&self, prompt_id: &str) -> Result<History, String> {
        let response = self
            .http
            .get(self.url(&format!("history/{prompt_id}")))
            .send()
            .await
            .map_err(|e| format!("ComfyUI /history failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("ComfyUI /history answered {}", response.status()));
        }
        let body: Value = response.json().await.map_err(|e| format!("ComfyUI /history: {e}"))?;
        Ok(parse_history(prompt_id, &body))
    }

    /// Where `/queue` has the prompt.
    async fn place(&self, prompt_id: &str) -> Result<Place, String> {
        let response = self
            .http
            .get(self.url("queue"))
            .send()
            .await
            .map_err(|e| format!("ComfyUI /queue failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("ComfyUI /queue answered {}", response.status()));
        }
        let body: Value = response.json().await.map_err(|e| format!("ComfyUI /queue: {e}"))?;
        // Each entry: [number, prompt_id, prompt, extra_data, outputs_to_execute].
        let listed = |list: &str| {
            body.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|entry| entry.get(1).and_then(Value::as_str) == Some(prompt_id))
        };
        Ok(if listed("queue_running") {
            Place::Running
        } else if listed("queue_pending") {
            Place::Waiting
        } else {
            Place::Absent
        })
    }

    /// Whether this ComfyUI's `/interrupt` honours `prompt_id` (asked once).
    async fn targeted_interrupt(&self) -> bool {
        *self
            .targeted_interrupt
            .get_or_init(|| async {
                let stats = self.http.get(self.url("system_stats")).send().await;
                let stats: Option<Value> = match stats {
                    Ok(response) => response.json().await.ok(),
                    Err(_) => None,
                };
                let version = stats
                    .as_ref()
                    .and_then(|s| s.pointer("/system/comfyui_version"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut parts =
                    version.trim_start_matches('v').split('.').map(|p| p.parse::<u32>());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => (a, b, c) >= TARGETED_INTERRUPT,
                    _ => false,
                }
            })
            .await
    }

    /// Stops a prompt: dropped from the queue while it waits, interrupted while it runs,
    /// and never anybody else's: an old ComfyUI's `/interrupt` stops whatever runs, so it is
    /// sent only when `/queue` says this prompt is the one running.
    async fn stop(&self, prompt_id: &str) -> Result<(), String> {
        match self.place(prompt_id).await? {
            Place::Waiting => {
                let body = json!({ "delete": [prompt_id] });
                let sent = self.http.post(self.url("queue")).json(&body).send().await;
                sent.map_err(|e| format!("ComfyUI /queue delete failed: {e}"))?;
            }
            Place::Running => {
                let body = if self.targeted_interrupt().await {
                    json!({ "prompt_id": prompt_id })
                } else {
                    json!({})
                };
                let sent = self.http.post(self.url("interrupt")).json(&body).send().await;
                sent.map_err(|e| format!("ComfyUI /interrupt failed: {e}"))?;
            }
            Place::Absent => {}
        }
        Ok(())
    }

    async fn upload(&self, task_no: &str, bytes: Vec<u8>) -> Result<String, String> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(format!("{task_no}.png"));
        let form = reqwest::multipart::Form::new().part("image", part).text("overwrite", "true");
        let response = self
            .http
            .post(self.url("upload/image"))
            .multipart(form)
            .send()
            .await
            .map_err(|e| format!("uploading the input image to ComfyUI failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("ComfyUI refused the input image ({})", response.status()));
        }
        let body: Value =
            response.json().await.map_err(|e| format!("ComfyUI /upload/image: {e}"))?;
        let name =
            body.get("name").and_then(Value::as_str).ok_or("ComfyUI /upload/image gave no name")?;
        match body.get("subfolder").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(sub) => Ok(format!("{sub}/{name}")),
            None => Ok(name.to_owned()),
        }
    }

    /// The workflow template of a job's kind.
    fn template(&self, job: &Job) -> &Value {
        match &job.request {
            SubmitTaskRequest::ImageToImage { .. } => &self.image_to_image,
            _ => &self.text_to_image,
        }
    }

    /// Builds the workflow for a job.
    async fn workflow_for(&self, job: &Job) -> Result<Value, String> {
        let (prompt, ratio, image) = match &job.request {
            SubmitTaskRequest::TextToImage { prompt, aspect_ratio } => {
                (prompt, *aspect_ratio, None)
            }
            SubmitTaskRequest::ImageToImage { prompt, image_url, aspect_ratio } => {
                let bytes = self.fetcher.fetch(image_url).await?;
                let name = self.upload(&job.task_no, bytes).await?;
                (prompt, *aspect_ratio, Some(name))
            }
            SubmitTaskRequest::External { .. } => {
                return Err("external tasks are run by an external worker".into());
            }
        };
        let (width, height) = super::demo::dimensions(ratio, 512);
        let seed = u64::from_str_radix(&job.task_no[..12.min(job.task_no.len())], 16).unwrap_or(0);
        let mut vars: HashMap<&str, Value> = HashMap::new();
        vars.insert("prompt", Value::String(prompt.clone()));
        vars.insert("checkpoint", Value::String(self.checkpoint.clone()));
        vars.insert("width", json!(width));
        vars.insert("height", json!(height));
        vars.insert("seed", json!(seed));
        if let Some(image) = image {
            vars.insert("image", Value::String(image));
        }
        Ok(fill(self.template(job), &vars))
    }

    /// Submits the workflow under our own `prompt_id`, so no event can arrive before we listen.
    async fn submit(&self, workflow: Value, prompt_id: &str) -> Result<(), String> {
        let client_id = self.client_id.lock().clone();
        let body = json!({ "prompt": workflow, "client_id": client_id, "prompt_id": prompt_id });
        let response = self
            .http
            .post(self.url("prompt"))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("ComfyUI is unreachable: {e}"))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("ComfyUI refused the workflow ({status}): {}", refusal(&answer)));
        }
        match answer.get("prompt_id").and_then(Value::as_str) {
            Some(id) if id == prompt_id => Ok(()),
            Some(other) => {
                // Accepted under another name: it would run for nobody.
                if let Err(e) = self.stop(other).await {
                    tracing::warn!(prompt = other, "cannot withdraw a renamed prompt: {e}");
                }
                Err(format!(
                    "ComfyUI renamed the prompt to {other} (withdrawn); this server needs a \
                     ComfyUI that accepts prompt_id"
                ))
            }
            None => Err("ComfyUI's answer to /prompt has no prompt_id".into()),
        }
    }

    async fn download(&self, image: &ImageRef) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(self.url("view"))
            .query(&[
                ("filename", &image.filename),
                ("subfolder", &image.subfolder),
                ("type", &image.kind),
            ])
            .send()
            .await
            .map_err(|e| format!("fetching the result from ComfyUI failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("ComfyUI /view answered {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| format!("ComfyUI /view: {e}"))?;
        Ok(bytes.to_vec())
    }

    /// The result of a prompt ComfyUI says finished: its images, from the events or else
    /// from `/history` (written a little after the event that says it finished).
    async fn finish(&self, prompt_id: &str, mut images: Vec<ImageRef>) -> Result<Artifact, String> {
        let deadline = tokio::time::Instant::now() + HISTORY_LAG;
        while images.is_empty() {
            // A failed lookup is asked again too, until the deadline.
            match self.history(prompt_id).await {
                Ok(History::Succeeded(found)) if !found.is_empty() => images = found,
                Ok(History::Failed(message)) => return Err(execution_error(None, &message)),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err("ComfyUI finished without an output image".into());
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let image = images.first().ok_or("ComfyUI finished without an output image")?;
        Ok(Artifact { bytes: self.download(image).await? })
    }

    /// After a gap or a quiet spell: what `/history` and `/queue` say of the prompt.
    /// `Ok(None)`: it is still waiting or running.
    async fn look_up(
        &self,
        prompt_id: &str,
        images: &[ImageRef],
    ) -> Result<Option<Result<Artifact, String>>, String> {
        match self.history(prompt_id).await? {
            History::Succeeded(found) => {
                let mut all = images.to_vec();
                all.extend(found);
                return Ok(Some(self.finish(prompt_id, all).await));
            }
            History::Failed(message) => return Ok(Some(Err(execution_error(None, &message)))),
            History::Pending => {}
        }
        if self.place(prompt_id).await? != Place::Absent {
            return Ok(None);
        }
        // Not queued, not running: finished a moment ago (its history not written yet), or
        // forgotten by a ComfyUI that restarted.
        tokio::time::sleep(HISTORY_LAG).await;
        match self.history(prompt_id).await? {
            History::Succeeded(found) => {
                let mut all = images.to_vec();
                all.extend(found);
                Ok(Some(self.finish(prompt_id, all).await))
            }
            History::Failed(message) => Ok(Some(Err(execution_error(None, &message)))),
            History::Pending => Ok(Some(Err(
                "ComfyUI no longer knows this prompt (neither queued, running nor in its \
                 history: did it restart?)"
                    .into(),
            ))),
        }
    }

    /// Follows one prompt to its end.
    async fn follow_prompt(
        &self,
        prompt_id: &str,
        events: &mut mpsc::Receiver<Event>,
        progress: &Progress,
        mut tracker: Tracker,
    ) -> Result<Artifact, String> {
        let mut images = Vec::new();
        let mut failed_lookups = 0;
        loop {
            // Events can be lost (a WebSocket gap, a prompt of an earlier client id): after
            // a quiet spell, ask /history as if the socket had reconnected.
            let event = match tokio::time::timeout(HISTORY_POLL, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err("the ComfyUI follower stopped".into()),
                Err(_) => Event::Reconnected,
            };
            if let Some(message) = tracker.apply(&event) {
                progress.report(tracker.percent(), message).await;
            }
            match event {
                Event::Started => progress.report(tracker.percent(), "running on ComfyUI").await,
                // Only the first output image is the result: no more are kept.
                Event::Images(found) if images.is_empty() => {
                    images.extend(found.into_iter().take(1))
                }
                Event::Images(_) => {}
                Event::Finished => return self.finish(prompt_id, images).await,
                Event::Error { node_type, message } => {
                    return Err(execution_error(node_type.as_deref(), &message));
                }
                Event::Interrupted => return Err("ComfyUI interrupted the prompt".into()),
                Event::Reconnected => match self.look_up(prompt_id, &images).await {
                    Ok(None) => failed_lookups = 0,
                    Ok(Some(outcome)) => return outcome,
                    // ComfyUI busy or restarting: ask again later, up to a point.
                    Err(e) if failed_lookups + 1 < LOOKUP_ATTEMPTS => {
                        failed_lookups += 1;
                        tracing::warn!(prompt = prompt_id, "{e}; asking again");
                    }
                    Err(e) => return Err(e),
                },
                Event::Cached(_)
                | Event::Node(_)
                | Event::Progress { .. }
                | Event::NodeStates(_) => {}
            }
        }
    }
}

/// A task's error for ComfyUI's reason, with the node class when known.
fn execution_error(node_type: Option<&str>, message: &str) -> String {
    let reason = clean_reason(message);
    match node_type {
        Some(node) => format!("ComfyUI execution error in {node}: {reason}"),
        None => format!("ComfyUI execution error: {reason}"),
    }
}

#[async_trait]
impl Executor for ComfyUiExecutor {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn run(&self, job: &Job, progress: &Progress) -> Result<Artifact, String> {
        let inner = &*self.inner;
        let (sender, mut events) = mpsc::channel(EVENT_QUEUE);
        let prompt_id = match &job.external_ref {
            Some(id) => id.clone(),
            None => {
                let hex =
                    crate::secret::random_hex(16).map_err(|e| format!("no randomness: {e}"))?;
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            }
        };
        inner.waiters.lock().insert(prompt_id.clone(), sender.clone());
        inner.prompts.lock().insert(job.task_no.clone(), prompt_id.clone());
        let _registration = Registration { inner, prompt_id: prompt_id.clone() };
        let outcome = self.run_prompt(job, progress, &prompt_id, &sender, &mut events).await;
        // Reached unless the run was dropped by a cancel, which then finds the prompt here.
        inner.prompts.lock().remove(&job.task_no);
        outcome
    }

    async fn cancel(&self, job: &Job) {
        let inner = &*self.inner;
        let prompt_id =
            inner.prompts.lock().remove(&job.task_no).or_else(|| job.external_ref.clone());
        let Some(prompt_id) = prompt_id else { return };
        if let Err(e) = inner.stop(&prompt_id).await {
            tracing::warn!(task = %job.task_no, "cannot cancel the ComfyUI prompt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_numbers_and_text() {
        let template: Value = serde_json::from_str(TEXT_TO_IMAGE).unwrap();
        let mut vars: HashMap<&str, Value> = HashMap::new();
        vars.insert("prompt", json!("a \"quoted\" {{cat}}"));
        vars.insert("checkpoint", json!("sd.safetensors"));
        vars.insert("width", json!(512));
        vars.insert("height", json!(288));
        vars.insert("seed", json!(7));
        let filled = fill(&template, &vars);
        assert_eq!(filled["6"]["inputs"]["text"], "a \"quoted\" {{cat}}");
        assert_eq!(filled["5"]["inputs"]["width"], 512);
        assert_eq!(filled["3"]["inputs"]["seed"], 7);
        assert_eq!(filled["4"]["inputs"]["ckpt_name"], "sd.safetensors");
        let i2i: Value = serde_json::from_str(IMAGE_TO_IMAGE).unwrap();
        assert_eq!(i2i["10"]["inputs"]["image"], "{{image}}");
    }

    #[test]
    fn messages_map_to_events() {
        let parse = |s: &str| parse_message(s).map(|(_, e)| e);
        assert_eq!(
            parse(r#"{"type":"progress","data":{"value":3,"max":20,"prompt_id":"p","node":"3"}}"#),
            Some(Event::Progress { node: Some("3".into()), value: 3.0, max: 20.0 })
        );
        assert_eq!(
            parse(r#"{"type":"executing","data":{"node":null,"prompt_id":"p"}}"#),
            Some(Event::Finished)
        );
        assert_eq!(
            parse(r#"{"type":"executing","data":{"node":"9","display_node":"9","prompt_id":"p"}}"#),
            Some(Event::Node("9".into()))
        );
        assert_eq!(
            parse(
                r#"{"type":"executed","data":{"node":"9","output":{"images":[{"filename":"a.png","subfolder":"","type":"output"}]},"prompt_id":"p"}}"#
            ),
            Some(Event::Images(vec![ImageRef {
                filename: "a.png".into(),
                subfolder: String::new(),
                kind: "output".into()
            }]))
        );
        assert_eq!(
            parse(
                r#"{"type":"execution_error","data":{"prompt_id":"p","node_type":"KSampler","exception_message":"CUDA out of memory\n"}}"#
            ),
            Some(Event::Error {
                node_type: Some("KSampler".into()),
                message: "CUDA out of memory\n".into()
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"progress","data":{"value":2.5,"max":5.0,"prompt_id":"p","node":"3"}}"#
            ),
            Some(Event::Progress { node: Some("3".into()), value: 2.5, max: 5.0 })
        );
        assert_eq!(
            parse(r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":1}}}}"#),
            None
        );
    }

    /// TLS is compiled in for both clients (rustls with ring): an https/wss attempt against a
    /// peer that hangs up fails with an error instead of "no TLS support" or a panic.
    #[tokio::test]
    async fn https_and_wss_attempts_reach_a_tls_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let wss = tokio_tungstenite::connect_async(format!("wss://127.0.0.1:{port}/ws")).await;
        let Err(error) = wss else { panic!("the peer hung up, yet the handshake succeeded") };
        let error = error.to_string();
        assert!(!error.contains("TLS support not compiled in"), "{error}");
        let https = reqwest::get(format!("https://127.0.0.1:{port}/x.png")).await;
        assert!(https.is_err());
    }

    #[test]
    fn templates_are_filled_in_one_pass_whatever_the_order() {
        // A HashMap's order differs from map to map: each round is a new map.
        for _ in 0..64 {
            let mut vars: HashMap<&str, Value> = HashMap::new();
            vars.insert("prompt", json!("draw {{checkpoint}} and {{image}}"));
            vars.insert("checkpoint", json!("sd.safetensors"));
            vars.insert("image", json!("in.png"));
            let filled =
                fill(&json!({"t": "{{prompt}} with {{checkpoint}} {{unknown}} {{"}), &vars);
            assert_eq!(
                filled["t"],
                "draw {{checkpoint}} and {{image}} with sd.safetensors {{unknown}} {{"
            );
        }
    }

    #[test]
    fn reasons_keep_file_names_not_server_paths() {
        assert_eq!(
            clean_reason("Error loading '/home/me/ComfyUI/models/x.safetensors': bad header\n"),
            "Error loading 'x.safetensors': bad header"
        );
        assert_eq!(clean_reason(r"File C:\\ComfyUI\\nodes.py, line 3"), "File nodes.py, line 3");
        assert_eq!(clean_reason("a/b is not a path, nor is /x"), "a/b is not a path, nor is /x");
        assert!(clean_reason(&"long ".repeat(500)).chars().count() <= MAX_REASON + 3);
        let refused = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'v1.safetensors' not in []"}], "class_type": "CheckpointLoaderSimple"}}});
        assert_eq!(
            refusal(&refused),
            "Prompt outputs failed validation: CheckpointLoaderSimple (node 4): Value not in list: ckpt_name: 'v1.safetensors' not in []"
        );
        assert_eq!(refusal(&Value::Null), "no reason given");
    }

    #[test]
    fn progress_counts_every_node_and_never_goes_back() {
        let template: Value = serde_json::from_str(TEXT_TO_IMAGE).unwrap();
        let mut tracker = Tracker::new(&template);
        let mut seen = Vec::new();
        let mut push = |tracker: &mut Tracker, event: Event| {
            tracker.apply(&event);
            seen.push(tracker.percent());
        };
        push(&mut tracker, Event::Cached(vec!["4".into()]));
        for node in ["6", "7", "5", "3"] {
            push(&mut tracker, Event::Node(node.into()));
        }
        let progress = |value: f64| Event::Progress { node: Some("3".into()), value, max: 20.0 };
        for value in [1.0, 10.0, 19.5, 20.0] {
            push(&mut tracker, progress(value));
        }
        // A second sampler starting over at step 1, and a stale state, do not move it back.
        push(&mut tracker, Event::Node("10".into()));
        push(&mut tracker, Event::Progress { node: Some("10".into()), value: 1.0, max: 20.0 });
        push(&mut tracker, Event::NodeStates(vec![("3".into(), 0.1)]));
        push(&mut tracker, Event::Node("8".into()));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(*seen.last().unwrap() < 95 && seen[8] > 50, "{seen:?}");
        assert_eq!(tracker.apply(&progress(4.5)).as_deref(), Some("KSampler: step 4.5 of 20"));
    }

    use proptest::prelude::*;

    /// A node event as ComfyUI might send it, however odd its numbers.
    fn any_event() -> impl Strategy<Value = Event> {
        let node = "[0-9]{1,2}";
        prop_oneof![
            node.prop_map(Event::Node),
            prop::collection::vec(node, 0..4).prop_map(Event::Cached),
            (prop::option::of(node), any::<f64>(), any::<f64>())
                .prop_map(|(node, value, max)| Event::Progress { node, value, max }),
            prop::collection::vec((node, any::<f64>()), 0..4).prop_map(|states| {
                Event::NodeStates(states.into_iter().map(|(n, f)| (n, fraction(f, 1.0))).collect())
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// What ComfyUI sends is read without panicking; a reason users see stays bounded.
        #[test]
        fn any_message_history_or_refusal_is_read_without_panicking(
            text in "\\PC{0,200}",
            kind in "(execution_error|progress|progress_state|executing|execution_cached|executed)",
            value in any::<f64>(),
        ) {
            let _ = parse_message(&text);
            let message = json!({"type": kind, "data": {"prompt_id": "p", "node": text,
                "value": value, "max": value, "nodes": {"3": {"value": value, "max": value, "state": text}},
                "exception_message": text, "output": {"images": text}}});
            let _ = parse_message(&message.to_string());
            let _ = parse_history("p", &json!({"p": {"status": {"status_str": text}, "outputs": {"9": {"images": text}}}}));
            let reason = clean_reason(&text.repeat(20));
            prop_assert!(reason.chars().count() <= MAX_REASON + 3);
            let refused = json!({"error": {"message": text}, "node_errors": {"4": {"errors": [{"message": text, "details": text}], "class_type": text}}});
            prop_assert!(refusal(&refused).chars().count() <= MAX_REASON + 3);
        }

        /// Whatever the events, progress stays in 0..=95 and never goes back.
        #[test]
        fn progress_from_any_events_stays_in_range_and_never_goes_back(
            events in prop::collection::vec(any_event(), 0..40),
        ) {
            let template: Value = serde_json::from_str(TEXT_TO_IMAGE).unwrap();
            let mut tracker = Tracker::new(&template);
            let mut last = 0;
            for event in &events {
                let _ = tracker.apply(event);
                let now = tracker.percent();
                prop_assert!(now >= last && now <= 95, "{} after {}", now, last);
                last = now;
            }
        }
    }

    #[test]
    fn history_says_pending_done_or_failed() {
        assert_eq!(parse_history("p", &json!({})), History::Pending);
        let done = json!({"p": {"outputs": {"9": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}},
                                "status": {"status_str": "success", "completed": true, "messages": []}}});
        assert!(
            matches!(parse_history("p", &done), History::Succeeded(images) if images.len() == 1)
        );
        let failed = json!({"p": {"outputs": {}, "status": {"status_str": "error", "completed": false,
            "messages": [["execution_start", {}], ["execution_error", {"exception_message": "boom"}]]}}});
        assert_eq!(parse_history("p", &failed), History::Failed("boom".into()));
    }
}
