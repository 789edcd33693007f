//! The task list: status filters with counts, then one card per task, newest first.

use yew::{Callback, Html, Properties, function_component, html};

use super::task_card::TaskCard;
use crate::state::{Board, Filter};

/// Props of [`TaskList`].
#[derive(Properties, PartialEq)]
pub struct TaskListProps {
    /// The board to show.
    pub board: std::rc::Rc<Board>,
    /// Called when a filter is chosen.
    pub on_filter: Callback<Filter>,
    /// Called with a task number to cancel.
    pub on_cancel: Callback<String>,
    /// Called with a task number to make (`true`) or revoke (`false`) its share link.
    pub on_share: Callback<(String, bool)>,
    /// Called to load the next older page.
    pub on_older: Callback<()>,
}

/// The filters and the cards.
#[function_component(TaskList)]
pub fn task_list(props: &TaskListProps) -> Html {
    let board = &props.board;
    let filters = Filter::ALL.iter().map(|&filter| {
        let on_filter = props.on_filter.clone();
        let pressed = board.filter == filter;
        html! {
            <button type="button" class="filter" aria-pressed={pressed.to_string()}
                    onclick={Callback::from(move |_| on_filter.emit(filter))}>
                { filter.label() }
                <span class="count">{ board.count(filter) }</span>
            </button>
        }
    });
    let cards: Vec<Html> = board
        .visible()
        .map(|entry| {
            html! {
                <li key={entry.update.task_no.clone()}>
                    <TaskCard entry={entry.clone()} on_cancel={Some(props.on_cancel.clone())}
                              on_share={Some(props.on_share.clone())} />
                </li>
            }
        })
        .collect();
    html! {
        <section class="tasks" aria-labelledby="tasks-title">
            <h2 id="tasks-title">{ "Your tasks" }</h2>
            <div class="filters" role="group" aria-label="Show tasks">{ for filters }</div>
            if cards.is_empty() {
                <p class="empty">{
                    if board.tasks.is_empty() { "No tasks yet. Submit one to watch it run." }
                    else { "No task matches this filter." }
                }</p>
            } else {
                <ul class="task-list">{ for cards }</ul>
            }
            if board.older.is_some() {
                <button type="button" class="load-older" disabled={board.loading_older}
                        onclick={props.on_older.reform(|_| ())}>
                    { if board.loading_older { "Loading older tasks…" } else { "Load older tasks" } }
                </button>
            }
        </section>
    }
}
