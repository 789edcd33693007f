//! A routed message, encoded once per STOMP version and shared by every delivery, and the
//! [`Publication`] the rest of the server hands to the broker.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use taskpulse_shared::stomp::{Command, Frame, Headers, Version, encode};

/// What the server publishes through [`super::Broker::send_to_user`] and
/// [`super::Broker::publish`].
#[derive(Debug, Clone)]
pub struct Publication {
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) coalesce: Option<Coalesce>,
}

/// How a message may be merged with a newer one for a consumer that cannot keep up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesce {
    /// What the message is about (a task number): only messages with the same key merge.
    pub key: Arc<str>,
    /// True for an intermediate progress value that a later one makes obsolete; false for a
    /// status change, which is never merged away.
    pub replaceable: bool,
}

impl Publication {
    /// A JSON body (`content-type:application/json`).
    pub fn json(body: impl Into<Bytes>) -> Publication {
        Publication::new("application/json", body)
    }

    /// A body of the given content type.
    pub fn new(content_type: &str, body: impl Into<Bytes>) -> Publication {
        let mut headers = Headers::new();
        headers.push("content-type", content_type);
        Publication { headers, body: body.into(), coalesce: None }
    }

    /// Adds a header that subscribers receive.
    pub fn with_header(mut self, name: &str, value: &str) -> Publication {
        self.headers.push(name, value);
        self
    }

    /// Marks the message as mergeable under the slow-consumer policy.
    pub fn coalesce(mut self, coalesce: Coalesce) -> Publication {
        self.coalesce = Some(coalesce);
        self
    }
}

/// A message on its way to subscribers. The part of the MESSAGE frame that is the same for
/// every recipient is encoded on first use per version and shared.
#[derive(Debug)]
pub struct Message {
    pub(crate) id: String,
    pub(crate) destination: String,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) redelivered: bool,
    pub(crate) coalesce: Option<Coalesce>,
    /// Whether the encoded frame is valid UTF-8 (a text WebSocket message).
    pub(crate) text: bool,
    tails: [OnceLock<Option<Bytes>>; 3],
}

/// `MESSAGE\n`: the per-recipient headers go right after it.
pub(crate) const MESSAGE_LINE: &[u8] = b"MESSAGE\n";

impl Message {
    pub(crate) fn new(id: String, destination: String, publication: Publication) -> Message {
        let Publication { headers, body, coalesce } = publication;
        let text = std::str::from_utf8(&body).is_ok();
        // Copy small bodies so that a kept message does not pin a large read buffer.
        let body = if body.len() < 4096 { Bytes::copy_from_slice(&body) } else { body };
        Message {
            id,
            destination,
            headers,
            body,
            redelivered: false,
            coalesce,
            text,
            tails: Default::default(),
        }
    }

    /// The `seq` header of a user-log message.
    pub(crate) fn seq(&self) -> Option<i64> {
        self.headers.get("seq")?.parse().ok()
    }

    /// The same message marked `redelivered:true`.
    pub(crate) fn redelivery(&self) -> Message {
        Message {
            id: self.id.clone(),
            destination: self.destination.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            redelivered: true,
            coalesce: self.coalesce.clone(),
            text: self.text,
            tails: Default::default(),
        }
    }

    /// The encoded frame after `MESSAGE\n`: shared headers, blank line, body, NUL. `None` if a
    /// header cannot be written in `version` (e.g. a newline in a 1.0 header).
    pub(crate) fn tail(&self, version: Version) -> Option<&Bytes> {
        let slot = &self.tails[version as usize];
        slot.get_or_init(|| {
            let mut frame = Frame::new(Command::Message)
                .with_header("destination", &self.destination)
                .with_header("message-id", &self.id);
            if self.redelivered {
                frame.headers.push("redelivered", "true");
            }
            frame.headers.extend(self.headers.iter());
            frame.headers.push("content-length", &self.body.len().to_string());
            let frame = frame.with_body(self.body.clone());
            let mut out = Vec::new();
            encode(&frame, version, &mut out).ok()?;
            Some(Bytes::from(out).slice(MESSAGE_LINE.len()..))
        })
        .as_ref()
    }

    /// Bytes this message occupies in an outbound buffer, for the slow-consumer limit.
    pub(crate) fn cost(&self) -> usize {
        self.body.len() + self.destination.len() + self.id.len() + 96
    }
}

/// Headers of a SEND that are not passed on to subscribers: STOMP's own.
pub(crate) fn is_protocol_header(name: &str) -> bool {
    matches!(
        name,
        "destination"
            | "transaction"
            | "receipt"
            | "content-length"
            | "message-id"
            | "subscription"
            | "ack"
            | "redelivered"
    )
}
