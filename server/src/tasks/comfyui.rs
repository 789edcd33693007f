//! The ComfyUI executor. TaskPulse is a client of ComfyUI: it submits a workflow to
//! `POST /prompt` with its `client_id`, follows `/ws?clientId=` for `execution_start`,
//! `executing`, `progress`, `executed`, `execution_success`, `execution_error` and
//! `execution_interrupted`, matched to tasks by `prompt_id`, and fetches images from `/view`.
//!
//! The WebSocket is kept open by one background task that reconnects with exponential
//! backoff. Messages sent while it was down are lost, so after every reconnect each waiting
//! task asks `/history/{prompt_id}` what became of its prompt.

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
    client_id: String,
    text_to_image: Value,
    image_to_image: Value,
    checkpoint: String,
    timeout: Duration,
    fetcher: ImageFetcher,
    /// Event channels of running prompts, by `prompt_id`.
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<Event>>>,
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
    Node(String),
    Progress {
        value: u64,
        max: u64,
    },
    Images(Vec<ImageRef>),
    Finished,
    Error(String),
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
/// strings `"{{width}}"`, `"{{height}}"`, `"{{seed}}"` by numbers.
fn fill(template: &Value, vars: &HashMap<&str, Value>) -> Value {
    match template {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && let Some(value) = vars.get(name)
            {
                return value.clone();
            }
            let mut out = s.clone();
            for (name, value) in vars {
                if let Value::String(text) = value {
                    out = out.replace(&format!("{{{{{name}}}}}"), text);
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, vars)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, vars))).collect())
        }
        other => other.clone(),
    }
}

