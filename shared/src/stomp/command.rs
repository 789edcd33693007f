//! [`Frame`] <-> typed commands, with each version's required headers checked.
//!
//! [`ClientFrame::parse`] turns what a client sent into a [`ClientCommand`];
//! [`ServerCommand`] is what a server sends, built with `into_frame` and read back with `parse`.

use bytes::Bytes;

use super::frame::{Command, Frame, Headers, Version};

/// Why a frame is not a valid command of its version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A header the version requires is absent.
    #[error("{command} frame is missing the required {} header", crate::Quoted(header))]
    MissingHeader {
        /// The frame's command.
        command: Command,
        /// The header that is required.
        header: &'static str,
    },
    /// A header is present but its value is not allowed.
    #[error(
        "{command} frame has an invalid {} header {}: {reason}",
        crate::Quoted(header),
        crate::Quoted(value)
    )]
    InvalidHeader {
        /// The frame's command.
        command: Command,
        /// The header's name.
        header: &'static str,
        /// The value received.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The command does not exist in the version in use.
    #[error("{command} is not part of STOMP {version}")]
    NotInVersion {
        /// The frame's command.
        command: Command,
        /// The version in use.
        version: Version,
    },
    /// A server frame arrived where a client frame was expected, or the other way round.
    #[error("{command} is a {expected_from} frame, not a {actual_from} frame")]
    WrongDirection {
        /// The frame's command.
        command: Command,
        /// Who sends such frames.
        expected_from: &'static str,
        /// Who sent this one.
        actual_from: &'static str,
    },
}

/// The `heart-beat` header: `cx,cy` in milliseconds; 0 means "cannot" / "do not want".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// Smallest interval at which the sender can send heart-beats.
    pub send_ms: u32,
    /// Interval at which the sender wants to receive heart-beats.
    pub receive_ms: u32,
}

impl HeartBeat {
    /// Parses `cx,cy`.
    pub fn parse(text: &str) -> Option<HeartBeat> {
        let (cx, cy) = text.split_once(',')?;
        Some(HeartBeat { send_ms: cx.trim().parse().ok()?, receive_ms: cy.trim().parse().ok()? })
    }

    /// The header value, `cx,cy`.
    pub fn to_header(self) -> String {
        format!("{},{}", self.send_ms, self.receive_ms)
    }

    /// What each side does once `local` and `remote` have exchanged headers, per the spec:
    /// `(send every, expect within)` in milliseconds from `local`'s point of view; 0 = never.
    pub fn negotiate(local: HeartBeat, remote: HeartBeat) -> (u32, u32) {
        let pick = |a: u32, b: u32| if a == 0 || b == 0 { 0 } else { a.max(b) };
        (pick(local.send_ms, remote.receive_ms), pick(local.receive_ms, remote.send_ms))
    }
}

/// How a subscription acknowledges messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Delivered means acknowledged.
    #[default]
    Auto,
    /// Cumulative: ACK of a message acknowledges it and all earlier ones.
    Client,
    /// ACK or NACK each message on its own.
    ClientIndividual,
}

impl AckMode {
    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }

    fn parse(text: &str) -> Option<AckMode> {
        [AckMode::Auto, AckMode::Client, AckMode::ClientIndividual]
            .into_iter()
            .find(|m| m.as_str() == text)
    }
}

/// CONNECT or STOMP: open a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Versions the client accepts (`[1.0]` when it sent no `accept-version`).
    pub accept_version: Vec<Version>,
    /// The virtual host, if named. Required by 1.1+, but browsers' clients often omit it,
    /// so its absence is tolerated.
    pub host: Option<String>,
    /// The client's heart-beat offer.
    pub heart_beat: HeartBeat,
    /// Every header as sent, for credentials (`Authorization`, `login`, `passcode`) and labels
    /// (`clientId`).
    pub headers: Headers,
}

impl Connect {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// SEND: a message for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Where to.
    pub destination: String,
    /// The transaction it belongs to, if any.
    pub transaction: Option<String>,
    /// Every header as sent (user headers pass through to subscribers).
    pub headers: Headers,
    /// The payload.
    pub body: Bytes,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// What to subscribe to.
    pub destination: String,
    /// The subscription's id (1.0 clients may omit it; the destination stands in).
    pub id: String,
    /// How messages are acknowledged.
    pub ack: AckMode,
    /// Every header as sent (for extensions such as resume positions).
    pub headers: Headers,
}

