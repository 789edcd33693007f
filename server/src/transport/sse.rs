//! Server-Sent Events for read-only watchers: `GET /sse/tasks` streams the user's task
//! updates as `event: task_progress`, `id: <epoch>:<seq>`, `data: <TaskProgressDto>`; a
//! reconnecting `EventSource` sends `Last-Event-ID` and gets exactly what it missed (or a
//! snapshot), as a resuming STOMP subscription does.
//!
//! `EventSource` cannot send headers, so the stream is opened with a short-lived,
//! single-use ticket (`POST /api/auth/ticket` with the Bearer token; never the token in a
//! URL). Its first use sets an HttpOnly, SameSite=Strict cookie scoped to `/sse`, valid no
//! longer than the token it came from, which lets the browser's own reconnects (to the same
//! URL, whose ticket is spent) back in. Tickets and stream passes are kept in this process.
//!
//! `GET /sse/share?token=` streams the one task a share link shows, to anyone holding the
//! link: its current state first, then its updates, until the owner revokes the link.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt, stream};
use parking_lot::Mutex;
use taskpulse_shared::resume::{ResumePosition, error_code};
use tracing::Instrument;

use prometheus_client::metrics::counter::Counter;

use crate::{
    AppError, AppState,
    broker::{LogPlace, Outgoing, Principal, SseSession},
    metrics::{OpenConnection, Transport},
    secret::random_hex,
};

/// How long a ticket may wait for its first use.
pub(crate) const TICKET_TTL_S: u64 = 30;

/// How long a stream pass outlives its last stream: room for the browser's own reconnect
/// (`EventSource` retries within seconds) across a short network loss.
pub(crate) const PASS_GRACE_S: u64 = 120;

/// Tickets and stream passes one user holds at most; beyond it the one expiring soonest
/// (and not in use by an open stream) goes, so that one user cannot take the shared
/// [`Passes`] room from the others.
pub(crate) const PASSES_PER_USER: usize = 64;

/// The stream pass cookie.
const COOKIE: &str = "taskpulse_sse";

/// The comment sent during silence so that proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Who a ticket or pass lets in, and until when (seconds since the epoch).
#[derive(Debug, Clone)]
struct Pass {
    user: String,
    token_id: Option<String>,
    /// Ignored while `streams` is not zero.
    expires_at: u64,
    /// Streams open with this pass now.
    streams: u32,
    /// The token it came from expires then (a pass never outlives it).
    token_expires_at: u64,
    /// A ticket (spent by its first use) rather than a stream pass.
    ticket: bool,
}

/// Outstanding tickets and stream passes, by their secret. A pass lives while a stream uses
/// it and [`PASS_GRACE_S`] after its last one ends (never beyond its token), so the room
/// they take follows the streams open, not the streams opened.
#[derive(Debug)]
pub(crate) struct Passes {
    by_secret: Mutex<HashMap<String, Pass>>,
    /// Tickets and passes kept at most; beyond it new tickets are refused (503).
    max: usize,
}

impl Passes {
    /// Room for `max` tickets and passes (twice `limits.max_connections`: every stream open
    /// and as many tickets or recently used passes).
    pub(crate) fn new(max: usize) -> Passes {
        Passes { by_secret: Mutex::default(), max }
    }

    fn insert(&self, pass: Pass) -> Result<String, AppError> {
        let secret = random_hex(32).map_err(|e| AppError::Internal(e.to_string()))?;
        let mut passes = self.by_secret.lock();
        let mine: Vec<(&String, u64)> = passes
            .iter()
            .filter(|(_, p)| p.user == pass.user)
            .map(|(secret, p)| (secret, p.expires_at))
            .collect();
        if mine.len() >= PASSES_PER_USER {
            // One in use by a stream stays; a user has fewer open streams than this
            // (`limits.connections_per_user`), so another is always there to go.
            let idle = |s: &&(&String, u64)| passes.get(s.0).is_some_and(|p| p.streams == 0);
            let oldest =
                mine.iter().filter(idle).min_by_key(|(_, at)| *at).map(|(s, _)| (*s).clone());
            if let Some(oldest) = oldest {
                passes.remove(&oldest);
            }
        }
        if passes.len() >= self.max {
            let now = unix_now();
            passes.retain(|_, p| p.streams > 0 || p.expires_at > now);
        }
        if passes.len() >= self.max {
            return Err(AppError::Unavailable(format!(
                "too many outstanding event-stream tickets and streams ({}, twice \
                 limits.max_connections); try again in {TICKET_TTL_S} s",
                self.max
            )));
        }
        passes.insert(secret.clone(), pass);
        Ok(secret)
    }

