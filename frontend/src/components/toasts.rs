//! Short messages in the corner: a task finished, an action failed.

use yew::{Callback, Html, Properties, function_component, html};

use crate::state::{Toast, Tone};

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
            { for props.toasts.iter().map(|toast| {
                let (id, on_dismiss) = (toast.id, props.on_dismiss.clone());
                let tone = match toast.tone { Tone::Success => "success", Tone::Failure => "failure" };
                html! {
                    <div key={id} class={format!("toast toast-{tone}")}>
                        <span>{ toast.text.clone() }</span>
                        <button type="button" aria-label="Dismiss"
                                onclick={Callback::from(move |_| on_dismiss.emit(id))}>{ "×" }</button>
                    </div>
                }
            }) }
        </div>
    }
}