/// ACK or NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledge {
    /// The `ack` id of the MESSAGE (1.2) or its `message-id` (1.0, 1.1).
    pub id: String,
    /// The subscription (1.1 only).
    pub subscription: Option<String>,
    /// The transaction it belongs to, if any.
    pub transaction: Option<String>,
}

/// A command a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// CONNECT or STOMP.
    Connect(Connect),
    /// SEND.
    Send(Send),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE of the subscription with this id.
    Unsubscribe {
        /// The subscription id (1.0: or its destination).
        id: String,
    },
    /// ACK.
    Ack(Acknowledge),
    /// NACK (1.1+).
    Nack(Acknowledge),
    /// BEGIN a transaction.
    Begin {
        /// Transaction name.
        transaction: String,
    },
    /// COMMIT a transaction.
    Commit {
        /// Transaction name.
        transaction: String,
    },
    /// ABORT a transaction.
    Abort {
        /// Transaction name.
        transaction: String,
    },
    /// DISCONNECT.
    Disconnect,
}

/// A client frame: the command and the `receipt` it asks for, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// What the client asks for.
    pub command: ClientCommand,
    /// The `receipt` header: the server answers with a RECEIPT carrying it.
    pub receipt: Option<String>,
}

/// Header lookups that fail with the error a client should see.
struct Required<'a> {
    frame: &'a Frame,
}

impl<'a> Required<'a> {
    fn get(&self, header: &'static str) -> Result<&'a str, CommandError> {
        self.frame
            .header(header)
            .ok_or(CommandError::MissingHeader { command: self.frame.command, header })
    }

    fn optional(&self, header: &str) -> Option<String> {
        self.frame.header(header).map(str::to_owned)
    }

    /// An optional header read with `parse`: `default` when absent, an error naming
    /// `reason` when present but unreadable.
    fn parsed<T>(
        &self,
        header: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
        default: T,
        reason: &'static str,
    ) -> Result<T, CommandError> {
        let Some(text) = self.frame.header(header) else { return Ok(default) };
        parse(text).ok_or_else(|| CommandError::InvalidHeader {
            command: self.frame.command,
            header,
            value: text.to_owned(),
            reason,
        })
    }
}

impl ClientFrame {
    /// Reads a client frame of `version`, checking the headers that version requires.
    ///
    /// # Errors
    /// A [`CommandError`] naming the missing or invalid header, or a server command.
    pub fn parse(frame: Frame, version: Version) -> Result<ClientFrame, CommandError> {
        let req = Required { frame: &frame };
        let receipt = req.optional("receipt");
        let modern = version >= Version::V1_1;
        let command = match frame.command {
            Command::Connect | Command::Stomp => {
                let accept_version = match frame.header("accept-version") {
                    None => vec![Version::V1_0],
                    Some(list) => list.split(',').filter_map(Version::parse).collect(),
                };
                let heart_beat = req.parsed(
                    "heart-beat",
                    HeartBeat::parse,
                    HeartBeat::default(),
                    "expected two millisecond counts, as in 4000,4000",
                )?;
                ClientCommand::Connect(Connect {
                    accept_version,
                    host: req.optional("host"),
                    heart_beat,
                    headers: frame.headers,
                })
            }
            Command::Send => ClientCommand::Send(Send {
                destination: req.get("destination")?.to_owned(),
                transaction: req.optional("transaction"),
                headers: frame.headers,
                body: frame.body,
            }),
            Command::Subscribe => {
                let destination = req.get("destination")?.to_owned();
                let id = if modern {
                    req.get("id")?.to_owned()
                } else {
                    req.optional("id").unwrap_or_else(|| destination.clone())
                };
                let ack = req.parsed(
                    "ack",
                    AckMode::parse,
                    AckMode::Auto,
                    "expected auto, client or client-individual",
                )?;
                ClientCommand::Subscribe(Subscribe { destination, id, ack, headers: frame.headers })
            }
            Command::Unsubscribe => {
                let id = if modern {
                    req.get("id")?
                } else {
                    req.get("id").or_else(|_| req.get("destination"))?
                };
                ClientCommand::Unsubscribe { id: id.to_owned() }
            }
            Command::Ack | Command::Nack => {
                if frame.command == Command::Nack && !modern {
                    return Err(CommandError::NotInVersion { command: Command::Nack, version });
                }
                let acknowledge = Acknowledge {
                    id: req
                        .get(if version >= Version::V1_2 { "id" } else { "message-id" })?
                        .to_owned(),
                    subscription: if version == Version::V1_1 {
                        Some(req.get("subscription")?.to_owned())
                    } else {
                        req.optional("subscription")
                    },
                    transaction: req.optional("transaction"),
                };
                if frame.command == Command::Ack {
                    ClientCommand::Ack(acknowledge)
                } else {
                    ClientCommand::Nack(acknowledge)
                }
            }
            Command::Begin => {
                ClientCommand::Begin { transaction: req.get("transaction")?.to_owned() }
            }
            Command::Commit => {
                ClientCommand::Commit { transaction: req.get("transaction")?.to_owned() }
            }
            Command::Abort => {
                ClientCommand::Abort { transaction: req.get("transaction")?.to_owned() }
            }
            Command::Disconnect => ClientCommand::Disconnect,
            server
            @ (Command::Connected | Command::Message | Command::Receipt | Command::Error) => {
                return Err(CommandError::WrongDirection {
                    command: server,
                    expected_from: "server",
                    actual_from: "client",
                });
            }
        };
        Ok(ClientFrame { command, receipt })
    }
}

/// A command a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    /// CONNECTED: the session is open.
    Connected {
        /// The negotiated version.
        version: Version,
        /// The server's heart-beat answer.
        heart_beat: HeartBeat,
        /// `server` header: name/version of the broker.
        server: Option<String>,
        /// `session` header: the session id.
        session: Option<String>,
        /// `user-name` header: the authenticated principal.
        user_name: Option<String>,
    },
    /// MESSAGE for a subscription.
    Message {
        /// Where it was sent.
        destination: String,
        /// Unique id of the message.
        message_id: String,
        /// The subscription id it is delivered on.
        subscription: String,
        /// The `ack` id, when the subscription needs acknowledging.
        ack: Option<String>,
        /// Further headers (content-type, user headers, extensions), in order.
        headers: Headers,
        /// The payload; `content-length` is always written.
        body: Bytes,
    },
    /// RECEIPT for a client frame that asked for one.
    Receipt {
        /// The client's `receipt` value.
        receipt_id: String,
    },
    /// ERROR; the connection closes after it.
    Error {
        /// One-line summary.
        message: String,
        /// The `receipt` of the frame that caused it, if it asked for one.
        receipt_id: Option<String>,
        /// A longer explanation.
        body: String,
    },
}

