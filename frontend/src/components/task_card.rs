//! One task: number, kind, prompt, status badge, progress bar, latest message, queue
//! position, result thumbnail, error, times, and a cancel button while it runs.

use taskpulse_shared::TaskStatus;
use yew::{Callback, Html, Properties, function_component, html};

use super::{clock, duration, iso};
use crate::state::{TaskEntry, short_task_no};

/// Props of [`TaskCard`].
#[derive(Properties, PartialEq)]
pub struct TaskCardProps {
    /// The task.
    pub entry: TaskEntry,
    /// Called with the task number when the user cancels it.
    pub on_cancel: Callback<String>,
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
    let on_cancel = {
        let (callback, task_no) = (props.on_cancel.clone(), task_no.clone());
        Callback::from(move |_| callback.emit(task_no.clone()))
    };
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
            if !update.status.is_terminal() {
                <button type="button" class="cancel" onclick={on_cancel}
                        aria-label={format!("Cancel task {short}")}>{ "Cancel" }</button>
            }
        </article>
    }
}
