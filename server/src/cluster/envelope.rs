//! What nodes say to each other on the bus, and the channels they say it on. MessagePack
//! (`rmp-serde`): bodies are bytes, and a STOMP topic's may not be UTF-8.
//!
//! Channel names put the user or topic in `{...}`, a Redis Cluster hash tag: moving to
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) keeps the names and only changes the commands.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use taskpulse_shared::TaskProgressDto;

use crate::{
    broker::{Coalesce, LogPlace, Publication},
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
    Alive { connections: usize, users: Option<Vec<(String, usize)>> },
    /// A node joined: the others announce their connections.
    Hello,
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
    }
}