impl ServerCommand {
    /// The frame to encode.
    pub fn into_frame(self) -> Frame {
        match self {
            ServerCommand::Connected { version, heart_beat, server, session, user_name } => {
                let mut frame = Frame::new(Command::Connected)
                    .with_header("version", version.as_str())
                    .with_header("heart-beat", heart_beat.to_header());
                let optional = [("server", server), ("session", session), ("user-name", user_name)];
                for (name, value) in optional {
                    if let Some(value) = value {
                        frame.headers.push(name, &value);
                    }
                }
                frame
            }
            ServerCommand::Message {
                destination,
                message_id,
                subscription,
                ack,
                headers,
                body,
            } => {
                let mut frame = Frame::new(Command::Message)
                    .with_header("destination", destination)
                    .with_header("message-id", message_id)
                    .with_header("subscription", subscription);
                if let Some(ack) = ack {
                    frame.headers.push("ack", &ack);
                }
                frame.headers.extend(headers.iter().filter(|(n, _)| *n != "content-length"));
                frame.headers.push("content-length", &body.len().to_string());
                frame.with_body(body)
            }
            ServerCommand::Receipt { receipt_id } => {
                Frame::new(Command::Receipt).with_header("receipt-id", receipt_id)
            }
            ServerCommand::Error { message, receipt_id, body } => {
                let mut frame = Frame::new(Command::Error).with_header("message", message);
                if let Some(id) = receipt_id {
                    frame.headers.push("receipt-id", &id);
                }
                frame.headers.push("content-type", "text/plain");
                frame.headers.push("content-length", &body.len().to_string());
                frame.with_body(body)
            }
        }
    }