    /// A pass for the stream a `ticket` opens (in use by it) and its reconnects.
    fn stream_pass(&self, ticket: &Pass) -> Result<String, AppError> {
        let pass = Pass {
            expires_at: ticket.token_expires_at,
            streams: 1,
            ticket: false,
            ..ticket.clone()
        };
        self.insert(pass)
    }

    /// A stream that used the pass `secret` ended: the pass expires [`PASS_GRACE_S`] after
    /// the last one.
    fn stream_ended(&self, secret: &str) {
        let mut passes = self.by_secret.lock();
        if let Some(pass) = passes.get_mut(secret) {
            pass.streams = pass.streams.saturating_sub(1);
            if pass.streams == 0 {
                pass.expires_at = (unix_now() + PASS_GRACE_S).min(pass.token_expires_at);
            }
        }
    }

    /// A ticket for `user`, authenticated by a token with `token_id` that expires at
    /// `token_expires_at`.
    pub(crate) fn ticket(
        &self,
        user: &str,
        token_id: Option<&str>,
        token_expires_at: u64,
    ) -> Result<(String, u64), AppError> {
        let expires_at = (unix_now() + TICKET_TTL_S).min(token_expires_at);
        let pass = Pass {
            user: user.to_owned(),
            token_id: token_id.map(str::to_owned),
            expires_at,
            streams: 0,
            token_expires_at,
            ticket: true,
        };
        Ok((self.insert(pass)?, expires_at.saturating_sub(unix_now())))
    }

    /// Takes a ticket (spent) or a pass for one more stream (see [`Passes::stream_ended`]);
    /// `None` when unknown or expired.
    fn redeem(&self, secret: &str) -> Option<Pass> {
        let mut passes = self.by_secret.lock();
        let pass = passes.get_mut(secret)?;
        let now = unix_now();
        if (pass.streams == 0 && pass.expires_at <= now) || pass.token_expires_at <= now {
            passes.remove(secret);
            return None;
        }
        if pass.ticket {
            return passes.remove(secret);
        }
        pass.streams += 1;
        Some(pass.clone())
    }
}

/// Query parameters of `/sse/tasks`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct SseQuery {
    ticket: Option<String>,
    /// For a page that opens a new `EventSource`: where it stands (`<epoch>:<seq>`).
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `<epoch>:<seq>` as an event id.
fn position(id: &str) -> Result<ResumePosition, AppError> {
    let bad = || {
        AppError::field(
            "Last-Event-ID",
            format!("{id:?} is not an event id of this server (<epoch>:<seq>)"),
        )
    };
    let (epoch, seq) = id.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(bad)?;
    if epoch.is_empty() {
        return Err(bad());
    }
    Ok(ResumePosition { epoch: epoch.to_owned(), seq })
}

/// `GET /sse/tasks?ticket=...`: the user's task updates as an event stream.
#[utoipa::path(get, path = "/sse/tasks", tag = "live",
    params(
        ("ticket" = Option<String>, Query, description = "From POST /api/auth/ticket (single use); the stream's own reconnects use its cookie instead"),
        ("lastEventId" = Option<String>, Query, description = "`<epoch>:<seq>` to resume from, for clients that cannot send Last-Event-ID"),
        ("Last-Event-ID" = Option<String>, Header, description = "`<epoch>:<seq>` to resume from (EventSource sends it)"),
    ),
    responses(
        (status = 200, description = "`task_progress` events (`TaskProgressDto`, id `<epoch>:<seq>`), then `error` `{code, message}` when the stream ends", content_type = "text/event-stream"),
        (status = 400, description = "A bad Last-Event-ID", body = taskpulse_shared::dto::ApiError),
        (status = 401, description = "No valid ticket or stream cookie", body = taskpulse_shared::dto::ApiError),
        (status = 429, description = "Too many connections for this user", body = taskpulse_shared::dto::ApiError),
    ))]
