//! Short messages in the corner: a task finished, an action failed. Each closes by itself
//! after a few seconds, or with its button.

use gloo_timers::callback::Timeout;
use yew::{Callback, Html, Properties, function_component, html, use_effect_with};

use crate::state::{Toast, Tone};

/// How long a toast stays.
const VISIBLE_MS: u32 = 8_000;

/// Props of [`Toasts`].
#[derive(Properties, PartialEq)]
pub struct ToastsProps {
    /// Visible toasts.
    pub toasts: Vec<Toast>,
    /// Called with a toast's id when it is closed.
    pub on_dismiss: Callback<u64>,
}

/// The toast stack; screen readers hear new ones.
#[function_component(Toasts)]
pub fn toasts(props: &ToastsProps) -> Html {
    html! {
        <div class="toasts" role="status" aria-live="polite">
            { for props.toasts.iter().map(|toast| html! {
                <ToastItem key={toast.id} toast={toast.clone()} on_dismiss={props.on_dismiss.clone()} />
            }) }
        </div>
    }
}

/// Props of [`ToastItem`].
#[derive(Properties, PartialEq)]
struct ToastItemProps {
    toast: Toast,
    on_dismiss: Callback<u64>,
}

#[function_component(ToastItem)]
fn toast_item(props: &ToastItemProps) -> Html {
    let (id, on_dismiss) = (props.toast.id, props.on_dismiss.clone());
    {
        let on_dismiss = on_dismiss.clone();
        use_effect_with(id, move |&id| {
            let timer = Timeout::new(VISIBLE_MS, move || on_dismiss.emit(id));
            move || drop(timer)
        });
    }
    let tone = match props.toast.tone {
        Tone::Success => "success",
        Tone::Failure => "failure",
    };
    html! {
        <div class={format!("toast toast-{tone}")}>
            <span>{ props.toast.text.clone() }</span>
            <button type="button" aria-label="Dismiss"
                    onclick={Callback::from(move |_| on_dismiss.emit(id))}>{ "×" }</button>
        </div>
    }
}