/// Parses one WebSocket text message into `(prompt_id, event)`.
fn parse_message(text: &str) -> Option<(String, Event)> {
    let message: Value = serde_json::from_str(text).ok()?;
    let data = message.get("data")?;
    let prompt_id = data.get("prompt_id")?.as_str()?.to_owned();
    let event = match message.get("type")?.as_str()? {
        "execution_start" => Event::Started,
        "executing" => match data.get("node") {
            Some(Value::String(node)) => Event::Node(node.clone()),
            _ => Event::Finished,
        },
        "progress" => {
            Event::Progress { value: data.get("value")?.as_u64()?, max: data.get("max")?.as_u64()? }
        }
        "executed" => {
            Event::Images(serde_json::from_value(data.get("output")?.get("images")?.clone()).ok()?)
        }
        "execution_success" => Event::Finished,
        "execution_error" => Event::Error(
            data.get("exception_message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .trim()
                .to_owned(),
        ),
        "execution_interrupted" => Event::Interrupted,
        _ => return None,
    };
    Some((prompt_id, event))
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
        sender: &mpsc::UnboundedSender<Event>,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Result<Artifact, String> {
        let inner = &*self.inner;
        if job.external_ref.is_some() {
            // After a restart: what happened while nobody listened is in /history.
            let _ = sender.send(Event::Reconnected);
        } else {
            progress.report(0, "sending the workflow to ComfyUI").await;
            let workflow = inner.workflow_for(job).await?;
            inner.submit(workflow, prompt_id).await?;
            progress.set_external_ref(prompt_id).await;
            progress.report(0, "queued at ComfyUI").await;
        }
        let followed =
            tokio::time::timeout(inner.timeout, inner.follow_prompt(prompt_id, events, progress))
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

    /// Reads the workflows and starts the WebSocket follower. The `client_id` is kept in
    /// `<data_dir>/comfyui-client-id`, so that after a restart ComfyUI still sends this server
    /// the events of prompts it submitted before.
    ///
    /// # Errors
    /// The URL or a workflow file is unusable.
    pub fn start(
        settings: &Settings,
        data_dir: &std::path::Path,
    ) -> Result<ComfyUiExecutor, String> {
        let comfy: &ComfyUiSettings = &settings.comfyui;
        let mut base = reqwest::Url::parse(&comfy.url)
            .map_err(|e| format!("comfyui.url {:?}: {e}", comfy.url))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let id = crate::broker::stored_secret(data_dir, "comfyui-client-id")
            .map_err(|e| format!("comfyui: {e}"))?;
        let inner = Arc::new(Inner {
            base,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("comfyui: {e}"))?,
            client_id: format!("taskpulse-{}", String::from_utf8_lossy(&id[..32.min(id.len())])),
            text_to_image: workflow(&comfy.workflow_file, TEXT_TO_IMAGE)?,
            image_to_image: workflow(&comfy.img2img_workflow_file, IMAGE_TO_IMAGE)?,
            checkpoint: comfy.checkpoint.clone(),
            timeout: Duration::from_secs(comfy.timeout_s),
            fetcher: ImageFetcher::new(settings),
            waiters: Mutex::default(),
            prompts: Mutex::default(),
        });
        tokio::spawn(follow(Arc::downgrade(&inner), Duration::from_millis(comfy.reconnect_max_ms)));
        Ok(ComfyUiExecutor { inner })
    }
}

/// Keeps the WebSocket open and routes its messages, until the executor is dropped.
async fn follow(inner: std::sync::Weak<Inner>, max_backoff: Duration) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let mut url = strong.base.join("ws").expect("a relative path joins");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("ws and wss are valid schemes");
        url.query_pairs_mut().append_pair("clientId", &strong.client_id);
        drop(strong);
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut socket, _)) => {
                tracing::info!(%url, "connected to ComfyUI");
                backoff = Duration::from_millis(250);
                // Prompts followed before this connection may have moved meanwhile.
                if let Some(strong) = inner.upgrade() {
                    for waiter in strong.waiters.lock().values() {
                        let _ = waiter.send(Event::Reconnected);
                    }
                }
                while let Some(message) = socket.next().await {
                    let Ok(message) = message else { break };
                    let Message::Text(text) = message else { continue };
                    let Some(strong) = inner.upgrade() else { return };
                    if let Some((prompt_id, event)) = parse_message(&text)
                        && let Some(waiter) = strong.waiters.lock().get(&prompt_id)
                    {
                        let _ = waiter.send(event);
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
        let body: Value = response.json().await.map_err(|e| format!("ComfyUI /history: {e}"))?;
        Ok(parse_history(prompt_id, &body))
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

    /// Builds the workflow for a job.
    async fn workflow_for(&self, job: &Job) -> Result<Value, String> {
        let (template, prompt, ratio, image) = match &job.request {
            SubmitTaskRequest::TextToImage { prompt, aspect_ratio } => {
                (&self.text_to_image, prompt, *aspect_ratio, None)
            }
            SubmitTaskRequest::ImageToImage { prompt, image_url, aspect_ratio } => {
                let bytes = self.fetcher.fetch(image_url).await?;
                let name = self.upload(&job.task_no, bytes).await?;
                (&self.image_to_image, prompt, *aspect_ratio, Some(name))
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
        Ok(fill(template, &vars))
    }

    /// Submits the workflow under our own `prompt_id`, so no event can arrive before we listen.
    async fn submit(&self, workflow: Value, prompt_id: &str) -> Result<(), String> {
        let body =
            json!({ "prompt": workflow, "client_id": self.client_id, "prompt_id": prompt_id });
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
            let message = answer
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(format!("ComfyUI refused the workflow ({status}): {message}"));
        }
        match answer.get("prompt_id").and_then(Value::as_str) {
            Some(id) if id == prompt_id => Ok(()),
            Some(other) => Err(format!(
                "ComfyUI renamed the prompt to {other}; this server needs a ComfyUI that accepts prompt_id"
            )),
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

    async fn finish(&self, prompt_id: &str, mut images: Vec<ImageRef>) -> Result<Artifact, String> {
        if images.is_empty()
            && let History::Succeeded(found) = self.history(prompt_id).await?
        {
            images = found;
        }
        let image = images.first().ok_or("ComfyUI finished without an output image")?;
        Ok(Artifact { bytes: self.download(image).await? })
    }

    /// Follows one prompt to its end.
    async fn follow_prompt(
        &self,
        prompt_id: &str,
        events: &mut mpsc::UnboundedReceiver<Event>,
        progress: &Progress,
    ) -> Result<Artifact, String> {
        let mut images = Vec::new();
        let mut percent = 0u8;
        loop {
            // Events can be lost (a WebSocket gap, another process's client id): after a
            // quiet spell, ask /history as if the socket had reconnected.
            let event = match tokio::time::timeout(HISTORY_POLL, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err("the ComfyUI follower stopped".into()),
                Err(_) => Event::Reconnected,
            };
            match event {
                Event::Started => progress.report(percent, "running on ComfyUI").await,
                Event::Node(node) => progress.report(percent, format!("ComfyUI node {node}")).await,
                Event::Progress { value, max } => {
                    percent = (value.min(max) * 95 / max.max(1)) as u8;
                    progress.report(percent, format!("sampling, step {value} of {max}")).await;
                }
                Event::Images(found) => images.extend(found),
                Event::Finished => return self.finish(prompt_id, images).await,
                Event::Error(message) => return Err(format!("ComfyUI execution error: {message}")),
                Event::Interrupted => return Err("ComfyUI interrupted the prompt".into()),
                Event::Reconnected => match self.history(prompt_id).await? {
                    History::Pending => {}
                    History::Succeeded(found) => {
                        images.extend(found);
                        return self.finish(prompt_id, images).await;
                    }
                    History::Failed(message) => {
                        return Err(format!("ComfyUI execution error: {message}"));
                    }
                },
            }
        }
    }
}

#[async_trait]
impl Executor for ComfyUiExecutor {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn run(&self, job: &Job, progress: &Progress) -> Result<Artifact, String> {
        let inner = &*self.inner;
        let (sender, mut events) = mpsc::unbounded_channel();
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
        // Drop it from the queue if it waits there, and interrupt it if it runs.
        let queue =
            inner.http.post(inner.url("queue")).json(&json!({ "delete": [prompt_id] })).send();
        let interrupt =
            inner.http.post(inner.url("interrupt")).json(&json!({ "prompt_id": prompt_id })).send();
        let (queue, interrupt) = tokio::join!(queue, interrupt);
        if let Err(e) = queue.and(interrupt) {
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
            Some(Event::Progress { value: 3, max: 20 })
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
                r#"{"type":"execution_error","data":{"prompt_id":"p","exception_message":"CUDA out of memory\n"}}"#
            ),
            Some(Event::Error("CUDA out of memory".into()))
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
