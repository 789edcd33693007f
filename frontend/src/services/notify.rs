//! Browser notifications for tasks that finish while the tab is hidden. Permission is asked
//! after the user's first submission, never on load.

use web_sys::{Notification, NotificationOptions, NotificationPermission};

/// Asks for permission once, if the browser has not been told yet.
pub fn ask_permission() {
    if Notification::permission() == NotificationPermission::Default {
        let _ = Notification::request_permission();
    }
}

/// Whether the page is hidden (another tab, minimised): then a toast would go unseen.
pub fn page_hidden() -> bool {
    web_sys::window().and_then(|w| w.document()).is_some_and(|d| d.hidden())
}

/// Shows a system notification when allowed; `false` when it could not.
pub fn show(title: &str, body: &str) -> bool {
    if Notification::permission() != NotificationPermission::Granted {
        return false;
    }
    let options = NotificationOptions::new();
    options.set_body(body);
    Notification::new_with_options(title, &options).is_ok()
}
