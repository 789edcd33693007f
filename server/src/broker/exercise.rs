//! A driver that runs sessions of one broker from a script of bytes, for the session fuzz
//! target (`server/fuzz`) and the property test beside it: any bytes, any STOMP version, any
//! interleaving of several connections, publications, clock events and abrupt ends.
//!
//! It checks what must always hold: nothing panics, the broker never counts a session
//! that is gone, and every outbox stays within its byte ceiling. Not part of the API.

use std::collections::VecDeque;

use futures_util::FutureExt;
use taskpulse_shared::stomp::Version;

use super::{Authenticator, Broker, Claims, Flow, Outgoing, Publication, Session, TransportInfo};
use crate::{
    config::{ConfigUser, Settings},
    transport::stomp::StompWriter,
};

/// Users the script connects as.
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Sessions alive at once, at most.
const MAX_SESSIONS: usize = 6;

/// The outbound ceiling the sessions run with: small, so scripts reach it.
const OUTBOUND: usize = 16 * 1024;

/// A broker with small limits and the users above (tokens and one configured login).
pub fn broker() -> Broker {
    let mut settings = Settings::default();
    settings.jwt.secret = "exercise-secret-of-at-least-32-bytes".into();
    settings.auth.users.push(ConfigUser { login: "svc".into(), passcode: "svc-pass".into() });
    settings.authorization.send_by_user.insert("svc".into(), vec!["/topic/**".into()]);
    let limits = &mut settings.limits;
    limits.frame_size = 4096;
    limits.headers = 16;
    limits.header_line = 1024;
    limits.subscriptions_per_connection = 8;
    limits.connections_per_user = 4;
    limits.unacked_per_subscription = 8;
    limits.outbound_buffer = OUTBOUND;
    limits.transactions_per_connection = 4;
    limits.transaction_bytes = 8 * 1024;
    limits.queues = 16;
    limits.queue_bytes = 64 * 1024;
    settings.stomp.queue_pending = 16;
    match Authenticator::new(&settings.jwt, &settings.auth) {
        Ok(auth) => {
            // A share link to a task of the first user: a watcher session of script op 5.
            auth.add_share(super::SharedTask {
                id: super::share_id(SHARE_TOKEN),
                owner: USERS[0].to_owned(),
                task_no: "t1".to_owned(),
            });
            Broker::new(settings, auth, std::sync::Arc::default())
        }
        // The settings above are valid; a failure here is a bug in this driver.
        Err(e) => panic!("exercise broker: {e}"),
    }
}

/// The token of the exercise broker's share link.
const SHARE_TOKEN: &str = "exercise-share-token";

/// The CONNECT frame of script op `choice`: a token, the configured login, or a share link's
/// token (known or not), and an `accept-version` list.
fn connect_frame(broker: &Broker, choice: u8) -> Vec<u8> {
    let versions = ["1.0", "1.1", "1.2", "1.0,1.1,1.2", "1.1,1.2", "2.0"];
    let accept = versions[usize::from(choice) % versions.len()];
    let credentials = match (choice / 8) % 7 {
        6 => "share:not-a-link\n".to_owned(),
        5 => format!("share:{SHARE_TOKEN}\n"),
        4 => "login:svc\npasscode:svc-pass\n".to_owned(),
        3 => "login:svc\npasscode:wrong\n".to_owned(),
        n => {
            let user = USERS[usize::from(n) % USERS.len()];
            let exp = if choice % 7 == 0 { 1 } else { u64::MAX / 4 };
            let claims = Claims { sub: user.into(), exp, nbf: None, iat: None, jti: None };
            let token = broker.authenticator().issue(&claims).unwrap_or_default();
            format!("Authorization:Bearer {token}\n")
        }
    };
    format!("CONNECT\naccept-version:{accept}\nhost:x\n{credentials}heart-beat:0,0\n\n\0")
        .into_bytes()
}

