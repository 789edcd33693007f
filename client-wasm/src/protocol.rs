//! The client's side of STOMP as frames and rules, without a socket or a clock: the frames
//! it sends, what a CONNECTED frame settles, and when heart-beats are due or missing.
//! Frames are the `shared` crate's; this module only decides their headers.

use taskpulse_shared::stomp::{Command, Frame, HeartBeat, Version};

use crate::ClientError;

/// CONNECT (STOMP 1.2 framing, offering every version) with the bearer token and the
/// heart-beats wanted.
pub fn connect_frame(host: &str, token: &str, heartbeat: HeartBeat) -> Frame {
    Frame::new(Command::Connect)
        .with_header("accept-version", "1.2,1.1,1.0")
        .with_header("host", host)
        .with_header("heart-beat", heartbeat.to_header())
        .with_header("Authorization", format!("Bearer {token}"))
}

/// SUBSCRIBE with an `auto` ack and any extra headers (resume position).
pub fn subscribe_frame(id: &str, destination: &str, extra: &[(&str, String)]) -> Frame {
    let mut frame = Frame::new(Command::Subscribe)
        .with_header("id", id)
        .with_header("destination", destination)
        .with_header("ack", "auto");
    for (name, value) in extra {
        frame.headers.push(name, value);
    }
    frame
}

/// UNSUBSCRIBE.
pub fn unsubscribe_frame(id: &str) -> Frame {
    Frame::new(Command::Unsubscribe).with_header("id", id)
}

/// SEND with a body, its content type and length, plus the caller's other headers.
pub fn send_frame(
    destination: &str,
    body: &str,
    content_type: &str,
    headers: &[(String, String)],
) -> Frame {
    let mut frame = Frame::new(Command::Send).with_header("destination", destination);
    for (name, value) in headers {
        if !matches!(name.as_str(), "destination" | "content-length") {
            frame.headers.push(name, value);
        }
    }
    if frame.header("content-type").is_none() {
        frame.headers.push("content-type", content_type);
    }
    frame.headers.push("content-length", &body.len().to_string());
    frame.with_body(body.as_bytes().to_vec())
}

/// DISCONNECT asking for a receipt, so that the close is orderly.
pub fn disconnect_frame(receipt: &str) -> Frame {
    Frame::new(Command::Disconnect).with_header("receipt", receipt)
}

/// What the server's answer to CONNECT settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The version spoken from now on.
    pub version: Version,
    /// The session id (`session` header).
    pub id: Option<String>,
    /// The principal the server authenticated (`user-name`).
    pub user: Option<String>,
    /// The broker's name and version (`server`).
    pub server: Option<String>,
    /// The heart-beat schedule both sides agreed on.
    pub heartbeats: Heartbeats,
}

/// Reads the server's answer to CONNECT.
///
/// # Errors
/// [`ClientError::Rejected`] for ERROR (the credentials were refused),
/// [`ClientError::Protocol`] for anything else that is not a valid CONNECTED.
pub fn connected(frame: Frame, offered: HeartBeat, tolerance: f64) -> Result<Session, ClientError> {
    let owned = |name: &str| frame.header(name).map(str::to_owned);
    match frame.command {
        Command::Connected => {
            let version = match frame.header("version") {
                None => Version::V1_0,
                Some(text) => Version::parse(text).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "CONNECTED has the version \"{text}\"; expected 1.0, 1.1 or 1.2"
                    ))
                })?,
            };
            let heart_beat =
                frame.header("heart-beat").and_then(HeartBeat::parse).unwrap_or_default();
            let (send_every_ms, expect_within_ms) = HeartBeat::negotiate(offered, heart_beat);
            Ok(Session {
                version,
                id: owned("session"),
                user: owned("user-name"),
                server: owned("server"),
                heartbeats: Heartbeats { send_every_ms, expect_within_ms, tolerance },
            })
        }
        Command::Error => Err(ClientError::Rejected {
            message: owned("message").unwrap_or_default(),
            body: String::from_utf8_lossy(&frame.body).into_owned(),
        }),
        other => Err(ClientError::Protocol(format!("expected CONNECTED, got {other}"))),
    }
}

/// The negotiated heart-beats, and the checks a periodic tick makes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeats {
    /// Send something at least this often (0: never).
    pub send_every_ms: u32,
    /// Expect something at least this often (0: never checked).
    pub expect_within_ms: u32,
    /// Silence allowed = `expect_within_ms` x this.
    pub tolerance: f64,
}

impl Eq for Heartbeats {}

impl Heartbeats {
    /// How often to run the checks: half the shorter interval, at least 50 ms; `None` when
    /// neither direction is on.
    pub fn tick_ms(&self) -> Option<u32> {
        let shortest =
            [self.send_every_ms, self.expect_within_ms].into_iter().filter(|&ms| ms > 0).min()?;
        Some((shortest / 2).max(50))
    }

