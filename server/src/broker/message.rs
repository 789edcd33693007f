//! A routed message, shared by every delivery (a transport encodes it once per wire format
//! and keeps that encoding on the message), and the [`Publication`] the rest of the server
//! hands to the broker.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use taskpulse_shared::stomp::Headers;

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
/// `seq`, `epoch`, `x-replayed`, `x-snapshot*` headers of `taskpulse_shared::resume`).
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

/// How many wire formats a message can keep an encoding for (see [`Message::encoded`]):
/// STOMP's shared MESSAGE tail per version (0-2), the JSON protocol's (3), and that STOMP
/// tail JSON-quoted for SockJS per version (4-6).
pub(crate) const ENCODINGS: usize = 7;

/// A message on its way to subscribers. What is the same for every recipient is encoded by
/// the transport on first use, once per wire format, and shared.
#[derive(Debug)]
pub struct Message {
    pub(crate) id: String,
    pub(crate) destination: String,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) redelivered: bool,
    pub(crate) coalesce: Option<Coalesce>,
    pub(crate) place: Option<LogPlace>,
    /// On a node of several, a queue message's id in the queue's shared stream (the relay
    /// acknowledges or hands it back by this id).
    pub(crate) entry: Option<Arc<str>>,
    /// Whether the body is valid UTF-8 (so a text WebSocket message can carry it).
    pub(crate) text: bool,
    /// See [`Message::cost`]; computed once.
    cost: usize,
    encodings: [OnceLock<Option<Bytes>>; ENCODINGS],
}

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
            entry: None,
            text,
            cost,
            encodings: Default::default(),
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
            entry: self.entry.clone(),
            text: self.text,
            cost: self.cost,
            encodings: Default::default(),
        }
    }

    /// The transport's encoding of this message in wire format `slot` (below [`ENCODINGS`]),
    /// made by `encode` on first use and shared by every later delivery in that format.
    /// `None` if `encode` could not write it (or `slot` is out of range).
    pub(crate) fn encoded(
        &self,
        slot: usize,
        encode: impl FnOnce(&Message) -> Option<Bytes>,
    ) -> Option<&Bytes> {
        self.encodings.get(slot)?.get_or_init(|| encode(self)).as_ref()
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
