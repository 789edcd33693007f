//! The JavaScript face of [`Client`]: the seed's `TaskWebSocketClient` class, its options
//! object, and the TypeScript types of everything it hands to callbacks.
//!
//! Values cross as plain objects (task updates as the document the server sent, through
//! `dto_js`), errors as `Error` objects with a `kind`.

use std::rc::Rc;

use js_sys::{Function, JSON, Object, Promise, Reflect};
use taskpulse_shared::stomp::{Frame, HeartBeat};
use wasm_bindgen::{JsCast, JsValue, closure::Closure, prelude::wasm_bindgen};
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::{
    ClientError,
    backoff::Backoff,
    client::{Client, ClientEvent},
    dto_js,
    options::{ClientOptions, TokenFuture, TokenSource, split_scheme},
    socket::describe,
};

/// The task DTO as TypeScript, checked against `shared`'s Rust type (and its JSON) by
/// `shared/tests/protocol/typescript.rs`.
#[wasm_bindgen(typescript_custom_section)]
const DTO_TYPES: &str = include_str!("dto.d.ts");

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Where a client stands in its user's log (the JSON protocol's `resume`). */
export interface Position {
  epoch: string;
  /** The last seq applied. */
  seq: number;
}

/** Which part of a snapshot a `task_progress` message is (1-based `index` of `count`). */
export interface SnapshotPart {
  index: number;
  count: number;
}

/** What a page sends on the JSON protocol at /ws/json (a bare browser WebSocket).
 *  Channels are destination names (`/user/queue/tasks-progress`, `/topic/chat.general`),
 *  or `tasks` for the user's task updates. */
export type ClientMessage =
  | { type: "auth"; token: string }
  | { type: "ping" }
  | { type: "subscribe"; channels: string[]; resume?: Position }
  | { type: "unsubscribe"; channels: string[] }
  | { type: "chat_message"; channel: string; content: string };

/** What the server sends on the JSON protocol at /ws/json. */
export type ServerMessage =
  | { type: "auth_success"; user: string }
  | { type: "auth_error"; code: string; message: string }
  | { type: "pong" }
  /** The channels are live: what they had missed was sent before this. */
  | { type: "subscribed"; channels: string[] }
  | { type: "unsubscribed"; channels: string[] }
  | {
      type: "task_progress";
      data: TaskProgressDto;
      seq: number;
      epoch: string;
      /** Sent again after a resume. */
      replayed?: boolean;
      /** Part of a snapshot, sent instead of a replay the log no longer covers. */
      snapshot?: SnapshotPart;
    }
  | {
      type: "notification";
      channel: string;
      /** JSON as published, or a string for any other body. */
      data: unknown;
      /** On private channels. */
      seq?: number;
      epoch?: string;
      replayed?: boolean;
    }
  | { type: "chat_message"; channel: string; from: string; content: string }
  | { type: "error"; code: string; message: string };

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected";

export interface TaskWebSocketClientOptions {
  /** Server base URL (http(s)://host:port, the endpoint is <url>/ws) or the ws(s):// endpoint.
   *  Default: this page's origin. */
  url?: string;
  /** A fixed token for the CONNECT frame's Authorization: Bearer header. */
  token?: string;
  /** Called before every connection attempt; use it to refresh expired tokens. */
  getToken?: () => string | Promise<string>;
  /** Exponential backoff with full jitter between attempts; reset after a healthy connection. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number; multiplier?: number; jitter?: boolean };
  /** Heart-beats offered to the server, ms (default 4000/4000; 0 turns one off). */
  heartbeat?: { incomingMs?: number; outgoingMs?: number };
  /** Longest time from opening the socket to CONNECTED, ms (default 10000). */
  connectionTimeoutMs?: number;
  /** Log frames and state changes with console.debug (the token is never logged). */
  debug?: boolean;
}

export interface ConnectInfo {
  version: "1.0" | "1.1" | "1.2";
  session?: string;
  /** The user the server authenticated. */
  user?: string;
  server?: string;
}

export interface DisconnectInfo {
  /** The WebSocket close code; 1006 when the client closed it (heart-beat loss, ERROR). */
  code: number;
  reason: string;
  wasClean: boolean;
  willReconnect: boolean;
}