pub(crate) async fn tasks(
    State(state): State<AppState>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
) -> Response {
    match open(&state, query, &headers) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn open(state: &AppState, query: SseQuery, headers: &HeaderMap) -> Result<Response, AppError> {
    let from_ticket = query.ticket.as_deref().and_then(|t| state.passes.redeem(t));
    let (pass, secret, new_cookie) = match from_ticket {
        Some(pass) => {
            // The stream's own reconnects come back with this cookie (the ticket is spent).
            let secret = state.passes.stream_pass(&pass)?;
            (pass, secret.clone(), Some(secret))
        }
        None => match cookie(headers).and_then(|c| Some((state.passes.redeem(&c)?, c))) {
            Some((pass, secret)) => (pass, secret, None),
            None => {
                state.metrics.authentication("invalid-ticket");
                return Err(AppError::Unauthorized(
                    "the ticket is missing, used or expired (and no stream cookie is valid): \
                     POST /api/auth/ticket with your token for a new one"
                        .into(),
                ));
            }
        },
    };
    // From here on, the stream (or its refusal) ends the pass's use when dropped.
    let in_use = InUse { passes: state.passes.clone(), secret };
    let authenticator = state.broker.authenticator();
    if pass.token_id.as_deref().is_some_and(|jti| authenticator.is_revoked(jti)) {
        state.metrics.authentication("revoked-token");
        return Err(AppError::Unauthorized("the token this stream came from was revoked".into()));
    }
    state.metrics.authentication("success");
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id);
    let resume = last.as_deref().filter(|id| !id.is_empty()).map(position).transpose()?;
    let principal = Principal {
        name: pass.user.clone(),
        token_id: pass.token_id.clone(),
        configured: false,
        expires_at: Some(pass.token_expires_at),
        watches: None,
    };
    let session = SseSession::open(state.broker.clone(), &principal, resume)
        .map_err(|reason| AppError::TooManyRequests { message: reason, retry_after: None })?;
    let until = pass.token_expires_at;
    let mut response = stream(state, session, &principal.name, Some(until), in_use);
    if let Some(secret) = new_cookie {
        let max_age = until.saturating_sub(unix_now());
        let value =
            format!("{COOKIE}={secret}; Path=/sse; HttpOnly; SameSite=Strict; Max-Age={max_age}");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// The event stream of `session`'s outbox, until the broker closes it or `until` (seconds
/// since the epoch); `guard` is dropped with the response.
fn stream(
    state: &AppState,
    session: SseSession,
    user: &str,
    until: Option<u64>,
    guard: impl Send + Sync + 'static,
) -> Response {
    let open = Arc::new(state.metrics.open(Transport::Sse));
    let sent = state.metrics.sent_counter("sse", "message");
    // Every line logged for this stream says which one and whose, as for a WebSocket session.
    let span = tracing::info_span!("session", id = session.outbox().id, transport = "sse", %user);
    span.in_scope(|| tracing::debug!("event stream opened"));
    let mut response = Sse::new(events(session, until, guard, open, sent, span))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Query parameters of `/sse/share`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct ShareQuery {
    /// The share link's token.
    token: Option<String>,
}

/// `GET /sse/share?token=...`: the task a share link shows, as an event stream.
#[utoipa::path(get, path = "/sse/share", tag = "live", security(()),
    params(ShareQuery),
    responses(
        (status = 200, description = "`task_progress` events (`TaskProgressDto`): the task's current state, then its updates; `error` `{code, message}` when the stream ends (`disconnected` when the link is revoked)", content_type = "text/event-stream"),
        (status = 400, description = "No token", body = taskpulse_shared::dto::ApiError),
        (status = 404, description = "No link has this token (revoked, replaced or never made)", body = taskpulse_shared::dto::ApiError),
        (status = 429, description = "Too many watchers of this link", body = taskpulse_shared::dto::ApiError),
    ))]
pub(crate) async fn share(
    State(state): State<AppState>,
    Query(query): Query<ShareQuery>,
) -> Response {
    let Some(token) = query.token else {
        return crate::api::missing_token().into_response();
    };
    let principal = match state.broker.authenticator().watcher(&token) {
        Ok(principal) => principal,
        Err(reason) => {
            state.metrics.authentication(reason.outcome());
            return AppError::NotFound(reason.to_string()).into_response();
        }
    };
    state.metrics.authentication("success");
    match SseSession::open(state.broker.clone(), &principal, None) {
        Ok(session) => stream(&state, session, &principal.name, None, ()),
        Err(reason) => {
            AppError::TooManyRequests { message: reason, retry_after: None }.into_response()
        }
    }
}

/// A stream's use of its pass, ended when dropped.
struct InUse {
    passes: std::sync::Arc<Passes>,
    secret: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.passes.stream_ended(&self.secret);
    }
}

