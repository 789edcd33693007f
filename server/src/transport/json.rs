//! The JSON protocol as a wire format: writes the broker's protocol-neutral [`Outgoing`]
//! events as [`ServerMessage`]s (`taskpulse_shared::json`), one JSON object per WebSocket
//! text message. The only place the server writes that protocol's deliveries.

use bytes::Bytes;
use serde_json::value::RawValue;
use taskpulse_shared::{
    json::{ServerMessage, SnapshotPart},
    resume::{SENDER, TASKS_DESTINATION, error_code},
};

use crate::broker::{ENCODINGS, LogPlace, Message, Outgoing};

/// The slot of a message's shared encoding (its `data`) for this format; STOMP's versions
/// take the slots below it.
const SLOT: usize = 3;
const _: () = assert!(SLOT < ENCODINGS);

/// Writes one connection's events.
#[derive(Debug, Default)]
pub(crate) struct JsonWriter;

impl JsonWriter {
    /// Appends `item`'s JSON to `out`; always text. [`Outgoing::Close`] writes nothing.
    ///
    /// # Errors
    /// Never in practice (every event has a JSON form); kept for the transport's contract.
    pub(crate) fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        let message: ServerMessage<Box<RawValue>> = match item {
            Outgoing::Opened(opened) => {
                ServerMessage::AuthSuccess { user: opened.user_name.clone() }
            }
            // The session made the receipt its `subscribed` message.
            Outgoing::Receipt(text) => {
                out.extend_from_slice(text.as_bytes());
                return Ok(true);
            }
            Outgoing::Reply(bytes) => {
                out.extend_from_slice(bytes);
                return Ok(true);
            }
            Outgoing::Error(failure) if failure.message == "authentication failed" => {
                ServerMessage::AuthError {
                    code: error_code(&failure.message),
                    message: failure.body.clone(),
                }
            }
            Outgoing::Error(failure) => ServerMessage::Error {
                code: error_code(&failure.message),
                message: failure.body.clone(),
            },
            Outgoing::Deliver { sub, message, .. } => {
                delivery(sub, message, out)?;
                return Ok(true);
            }
            Outgoing::Close(_) => return Ok(true),
        };
        serde_json::to_writer(&mut *out, &message).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// The part of a channel field the shared form leaves empty.
const EMPTY_CHANNEL: &[u8] = br#""channel":"""#;

/// Appends a delivery on `channel` (the subscription, named as the client named it): the
/// message's JSON form is made once per message with an empty channel and shared by every
/// JSON recipient; each one's channel is spliced in. serde writes `type` first and
/// `channel` right after it, so the field is found after the first comma, never inside
/// `data`, and finding it costs the same whatever the message's size.
fn delivery(channel: &str, message: &Message, out: &mut Vec<u8>) -> Result<(), String> {
    let shared = message
        .encoded(SLOT, |m| serde_json::to_vec(&shared_form(m)).ok().map(Bytes::from))
        .ok_or("The server could not write this message as JSON.")?;
    // `{"type":"<kind>",` comes first; a kind has no comma.
    let field = shared.iter().position(|b| *b == b',').map(|comma| comma + 1);
    match field.filter(|&at| shared[at..].starts_with(EMPTY_CHANNEL)) {
        Some(at) => {
            let name_end = at + EMPTY_CHANNEL.len() - 2;
            out.extend_from_slice(&shared[..name_end]);
            serde_json::to_writer(&mut *out, channel).map_err(|e| e.to_string())?;
            out.extend_from_slice(&shared[at + EMPTY_CHANNEL.len()..]);
        }
        // A task update has no channel field.
        None => out.extend_from_slice(shared),
    }
    Ok(())
}

/// What every JSON recipient of `message` gets, with an empty channel: a task update on
/// the tasks destination, a client's publication as a chat line, anything else as a
/// notification.
fn shared_form(message: &Message) -> ServerMessage<Box<RawValue>> {
    let tasks = message.destination == TASKS_DESTINATION;
    if let Some(from) = message.headers.get(SENDER).filter(|_| !tasks) {
        return ServerMessage::ChatMessage {
            channel: String::new(),
            from: from.to_owned(),
            content: String::from_utf8_lossy(&message.body).into_owned(),
        };
    }
    let data = data(message);
    match (&message.place, tasks) {
        (Some(LogPlace::Numbered { seq, epoch, replayed }), true) => ServerMessage::TaskProgress {
            data,
            seq: *seq,
            epoch: epoch.to_string(),
            replayed: *replayed,
            snapshot: None,
        },
        (Some(LogPlace::Snapshot { index, count, seq, epoch }), true) => {
            ServerMessage::TaskProgress {
                data,
                seq: *seq,
                epoch: epoch.to_string(),
                replayed: false,
                snapshot: Some(SnapshotPart { index: *index, count: *count }),
            }
        }
        (place, _) => {
            let (seq, epoch, replayed) = match place {
                Some(LogPlace::Numbered { seq, epoch, replayed }) => {
                    (Some(*seq), Some(epoch.to_string()), *replayed)
                }
                Some(LogPlace::Snapshot { seq, epoch, .. }) => {
                    (Some(*seq), Some(epoch.to_string()), false)
                }
                None => (None, None, false),
            };
            ServerMessage::Notification { channel: String::new(), data, seq, epoch, replayed }
        }
    }
}

/// The body as JSON: itself when it is a JSON document, else a JSON string of it (lossy
/// UTF-8).
fn data(message: &Message) -> Box<RawValue> {
    let body = &message.body;
    let text = match serde_json::from_slice::<&RawValue>(body) {
        Ok(json) => Some(json.get().to_owned()),
        Err(_) => serde_json::to_string(&String::from_utf8_lossy(body)).ok(),
    };
    text.and_then(|t| RawValue::from_string(t).ok()).unwrap_or_else(|| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::broker::Publication;

    fn written(channel: &str, message: &Message) -> serde_json::Value {
        let mut out = Vec::new();
        delivery(channel, message, &mut out).expect("written");
        serde_json::from_slice(&out).expect("one JSON object")
    }

    #[test]
    fn each_recipient_s_channel_is_spliced_into_the_shared_form() {
        let body = br#"{"note":"a \"channel\":\"\" inside the data"}"#.to_vec();
        let message =
            Message::new("m1".into(), "/topic/todos".into(), Publication::json(body.clone()));
        for channel in ["/topic/todos", r#"odd "name" \ here"#] {
            let expected = json!({
                "type": "notification",
                "channel": channel,
                "data": {"note": "a \"channel\":\"\" inside the data"},
            });
            assert_eq!(written(channel, &message), expected);
        }
        let chat = Message::new(
            "m2".into(),
            "/topic/chat.x".into(),
            Publication::new("text/plain", b"hi \"there\"".to_vec()).with_header(SENDER, "alice"),
        );
        assert_eq!(
            written("/topic/chat.x", &chat),
            json!({"type": "chat_message", "channel": "/topic/chat.x", "from": "alice", "content": "hi \"there\""})
        );
        let plain = Message::new(
            "m3".into(),
            "/queue/q".into(),
            Publication::new("text/plain", b"\xffx".to_vec()),
        );
        assert_eq!(written("/queue/q", &plain)["data"], json!("\u{fffd}x"), "not JSON: a string");
    }
}