export type TaskPulseErrorKind =
  | "invalid-url" | "rejected" | "stomp" | "transport" | "timeout" | "heartbeat"
  | "protocol" | "token" | "not-connected" | "stopped" | "invalid-options";

/** Every error the client reports or throws. "rejected" (the token was refused) stops the client. */
export interface TaskPulseError extends Error {
  name: "TaskPulseError";
  kind: TaskPulseErrorKind;
  /** For "rejected" and "stomp": the ERROR frame's message header and body. */
  stompMessage?: string;
  body?: string;
}

/** A MESSAGE delivered to a subscribe() callback. */
export interface StompMessage {
  destination: string;
  headers: Record<string, string>;
  body: string;
}
"#;

/// The task-progress client of the seed documents: `new TaskWebSocketClient(baseUrl, token)`
/// or `new TaskWebSocketClient(options)`. It reconnects on its own, resumes without losing
/// or repeating an update, and keeps heart-beats.
#[wasm_bindgen]
pub struct TaskWebSocketClient {
    client: Client,
}

#[wasm_bindgen]
impl TaskWebSocketClient {
    /// `new TaskWebSocketClient(baseUrl?, token)` as in the seed, or
    /// `new TaskWebSocketClient(options)`. Throws a `TaskPulseError` ("invalid-options" or
    /// "invalid-url") for options it cannot use.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(
            js_name = "baseUrlOrOptions",
            unchecked_optional_param_type = "string | TaskWebSocketClientOptions"
        )]
        base_url_or_options: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "string")] token: Option<String>,
    ) -> Result<TaskWebSocketClient, JsValue> {
        let options = if base_url_or_options.is_object() {
            read_options(&base_url_or_options)?
        } else {
            let base = base_url_or_options.as_string();
            let url = resolve_url(base.as_deref())?;
            let token = token.ok_or_else(|| invalid_options("a token is required"))?;
            ClientOptions::new(&url, TokenSource::Fixed(token)).map_err(|e| js_error(&e))?
        };
        Ok(TaskWebSocketClient { client: Client::new(options) })
    }

    /// Connects (if not connected) and resolves once CONNECTED; failed attempts are retried
    /// and reported through `onError`. Rejects with a `TaskPulseError` of kind "rejected"
    /// when the server refuses the token, or "stopped" when `disconnect()` comes first.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn connect(&self) -> Promise {
        let client = self.client.clone();
        future_to_promise(async move {
            client.connect().await.map(|()| JsValue::UNDEFINED).map_err(|e| js_error(&e))
        })
    }

    /// Sends DISCONNECT, closes, and stops reconnecting. Resolves when disconnected.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn disconnect(&self) -> Promise {
        let client = self.client.clone();
        future_to_promise(async move {
            client.disconnect().await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Whether a session is open.
    #[wasm_bindgen(js_name = isConnected)]
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// "connecting", "connected", "reconnecting" or "disconnected".
    #[wasm_bindgen(getter, unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> String {
        self.client.state().as_str().to_owned()
    }

    /// While reconnecting: when the next attempt starts (ms since the epoch, as `Date.now()`).
    #[wasm_bindgen(getter, js_name = nextRetryAt)]
    pub fn next_retry_at(&self) -> Option<f64> {
        self.client.next_retry_at()
    }

    /// Starts the next reconnect attempt now instead of waiting.
    #[wasm_bindgen(js_name = retryNow)]
    pub fn retry_now(&self) {
        self.client.retry_now();
    }

    /// The latest update of every task seen, by taskNo.
    #[wasm_bindgen(unchecked_return_type = "Record<string, TaskProgressDto>")]
    pub fn tasks(&self) -> JsValue {
        let tasks = Object::new();
        for update in self.client.tasks() {
            set(&tasks, &update.task_no, &dto_js::to_js(&update));
        }
        tasks.into()
    }

    /// Counters for diagnostics: `{ connects, replayed, snapshotEntries, duplicatesDropped }`.
    #[wasm_bindgen(
        unchecked_return_type = "{ connects: number; replayed: number; snapshotEntries: number; duplicatesDropped: number }"
    )]
    pub fn stats(&self) -> JsValue {
        let stats = self.client.stats();
        let object = Object::new();
        for (name, value) in [
            ("connects", stats.connects),
            ("replayed", stats.replayed),
            ("snapshotEntries", stats.snapshot_entries),
            ("duplicatesDropped", stats.duplicates_dropped),
        ] {
            set(&object, name, &(value as f64).into());
        }
        object.into()
    }

    /// Calls `callback` with each task update: every status change once, in order, also
    /// across reconnects. Returns the function that removes the listener.
    #[wasm_bindgen(js_name = onTaskUpdate, unchecked_return_type = "() => void")]
    pub fn on_task_update(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(task: TaskProgressDto) => void")]
        callback: Function,
    ) -> Function {
        self.on(callback, |event| match event {
            ClientEvent::TaskUpdate(update) => Some(dto_js::to_js(update)),
            _ => None,
        })
    }

    /// Calls `callback` on every CONNECTED (the first and each reconnect).
    #[wasm_bindgen(js_name = onConnect, unchecked_return_type = "() => void")]
    pub fn on_connect(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(info: ConnectInfo) => void")] callback: Function,
    ) -> Function {
        self.on(callback, |event| match event {
            ClientEvent::Connected(info) => {
                let object = Object::new();
                set(&object, "version", &info.version.as_str().into());
                for (name, value) in
                    [("session", &info.id), ("user", &info.user), ("server", &info.server)]
                {
                    if let Some(value) = value {
                        set(&object, name, &value.into());
                    }
                }
                Some(object.into())
            }
            _ => None,
        })
    }

    /// Calls `callback` whenever a connection ends.
    #[wasm_bindgen(js_name = onDisconnect, unchecked_return_type = "() => void")]
    pub fn on_disconnect(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(info: DisconnectInfo) => void")] callback: Function,
    ) -> Function {
        self.on(callback, |event| match event {
            ClientEvent::Disconnected(info) => {
                let object = Object::new();
                set(&object, "code", &info.code.into());
                set(&object, "reason", &info.reason.as_str().into());
                set(&object, "wasClean", &info.was_clean.into());
                set(&object, "willReconnect", &info.will_reconnect.into());
                Some(object.into())
            }
            _ => None,
        })
    }

    /// Calls `callback` with every error (failed attempts, ERROR frames, heart-beat loss).
    #[wasm_bindgen(js_name = onError, unchecked_return_type = "() => void")]
    pub fn on_error(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(error: TaskPulseError) => void")]
        callback: Function,
    ) -> Function {
        self.on(callback, |event| match event {
            ClientEvent::Error(error) => Some(js_error(error)),
            _ => None,
        })
    }

    /// Calls `callback` with the new state on every change.
    #[wasm_bindgen(js_name = onStateChange, unchecked_return_type = "() => void")]
    pub fn on_state_change(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(state: ConnectionState) => void")]
        callback: Function,
    ) -> Function {
        self.on(callback, |event| match event {
            ClientEvent::StateChanged { state, .. } => Some(state.as_str().into()),
            _ => None,
        })
    }

    /// Subscribes to any destination (`/topic/...`, `/queue/...`, `/user/queue/...`), now
    /// and after every reconnect; `/user/...` ones resume without loss or duplicates.
    /// Returns the function that unsubscribes.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn subscribe(
        &self,
        destination: &str,
        #[wasm_bindgen(unchecked_param_type = "(message: StompMessage) => void")]
        callback: Function,
    ) -> Function {
        let id = self.client.subscribe(destination, move |frame| {
            call(&callback, &message_object(frame));
        });
        let client = self.client.clone();
        Closure::<dyn FnMut()>::new(move || client.unsubscribe(id)).into_js_value().unchecked_into()
    }

    /// Sends `body` to `destination`: a string as text/plain, anything else as JSON.
    /// Throws a `TaskPulseError` of kind "not-connected" while no session is open.
    pub fn publish(
        &self,
        destination: &str,
        #[wasm_bindgen(unchecked_param_type = "unknown")] body: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "Record<string, string>")] headers: Option<
            Object,
        >,
    ) -> Result<(), JsValue> {
        let (text, content_type) = match body.as_string() {
            Some(text) => (text, "text/plain;charset=utf-8"),
            None => {
                let json = JSON::stringify(&body)
                    .map_err(|_| invalid_options("publish: the body cannot be turned into JSON"))?;
                (String::from(json), "application/json")
            }
        };
        let headers: Vec<(String, String)> = match headers {
            Some(headers) => Object::entries(&headers)
                .iter()
                .filter_map(|entry| {
                    let pair: js_sys::Array = entry.unchecked_into();
                    Some((pair.get(0).as_string()?, pair.get(1).as_string()?))
                })
                .collect(),
            None => Vec::new(),
        };
        self.client.publish(destination, &text, content_type, &headers).map_err(|e| js_error(&e))
    }

    fn on(
        &self,
        callback: Function,
        select: impl Fn(&ClientEvent) -> Option<JsValue> + 'static,
    ) -> Function {
        let id = self.client.listen(move |event| {
            if let Some(argument) = select(event) {
                call(&callback, &argument);
            }
        });
        let client = self.client.clone();
        Closure::<dyn FnMut()>::new(move || client.unlisten(id)).into_js_value().unchecked_into()
    }
}