/// A session and the STOMP writer a transport would keep for it.
struct Connection {
    session: Session,
    writer: StompWriter,
}

/// Writes what a transport would: encodes every queued item, as the WebSocket writer does.
fn drain(connection: &mut Connection) -> bool {
    let outbox = connection.session.outbox();
    let mut batch = VecDeque::new();
    let mut closed = false;
    // Only what is queued now: `next_batch` returns at once when something is.
    while outbox.next_batch(&mut batch).now_or_never().is_some() {
        for item in batch.drain(..) {
            let mut out = Vec::new();
            if let Outgoing::Close(_) = item {
                closed = true;
            } else if let Err(why) = connection.writer.encode(&item, &mut out) {
                outbox.fail("unrepresentable message", None, why);
            }
        }
    }
    closed
}

/// Runs the script `data` against a fresh broker; panics if an invariant breaks.
pub fn run(data: &[u8]) {
    let broker = broker();
    let mut sessions: Vec<Option<Connection>> = Vec::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let index = usize::from(arg) % MAX_SESSIONS;
        match op % 10 {
            // Open a session and CONNECT it.
            0 => {
                let slot = sessions.iter().position(Option::is_none);
                if slot.is_none() && sessions.len() >= MAX_SESSIONS {
                    continue;
                }
                let info = TransportInfo {
                    subprotocol: [
                        None,
                        Some(Version::V1_0),
                        Some(Version::V1_1),
                        Some(Version::V1_2),
                    ][usize::from(arg >> 6)],
                    access_token: None,
                    peer: "fuzz".into(),
                    transport: crate::metrics::Transport::Stomp,
                };
                let mut session = Session::new(broker.clone(), info);
                let _ = session.on_bytes(&connect_frame(&broker, arg));
                let connection = Connection { session, writer: StompWriter::default() };
                match slot {
                    Some(slot) => sessions[slot] = Some(connection),
                    None => sessions.push(Some(connection)),
                }
            }
            // Raw bytes from the client: the next `len` bytes of the script.
            1..=4 => {
                let len = usize::from(arg);
                let chunk: Vec<u8> = bytes.by_ref().take(len).collect();
                let target = index % sessions.len().max(1);
                if let Some(Some(Connection { session, .. })) = sessions.get_mut(target) {
                    let _ = session.on_bytes(&chunk);
                }
            }
            // The transport writes what is queued.
            5 => {
                if let Some(Some(connection)) = sessions.get_mut(index) {
                    let _ = drain(connection);
                }
            }
            // The connection ends (EOF, or the writer saw a close).
            6 => {
                if let Some(slot) = sessions.get_mut(index)
                    && let Some(Connection { mut session, .. }) = slot.take()
                {
                    session.on_eof();
                    session.end();
                }
            }
            // Clocks the transport keeps.
            7 => {
                if let Some(Some(Connection { session, .. })) = sessions.get_mut(index) {
                    let flow = match arg % 3 {
                        0 => session.heartbeat_timeout(),
                        1 => session.connect_timeout(),
                        _ => session.token_expired(),
                    };
                    assert_eq!(flow, Flow::Close);
                }
            }
            // The server publishes, with headers some versions cannot carry.
            8 => {
                let user = USERS[usize::from(arg) % USERS.len()];
                let header =
                    ["plain", "ends-in-cr\r", "new\nline", "colon:in", ""][usize::from(arg) % 5];
                let publication = Publication::json(vec![b'x'; usize::from(arg) * 8])
                    .with_header("x-note", header);
                match arg % 3 {
                    0 => {
                        broker.send_to_user(user, "/queue/tasks-progress", publication);
                    }
                    1 => {
                        let _ = broker.publish("/topic/chat.x", publication);
                    }
                    _ => {
                        let _ = broker.publish("/queue/q", publication);
                    }
                }
            }
            // Operators and sign-outs.
            _ => {
                broker.disconnect_user(USERS[usize::from(arg) % USERS.len()], "exercise");
            }
        }
        check(&broker, &sessions);
    }
    for mut connection in sessions.iter_mut().filter_map(Option::take) {
        let _ = drain(&mut connection);
        connection.session.end();
    }
    assert_eq!(broker.session_count(), 0, "every ended session left the broker");
}

