//! The page's pieces. Each takes its data and `Callback`s as props; only `auth` and `submit`
//! call services (to send their forms), `operations` and `shared` open their own feeds in a
//! page component beside a view that only renders; the rest only render.

pub mod auth;
pub mod connection;
pub mod operations;
pub mod shared;
pub mod submit;
pub mod task_card;
pub mod task_list;
pub mod toasts;

/// A clock time for display, e.g. `14:03:27`, in the browser's locale.
pub fn clock(ms: f64) -> String {
    let date = js_sys::Date::new(&ms.into());
    String::from(date.to_locale_time_string("default"))
}

/// An ISO 8601 timestamp for `<time datetime>`.
pub fn iso(ms: f64) -> String {
    String::from(js_sys::Date::new(&ms.into()).to_iso_string())
}

/// A duration for display: `850 ms`, `12.3 s`, `4 min 05 s`.
pub fn duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        let seconds = (ms / 1000.0).round() as u64;
        format!("{} min {:02} s", seconds / 60, seconds % 60)
    }
}
