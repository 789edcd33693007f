//! STOMP as a wire format: writes the broker's protocol-neutral [`Outgoing`] events as STOMP
//! frames in the version the session negotiated. The only place the server writes STOMP.

use std::sync::Arc;

use bytes::Bytes;
use taskpulse_shared::{
    resume,
    stomp::{Command, ServerCommand, Version, encode, encode_header},
};

use crate::broker::{Failure, LogPlace, Message, Outgoing, Wire};

/// `MESSAGE\n`: the per-recipient headers go right after it.
const MESSAGE_LINE: &[u8] = b"MESSAGE\n";

/// What a connection sends during silence (an EOL, STOMP 1.1+).
pub(crate) const HEARTBEAT: &str = "\n";

/// The `server` header of CONNECTED.
const SERVER: &str = concat!("TaskPulse/", env!("CARGO_PKG_VERSION"));

/// Writes one connection's events; remembers the version its opening negotiated.
#[derive(Debug)]
pub(crate) struct StompWriter {
    version: Version,
}

impl Default for StompWriter {
    /// Before CONNECTED (an ERROR for a bad CONNECT) frames are written as STOMP 1.2.
    fn default() -> StompWriter {
        StompWriter { version: Version::V1_2 }
    }
}

impl StompWriter {
    /// Appends `item`'s frame to `out` and says whether it is valid UTF-8 (a text WebSocket
    /// message can carry it). [`Outgoing::Close`] writes nothing: the transport closes.
    ///
    /// # Errors
    /// Why the frame cannot be written faithfully in this version (a client-chosen value the
    /// version cannot carry); nothing was appended. The caller fails the connection.
    pub(crate) fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        let start = out.len();
        let frame = match item {
            Outgoing::Opened(opened) => {
                let Wire::Stomp { version, heart_beat } = opened.wire else {
                    return Err("A session of another protocol cannot be written as STOMP.".into());
                };
                self.version = version;
                ServerCommand::Connected {
                    version,
                    heart_beat,
                    server: Some(SERVER.to_owned()),
                    session: Some(opened.session.clone()),
                    user_name: Some(opened.user_name.clone()),
                }
                .into_frame()
            }
            Outgoing::Receipt(receipt_id) => {
                ServerCommand::Receipt { receipt_id: receipt_id.clone() }.into_frame()
            }
            Outgoing::Error(failure) => {
                self.error(failure, out);
                return Ok(std::str::from_utf8(&out[start..]).is_ok());
            }
            Outgoing::Deliver { sub, ack, message } => {
                return self.delivery(sub, *ack, message, out);
            }
            Outgoing::Reply(bytes) => {
                out.extend_from_slice(bytes);
                return Ok(std::str::from_utf8(bytes).is_ok());
            }
            Outgoing::Close(_) => return Ok(true),
        };
        if let Err(error) = encode(&frame, self.version, out) {
            out.truncate(start);
            return Err(format!(
                "The server cannot write its answer faithfully in STOMP {}: {error}.",
                self.version
            ));
        }
        Ok(std::str::from_utf8(&out[start..]).is_ok())
    }

    /// A MESSAGE: `MESSAGE\n`, this delivery's headers, then the part every recipient shares
    /// (encoded once per version and kept on the message).
    fn delivery(
        &self,
        sub: &Arc<str>,
        ack: Option<u64>,
        message: &Message,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let tail = self.shared_tail(message)?;
        self.delivery_head(sub, ack, out)?;
        out.extend_from_slice(tail);
        Ok(message.text)
    }

    /// The version STOMP frames are written in (set by CONNECTED).
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The part of `message`'s MESSAGE frame every recipient of this version shares (after
    /// `MESSAGE\n` and the delivery's own headers), encoded on first use and kept.
    ///
    /// # Errors
    /// The destination cannot be written in this version.
    pub(crate) fn shared_tail<'m>(&self, message: &'m Message) -> Result<&'m Bytes, String> {
        let version = self.version;
        message
            .encoded(version as usize, |m| shared_tail(m, version))
            .ok_or_else(|| unwritable(version))
    }

    /// `MESSAGE\n` and one delivery's own headers (`subscription`, `ack`).
    ///
    /// # Errors
    /// The subscription id cannot be written in this version; nothing was appended.
    pub(crate) fn delivery_head(
        &self,
        sub: &Arc<str>,
        ack: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let version = self.version;
        let start = out.len();
        out.extend_from_slice(MESSAGE_LINE);
        let mut headers = encode_header("subscription", sub, Command::Message, version, out);
        if let Some(ack) = ack {
            let id = ack.to_string();
            headers =
                headers.and_then(|()| encode_header("ack", &id, Command::Message, version, out));
        }
        if headers.is_err() {
            out.truncate(start);
            return Err(unwritable(version));
        }
        Ok(())
    }

    /// An ERROR with its machine-readable `code`: without the `receipt-id` if the version
    /// cannot carry it, at worst without the body, and never not at all.
    fn error(&self, failure: &Failure, out: &mut Vec<u8>) {
        let error = |receipt_id: Option<&String>, body: &str| {
            let mut frame = ServerCommand::Error {
                message: failure.message.clone(),
                receipt_id: receipt_id.cloned(),
                body: body.to_owned(),
            }
            .into_frame();
            // Clients match the code, never the wording.
            frame.headers.push(resume::ERROR_CODE, &resume::error_code(&failure.message));
            frame
        };
        let start = out.len();
        let attempts = [
            error(failure.receipt_id.as_ref(), &failure.body),
            error(None, &failure.body),
            error(None, ""),
        ];
        for frame in &attempts {
            if encode(frame, self.version, out).is_ok() {
                return;
            }
            out.truncate(start);
        }
        // Only static text is left: a bare frame that every version can carry.
        out.extend_from_slice(b"ERROR\n\n\0");
    }
}

