//! Server-Sent Events at `/sse/tasks` against the real server: tickets (single use,
//! expiring, never the token in a URL), the stream cookie for the browser's own reconnects,
//! event ids, resume from `Last-Event-ID`, and revocation.

use std::time::Duration;

use serde_json::{Value, json};
use taskpulse_shared::{TaskProgressDto, TaskStatus};

use crate::fixture::{PATIENCE, TestServer};

fn fast(config: &mut taskpulse_server::Config) {
    config.settings.demo.duration_ms = 200;
    config.settings.demo.steps = 4;
    config.settings.tasks.progress_interval_ms = 20;
}

/// One event of the stream.
#[derive(Debug)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) id: Option<String>,
    pub(crate) data: String,
}

/// An open event stream (`/sse/tasks`, `/sse/share`), read event by event.
pub(crate) struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> EventStream {
        EventStream { response, buffer: String::new() }
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended. Panics
    /// when none comes within [`PATIENCE`].
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { event: "message".into(), id: None, data: String::new() };
                let mut comment = true;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().into();
                        comment = false;
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().into());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        event.data.push_str(value.trim_start());
                        comment = false;
                    }
                }
                if comment {
                    continue; // a keep-alive
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event in time; buffered: {:?}", self.buffer))
                .expect("the stream reads");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk?));
        }
    }

    /// Task updates of `task_no` until it ends, with their event ids.
    pub(crate) async fn until_done(&mut self, task_no: &str) -> Vec<(String, TaskProgressDto)> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await.expect("the stream goes on");
            assert_eq!(event.event, "task_progress", "{event:?}");
            let update: TaskProgressDto = serde_json::from_str(&event.data).unwrap();
            if update.task_no != task_no {
                continue;
            }
            let done = update.status.is_terminal();
            seen.push((event.id.clone().expect("every update has an id"), update));
            if done {
                return seen;
            }
        }
    }
}

fn seq(id: &str) -> i64 {
    id.rsplit_once(':').and_then(|(_, s)| s.parse().ok()).expect("<epoch>:<seq>")
}

async fn ticket(server: &TestServer, token: &str) -> String {
    let (status, answer) = server.api().post("/api/auth/ticket", Some(token), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["expiresIn"].as_u64().is_some_and(|s| (1..=30).contains(&s)), "{answer}");
    answer["ticket"].as_str().unwrap().to_owned()
}

async fn open(
    http: &reqwest::Client,
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http.get(format!("http://{}/sse/tasks{query}", server.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the server answers")
}

#[tokio::test]
async fn an_event_stream_follows_tasks_and_resumes_from_its_last_event_id() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    let http = reqwest::Client::new();
    let (status, _) = api.post("/api/auth/ticket", None, json!({})).await;
    assert_eq!(status, 401, "a ticket needs the token");

    let ticket = ticket(&server, &token).await;
    let response = open(&http, &server, &format!("?ticket={ticket}"), &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["taskpulse_sse=", "Path=/sse", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let pass = cookie.split(';').next().unwrap().to_owned();
    let mut stream = EventStream::new(response);

    // A ticket is single use: the same URL without the cookie is refused.
    let again = open(&http, &server, &format!("?ticket={ticket}"), &[]).await;
    assert_eq!(again.status(), 401);
    let why: Value = again.json().await.unwrap();
    assert!(why["error"].as_str().unwrap().contains("/api/auth/ticket"), "{why}");

    let first = api.submit(&token, "a lighthouse").await;
    let seen = stream.until_done(&first).await;
    // The stream's snapshot is read a moment after its headers: it may find the task
    // already queued (then `created` is not pushed again), or before it existed.
    let opening = seen.first().unwrap().1.status;
    assert!(matches!(opening, TaskStatus::Created | TaskStatus::Queued), "{seen:?}");
    assert_eq!(seen.last().unwrap().1.status, TaskStatus::Completed);
    assert!(seen.windows(2).all(|w| seq(&w[0].0) < seq(&w[1].0)), "{seen:?}");
    let last_id = seen.last().unwrap().0.clone();
    drop(stream);

    // Missed while away: the browser's reconnect (same URL, the cookie, Last-Event-ID)
    // gets exactly the rest.
    let second = api.submit(&token, "a harbour").await;
    let waited = tokio::time::Instant::now();
    loop {
        let (_, details) = api.get(&format!("/api/tasks/{second}"), Some(&token)).await;
        if details["status"] == "completed" {
            break;
        }
        assert!(waited.elapsed() < PATIENCE, "the second task did not complete: {details}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let headers = [("cookie", pass.as_str()), ("last-event-id", last_id.as_str())];
    let response = open(&http, &server, &format!("?ticket={ticket}"), &headers).await;
    assert_eq!(response.status(), 200);
    let mut stream = EventStream::new(response);
    let resumed = stream.until_done(&second).await;
    assert_eq!(seq(&resumed[0].0), seq(&last_id) + 1, "nothing skipped, nothing again");
    assert_eq!(resumed.last().unwrap().1.status, TaskStatus::Completed);

    // A position that is not an event id of this server is named.
    let bad = open(&http, &server, "", &[("cookie", pass.as_str()), ("last-event-id", "x")]).await;
    assert_eq!(bad.status(), 400);

    // Signing out revokes the token: the open stream ends, and its pass no longer opens one.
    let (status, _) = api.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(status, 204);
    loop {
        match stream.next().await {
            None => break,
            Some(event) if event.event == "error" => {
                assert!(event.data.contains("code"), "{event:?}");
            }
            Some(_) => {}
        }
    }
    let refused = open(&http, &server, "", &[("cookie", pass.as_str())]).await;
    assert_eq!(refused.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let server = TestServer::stomp(fast).await;
    // A token that expires in two seconds makes a ticket that does too (with one second,
    // the ticket could be issued in the token's last whole second: 0 s left).
    let token = server.token_expiring("bob", 2);
    let ticket = ticket(&server, &token).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let refused = open(&reqwest::Client::new(), &server, &format!("?ticket={ticket}"), &[]).await;
    assert_eq!(refused.status(), 401);
    let unknown = open(&reqwest::Client::new(), &server, "?ticket=guess", &[]).await;
    assert_eq!(unknown.status(), 401);
    server.stop().await;
}
