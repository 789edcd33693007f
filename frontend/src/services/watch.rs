//! A share link's live view: an `EventSource` on `/sse/share?token=`, its events turned into
//! what the page shows. The browser reconnects it by itself; once the server refuses the
//! link (revoked, replaced or never made) it stays closed. Dropping the [`Watch`] closes it.

use std::{cell::RefCell, rc::Rc};

use taskpulse_shared::TaskProgressDto;
use wasm_bindgen::{JsCast, closure::Closure};
use web_sys::{EventSource, MessageEvent};

/// What the stream reports.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The task's state (its current one first, then each update).
    Update(TaskProgressDto),
    /// The stream is open.
    Live,
    /// The stream dropped; the browser is reconnecting.
    Reconnecting,
    /// The link no longer works, and why.
    Ended(String),
}

/// Said when the server refuses the link without saying why first.
const REFUSED: &str = "This share link does not work: it was revoked or replaced by its owner, \
                       or it never existed.";

/// An open stream; `Drop` closes it.
pub struct Watch {
    source: EventSource,
    _listeners: [Closure<dyn FnMut(web_sys::Event)>; 3],
}

impl Watch {
    /// Opens the stream of the link with `token` and reports through `on_event`.
    ///
    /// # Errors
    /// The browser refused to open an `EventSource`.
    pub fn start(token: &str, on_event: impl Fn(WatchEvent) + 'static) -> Result<Watch, String> {
        let url = format!("/sse/share?token={}", js_sys::encode_uri_component(token));
        let source = EventSource::new(&url).map_err(|e| format!("{e:?}"))?;
        let on_event = Rc::new(on_event);
        // The server's own `error` event says why it ended the stream, before it closes.
        let reason: Rc<RefCell<Option<String>>> = Rc::default();
        let progress = {
            let on_event = on_event.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
                let data = event.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string());
                if let Some(update) = data.and_then(|d| serde_json::from_str(&d).ok()) {
                    on_event(WatchEvent::Update(update));
                }
            })
        };
        let open = {
            let on_event = on_event.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| on_event(WatchEvent::Live))
        };
        let error = {
            let source = source.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
                #[derive(serde::Deserialize)]
                struct Failure {
                    message: String,
                }
                let data = event.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string());
                if let Some(data) = data {
                    let failure = serde_json::from_str::<Failure>(&data).ok();
                    *reason.borrow_mut() = failure.map(|f| f.message);
                } else if source.ready_state() == EventSource::CLOSED {
                    let why = reason.borrow_mut().take().unwrap_or_else(|| REFUSED.to_owned());
                    on_event(WatchEvent::Ended(why));
                } else {
                    on_event(WatchEvent::Reconnecting);
                }
            })
        };
        for (name, listener) in [("task_progress", &progress), ("open", &open), ("error", &error)] {
            source
                .add_event_listener_with_callback(name, listener.as_ref().unchecked_ref())
                .map_err(|e| format!("{e:?}"))?;
        }
        Ok(Watch { source, _listeners: [progress, open, error] })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.source.close();
    }
}
