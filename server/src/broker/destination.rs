//! What a destination string means: a topic, a queue, a user's private destination or an
//! application handler, and the `*`/`**` patterns that authorization rules are written in.

use std::fmt;

/// A destination a client named, resolved for the principal that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/topic/**`: every subscriber gets every message.
    Topic(String),
    /// `/queue/**`: competing consumers.
    Queue(String),
    /// `/user/queue/**` or `/user/topic/**` of `user`; `path` is the part after `/user`,
    /// e.g. `/queue/tasks-progress`.
    User {
        /// The principal that owns it.
        user: String,
        /// `/queue/…` or `/topic/…`.
        path: String,
    },
    /// `/app/**`: handled by the server, never delivered to subscribers.
    App(String),
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not under a known prefix.
    #[error(
        "unknown destination {0:?}: expected /topic/…, /queue/…, /user/queue/…, /user/topic/… or /app/…"
    )]
    Unknown(String),
    /// Another user's private destination.
    #[error("destination {destination:?} belongs to another user")]
    ForeignUser {
        /// As named.
        destination: String,
    },
}

impl Destination {
    /// Resolves `name` for `principal`. `/user/{principal}/queue/x` is the principal's own
    /// `/user/queue/x`; another user's name is refused.
    ///
    /// # Errors
    /// [`DestinationError`] for unknown prefixes, empty names or another user's destination.
    pub fn resolve(name: &str, principal: &str) -> Result<Destination, DestinationError> {
        let unknown = || DestinationError::Unknown(name.to_owned());
        let non_empty = |rest: &str| !rest.is_empty() && !rest.starts_with('/');
        if let Some(rest) = name.strip_prefix("/topic/") {
            return if non_empty(rest) {
                Ok(Destination::Topic(name.to_owned()))
            } else {
                Err(unknown())
            };
        }
        if let Some(rest) = name.strip_prefix("/queue/") {
            return if non_empty(rest) {
                Ok(Destination::Queue(name.to_owned()))
            } else {
                Err(unknown())
            };
        }
        if let Some(rest) = name.strip_prefix("/app/") {
            return if non_empty(rest) {
                Ok(Destination::App(name.to_owned()))
            } else {
                Err(unknown())
            };
        }
        let Some(rest) = name.strip_prefix("/user/") else { return Err(unknown()) };
        let private = |path: &str| {
            let tail = path.strip_prefix("/queue/").or_else(|| path.strip_prefix("/topic/"));
            tail.is_some_and(non_empty)
        };
        let own = format!("/{rest}");
        if private(&own) {
            return Ok(Destination::User { user: principal.to_owned(), path: own });
        }
        // `/user/{name}/queue/x`: only the principal's own name is allowed.
        let (user, path) = rest.split_once('/').ok_or_else(unknown)?;
        let path = format!("/{path}");
        if !private(&path) {
            return Err(unknown());
        }
        if user != principal {
            return Err(DestinationError::ForeignUser { destination: name.to_owned() });
        }
        Ok(Destination::User { user: user.to_owned(), path })
    }

    /// The name a subscriber sees in MESSAGE `destination` headers: user destinations are
    /// shown as the principal's own `/user/queue/…`, whoever sent to them.
    pub fn public_name(&self) -> String {
        match self {
            Destination::Topic(name) | Destination::Queue(name) | Destination::App(name) => {
                name.clone()
            }
            Destination::User { path, .. } => format!("/user{path}"),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::User { user, path } => write!(f, "/user/{user}{path}"),
            other => f.write_str(&other.public_name()),
        }
    }
}

/// Does `name` match `pattern`? Segments are separated by `/` and `.`; `*` matches one
/// segment, a trailing `**` matches everything that follows (including nothing).
///
/// ```
/// # use taskpulse_server::broker::pattern_matches;
/// assert!(pattern_matches("/topic/chat.**", "/topic/chat.room1"));
/// assert!(pattern_matches("/queue/*", "/queue/jobs"));
/// assert!(!pattern_matches("/queue/*", "/queue/jobs/high"));
/// assert!(!pattern_matches("/topic/chat.**", "/topic/chatter"));
/// ```
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("**") {
        // `/topic/chat.**` matches `/topic/chat.x` but not `/topic/chatter`.
        // The bare prefix matches too: `/topic/chat.**` matches `/topic/chat`.
        let bare = prefix.strip_suffix(['/', '.']);
        return match name.strip_prefix(prefix) {
            Some(_) if bare.is_some() || prefix.is_empty() => true,
            Some(rest) => rest.is_empty() || rest.starts_with(['/', '.']),
            None => bare == Some(name),
        };
    }
    let mut pattern_parts = pattern.split(['/', '.']);
    let mut name_parts = name.split(['/', '.']);
    loop {
        match (pattern_parts.next(), name_parts.next()) {
            (None, None) => return separators(pattern) == separators(name),
            (Some("*"), Some(part)) if !part.is_empty() => {}
            (Some(p), Some(n)) if p == n => {}
            _ => return false,
        }
    }
}

/// The sequence of separators, so that `/a.b` does not match `/a/b`.
fn separators(text: &str) -> impl PartialEq + use<'_> {
    text.bytes().filter(|b| matches!(b, b'/' | b'.')).collect::<Vec<_>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_kind() {
        let alice = |name| Destination::resolve(name, "alice");
        assert_eq!(alice("/topic/news"), Ok(Destination::Topic("/topic/news".into())));
        assert_eq!(alice("/queue/jobs"), Ok(Destination::Queue("/queue/jobs".into())));
        assert_eq!(alice("/app/tasks.cancel"), Ok(Destination::App("/app/tasks.cancel".into())));
        let own = Destination::User { user: "alice".into(), path: "/queue/tasks-progress".into() };
        assert_eq!(alice("/user/queue/tasks-progress"), Ok(own.clone()));
        assert_eq!(alice("/user/alice/queue/tasks-progress"), Ok(own.clone()));
        assert_eq!(own.public_name(), "/user/queue/tasks-progress");
        assert_eq!(
            alice("/user/topic/notices"),
            Ok(Destination::User { user: "alice".into(), path: "/topic/notices".into() })
        );
    }

    #[test]
    fn refuses_foreign_and_unknown() {
        let alice = |name| Destination::resolve(name, "alice");
        assert_eq!(
            alice("/user/bob/queue/tasks-progress"),
            Err(DestinationError::ForeignUser {
                destination: "/user/bob/queue/tasks-progress".into()
            })
        );
        for bad in ["/nope", "/topic/", "/queue", "/user/queue/", "/user/bob/x", "topic/a", "/app/"]
        {
            assert!(matches!(alice(bad), Err(DestinationError::Unknown(_))), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        let cases = [
            ("/topic/**", "/topic/a/b.c", true),
            ("/topic/**", "/topic", true),
            ("/topic/**", "/topics/a", false),
            ("/topic/chat.**", "/topic/chat.room.1", true),
            ("/topic/chat.**", "/topic/chat", true),
            ("/topic/chat.**", "/topic/chatter", false),
            ("/queue/*", "/queue/a", true),
            ("/queue/*.high", "/queue/a.high", true),
            ("/queue/*.high", "/queue/a/high", false),
            ("/queue/*", "/queue/", false),
            ("/queue/a", "/queue/a", true),
            ("/queue/a", "/queue/ab", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(pattern_matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }
}
