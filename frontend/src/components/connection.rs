//! The connection indicator: connected, connecting, reconnecting with a countdown to the
//! next attempt and a "Retry now" button, or offline.

use gloo_timers::callback::Interval;
use taskpulse_client::ConnectionState;
use yew::{Callback, Html, Properties, function_component, html, use_effect_with, use_state};

use crate::state::Connection;

/// Props of [`ConnectionIndicator`].
#[derive(Properties, PartialEq)]
pub struct ConnectionProps {
    /// The connection.
    pub connection: Connection,
    /// "Retry now".
    pub on_retry: Callback<()>,
}

/// Where the live connection stands.
#[function_component(ConnectionIndicator)]
pub fn connection_indicator(props: &ConnectionProps) -> Html {
    // Re-render twice a second while a countdown is shown.
    let now = use_state(js_sys::Date::now);
    {
        let now = now.clone();
        let counting = props.connection.next_retry_at.is_some();
        use_effect_with(counting, move |&counting| {
            let timer = counting.then(|| Interval::new(500, move || now.set(js_sys::Date::now())));
            move || drop(timer)
        });
    }
    let (class, text) = match props.connection.state {
        ConnectionState::Connected => ("connected", "Live".to_owned()),
        ConnectionState::Connecting => ("connecting", "Connecting…".to_owned()),
        ConnectionState::Reconnecting => match props.connection.next_retry_at {
            Some(at) => {
                let seconds = ((at - *now) / 1000.0).ceil().max(0.0);
                ("reconnecting", format!("Reconnecting in {seconds:.0} s"))
            }
            None => ("reconnecting", "Reconnecting…".to_owned()),
        },
        ConnectionState::Disconnected => ("offline", "Offline".to_owned()),
    };
    let retry = props.on_retry.clone();
    html! {
        <div class={format!("connection connection-{class}")} role="status" aria-live="polite"
             data-state={props.connection.state.as_str()}>
            <span class="dot" aria-hidden="true"></span>
            <span class="connection-text">{ text }</span>
            if props.connection.state == ConnectionState::Reconnecting {
                <button type="button" class="retry" onclick={Callback::from(move |_| retry.emit(()))}>
                    { "Retry now" }
                </button>
            }
        </div>
    }
}