/// The broker counts exactly the connected sessions that exist, and no outbox is over
/// its ceiling.
fn check(broker: &Broker, connections: &[Option<Connection>]) {
    let sessions = || connections.iter().flatten().map(|c| &c.session);
    let connected = sessions().filter(|s| s.principal().is_some()).count();
    assert_eq!(broker.session_count(), connected, "the broker's sessions are the live ones");
    for session in sessions() {
        // Deliveries awaiting ACK may hold as much again as the queue.
        let held = session.outbox().held_bytes();
        assert!(held <= 2 * OUTBOUND + 4096, "outbox holds {held} bytes");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Scripts made of valid frames with odd extras, as well as noise, so the property
    /// reaches deep states (subscriptions, transactions, acks, receipts each version cannot
    /// echo) and not only the decoder's refusals.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        let command = prop::sample::select(vec![
            "SEND\ndestination:/topic/chat.x",
            "SEND\ndestination:/queue/q",
            "SEND\ndestination:/user/bob/queue/x",
            "SEND\ndestination:/app/auth.refresh",
            "SEND\ndestination:/topic/secret",
            "SUBSCRIBE\nid:1\ndestination:/topic/chat.x",
            "SUBSCRIBE\nid:2\ndestination:/queue/q\nack:client",
            "SUBSCRIBE\nid:3\ndestination:/user/queue/tasks-progress\nack:client-individual",
            "SUBSCRIBE\nid:s\r\r\ndestination:/topic/chat.x",
            "UNSUBSCRIBE\nid:2",
            "ACK\nid:0",
            "NACK\nid:1",
            "BEGIN\ntransaction:t",
            "COMMIT\ntransaction:t",
            "ABORT\ntransaction:t",
            "DISCONNECT",
            "CONNECT\naccept-version:1.2",
        ]);
        let extra = prop::sample::select(vec![
            "receipt:r",
            "receipt:r\r\r",
            "transaction:t",
            "seq:99",
            "x-resume-epoch:e",
            "x-resume-seq:3",
            "content-length:1",
            "x-note:a\\rb",
            "message-id:m",
        ]);
        let noise = prop::collection::vec(any::<u8>(), 0..20);
        (command, prop::collection::vec(extra, 0..3), noise, any::<bool>()).prop_map(
            |(command, extras, noise, garbage)| {
                if garbage {
                    return noise;
                }
                let mut frame = format!("{command}\n{}\n\n", extras.join("\n")).into_bytes();
                frame.extend_from_slice(&noise[..noise.len().min(4)]);
                frame.push(0);
                frame
            },
        )
    }

    /// An op of the driver: open, send a frame, drain, end, clocks, publish, kick.
    fn op() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => any::<u8>().prop_map(|arg| vec![0, arg]),
            8 => frame().prop_map(|frame| {
                // The length picks the session too.
                let len = frame.len().min(255);
                let mut op = vec![1, len as u8];
                op.extend_from_slice(&frame[..len]);
                op
            }),
            2 => any::<u8>().prop_map(|arg| vec![5, arg]),
            1 => any::<u8>().prop_map(|arg| vec![6, arg]),
            1 => any::<u8>().prop_map(|arg| vec![7, arg]),
            2 => any::<u8>().prop_map(|arg| vec![8, arg]),
            1 => any::<u8>().prop_map(|arg| vec![9, arg]),
            1 => prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn no_script_panics_or_leaves_a_session_behind(ops in prop::collection::vec(op(), 0..60)) {
            super::run(&ops.concat());
        }
    }
}