/// The session's outbox as events, until the broker closes it or the token expires.
fn events(
    session: SseSession,
    token_expires_at: Option<u64>,
    in_use: impl Send + Sync + 'static,
    open: Arc<OpenConnection>,
    sent: Counter,
    span: tracing::Span,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ending = open.clone();
    // A share link's stream has no token to expire: about a century stands for never.
    let seconds = token_expires_at.map_or(100 * 365 * 86_400, |at| at.saturating_sub(unix_now()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    stream::unfold(Some(session), move |session| {
        let (ending, sent, span) = (ending.clone(), sent.clone(), span.clone());
        let step = async move {
        let session = session?;
        let mut batch = std::collections::VecDeque::new();
        let (events, ended) = tokio::select! {
            () = session.outbox().next_batch(&mut batch) => {
                let messages = batch.iter().filter(|i| matches!(i, Outgoing::Deliver { .. }));
                sent.inc_by(messages.count() as u64);
                translate(batch.drain(..))
            }
            () = tokio::time::sleep_until(deadline) => {
                let error = failure("token expired", "The token this stream came from has expired; take a new ticket.");
                ending.end("token-expired", true);
                (vec![error], true)
            }
        };
        if ended && let Some(why) = session.outbox().ending() {
            tracing::debug!(reason = %why.reason, "event stream ended");
            ending.end(&why.reason, why.error);
        }
        // Dropping the session leaves the broker; the stream then ends.
        let next = if ended { None } else { Some(session) };
        Some((stream::iter(events.into_iter().map(Ok)), next))
        };
        step.instrument(span)
    })
    .flatten()
    // The stream owns the pass's use: it ends when the response does.
    .map(move |event| {
        let _ = (&in_use, &open);
        event
    })
}

/// Events for a batch of the outbox, and whether the session ended.
fn translate(items: impl Iterator<Item = Outgoing>) -> (Vec<Event>, bool) {
    let mut events = Vec::new();
    let mut ended = false;
    for item in items {
        match item {
            Outgoing::Deliver { message, .. } => {
                let data = String::from_utf8_lossy(&message.body);
                let mut event = Event::default().event("task_progress").data(data);
                if let Some(
                    LogPlace::Numbered { seq, epoch, .. } | LogPlace::Snapshot { seq, epoch, .. },
                ) = &message.place
                {
                    event = event.id(format!("{epoch}:{seq}"));
                }
                events.push(event);
            }
            Outgoing::Error(error) => {
                events.push(failure(&error.message, &error.body));
                ended = true;
            }
            Outgoing::Close(_) => ended = true,
            Outgoing::Opened(_) | Outgoing::Receipt(_) | Outgoing::Reply(_) => {}
        }
    }
    (events, ended)
}

/// `event: error` with `{code, message}`, the stream's last event.
fn failure(message: &str, detail: &str) -> Event {
    let body = serde_json::json!({"code": error_code(message), "message": detail});
    Event::default().event("error").data(body.to_string())
}

/// What the ticket endpoint answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Ticket {
    pub(crate) ticket: String,
    pub(crate) expires_in: u64,
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn one_user_cannot_take_everyone_s_passes() {
        let passes = Passes::new(1000);
        let later = unix_now() + 3600;
        for _ in 0..PASSES_PER_USER + 10 {
            passes.ticket("mallory", None, later).expect("issued");
        }
        let held = |user: &str| passes.by_secret.lock().values().filter(|p| p.user == user).count();
        assert_eq!(held("mallory"), PASSES_PER_USER);
        let (ticket, _) = passes.ticket("alice", None, later).expect("others still get tickets");
        assert_eq!(passes.redeem(&ticket).map(|p| p.user), Some("alice".into()));
        assert!(passes.redeem(&ticket).is_none(), "a ticket is spent by its first use");
    }

    #[test]
    fn passes_take_room_while_streams_use_them_and_a_grace_after() {
        let passes = Passes::new(8);
        let later = unix_now() + 3600;
        // Streams opened and closed again and again do not fill the room.
        for _ in 0..100 {
            let (ticket, _) = passes.ticket("alice", None, later).expect("room");
            let pass = passes.redeem(&ticket).expect("a fresh ticket");
            let secret = passes.stream_pass(&pass).expect("room");
            passes.stream_ended(&secret);
            let grace = passes.by_secret.lock()[&secret].expires_at;
            assert!(grace <= unix_now() + PASS_GRACE_S && grace < later);
            // Past its grace, it is room for the next.
            passes.by_secret.lock().get_mut(&secret).expect("kept").expires_at = 0;
        }
        // A pass in use never expires nor goes for a user's new one.
        let (ticket, _) = passes.ticket("bob", None, later).expect("room");
        let secret = passes.stream_pass(&passes.redeem(&ticket).expect("ticket")).expect("room");
        passes.by_secret.lock().get_mut(&secret).expect("kept").expires_at = 0;
        assert!(passes.redeem(&secret).is_some(), "a reconnect while the first stream runs");
        for _ in 0..PASSES_PER_USER + 5 {
            let _ = passes.ticket("bob", None, later);
        }
        assert!(passes.by_secret.lock().contains_key(&secret));
        passes.stream_ended(&secret);
        passes.stream_ended(&secret);
        assert!(passes.by_secret.lock()[&secret].expires_at > unix_now(), "then its grace");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_last_event_id_is_a_position_or_a_400(id in "\\PC{0,40}", epoch in "[0-9a-f]{1,16}", seq in any::<i64>()) {
            let parsed = position(&id);
            let well_formed = id.split_once(':').is_some_and(|(e, s)| {
                !e.is_empty() && s.parse::<i64>().is_ok_and(|s| s >= 0)
            });
            prop_assert_eq!(parsed.is_ok(), well_formed, "{:?}", id);
            let ours = position(&format!("{epoch}:{seq}"));
            prop_assert_eq!(ours.is_ok(), seq >= 0);
        }

        #[test]
        fn any_cookie_header_is_read_without_panicking(value in "[ -~]{0,80}", secret in "[0-9a-f]{1,64}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(header::COOKIE, v);
            }
            let _ = cookie(&headers);
            let with = format!("{value}; {COOKIE}={secret}");
            if let Ok(v) = HeaderValue::from_str(&with) {
                let mut headers = HeaderMap::new();
                headers.append(header::COOKIE, v);
                // The pass is found even behind whatever else the browser sends.
                if !value.contains(&format!("{COOKIE}=")) {
                    prop_assert_eq!(cookie(&headers), Some(secret));
                }
            }
        }
    }
}
