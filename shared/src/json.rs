//! The JSON protocol for a bare browser `WebSocket` at `/ws/json`: every message is one JSON
//! object whose `type` names it, its other fields at the top level (as the Node seed has
//! them). Channels are the broker's destination names (`/user/queue/tasks-progress`,
//! `/topic/...`), with [`TASKS_CHANNEL`] as the short name of the user's task updates.

use serde::{Deserialize, Serialize};

/// The short name of `/user/queue/tasks-progress`.
pub const TASKS_CHANNEL: &str = "tasks";

/// Where a client stands in its user's log, as `subscribe` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The log's epoch.
    pub epoch: String,
    /// The last `seq` applied.
    pub seq: i64,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticates the connection with a token; the first message.
    Auth {
        /// The JWT.
        token: String,
    },
    /// Answered with [`ServerMessage::Pong`].
    Ping,
    /// Subscribes to channels; with `resume`, each private channel gets what it missed since
    /// that position (or a snapshot), then live updates.
    Subscribe {
        /// Destination names, or [`TASKS_CHANNEL`].
        channels: Vec<String>,
        /// The last position the client applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Position>,
    },
    /// Ends subscriptions.
    Unsubscribe {
        /// Channels subscribed before.
        channels: Vec<String>,
    },
    /// Publishes a line of text to a channel (where `[authorization]` lets the user send);
    /// its subscribers get it with the sender's name.
    ChatMessage {
        /// A destination name, e.g. `/topic/chat.general`.
        channel: String,
        /// The text.
        content: String,
    },
}

/// Which part of a snapshot a [`ServerMessage::TaskProgress`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// 1-based.
    pub index: usize,
    /// How many the snapshot has.
    pub count: usize,
}

/// What the server sends. `D` is how a message's `data` is held: a parsed
/// `serde_json::Value` when reading (the default; serde cannot read a `RawValue` inside an
/// internally tagged enum), the body as it is (`Box<RawValue>`) when the server writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<D = serde_json::Value> {
    /// The token was accepted.
    AuthSuccess {
        /// The principal.
        user: String,
    },
    /// The token was refused; the connection closes.
    AuthError {
        /// Machine-readable.
        code: String,
        /// For people.
        message: String,
    },
    /// The answer to [`ClientMessage::Ping`].
    Pong,
    /// The channels are live: what they had missed has been sent before this.
    Subscribed {
        /// The channels, as the client named them.
        channels: Vec<String>,
    },
    /// The channels are no longer subscribed.
    Unsubscribed {
        /// The channels, as the client named them.
        channels: Vec<String>,
    },
    /// A task update on the tasks channel.
    TaskProgress {
        /// The `TaskProgressDto`.
        data: D,
        /// Its position in the user's log (a snapshot's: the log's position it reflects).
        seq: i64,
        /// The log's epoch.
        epoch: String,
        /// Sent again after a resume.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
        /// Part of a snapshot (sent instead of a replay the log no longer covers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<SnapshotPart>,
    },
    /// A message on any other channel.
    Notification {
        /// The channel, as the client named it.
        channel: String,
        /// The body: JSON as sent, or a string for any other body.
        data: D,
        /// Its position in the user's log, on private channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        /// The log's epoch, on private channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Sent again after a resume.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    /// A message a client published, with who sent it (the server's word for it).
    ChatMessage {
        /// The channel, as the client named it.
        channel: String,
        /// The sender's principal.
        from: String,
        /// The text (the body, lossy UTF-8).
        content: String,
    },
    /// A request was refused (`code` is machine-readable); the connection stays open unless
    /// a close follows.
    Error {
        /// Machine-readable, as STOMP ERROR's `x-error-code`.
        code: String,
        /// For people: what was wrong and, for a limit, its setting.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn messages_have_their_fields_at_the_top_level() {
        let parsed: ClientMessage = serde_json::from_str(
            r#"{"type":"subscribe","channels":["tasks"],"resume":{"epoch":"e","seq":4}}"#,
        )
        .unwrap();
        let resume = Some(Position { epoch: "e".into(), seq: 4 });
        assert_eq!(parsed, ClientMessage::Subscribe { channels: vec!["tasks".into()], resume });
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"auth"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"auth","token":"t","x":1}"#).is_err()
        );
        let data = RawValue::from_string(r#"{"taskNo":"t"}"#.into()).unwrap();
        let update = ServerMessage::<Box<RawValue>>::TaskProgress {
            data,
            seq: 3,
            epoch: "e".into(),
            replayed: false,
            snapshot: None,
        };
        assert_eq!(
            serde_json::to_string(&update).unwrap(),
            r#"{"type":"task_progress","data":{"taskNo":"t"},"seq":3,"epoch":"e"}"#
        );
        let read: ServerMessage = serde_json::from_str(&serde_json::to_string(&update).unwrap())
            .expect("what the server writes, a client reads");
        let ServerMessage::TaskProgress { data, seq: 3, .. } = read else { panic!("{read:?}") };
        assert_eq!(data, serde_json::json!({"taskNo": "t"}));
    }
}
