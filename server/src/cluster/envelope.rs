//! What nodes say to each other on the bus, and the channels they say it on. MessagePack
//! (`rmp-serde`): bodies are bytes, and a STOMP topic's may not be UTF-8.
//!
//! Channel names put the user or topic in `{...}`, a Redis Cluster hash tag: moving to
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) keeps the names and only changes the commands.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use taskpulse_shared::TaskProgressDto;

use taskpulse_shared::stomp::Headers;

use crate::{
    broker::{Coalesce, LogPlace, Message, Publication},
    tasks::{RemoteFailure, TaskCall},
};

/// Every node's control channel: revocations, disconnects, share links.
pub(crate) const CONTROL: &str = "taskpulse:control";

/// The channel of every private destination of `user`.
pub(crate) fn user_channel(user: &str) -> String {
    format!("taskpulse:user:{{{user}}}")
}

/// The channel of one node (answers to the calls it made).
pub(crate) fn node_channel(node: &str) -> String {
    format!("taskpulse:node:{{{node}}}")
}

/// The channel of the topic `name`.
pub(crate) fn topic_channel(name: &str) -> String {
    format!("taskpulse:topic:{{{name}}}")
}

/// The channel on which the nodes consuming queue `name` hear that it has a new message.
pub(crate) fn queue_channel(name: &str) -> String {
    format!("taskpulse:queue:{{{name}}}")
}

/// The Redis stream that holds queue `name`'s messages (the same hash tag as its channel,
/// so a script may publish on one while it writes the other on Redis Cluster too).
pub(crate) fn queue_key(name: &str) -> String {
    format!("taskpulse:stream:{{{name}}}")
}

/// The set of queue names in use, for `limits.queues` across the nodes.
pub(crate) const QUEUE_NAMES: &str = "taskpulse:queues";

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The node that sent it (a node ignores its own).
    pub(crate) node: String,
    /// When it was sent, ms since the epoch (the receiver's lag).
    pub(crate) sent_at: i64,
    pub(crate) body: Body,
}

/// What an [`Envelope`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// For every session of `user` subscribed to `/user{path}`.
    User { user: String, path: String, message: Wire },
    /// For every subscriber of a topic.
    Topic { name: String, message: Wire },
    /// A token was revoked.
    Revoke { token_id: String },
    /// A user's sessions are to be closed.
    Disconnect { user: String, reason: String },
    /// A share link was made.
    ShareAdded { id: String, owner: String, task_no: String },
    /// A share link ended.
    ShareRemoved { id: String },
    /// A call on a task, for the node that runs it; answered on `reply_to`'s channel.
    TaskCall { call: u64, reply_to: String, task_no: String, op: TaskCall },
    /// The answer to call `call`.
    TaskReply { call: u64, outcome: Result<TaskProgressDto, RemoteFailure> },
    /// The sender has `count` connections of `user` open.
    Presence { user: String, count: usize },
    /// The sender is alive with `connections` open; with `users`, each user's count there
    /// (every so often, and in answer to a [`Body::Hello`]).
    Alive {
        connections: usize,
        users: Option<Vec<(String, usize)>>,
        /// With `users`: every `(user, path)` with a subscriber on the sender.
        #[serde(default)]
        paths: Option<Vec<(String, String)>>,
    },
    /// The sender has (`on`) or no longer has a subscriber on `user`'s private `path`.
    Listening { user: String, path: String, on: bool },
    /// A node joined: the others announce their connections.
    Hello,
    /// Queue `name` has a new message in its stream.
    Queued { name: String },
    /// The sender dropped a numbered message of `user` on the way out: read the log.
    Behind { user: String },
}

/// A queue message as its stream keeps it (one field, `m`): what a consumer on any node
/// receives, with the `message-id` it keeps across redeliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    id: String,
    headers: Vec<(String, String)>,
    body: ByteBuf,
    redelivered: bool,
}

impl Entry {
    /// The parts of `message` a consumer on another node needs.
    pub(crate) fn of(message: &Message) -> Entry {
        Entry {
            id: message.id.clone(),
            headers: message.headers.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            body: ByteBuf::from(message.body.to_vec()),
            redelivered: message.redelivered,
        }
    }

    /// The bytes in the stream.
    pub(crate) fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// The message again, for `destination`, as stream entry `entry`.
    ///
    /// # Errors
    /// The bytes are not an entry (another program wrote to the stream, another version).
    pub(crate) fn decode(
        bytes: &[u8],
        destination: String,
        entry: &str,
    ) -> Result<Message, rmp_serde::decode::Error> {
        let Entry { id, headers, body, redelivered } = rmp_serde::from_slice(bytes)?;
        let mut publication = Publication::new("application/octet-stream", body.into_vec());
        publication.headers = Headers::new();
        for (name, value) in &headers {
            publication.headers.push(name, value);
        }
        let mut message = Message::new(id, destination, publication);
        message.redelivered = redelivered;
        message.entry = Some(entry.into());
        Ok(message)
    }
}

