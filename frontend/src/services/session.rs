//! The signed-in user, kept in `localStorage` so that a reload stays signed in.

const TOKEN: &str = "taskpulse.token";
const USER: &str = "taskpulse.user";

/// Who is signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user name.
    pub username: String,
    /// The bearer token for the API and CONNECT.
    pub token: String,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// The saved session, if any.
pub fn load() -> Option<Session> {
    let storage = storage()?;
    let token = storage.get_item(TOKEN).ok().flatten()?;
    let username = storage.get_item(USER).ok().flatten().unwrap_or_default();
    Some(Session { username, token })
}

/// Keeps `session` for the next visit.
pub fn save(session: &Session) {
    if let Some(storage) = storage() {
        let _ = storage.set_item(TOKEN, &session.token);
        let _ = storage.set_item(USER, &session.username);
    }
}

/// Forgets the session (sign out, or the token stopped working).
pub fn clear() {
    if let Some(storage) = storage() {
        let _ = storage.remove_item(TOKEN);
        let _ = storage.remove_item(USER);
    }
}