    /// `true` when an EOL heart-beat must go out now so that the gap never exceeds the
    /// interval before the next tick.
    pub fn send_due(&self, now_ms: f64, last_sent_ms: f64) -> bool {
        let Some(tick) = self.tick_ms() else { return false };
        self.send_every_ms > 0
            && now_ms - last_sent_ms + f64::from(tick) >= f64::from(self.send_every_ms)
    }

    /// The silence, when it is longer than the server's interval x tolerance.
    ///
    /// # Errors
    /// [`ClientError::HeartbeatLost`] naming the silence and the interval.
    pub fn check_incoming(&self, now_ms: f64, last_received_ms: f64) -> Result<(), ClientError> {
        if self.expect_within_ms == 0 {
            return Ok(());
        }
        let silent = now_ms - last_received_ms;
        if silent > f64::from(self.expect_within_ms) * self.tolerance {
            return Err(ClientError::HeartbeatLost {
                silent_ms: silent as u32,
                expected_ms: self.expect_within_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: HeartBeat = HeartBeat { send_ms: 4000, receive_ms: 4000 };

    #[test]
    fn connect_carries_the_token_and_every_version() {
        let frame = connect_frame("example.com", "abc", OFFER);
        assert_eq!(frame.header("accept-version"), Some("1.2,1.1,1.0"));
        assert_eq!(frame.header("Authorization"), Some("Bearer abc"));
        assert_eq!(frame.header("heart-beat"), Some("4000,4000"));
        assert_eq!(frame.header("host"), Some("example.com"));
    }

    #[test]
    fn connected_settles_the_version_and_heartbeats() {
        let frame = Frame::new(Command::Connected)
            .with_header("version", "1.2")
            .with_header("heart-beat", "5000,1000")
            .with_header("session", "s-1")
            .with_header("user-name", "alice");
        let session = connected(frame, OFFER, 2.0).unwrap();
        assert_eq!(session.version, Version::V1_2);
        assert_eq!(session.user.as_deref(), Some("alice"));
        // We send every max(4000, 1000); the server sends every max(4000, 5000).
        assert_eq!(session.heartbeats.send_every_ms, 4000);
        assert_eq!(session.heartbeats.expect_within_ms, 5000);
    }

    #[test]
    fn connected_without_a_version_is_1_0_and_an_unknown_version_is_refused() {
        let session = connected(Frame::new(Command::Connected), OFFER, 2.0).unwrap();
        assert_eq!(session.version, Version::V1_0);
        assert_eq!(session.heartbeats.send_every_ms, 0, "no heart-beat header: none");
        let frame = Frame::new(Command::Connected).with_header("version", "2.0");
        let Err(ClientError::Protocol(text)) = connected(frame, OFFER, 2.0) else {
            panic!("version 2.0 accepted")
        };
        assert!(text.contains("\"2.0\""), "{text}");
    }

    #[test]
    fn an_error_answer_is_a_rejection() {
        let frame = Frame::new(Command::Error)
            .with_header("message", "invalid token")
            .with_body(&b"the token has expired"[..]);
        let err = connected(frame, OFFER, 2.0).unwrap_err();
        assert_eq!(
            err,
            ClientError::Rejected {
                message: "invalid token".into(),
                body: "the token has expired".into()
            }
        );
        assert!(err.is_fatal());
        let receipt = Frame::new(Command::Receipt).with_header("receipt-id", "1");
        assert!(matches!(connected(receipt, OFFER, 2.0), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn heartbeats_are_sent_in_time_and_silence_is_detected() {
        let hb = Heartbeats { send_every_ms: 4000, expect_within_ms: 4000, tolerance: 2.0 };
        assert_eq!(hb.tick_ms(), Some(2000));
        assert!(!hb.send_due(1000.0, 0.0));
        assert!(hb.send_due(2000.0, 0.0), "the next tick would be late");
        assert!(hb.check_incoming(8000.0, 0.0).is_ok());
        assert_eq!(
            hb.check_incoming(8001.0, 0.0),
            Err(ClientError::HeartbeatLost { silent_ms: 8001, expected_ms: 4000 })
        );
        let off = Heartbeats { send_every_ms: 0, expect_within_ms: 0, tolerance: 2.0 };
        assert_eq!(off.tick_ms(), None);
        assert!(!off.send_due(1e9, 0.0));
        assert!(off.check_incoming(1e9, 0.0).is_ok());
    }

    #[test]
    fn send_keeps_caller_headers_but_not_framing_ones() {
        let headers = vec![
            ("x-trace".to_owned(), "1".to_owned()),
            ("content-length".to_owned(), "999".to_owned()),
        ];
        let frame = send_frame("/topic/a", "{}", "application/json", &headers);
        assert_eq!(frame.header("x-trace"), Some("1"));
        assert_eq!(frame.header("content-length"), Some("2"), "the true length, not the caller's");
        assert_eq!(frame.header("content-type"), Some("application/json"));
    }
}
