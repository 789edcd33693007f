//! A share link's page: the one task the link shows, live, read-only, without an account.
//! [`SharedTaskPage`] owns the event stream; [`SharedTaskView`] only renders.

use yew::{Html, Properties, function_component, html, use_effect_with, use_state};

use super::task_card::TaskCard;
use crate::{
    services::watch::{Watch, WatchEvent},
    state::TaskEntry,
};

/// Where the page's stream stands.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchState {
    /// Opening.
    Connecting,
    /// Open: updates arrive as they happen.
    Live,
    /// Dropped; the browser reconnects by itself.
    Reconnecting,
    /// The link no longer works, and why.
    Ended(String),
}

/// Props of [`SharedTaskPage`].
#[derive(Properties, PartialEq)]
pub struct SharedTaskPageProps {
    /// The link's token (from the page URL's fragment).
    pub token: String,
}

/// The page of `/share#<token>`.
#[function_component(SharedTaskPage)]
pub fn shared_task_page(props: &SharedTaskPageProps) -> Html {
    let entry = use_state(|| None::<TaskEntry>);
    let state = use_state(|| WatchState::Connecting);
    {
        let (entry, state) = (entry.clone(), state.clone());
        use_effect_with(props.token.clone(), move |token: &String| {
            let watch = if token.is_empty() {
                state.set(WatchState::Ended("This page needs a share link's token.".into()));
                None
            } else {
                let started = Watch::start(token, move |event| match event {
                    WatchEvent::Update(update) => {
                        entry.set(Some(TaskEntry::seen(update, js_sys::Date::now())));
                    }
                    WatchEvent::Live => state.set(WatchState::Live),
                    WatchEvent::Reconnecting => state.set(WatchState::Reconnecting),
                    WatchEvent::Ended(why) => state.set(WatchState::Ended(why)),
                });
                started.ok()
            };
            move || drop(watch)
        });
    }
    html! { <SharedTaskView entry={(*entry).clone()} state={(*state).clone()} /> }
}

/// Props of [`SharedTaskView`].
#[derive(Properties, PartialEq)]
pub struct SharedTaskViewProps {
    /// The task, once its first state arrived.
    pub entry: Option<TaskEntry>,
    /// The stream.
    pub state: WatchState,
}

/// The shared task's card and the stream's state.
#[function_component(SharedTaskView)]
pub fn shared_task_view(props: &SharedTaskViewProps) -> Html {
    let (class, label) = match &props.state {
        WatchState::Connecting => ("connecting", "Connecting…"),
        WatchState::Live => ("connected", "Live"),
        WatchState::Reconnecting => ("reconnecting", "Reconnecting…"),
        WatchState::Ended(_) => ("offline", "Link ended"),
    };
    html! {
        <>
            <header class="top">
                <h1>{ "TaskPulse" }</h1>
                <span class={format!("connection connection-{class}")} role="status"
                      data-state={class}>
                    <span class="dot" aria-hidden="true"></span>{ label }
                </span>
                <span class="user">{ "Shared task · read-only" }</span>
            </header>
            <main class="monitor shared-view">
                if let WatchState::Ended(why) = &props.state {
                    <p class="share-ended" role="alert">{ why.clone() }</p>
                }
                if let Some(entry) = props.entry.clone() {
                    <TaskCard {entry} show_times={false} />
                } else if !matches!(props.state, WatchState::Ended(_)) {
                    <p class="empty">{ "Loading the shared task…" }</p>
                }
            </main>
        </>
    }
}