/// A [`Publication`] as it travels: headers, body, how it coalesces, its `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Wire {
    headers: Vec<(String, String)>,
    body: ByteBuf,
    coalesce: Option<(String, bool)>,
    seq: Option<i64>,
}

impl Wire {
    /// The parts of `publication` another node needs (a numbered one's `seq`; the epoch is
    /// the shared storage's, the same on every node).
    pub(crate) fn of(publication: &Publication) -> Wire {
        Wire {
            headers: publication
                .headers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: ByteBuf::from(publication.body.to_vec()),
            coalesce: publication.coalesce.as_ref().map(|c| (c.key.to_string(), c.replaceable)),
            seq: match &publication.place {
                Some(LogPlace::Numbered { seq, .. }) => Some(*seq),
                _ => None,
            },
        }
    }

    /// Its `seq`, when it is numbered.
    pub(crate) fn seq(&self) -> Option<i64> {
        self.seq
    }

    /// The publication again, numbered in the log of `epoch`.
    pub(crate) fn into_publication(self, epoch: &std::sync::Arc<str>) -> Publication {
        let content_type = self
            .headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map_or("application/octet-stream", |(_, v)| v.as_str())
            .to_owned();
        let mut publication = Publication::new(&content_type, self.body.into_vec());
        for (name, value) in self.headers.iter().filter(|(n, _)| n != "content-type") {
            publication = publication.with_header(name, value);
        }
        if let Some((key, replaceable)) = self.coalesce {
            publication = publication.coalesce(Coalesce { key: key.into(), replaceable });
        }
        if let Some(seq) = self.seq {
            publication =
                publication.at(LogPlace::Numbered { seq, epoch: epoch.clone(), replayed: false });
        }
        publication
    }
}

impl Envelope {
    /// The bytes on the bus.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Field names are kept (structs as maps): fields that are skipped when empty would
        // shift the positions of an array. Serializing into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// An envelope from the bus.
    ///
    /// # Errors
    /// The bytes are not an envelope (another program on the channel, another version).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_crosses_the_bus_whole() {
        let epoch: std::sync::Arc<str> = "e1".into();
        let original = Publication::new("application/octet-stream", vec![0u8, 159, 146, 150])
            .with_header("x-custom", "a:b")
            .coalesce(Coalesce { key: "T1".into(), replaceable: true })
            .at(LogPlace::Numbered { seq: 42, epoch: epoch.clone(), replayed: false });
        let envelope = Envelope {
            node: "n1".into(),
            sent_at: 7,
            body: Body::User {
                user: "alice".into(),
                path: "/queue/x".into(),
                message: Wire::of(&original),
            },
        };
        let back = Envelope::decode(&envelope.encode()).expect("decodes");
        assert_eq!(back, envelope);
        let Body::User { message, .. } = back.body else { panic!("a user message") };
        assert_eq!(message.seq(), Some(42));
        let publication = message.into_publication(&epoch);
        assert_eq!(&publication.body[..], &original.body[..], "binary bodies survive");
        assert_eq!(publication.headers, original.headers);
        assert_eq!(publication.coalesce, original.coalesce);
        assert_eq!(publication.place, original.place);
        assert!(Envelope::decode(b"not msgpack \xff").is_err());
    }

    #[test]
    fn channels_carry_a_hash_tag_for_sharded_pub_sub() {
        assert_eq!(user_channel("alice"), "taskpulse:user:{alice}");
        assert_eq!(topic_channel("news.eu"), "taskpulse:topic:{news.eu}");
        assert_eq!(queue_channel("jobs"), "taskpulse:queue:{jobs}");
        assert_eq!(queue_key("jobs"), "taskpulse:stream:{jobs}");
    }

    #[test]
    fn a_queue_message_keeps_its_id_headers_and_binary_body_in_its_stream() {
        let publication = Publication::new("application/octet-stream", vec![0u8, 255, 10])
            .with_header("x-sender", "dave");
        let mut original = Message::new("n1-7".into(), "/queue/jobs".into(), publication);
        original.redelivered = true;
        let bytes = Entry::of(&original).encode();
        let back = Entry::decode(&bytes, "/queue/jobs".into(), "1-0").expect("decodes");
        assert_eq!(back.id, "n1-7");
        assert_eq!(&back.body[..], &original.body[..]);
        assert_eq!(back.headers, original.headers);
        assert!(back.redelivered);
        assert_eq!(back.entry.as_deref(), Some("1-0"));
        assert!(Entry::decode(b"\xc1", "/queue/jobs".into(), "1-0").is_err());
    }
}
