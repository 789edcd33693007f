//! A routed message, encoded once per STOMP version and shared by every delivery, and the
//! [`Publication`] the rest of the server hands to the broker.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use taskpulse_shared::{
    resume,
    stomp::{Command, Frame, Headers, Version, can_encode_header, encode},
};

/// What the server publishes through [`super::Broker::send_to_user`] and
/// [`super::Broker::publish`].
#[derive(Debug, Clone)]
pub struct Publication {
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) coalesce: Option<Coalesce>,
    pub(crate) place: Option<LogPlace>,
}

/// Where a message stands in its user's log. Typed until a transport encodes it (as the
/// `seq`, `epoch`, `x-replayed`, `x-snapshot*` headers of [`resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPlace {
    /// A numbered message, live or sent again from the log.
    Numbered {
        /// Its position.
        seq: i64,
        /// The log's epoch.
        epoch: Arc<str>,
        /// Sent again by a catch-up.
        replayed: bool,
    },
    /// Entry `index` (from 1) of `count` of a snapshot that stands for position `seq`.
    Snapshot {
        /// 1-based.
        index: usize,
        /// Entries in the snapshot.
        count: usize,
        /// The position the snapshot stands for.
        seq: i64,
        /// The log's epoch.
        epoch: Arc<str>,
    },
}

impl LogPlace {
    /// Its headers, in wire order.
    fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            LogPlace::Numbered { seq, epoch, replayed } => {
                let mut headers =
                    vec![(resume::SEQ, seq.to_string()), (resume::EPOCH, epoch.to_string())];
                if *replayed {
                    headers.push((resume::REPLAYED, "true".into()));
                }
                headers
            }
            LogPlace::Snapshot { index, count, seq, epoch } => vec![
                (resume::EPOCH, epoch.to_string()),
                (resume::SNAPSHOT, format!("{index}/{count}")),
                (resume::SNAPSHOT_SEQ, seq.to_string()),
            ],
        }
    }
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
        Publication { headers, body: body.into(), coalesce: None, place: None }
    }

    /// Places the message in its user's log.
    pub fn at(mut self, place: LogPlace) -> Publication {
        self.place = Some(place);
        self
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
    pub(crate) place: Option<LogPlace>,
    /// Whether the encoded frame is valid UTF-8 (a text WebSocket message).
    pub(crate) text: bool,
    /// See [`Message::cost`]; computed once.
    cost: usize,
    tails: [OnceLock<Option<Bytes>>; 3],
}

/// `MESSAGE\n`: the per-recipient headers go right after it.
pub(crate) const MESSAGE_LINE: &[u8] = b"MESSAGE\n";

impl Message {
    pub(crate) fn new(id: String, destination: String, publication: Publication) -> Message {
        let Publication { headers, body, coalesce, place } = publication;
        let text = std::str::from_utf8(&body).is_ok();
        // Copy small bodies so that a kept message does not pin a large read buffer.
        let body = if body.len() < 4096 { Bytes::copy_from_slice(&body) } else { body };
        // The encoded frame (every header included) plus room for the per-delivery
        // `subscription` and `ack` headers and `redelivered`.
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        // Room for the log place's headers too.
        let cost = body.len() + destination.len() + id.len() + header_bytes + 160;
        Message {
            id,
            destination,
            headers,
            body,
            redelivered: false,
            coalesce,
            place,
            text,
            cost,
            tails: Default::default(),
        }
    }

    /// The position of a numbered user-log message.
    pub(crate) fn seq(&self) -> Option<i64> {
        match &self.place {
            Some(LogPlace::Numbered { seq, .. }) => Some(*seq),
            _ => None,
        }
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
            place: self.place.clone(),
            text: self.text,
            cost: self.cost,
            tails: Default::default(),
        }
    }

    /// The encoded frame after `MESSAGE\n`: shared headers, blank line, body, NUL. A header
    /// that `version` cannot carry (a newline in a 1.0 header, a trailing CR before 1.2, in a
    /// value some client SENT) is left out rather than costing every subscriber of that
    /// version its connection. `None` only if the destination itself cannot be written.
    pub(crate) fn tail(&self, version: Version) -> Option<&Bytes> {
        let slot = &self.tails[version as usize];
        slot.get_or_init(|| {
            let mut frame = Frame::new(Command::Message)
                .with_header("destination", &self.destination)
                .with_header("message-id", &self.id);
            if self.redelivered {
                frame.headers.push("redelivered", "true");
            }
            frame.headers.extend(
                self.headers.iter().filter(|(name, value)| {
                    can_encode_header(name, value, Command::Message, version)
                }),
            );
            for (name, value) in self.place.iter().flat_map(LogPlace::headers) {
                frame.headers.push(name, &value);
            }
            frame.headers.push("content-length", &self.body.len().to_string());
            let frame = frame.with_body(self.body.clone());
            let mut out = Vec::new();
            encode(&frame, version, &mut out).ok()?;
            Some(Bytes::from(out).slice(MESSAGE_LINE.len()..))
        })
        .as_ref()
    }

    /// Bytes this message occupies in an outbound buffer, for the slow-consumer limit and
    /// the unacknowledged bytes of a connection.
    pub(crate) fn cost(&self) -> usize {
        self.cost
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
