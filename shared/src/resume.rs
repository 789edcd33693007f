//! The vocabulary of the delivery guarantee ("never lose a final status"), one definition
//! for the server and every client: the tasks destination, the header names that carry a
//! message's place in its user's log, the resume position a SUBSCRIBE sends back, and the
//! machine-readable `code` of ERROR frames.

use crate::stomp::Headers;

/// Where every client subscribes for its own task updates.
pub const TASKS_DESTINATION: &str = "/user/queue/tasks-progress";

/// The user path of [`TASKS_DESTINATION`] (what follows `/user`).
pub const TASKS_PATH: &str = "/queue/tasks-progress";

/// A numbered message's position in its user's log.
pub const SEQ: &str = "seq";
/// The log's epoch: a position is meaningful only within one epoch.
pub const EPOCH: &str = "epoch";
/// On a SUBSCRIBE: the epoch of the client's position.
pub const RESUME_EPOCH: &str = "x-resume-epoch";
/// On a SUBSCRIBE: the last `seq` the client applied.
pub const RESUME_SEQ: &str = "x-resume-seq";
/// `true` on a message sent again from the log.
pub const REPLAYED: &str = "x-replayed";
/// `i/n` on the entries of a snapshot.
pub const SNAPSHOT: &str = "x-snapshot";
/// On snapshot entries: the position the snapshot stands for.
pub const SNAPSHOT_SEQ: &str = "x-snapshot-seq";

/// Who sent a client's message: the server writes the sender's principal on every message a
/// client publishes (a chat line), so that receivers can trust it.
pub const SENDER: &str = "x-sender";

/// The ERROR header clients match on: the `message` in lower case with hyphens
/// (`invalid resume position` -> `invalid-resume-position`), so that no client depends on the
/// wording of a message.
pub const ERROR_CODE: &str = "code";

/// The [`ERROR_CODE`] of the ERROR that refuses a resume position; a client that gets it
/// forgets its position and subscribes plainly (to a snapshot).
pub const INVALID_RESUME_POSITION: &str = "invalid-resume-position";

/// The [`ERROR_CODE`] for an ERROR `message`.
pub fn error_code(message: &str) -> String {
    message.trim().to_ascii_lowercase().replace(' ', "-")
}

/// Whether a header is the server's to write (clients' SENDs never carry it through).
pub fn is_reserved_header(name: &str) -> bool {
    matches!(name, SEQ | EPOCH | REPLAYED | SENDER)
        || name.starts_with("x-snapshot")
        || name.starts_with("x-resume-")
}

/// Where a client stands in its user's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePosition {
    /// The log's epoch.
    pub epoch: String,
    /// The last `seq` applied.
    pub seq: i64,
}

/// Why a SUBSCRIBE's resume headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Only one of the two headers.
    #[error("a resume position needs both {RESUME_EPOCH} and {RESUME_SEQ}")]
    Incomplete,
    /// `x-resume-seq` is not a non-negative integer, or the epoch is empty.
    #[error("{RESUME_SEQ} must be a non-negative integer and {RESUME_EPOCH} not empty, got {}", crate::Quoted(.0))]
    Invalid(String),
}

impl ResumePosition {
    /// The position a SUBSCRIBE carries, if any.
    ///
    /// # Errors
    /// A [`ResumeError`] when the headers are incomplete or malformed.
    pub fn from_headers(headers: &Headers) -> Result<Option<ResumePosition>, ResumeError> {
        match (headers.get(RESUME_EPOCH), headers.get(RESUME_SEQ)) {
            (None, None) => Ok(None),
            (Some(epoch), Some(seq)) => match seq.parse::<i64>() {
                Ok(seq) if seq >= 0 && !epoch.is_empty() => {
                    Ok(Some(ResumePosition { epoch: epoch.to_owned(), seq }))
                }
                _ => Err(ResumeError::Invalid(seq.to_owned())),
            },
            _ => Err(ResumeError::Incomplete),
        }
    }

    /// The SUBSCRIBE headers that carry this position.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [(RESUME_EPOCH, self.epoch.clone()), (RESUME_SEQ, self.seq.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_ones_are_named() {
        let position = ResumePosition { epoch: "e1".into(), seq: 7 };
        let mut headers = Headers::new();
        for (name, value) in position.headers() {
            headers.push(name, &value);
        }
        assert_eq!(ResumePosition::from_headers(&headers), Ok(Some(position)));
        assert_eq!(ResumePosition::from_headers(&Headers::new()), Ok(None));
        let mut half = Headers::new();
        half.push(RESUME_SEQ, "3");
        assert_eq!(ResumePosition::from_headers(&half), Err(ResumeError::Incomplete));
        let mut bad = Headers::new();
        bad.push(RESUME_EPOCH, "e");
        bad.push(RESUME_SEQ, "-1");
        assert_eq!(ResumePosition::from_headers(&bad), Err(ResumeError::Invalid("-1".into())));
    }

    #[test]
    fn codes_follow_messages_and_reserved_names_are_the_guarantee_s() {
        assert_eq!(error_code("invalid resume position"), INVALID_RESUME_POSITION);
        assert_eq!(error_code("slow consumer"), "slow-consumer");
        for name in [SEQ, EPOCH, REPLAYED, SNAPSHOT, SNAPSHOT_SEQ, RESUME_EPOCH, RESUME_SEQ] {
            assert!(is_reserved_header(name), "{name}");
        }
        assert!(!is_reserved_header("content-type"));
    }
}
