//! Page events (`online`, `visibilitychange`) that end a backoff wait early.

use wasm_bindgen::{JsCast, closure::Closure};

use super::Control;
use crate::channel::Sender;

/// `online` and `visibilitychange` (to visible) listeners that skip the backoff wait:
/// background tabs throttle timers, and a returning network should not wait 30 s.
pub(super) struct PageEvents {
    targets: Vec<(web_sys::EventTarget, &'static str)>,
    callback: Closure<dyn FnMut(web_sys::Event)>,
}

impl PageEvents {
    pub(super) fn install(control: Sender<Control>) -> Option<PageEvents> {
        let window = web_sys::window()?;
        let document = window.document();
        let callback = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
            let visible = web_sys::window()
                .and_then(|w| w.document())
                .is_none_or(|d| d.visibility_state() == web_sys::VisibilityState::Visible);
            if visible {
                control.send(Control::RetryNow);
            }
        });
        let mut targets: Vec<(web_sys::EventTarget, &'static str)> =
            vec![(window.into(), "online")];
        if let Some(document) = document {
            targets.push((document.into(), "visibilitychange"));
        }
        for (target, name) in &targets {
            let _ =
                target.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
        }
        Some(PageEvents { targets, callback })
    }
}

impl Drop for PageEvents {
    fn drop(&mut self) {
        for (target, name) in &self.targets {
            let _ = target
                .remove_event_listener_with_callback(name, self.callback.as_ref().unchecked_ref());
        }
    }
}
