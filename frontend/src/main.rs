//! The TaskPulse task monitor. For now a landing page that proves the wasm build, the shared
//! protocol crate and the server's static hosting work together; the monitor has its own issue.

use taskpulse_shared::TaskStatus;
use yew::{Html, function_component, html};

#[function_component(App)]
fn app() -> Html {
    html! {
        <main>
            <h1>{ "TaskPulse" }</h1>
            <p id="lead">{ "Real-time progress for long-running tasks." }</p>
            <p>{ "Every task moves through these statuses:" }</p>
            <ul class="statuses" aria-label="task statuses">
                { for TaskStatus::ALL.iter().map(|s| html! { <li>{ s.as_str() }</li> }) }
            </ul>
        </main>
    }
}

fn main() {
    yew::Renderer::<App>::new().render();
}
