//! One task: number, kind, prompt, status badge, progress bar, latest message, queue
//! position, result thumbnail, error, times; for its owner, a cancel button while it runs
//! and its share link (make, copy, revoke). A share link's page shows it without either.

use taskpulse_shared::TaskStatus;
use yew::{Callback, Html, Properties, function_component, html};

use super::{clock, duration, iso};
use crate::state::{TaskEntry, short_task_no};

/// Props of [`TaskCard`].
#[derive(Properties, PartialEq)]
pub struct TaskCardProps {
    /// The task.
    pub entry: TaskEntry,
    /// Called with the task number when the user cancels it; no cancel button without it.
    #[prop_or_default]
    pub on_cancel: Option<Callback<String>>,
    /// Called with the task number to make a share link (`true`) or revoke it (`false`);
    /// no sharing controls without it.
    #[prop_or_default]
    pub on_share: Option<Callback<(String, bool)>>,
    /// Shows when it was submitted and finished (a share link's page does not know).
    #[prop_or(true)]
    pub show_times: bool,
}

/// A task's card.
#[function_component(TaskCard)]
pub fn task_card(props: &TaskCardProps) -> Html {
    let entry = &props.entry;
    let update = &entry.update;
    let status = update.status.as_str();
    let task_no = update.task_no.clone();
    let short = short_task_no(&task_no).to_owned();
    let title_id = format!("task-{task_no}-title");
    let on_cancel = props.on_cancel.clone().map(|callback| {
        let task_no = task_no.clone();
        Callback::from(move |_| callback.emit(task_no.clone()))
    });
    let sharing = props.on_share.clone().map(|callback| {
        let share = {
            let (callback, task_no) = (callback.clone(), task_no.clone());
            Callback::from(move |_| callback.emit((task_no.clone(), true)))
        };
        let revoke = {
            let task_no = task_no.clone();
            Callback::from(move |_| callback.emit((task_no.clone(), false)))
        };
        let copy = entry.share_url.clone().map(|url| {
            Callback::from(move |_| {
                if let Some(window) = web_sys::window() {
                    // Refused without the page's focus or permission: the link stays
                    // in the field to copy by hand.
                    let written = window.navigator().clipboard().write_text(&url);
                    wasm_bindgen_futures::spawn_local(async move {
                        let _ = wasm_bindgen_futures::JsFuture::from(written).await;
                    });
                }
            })
        });
        html! {
            <div class="share">
                if let (Some(url), Some(copy)) = (entry.share_url.clone(), copy) {
                    <input class="share-url" type="text" readonly=true value={url}
                           aria-label={format!("Share link of task {short}")} />
                    <button type="button" class="share-copy" onclick={copy}>{ "Copy" }</button>
                }
                if entry.shared {
                    <button type="button" class="share-revoke" onclick={revoke}
                            aria-label={format!("Stop sharing task {short}")}>{ "Stop sharing" }</button>
                }
                if entry.share_url.is_none() {
                    <button type="button" class="share-make" onclick={share}
                            aria-label={format!("Share task {short}")}>
                        { if entry.shared { "New link" } else { "Share" } }
                    </button>
                }
            </div>
        }
    });
    let progress = update.progress;
    html! {
        <article class={format!("task-card status-{status}")} data-task-no={task_no.clone()}
                 data-status={status} aria-labelledby={title_id.clone()}>
            <header>
                <h3 id={title_id} class="task-no" title={task_no.clone()}>{ short.clone() }</h3>
                <span class={format!("badge badge-{status}")}>{ status }</span>
            </header>
            if let Some(kind) = entry.kind() {
                <p class="kind">{ kind }</p>
            }
            if let Some(prompt) = entry.prompt() {
                <p class="prompt">{ prompt.to_owned() }</p>
            }
            <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100"
                 aria-valuenow={progress.to_string()} aria-label={format!("Progress of task {short}")}>
                <div class="bar" style={format!("width: {progress}%")}></div>
            </div>
            <p class="progress-text">
                <span class="percent">{ format!("{progress}%") }</span>
                { " " }
                <span class="message">{ update.message.clone() }</span>
            </p>
            if let (TaskStatus::Queued, Some(position)) = (update.status, update.queue_position) {
                <p class="queue">{ format!("Position in queue: {position}") }</p>
            }
            if let (TaskStatus::Completed, Some(url)) = (update.status, update.result_url.clone()) {
                <a class="result" href={url.clone()} target="_blank" rel="noopener noreferrer"
                   title="Open the full image">
                    <img src={url} alt={format!("Result of task {short}")} loading="lazy" />
                </a>
            }
            if update.status == TaskStatus::Failed {
                <p class="error">{ update.error_message.clone().unwrap_or_else(|| "failed".into()) }</p>
            }
            if props.show_times {
            <dl class="times">
                <dt>{ "Submitted" }</dt>
                <dd><time datetime={iso(entry.created_at)}>{ clock(entry.created_at) }</time></dd>
                if let Some(finished) = entry.finished_at {
                    <dt>{ "Finished" }</dt>
                    <dd><time datetime={iso(finished)}>{ clock(finished) }</time></dd>
                    <dt>{ "Took" }</dt>
                    <dd class="duration">{ duration(finished - entry.created_at) }</dd>
                }
            </dl>
            }
            if let (false, Some(on_cancel)) = (update.status.is_terminal(), on_cancel) {
                <button type="button" class="cancel" onclick={on_cancel}
                        aria-label={format!("Cancel task {short}")}>{ "Cancel" }</button>
            }
            if let Some(sharing) = sharing {
                { sharing }
            }
        </article>
    }
}