impl TaskWebSocketClient {
    /// The Rust client behind the class.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Calls a listener; an exception is logged, as the seed does, and does not stop the others.
fn call(callback: &Function, argument: &JsValue) {
    if let Err(error) = callback.call1(&JsValue::NULL, argument) {
        web_sys::console::error_2(&"TaskPulse: a listener threw".into(), &error);
    }
}

fn set(object: &Object, name: &str, value: &JsValue) {
    let _ = Reflect::set(object, &name.into(), value);
}

fn get(object: &JsValue, name: &str) -> JsValue {
    Reflect::get(object, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

fn message_object(frame: &Frame) -> JsValue {
    let object = Object::new();
    set(&object, "destination", &frame.header("destination").unwrap_or_default().into());
    let headers = Object::new();
    for (name, value) in frame.headers.iter() {
        set(&headers, name, &value.into());
    }
    set(&object, "headers", &headers);
    set(&object, "body", &String::from_utf8_lossy(&frame.body).as_ref().into());
    object.into()
}

/// A `TaskPulseError`: an `Error` with `name`, `kind` and, for ERROR frames, their text.
pub(crate) fn js_error(error: &ClientError) -> JsValue {
    let object = js_sys::Error::new(&error.to_string());
    object.set_name("TaskPulseError");
    set(&object, "kind", &error.kind().into());
    if let ClientError::Rejected { message, body } | ClientError::Stomp { message, body } = error {
        set(&object, "stompMessage", &message.as_str().into());
        set(&object, "body", &body.as_str().into());
    }
    object.into()
}

fn invalid_options(text: &str) -> JsValue {
    let object = js_sys::Error::new(&format!("TaskWebSocketClient: {text}"));
    object.set_name("TaskPulseError");
    set(&object, "kind", &"invalid-options".into());
    object.into()
}

const OPTION_NAMES: [&str; 7] =
    ["url", "token", "getToken", "reconnect", "heartbeat", "connectionTimeoutMs", "debug"];

/// Reads the options object; a misspelt or mistyped option is an error, not a silent default.
fn read_options(value: &JsValue) -> Result<ClientOptions, JsValue> {
    check_keys(value, "", &OPTION_NAMES)?;
    let url = optional_string(value, "url")?;
    let url = resolve_url(url.as_deref())?;
    let token = optional_string(value, "token")?;
    let get_token = get(value, "getToken");
    let token = match (token, get_token.dyn_into::<Function>()) {
        (Some(_), Ok(_)) => return Err(invalid_options("give either token or getToken, not both")),
        (Some(token), Err(_)) => TokenSource::Fixed(token),
        (None, Ok(function)) => TokenSource::Provider(token_provider(function)),
        (None, Err(other)) if other.is_undefined() => {
            return Err(invalid_options("a token or a getToken function is required"));
        }
        (None, Err(_)) => return Err(invalid_options("getToken must be a function")),
    };
    let mut options = ClientOptions::new(&url, token).map_err(|e| js_error(&e))?;

    let reconnect = get(value, "reconnect");
    if !reconnect.is_undefined() {
        check_keys(
            &reconnect,
            "reconnect.",
            &["initialDelayMs", "maxDelayMs", "multiplier", "jitter"],
        )?;
        let defaults = Backoff::default();
        options.reconnect = Backoff {
            initial_ms: optional_ms(&reconnect, "reconnect.", "initialDelayMs")?
                .unwrap_or(defaults.initial_ms),
            max_ms: optional_ms(&reconnect, "reconnect.", "maxDelayMs")?.unwrap_or(defaults.max_ms),
            multiplier: optional_number(&reconnect, "reconnect.", "multiplier")?
                .unwrap_or(defaults.multiplier),
            jitter: optional_bool(&reconnect, "reconnect.", "jitter")?.unwrap_or(defaults.jitter),
        };
    }
    let heartbeat = get(value, "heartbeat");
    if !heartbeat.is_undefined() {
        check_keys(&heartbeat, "heartbeat.", &["incomingMs", "outgoingMs"])?;
        options.heartbeat = HeartBeat {
            send_ms: optional_ms(&heartbeat, "heartbeat.", "outgoingMs")?
                .unwrap_or(options.heartbeat.send_ms),
            receive_ms: optional_ms(&heartbeat, "heartbeat.", "incomingMs")?
                .unwrap_or(options.heartbeat.receive_ms),
        };
    }
    if let Some(ms) = optional_ms(value, "", "connectionTimeoutMs")? {
        options.connection_timeout_ms = ms.max(1);
    }
    options.debug = optional_bool(value, "", "debug")?.unwrap_or(false);
    Ok(options)
}

fn check_keys(value: &JsValue, prefix: &str, known: &[&str]) -> Result<(), JsValue> {
    let Some(object) = value.dyn_ref::<Object>() else {
        return Err(invalid_options(&format!(
            "{}must be an object",
            if prefix.is_empty() { "options " } else { prefix }
        )));
    };
    for key in Object::keys(object).iter() {
        let key = key.as_string().unwrap_or_default();
        if !known.contains(&key.as_str()) {
            let mut text = format!("unknown option {prefix}{key} (known: ");
            for (i, name) in known.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(name);
            }
            text.push(')');
            return Err(invalid_options(&text));
        }
    }
    Ok(())
}

fn optional_string(object: &JsValue, name: &str) -> Result<Option<String>, JsValue> {
    let value = get(object, name);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value.as_string().map(Some).ok_or_else(|| invalid_options(&format!("{name} must be a string")))
}

fn optional_number(object: &JsValue, prefix: &str, name: &str) -> Result<Option<f64>, JsValue> {
    let value = get(object, name);
    if value.is_undefined() {
        return Ok(None);
    }
    match value.as_f64() {
        Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
        _ => Err(invalid_options(&format!("{prefix}{name} must be a number >= 0"))),
    }
}

fn optional_ms(object: &JsValue, prefix: &str, name: &str) -> Result<Option<u32>, JsValue> {
    Ok(optional_number(object, prefix, name)?.map(|n| n.min(f64::from(u32::MAX)) as u32))
}

fn optional_bool(object: &JsValue, prefix: &str, name: &str) -> Result<Option<bool>, JsValue> {
    let value = get(object, name);
    if value.is_undefined() {
        return Ok(None);
    }
    value
        .as_bool()
        .map(Some)
        .ok_or_else(|| invalid_options(&format!("{prefix}{name} must be true or false")))
}

/// The URL to use: the given one, relative ones against the page, none = the page's origin.
fn resolve_url(url: Option<&str>) -> Result<String, JsValue> {
    let location = web_sys::window().map(|w| w.location());
    let origin = location.as_ref().and_then(|l| l.origin().ok());
    match (url, origin) {
        (Some(url), _) if split_scheme(url).is_some() => Ok(url.to_owned()),
        (Some(path), Some(origin)) if path.starts_with('/') => Ok(format!("{origin}{path}")),
        (None, Some(origin)) => Ok(origin),
        (Some(other), _) => Ok(other.to_owned()),
        (None, None) => Err(invalid_options("url is required outside a browser page")),
    }
}

fn token_provider(function: Function) -> Rc<dyn Fn() -> TokenFuture> {
    Rc::new(move || {
        let function = function.clone();
        Box::pin(async move {
            let value = function.call0(&JsValue::NULL).map_err(describe)?;
            let value = JsFuture::from(Promise::resolve(&value)).await.map_err(describe)?;
            value
                .as_string()
                .filter(|token| !token.is_empty())
                .ok_or_else(|| "it did not return a non-empty string".to_owned())
        }) as TokenFuture
    })
}