/// Why a MESSAGE cannot be written in `version`.
fn unwritable(version: Version) -> String {
    format!("A message for this session has a header that STOMP {version} cannot carry.")
}

/// The encoded MESSAGE after `MESSAGE\n`: shared headers, blank line, body, NUL. A header
/// that `version` cannot carry (a newline in a 1.0 header, a trailing CR before 1.2, in a
/// value some client SENT) is left out rather than costing every subscriber of that version
/// its connection. `None` only if the destination itself cannot be written.
///
/// Written straight into one buffer: with one subscriber per destination this runs once per
/// delivery, and building a `Frame` first (a `String` per header) was a fifth of the
/// broker's CPU there (`perf`, the load tool's destinations scenario).
fn shared_tail(message: &Message, version: Version) -> Option<Bytes> {
    // A message's cost is its encoded size with room for the place's headers.
    let mut out = Vec::with_capacity(message.cost());
    let mut header = |name: &str, value: &str| {
        encode_header(name, value, Command::Message, version, &mut out).is_ok()
    };
    if !header("destination", &message.destination) || !header("message-id", &message.id) {
        return None;
    }
    if message.redelivered {
        header("redelivered", "true");
    }
    for (name, value) in message.headers.iter() {
        // Left out when this version cannot carry it (nothing is written then).
        header(name, value);
    }
    let mut digits = itoa::Buffer::new();
    match message.place.as_ref() {
        Some(LogPlace::Numbered { seq, epoch, replayed }) => {
            header(resume::SEQ, digits.format(*seq));
            header(resume::EPOCH, epoch);
            if *replayed {
                header(resume::REPLAYED, "true");
            }
        }
        Some(LogPlace::Snapshot { index, count, seq, epoch }) => {
            header(resume::EPOCH, epoch);
            header(resume::SNAPSHOT, &format!("{index}/{count}"));
            header(resume::SNAPSHOT_SEQ, digits.format(*seq));
        }
        None => {}
    }
    header("content-length", digits.format(message.body.len()));
    out.push(b'\n');
    out.extend_from_slice(&message.body);
    out.push(0);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Opened, Publication};
    use proptest::prelude::*;
    use taskpulse_shared::stomp::{Decoder, Frame, HeartBeat, can_encode_header};

    fn opened(version: Version) -> Outgoing {
        Outgoing::Opened(Box::new(Opened {
            session: "s-1".into(),
            user_name: "alice".into(),
            wire: Wire::Stomp { version, heart_beat: HeartBeat::default() },
        }))
    }

    fn written(writer: &mut StompWriter, item: &Outgoing) -> Result<String, String> {
        let mut out = Vec::new();
        writer.encode(item, &mut out)?;
        Ok(String::from_utf8(out).expect("test frames are UTF-8"))
    }

    #[test]
    fn the_opening_sets_the_version_every_later_frame_is_written_in() {
        let mut writer = StompWriter::default();
        let connected = written(&mut writer, &opened(Version::V1_1)).unwrap();
        assert!(connected.starts_with("CONNECTED\nversion:1.1\n"), "{connected}");
        assert!(connected.contains("\nsession:s-1\n") && connected.contains("user-name:alice"));
        // A receipt id ending in CR cannot be written before 1.2: refused, nothing written.
        let mut out = b"kept".to_vec();
        let refused = writer.encode(&Outgoing::Receipt("abc\r".into()), &mut out);
        assert!(refused.unwrap_err().contains("STOMP 1.1"));
        assert_eq!(out, b"kept");
        assert_eq!(
            written(&mut writer, &Outgoing::Receipt("r-1".into())).unwrap(),
            "RECEIPT\nreceipt-id:r-1\n\n\0"
        );
    }

    #[test]
    fn an_error_goes_out_even_when_its_receipt_id_cannot() {
        let mut writer = StompWriter::default();
        written(&mut writer, &opened(Version::V1_0)).unwrap();
        let failure = Failure {
            message: "malformed frame".into(),
            receipt_id: Some("x\ny".into()),
            body: "why".into(),
        };
        let error = written(&mut writer, &Outgoing::Error(Box::new(failure))).unwrap();
        assert!(error.starts_with("ERROR\nmessage:malformed frame\n"), "{error}");
        assert!(!error.contains("x\ny") && error.contains("code:malformed-frame"), "{error}");
    }

    #[test]
    fn a_delivery_decodes_to_the_message_with_its_log_place() {
        let place = LogPlace::Numbered { seq: 7, epoch: Arc::from("e1"), replayed: true };
        let publication = Publication::json("{}").with_header("x-a", "1").at(place);
        let message = Arc::new(Message::new("m-1".into(), "/user/queue/t".into(), publication));
        let item = Outgoing::Deliver { sub: Arc::from("sub-0"), ack: Some(3), message };
        let mut writer = StompWriter::default();
        let mut out = Vec::new();
        assert_eq!(writer.encode(&item, &mut out), Ok(true));
        let mut decoder = Decoder::default();
        decoder.feed(&out);
        let frame = decoder.decode().unwrap().unwrap();
        let header = |name| frame.headers.get(name);
        assert_eq!(frame.command, Command::Message);
        assert_eq!(header("subscription"), Some("sub-0"));
        assert_eq!(header("ack"), Some("3"));
        assert_eq!(header("destination"), Some("/user/queue/t"));
        assert_eq!(header(resume::SEQ), Some("7"));
        assert_eq!(header(resume::EPOCH), Some("e1"));
        assert_eq!(header(resume::REPLAYED), Some("true"));
        assert_eq!(header("x-a"), Some("1"));
        assert_eq!(&frame.body[..], b"{}");
    }

    /// What `shared_tail` wrote before it wrote straight into its buffer: a `Frame` of the
    /// same headers (those this version cannot carry left out), encoded whole. The property
    /// below holds the two to the same bytes.
    fn through_a_frame(message: &Message, version: Version) -> Option<Bytes> {
        let mut frame = Frame::new(Command::Message)
            .with_header("destination", &message.destination)
            .with_header("message-id", &message.id);
        if message.redelivered {
            frame.headers.push("redelivered", "true");
        }
        frame.headers.extend(
            message
                .headers
                .iter()
                .filter(|(name, value)| can_encode_header(name, value, Command::Message, version)),
        );
        match &message.place {
            Some(LogPlace::Numbered { seq, epoch, replayed }) => {
                frame.headers.push(resume::SEQ, &seq.to_string());
                frame.headers.push(resume::EPOCH, epoch);
                if *replayed {
                    frame.headers.push(resume::REPLAYED, "true");
                }
            }
            Some(LogPlace::Snapshot { index, count, seq, epoch }) => {
                frame.headers.push(resume::EPOCH, epoch);
                frame.headers.push(resume::SNAPSHOT, &format!("{index}/{count}"));
                frame.headers.push(resume::SNAPSHOT_SEQ, &seq.to_string());
            }
            None => {}
        }
        frame.headers.push("content-length", &message.body.len().to_string());
        let frame = frame.with_body(message.body.clone());
        let mut out = Vec::new();
        encode(&frame, version, &mut out).ok()?;
        Some(Bytes::from(out).slice(MESSAGE_LINE.len()..))
    }

    /// Text a client can put in a destination or a header: STOMP's special characters
    /// (escaped from 1.1, not representable in 1.0), CR, NUL and non-ASCII among plain ones.
    fn client_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::char::range('a', 'z'),
                1 => Just(':'),
                1 => Just('\\'),
                1 => Just('\n'),
                1 => Just('\r'),
                1 => Just('\0'),
                1 => Just('é'),
            ],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn place() -> impl Strategy<Value = Option<LogPlace>> {
        let epoch = "[0-9a-f]{1,16}".prop_map(Arc::<str>::from);
        prop_oneof![
            Just(None),
            (any::<i64>(), epoch.clone(), any::<bool>()).prop_map(|(seq, epoch, replayed)| {
                Some(LogPlace::Numbered { seq, epoch, replayed })
            }),
            (1..5usize, 1..5usize, any::<i64>(), epoch).prop_map(|(index, count, seq, epoch)| {
                Some(LogPlace::Snapshot { index, count, seq, epoch })
            }),
        ]
    }

    proptest! {
        #[test]
        fn the_shared_tail_is_what_encoding_a_whole_frame_wrote(
            destination in client_text(),
            headers in prop::collection::vec((client_text(), client_text()), 0..4),
            body in prop::collection::vec(any::<u8>(), 0..64),
            redelivered in any::<bool>(),
            place in place(),
            version in prop_oneof![Just(Version::V1_0), Just(Version::V1_1), Just(Version::V1_2)],
        ) {
            let mut publication = Publication::new("text/plain", body);
            for (name, value) in &headers {
                // Names as a SEND leaves them: prefixed, so never one of STOMP's own.
                publication = publication.with_header(&format!("x-{name}"), value);
            }
            if let Some(place) = place {
                publication = publication.at(place);
            }
            let mut message = Message::new("m-1".into(), format!("/topic/{destination}"), publication);
            message.redelivered = redelivered;
            prop_assert_eq!(shared_tail(&message, version), through_a_frame(&message, version));
        }
    }
}