    /// Reads a server frame of `version` (as a client does).
    ///
    /// # Errors
    /// A [`CommandError`] naming the missing header, or a client command.
    pub fn parse(frame: Frame, version: Version) -> Result<ServerCommand, CommandError> {
        let req = Required { frame: &frame };
        Ok(match frame.command {
            Command::Connected => {
                let version = req.parsed(
                    "version",
                    Version::parse,
                    Version::V1_0,
                    "expected 1.0, 1.1 or 1.2",
                )?;
                let heart_beat =
                    frame.header("heart-beat").and_then(HeartBeat::parse).unwrap_or_default();
                ServerCommand::Connected {
                    version,
                    heart_beat,
                    server: req.optional("server"),
                    session: req.optional("session"),
                    user_name: req.optional("user-name"),
                }
            }
            Command::Message => {
                let destination = req.get("destination")?.to_owned();
                let message_id = req.get("message-id")?.to_owned();
                let subscription = if version >= Version::V1_1 {
                    req.get("subscription")?.to_owned()
                } else {
                    req.optional("subscription").unwrap_or_default()
                };
                let ack = req.optional("ack");
                let standard = ["destination", "message-id", "subscription", "ack"];
                let headers = frame.headers.iter().filter(|(n, _)| !standard.contains(n)).collect();
                ServerCommand::Message {
                    destination,
                    message_id,
                    subscription,
                    ack,
                    headers,
                    body: frame.body,
                }
            }
            Command::Receipt => {
                ServerCommand::Receipt { receipt_id: req.get("receipt-id")?.to_owned() }
            }
            Command::Error => ServerCommand::Error {
                message: req.optional("message").unwrap_or_default(),
                receipt_id: req.optional("receipt-id"),
                body: String::from_utf8_lossy(&frame.body).into_owned(),
            },
            client => {
                return Err(CommandError::WrongDirection {
                    command: client,
                    expected_from: "client",
                    actual_from: "server",
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(frame: Frame, version: Version) -> Result<ClientCommand, CommandError> {
        ClientFrame::parse(frame, version).map(|f| f.command)
    }

    #[test]
    fn required_headers_per_version() {
        use Version::*;
        let missing = |command, header| Err(CommandError::MissingHeader { command, header });
        let table: Vec<(Frame, Version, Result<(), CommandError>)> = vec![
            (Frame::new(Command::Send), V1_2, missing(Command::Send, "destination")),
            (
                Frame::new(Command::Subscribe).with_header("destination", "/q"),
                V1_2,
                missing(Command::Subscribe, "id"),
            ),
            (Frame::new(Command::Subscribe).with_header("destination", "/q"), V1_0, Ok(())),
            (Frame::new(Command::Unsubscribe), V1_1, missing(Command::Unsubscribe, "id")),
            (Frame::new(Command::Unsubscribe).with_header("destination", "/q"), V1_0, Ok(())),
            (
                Frame::new(Command::Ack).with_header("message-id", "m"),
                V1_2,
                missing(Command::Ack, "id"),
            ),
            (
                Frame::new(Command::Ack).with_header("message-id", "m"),
                V1_1,
                missing(Command::Ack, "subscription"),
            ),
            (Frame::new(Command::Ack).with_header("message-id", "m"), V1_0, Ok(())),
            (
                Frame::new(Command::Nack).with_header("message-id", "m"),
                V1_0,
                Err(CommandError::NotInVersion { command: Command::Nack, version: V1_0 }),
            ),
            (Frame::new(Command::Begin), V1_2, missing(Command::Begin, "transaction")),
            (Frame::new(Command::Commit), V1_2, missing(Command::Commit, "transaction")),
            (Frame::new(Command::Abort), V1_2, missing(Command::Abort, "transaction")),
            (Frame::new(Command::Disconnect), V1_2, Ok(())),
            (Frame::new(Command::Connect), V1_2, Ok(())),
        ];
        for (frame, version, expected) in table {
            let name = format!("{} {version}", frame.command);
            assert_eq!(client(frame, version).map(|_| ()), expected, "{name}");
        }
    }

    #[test]
    fn connect_reads_versions_heart_beat_and_credentials() {
        let frame = Frame::new(Command::Connect)
            .with_header("accept-version", "1.0,1.1,1.2")
            .with_header("heart-beat", "4000,4000")
            .with_header("Authorization", "Bearer abc");
        let ClientCommand::Connect(connect) = client(frame, Version::V1_2).unwrap() else {
            panic!("not a connect");
        };
        assert_eq!(connect.accept_version, Version::ALL);
        assert_eq!(connect.heart_beat, HeartBeat { send_ms: 4000, receive_ms: 4000 });
        assert_eq!(connect.header("Authorization"), Some("Bearer abc"));
        assert_eq!(connect.host, None);
        let bad = Frame::new(Command::Stomp).with_header("heart-beat", "soon");
        let err = client(bad, Version::V1_2).unwrap_err();
        assert!(err.to_string().contains("invalid \"heart-beat\" header \"soon\""), "{err}");
    }

    #[test]
    fn subscribe_and_ack_modes() {
        let frame = Frame::new(Command::Subscribe)
            .with_header("destination", "/user/queue/tasks-progress")
            .with_header("id", "sub-0")
            .with_header("ack", "client-individual")
            .with_header("receipt", "r1");
        let parsed = ClientFrame::parse(frame, Version::V1_2).unwrap();
        assert_eq!(parsed.receipt.as_deref(), Some("r1"));
        let ClientCommand::Subscribe(sub) = parsed.command else { panic!("not a subscribe") };
        assert_eq!((sub.id.as_str(), sub.ack), ("sub-0", AckMode::ClientIndividual));
        let bad = Frame::new(Command::Subscribe)
            .with_header("destination", "/q")
            .with_header("id", "1")
            .with_header("ack", "sometimes");
        assert!(matches!(
            client(bad, Version::V1_2),
            Err(CommandError::InvalidHeader { header: "ack", .. })
        ));
    }

    #[test]
    fn ack_uses_id_in_1_2_and_message_id_before() {
        let v12 = Frame::new(Command::Ack).with_header("id", "a1").with_header("transaction", "t");
        assert_eq!(
            client(v12, Version::V1_2).unwrap(),
            ClientCommand::Ack(Acknowledge {
                id: "a1".into(),
                subscription: None,
                transaction: Some("t".into())
            })
        );
        let v11 = Frame::new(Command::Nack)
            .with_header("message-id", "m1")
            .with_header("subscription", "s");
        assert_eq!(
            client(v11, Version::V1_1).unwrap(),
            ClientCommand::Nack(Acknowledge {
                id: "m1".into(),
                subscription: Some("s".into()),
                transaction: None
            })
        );
    }

    #[test]
    fn server_frames_are_refused_from_clients_and_vice_versa() {
        let err = client(Frame::new(Command::Message), Version::V1_2).unwrap_err();
        assert_eq!(err.to_string(), "MESSAGE is a server frame, not a client frame");
        let err = ServerCommand::parse(Frame::new(Command::Send), Version::V1_2).unwrap_err();
        assert_eq!(err.to_string(), "SEND is a client frame, not a server frame");
    }

    #[test]
    fn server_commands_round_trip_through_frames() {
        let commands = vec![
            ServerCommand::Connected {
                version: Version::V1_2,
                heart_beat: HeartBeat { send_ms: 4000, receive_ms: 4000 },
                server: Some("taskpulse/0.1".into()),
                session: Some("s-1".into()),
                user_name: Some("alice".into()),
            },
            ServerCommand::Message {
                destination: "/user/queue/tasks-progress".into(),
                message_id: "m-1".into(),
                subscription: "sub-0".into(),
                ack: Some("a-1".into()),
                headers: [("content-type", "application/json")].into_iter().collect(),
                body: Bytes::from_static(b"{}"),
            },
            ServerCommand::Receipt { receipt_id: "r-1".into() },
            ServerCommand::Error {
                message: "authentication failed".into(),
                receipt_id: Some("r-2".into()),
                body: "the token has expired".into(),
            },
        ];
        for command in commands {
            let frame = command.clone().into_frame();
            let mut back = ServerCommand::parse(frame, Version::V1_2).unwrap();
            if let ServerCommand::Message { headers, .. } = &mut back {
                *headers = headers.iter().filter(|(n, _)| *n != "content-length").collect();
            }
            assert_eq!(back, command);
        }
    }

    #[test]
    fn message_frame_always_states_its_length() {
        let frame = ServerCommand::Message {
            destination: "/topic/x".into(),
            message_id: "1".into(),
            subscription: "s".into(),
            ack: None,
            headers: [("content-length", "999")].into_iter().collect(),
            body: Bytes::from_static(b"a\0b"),
        }
        .into_frame();
        assert_eq!(frame.header("content-length"), Some("3"));
        assert!(frame.to_bytes(Version::V1_2).is_ok());
    }

    #[test]
    fn heart_beat_negotiation_follows_the_spec() {
        let server = HeartBeat { send_ms: 4000, receive_ms: 4000 };
        let client = HeartBeat { send_ms: 10_000, receive_ms: 1000 };
        assert_eq!(HeartBeat::negotiate(server, client), (4000, 10_000));
        assert_eq!(HeartBeat::negotiate(server, HeartBeat::default()), (0, 0));
        assert_eq!(HeartBeat::parse(" 1 , 2 "), Some(HeartBeat { send_ms: 1, receive_ms: 2 }));
        assert_eq!(HeartBeat::parse("1"), None);
    }
}
