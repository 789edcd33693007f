//! The client in headless Chromium against the real server, which `cargo xtask test` starts
//! before building these tests and describes in `TASKPULSE_TEST_*` variables (read at
//! compile time: a wasm test cannot read the environment). Also started: a relay the tests
//! can freeze, to make the server go silent without closing.

use std::{cell::RefCell, collections::BTreeMap, future::Future, rc::Rc};

use futures_util::{FutureExt, Stream, StreamExt, select_biased};
use gloo_timers::future::TimeoutFuture;
use js_sys::{Function, Object, Promise, Reflect};
use serde_json::{Value, json};
use taskpulse_client::{
    Client, ClientError, ClientEvent, ClientOptions, ConnectionState, TaskWebSocketClient,
    TokenSource,
};
use taskpulse_shared::{TaskProgressDto, TaskStatus};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

struct Setup {
    http: &'static str,
    proxy_ws: &'static str,
    proxy_control: &'static str,
    secret: &'static str,
    api_key: &'static str,
}

fn setup() -> Setup {
    // Failing loudly, not skipping: a skipped live test would pass while testing nothing.
    fn given(value: Option<&'static str>) -> &'static str {
        value.unwrap_or_else(|| {
            panic!("run these tests with `cargo xtask test` (or test-client): it starts the server")
        })
    }
    Setup {
        http: given(option_env!("TASKPULSE_TEST_HTTP")),
        proxy_ws: given(option_env!("TASKPULSE_TEST_PROXY_WS")),
        proxy_control: given(option_env!("TASKPULSE_TEST_PROXY_CONTROL")),
        secret: given(option_env!("TASKPULSE_TEST_JWT_SECRET")),
        api_key: given(option_env!("TASKPULSE_TEST_API_KEY")),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", (js_sys::Math::random() * 1e12) as u64)
}

async fn sleep(ms: u32) {
    TimeoutFuture::new(ms).await;
}

/// `future`, or a panic naming what did not happen within `ms`.
async fn within<T>(ms: u32, what: &str, future: impl Future<Output = T>) -> T {
    select_biased! {
        value = future.fuse() => value,
        () = TimeoutFuture::new(ms).fuse() => panic!("{what} did not happen within {ms} ms"),
    }
}

async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut builder = gloo_net::http::RequestBuilder::new(url).method(method.parse().unwrap());
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = match body {
        Some(body) => builder.json(&body).unwrap(),
        None => builder.build().unwrap(),
    };
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn register(user: &str) -> String {
    let url = format!("{}/api/auth/register", setup().http);
    let (status, body) =
        request("POST", &url, &[], Some(json!({"username": user, "password": "correct horse 9"})))
            .await;
    assert_eq!(status, 201, "register {user}: {body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn submit(token: &str, prompt: &str) -> String {
    let url = format!("{}/api/tasks", setup().http);
    let bearer = format!("Bearer {token}");
    let body = json!({"kind": "text-to-image", "prompt": prompt});
    let (status, body) = request("POST", &url, &[("Authorization", &bearer)], Some(body)).await;
    assert_eq!(status, 202, "submit: {body}");
    body["taskNo"].as_str().unwrap().to_owned()
}

async fn task_state(token: &str, task: &str) -> TaskStatus {
    let url = format!("{}/api/tasks/{task}", setup().http);
    let bearer = format!("Bearer {token}");
    let (status, body) = request("GET", &url, &[("Authorization", &bearer)], None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["status"].clone()).unwrap()
}

/// The operator's kick: the server closes every connection of `user`.
async fn kick(user: &str) {
    let setup = setup();
    let url = format!("{}/api/admin/disconnect", setup.http);
    let (status, body) =
        request("POST", &url, &[("X-API-Key", setup.api_key)], Some(json!({"user": user}))).await;
    assert_eq!(status, 200, "kick: {body}");
}

async fn proxy(command: &str) {
    let url = format!("{}/{command}", setup().proxy_control);
    let (status, _) = request("GET", &url, &[], None).await;
    assert_eq!(status, 200, "proxy {command}");
}

/// An HS256 token for `user` that expires `ttl_s` from now, signed with the server's secret.
fn mint(user: &str, ttl_s: f64) -> String {
    use hmac::{Hmac, Mac};
    let exp = (js_sys::Date::now() / 1000.0 + ttl_s) as u64;
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = base64url(json!({"sub": user, "exp": exp}).to_string().as_bytes());
    let signing = format!("{header}.{claims}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(setup().secret.as_bytes()).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", base64url(&mac.finalize().into_bytes()))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn client(url: &str, token: TokenSource, tweak: impl FnOnce(&mut ClientOptions)) -> Client {
    let mut options = ClientOptions::new(url, token).unwrap();
    options.reconnect.initial_ms = 200;
    tweak(&mut options);
    Client::new(options)
}

/// Updates until every task in `tasks` has a final status, by task.
async fn until_final(
    updates: &mut (impl Stream<Item = TaskProgressDto> + Unpin),
    tasks: &[String],
) -> BTreeMap<String, Vec<TaskProgressDto>> {
    let mut seen: BTreeMap<String, Vec<TaskProgressDto>> = BTreeMap::new();
    let done = |seen: &BTreeMap<String, Vec<TaskProgressDto>>| {
        tasks
            .iter()
            .all(|t| seen.get(t).and_then(|u| u.last()).is_some_and(|u| u.status.is_terminal()))
    };
    while !done(&seen) {
        let update = updates.next().await.expect("the stream lives as long as the client");
        seen.entry(update.task_no.clone()).or_default().push(update);
    }
    seen
}

/// Each status at most once and in lifecycle order, progress never going back, and not
/// the same update twice: what "without loss or duplicates" means to a listener.
fn assert_orderly(task: &str, updates: &[TaskProgressDto]) {
    let rank = |s: TaskStatus| match s {
        TaskStatus::Created => 0,
        TaskStatus::Queued => 1,
        TaskStatus::Processing => 2,
        TaskStatus::Completed | TaskStatus::Failed => 3,
    };
    for pair in updates.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(a != b, "{task}: the same update twice: {a:?}");
        assert!(rank(a.status) <= rank(b.status), "{task}: {:?} after {:?}", b.status, a.status);
        if a.status == b.status && a.status == TaskStatus::Processing {
            assert!(a.progress <= b.progress, "{task}: progress went back: {a:?} then {b:?}");
        }
    }
    let finals = updates.iter().filter(|u| u.status.is_terminal()).count();
    assert_eq!(finals, 1, "{task}: one final status, got {updates:?}");
}

#[wasm_bindgen_test]
async fn receives_every_status_of_a_submitted_task() {
    let user = unique("watcher");
    let token = register(&user).await;
    let client = client(setup().http, TokenSource::Fixed(token.clone()), |_| {});
    let mut updates = Box::pin(client.task_updates());
    within(10_000, "connect", client.connect()).await.unwrap();
    assert_eq!(client.state(), ConnectionState::Connected);

    let task = submit(&token, "a lighthouse at dusk").await;
    let seen =
        within(30_000, "the final status", until_final(&mut updates, std::slice::from_ref(&task)))
            .await;
    let updates = &seen[&task];
    assert_orderly(&task, updates);
    let statuses: Vec<TaskStatus> = updates.iter().map(|u| u.status).collect();
    for wanted in
        [TaskStatus::Created, TaskStatus::Queued, TaskStatus::Processing, TaskStatus::Completed]
    {
        assert!(statuses.contains(&wanted), "{wanted:?} missing from {statuses:?}");
    }
    let last = updates.last().unwrap();
    assert_eq!(last.progress, 100);
    assert!(last.result_url.as_deref().is_some_and(|u| u.contains(&task)), "{last:?}");
    let held = client.tasks().into_iter().find(|t| t.task_no == task);
    assert_eq!(held.as_ref(), Some(last), "tasks() holds the latest update");

    within(5_000, "disconnect", client.disconnect()).await;
    assert_eq!(client.state(), ConnectionState::Disconnected);
}

#[wasm_bindgen_test]
async fn a_server_kick_reconnects_and_resumes_without_loss_or_duplicates() {
    let user = unique("kicked");
    let token = register(&user).await;
    let client = client(setup().http, TokenSource::Fixed(token.clone()), |_| {});
    let mut updates = Box::pin(client.task_updates());
    let connects = Rc::new(RefCell::new(0));
    let counter = connects.clone();
    client.listen(move |event| {
        if matches!(event, ClientEvent::Connected(_)) {
            *counter.borrow_mut() += 1;
        }
    });
    within(10_000, "connect", client.connect()).await.unwrap();

    let mut tasks = Vec::new();
    for n in 0..4 {
        tasks.push(submit(&token, &format!("kicked task {n}")).await);
    }
    // Kick while the tasks run; each time, submit one more while the client is away.
    for n in 0..3 {
        sleep(400).await;
        kick(&user).await;
        tasks.push(submit(&token, &format!("submitted while away {n}")).await);
    }
    let seen = within(60_000, "every final status", until_final(&mut updates, &tasks)).await;
    assert!(*connects.borrow() >= 2, "the client reconnected ({} connects)", connects.borrow());
    // What was missed came as an exact replay, not as a snapshot (the user had no task at
    // the first connect, so that snapshot was empty).
    let stats = client.stats();
    assert!(stats.replayed > 0, "{stats:?}");
    assert_eq!(stats.snapshot_entries, 0, "{stats:?}");
    assert_eq!(stats.connects, *connects.borrow());
    for task in &tasks {
        assert_orderly(task, &seen[task]);
        let last = seen[task].last().unwrap().status;
        assert_eq!(last, task_state(&token, task).await, "{task}: the server's final state");
        assert_eq!(last, TaskStatus::Completed);
    }
    client.disconnect().await;
}

#[wasm_bindgen_test]
async fn a_session_closed_at_token_expiry_resumes_with_a_token_from_get_token() {
    let user = unique("refresh");
    // The first token lives 2 s (the server allows no leeway in these tests) and the server
    // closes the session then with ERROR `token expired`; later tokens live an hour.
    // Through the JavaScript class, as an application would use it.
    let calls = Rc::new(RefCell::new(0u32));
    let counter = calls.clone();
    let minted = user.clone();
    let get_token = Closure::<dyn FnMut() -> Promise>::new(move || {
        *counter.borrow_mut() += 1;
        let ttl = if *counter.borrow() == 1 { 2.0 } else { 3600.0 };
        Promise::resolve(&JsValue::from(mint(&minted, ttl)))
    });
    let options = Object::new();
    Reflect::set(&options, &"url".into(), &setup().http.into()).unwrap();
    Reflect::set(&options, &"getToken".into(), get_token.as_ref()).unwrap();
    let reconnect = Object::new();
    Reflect::set(&reconnect, &"initialDelayMs".into(), &200.into()).unwrap();
    Reflect::set(&options, &"reconnect".into(), &reconnect).unwrap();
    let js = TaskWebSocketClient::new(options.into(), None).expect("valid options");
    let connects = Rc::new(RefCell::new(Vec::<String>::new()));
    let log = connects.clone();
    let on_connect = Closure::<dyn FnMut(JsValue)>::new(move |info: JsValue| {
        let user = Reflect::get(&info, &"user".into()).unwrap().as_string().unwrap_or_default();
        log.borrow_mut().push(user);
    });
    let _unsubscribe = js.on_connect(on_connect.as_ref().unchecked_ref::<Function>().clone());
    within(10_000, "connect", JsFuture::from(js.connect())).await.unwrap();
    assert_eq!(*calls.borrow(), 1);
    // A task that runs across the expiry (demo tasks take 1.5 s here).
    sleep(1_000).await;
    let task = submit(&mint(&user, 3600.0), "across the expiry").await;

    within(10_000, "the reconnect after the expiry", async {
        while connects.borrow().len() < 2 || !js.is_connected() {
            sleep(50).await;
        }
    })
    .await;
    assert_eq!(*calls.borrow(), 2, "one fresh token for the one reconnect");
    assert_eq!(*connects.borrow(), [user.clone(), user.clone()]);
    assert_eq!(js.state(), "connected");
    // Resumed: the task's final state arrived, whether live or replayed.
    within(10_000, "the task's completion", async {
        loop {
            let tasks = js.tasks();
            let state = Reflect::get(&tasks, &task.as_str().into()).unwrap();
            let status = Reflect::get(&state, &"status".into()).ok().and_then(|s| s.as_string());
            if status.as_deref() == Some("completed") {
                break;
            }
            sleep(50).await;
        }
    })
    .await;

    // The expired first token would have been refused: the refresh was needed.
    let expired = client(setup().http, TokenSource::Fixed(mint(&user, -1.0)), |_| {});
    let refused = within(10_000, "the refusal", expired.connect()).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { .. }), "{refused:?}");
    JsFuture::from(js.disconnect()).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_rejected_token_is_reported_once_and_not_retried() {
    let client = client(setup().http, TokenSource::Fixed("not-a-jwt".into()), |o| {
        o.reconnect.initial_ms = 50;
    });
    let errors = Rc::new(RefCell::new(Vec::new()));
    let states = Rc::new(RefCell::new(Vec::new()));
    let (error_log, state_log) = (errors.clone(), states.clone());
    client.listen(move |event| match event {
        ClientEvent::Error(error) => error_log.borrow_mut().push(error.clone()),
        ClientEvent::StateChanged { state, .. } => state_log.borrow_mut().push(*state),
        _ => {}
    });
    let refused = within(10_000, "the refusal", client.connect()).await.unwrap_err();
    let ClientError::Rejected { message, .. } = &refused else { panic!("{refused:?}") };
    assert!(!message.is_empty(), "the server says why");
    // Far longer than the backoff: a retrying client would have tried many times.
    sleep(1_500).await;
    assert_eq!(*errors.borrow(), std::slice::from_ref(&refused), "reported once");
    assert_eq!(*states.borrow(), [ConnectionState::Connecting, ConnectionState::Disconnected]);
    assert_eq!(client.state(), ConnectionState::Disconnected);
}

#[wasm_bindgen_test]
async fn heartbeat_loss_is_detected_and_the_client_reconnects() {
    let setup = setup();
    let user = unique("silent");
    let token = register(&user).await;
    let client = client(setup.proxy_ws, TokenSource::Fixed(token.clone()), |o| {
        o.heartbeat.send_ms = 500;
        o.heartbeat.receive_ms = 500;
    });
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    client.listen(move |event| log.borrow_mut().push(event.clone()));
    within(10_000, "connect", client.connect()).await.unwrap();

    proxy("freeze").await;
    let lost = within(5_000, "heart-beat loss detection", async {
        loop {
            let found = events.borrow().iter().find_map(|e| match e {
                ClientEvent::Error(error @ ClientError::HeartbeatLost { .. }) => {
                    Some(error.clone())
                }
                _ => None,
            });
            if let Some(error) = found {
                break error;
            }
            sleep(50).await;
        }
    })
    .await;
    let ClientError::HeartbeatLost { silent_ms, expected_ms } = lost else { unreachable!() };
    assert!(silent_ms > expected_ms, "{silent_ms} ms silent, {expected_ms} ms expected");
    assert_ne!(client.state(), ConnectionState::Connected);

    proxy("thaw").await;
    within(10_000, "the reconnect", async {
        while !client.is_connected() {
            sleep(50).await;
        }
    })
    .await;
    // The connection works: a task submitted now arrives through it.
    let mut updates = Box::pin(client.task_updates());
    let task = submit(&token, "after the silence").await;
    let seen =
        within(30_000, "the final status", until_final(&mut updates, std::slice::from_ref(&task)))
            .await;
    assert_orderly(&task, &seen[&task]);
    client.disconnect().await;
}

#[wasm_bindgen_test]
async fn the_online_event_skips_the_backoff_wait() {
    let user = unique("online");
    let token = register(&user).await;
    // A minute between attempts, no jitter: only the event can bring it back in time.
    let client = client(setup().http, TokenSource::Fixed(token), |o| {
        o.reconnect.initial_ms = 60_000;
        o.reconnect.max_ms = 60_000;
        o.reconnect.jitter = false;
    });
    within(10_000, "connect", client.connect()).await.unwrap();
    kick(&user).await;
    within(5_000, "the scheduled retry", async {
        while client.next_retry_at().is_none() {
            sleep(20).await;
        }
    })
    .await;
    assert_eq!(client.state(), ConnectionState::Reconnecting);
    let wait = client.next_retry_at().unwrap() - js_sys::Date::now();
    assert!(wait > 50_000.0, "the next attempt is a minute away ({wait} ms)");

    let window = web_sys::window().unwrap();
    window.dispatch_event(&web_sys::Event::new("online").unwrap()).unwrap();
    within(5_000, "the reconnect after `online`", async {
        while !client.is_connected() {
            sleep(20).await;
        }
    })
    .await;
    assert_eq!(client.next_retry_at(), None);
    assert_eq!(client.stats().connects, 2);
    client.disconnect().await;
}
