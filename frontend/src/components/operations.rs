//! The operator page: the server's figures as small charts, sampled every few seconds from
//! `GET /api/admin/stats` (connections, deliveries/s, tasks per executor, ERRORs/min), the
//! tasks running longest and the recent ERRORs as bars, and a form to disconnect a user.

use std::rc::Rc;

use gloo_timers::callback::Interval;
use taskpulse_shared::stats::Stats;
use web_sys::HtmlInputElement;
use yew::{
    Callback, Html, Properties, SubmitEvent, function_component, html, use_effect_with,
    use_node_ref, use_state,
};

use crate::services::api;

/// How often the page samples the figures.
pub const EVERY_MS: u32 = 2_000;

/// Samples kept: five minutes.
pub const KEPT: usize = 150;

/// The figures at one moment of the page's clock (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When they were read.
    pub at: f64,
    /// What the server answered.
    pub stats: Stats,
}

/// A counter's rate per second between consecutive samples.
pub fn rate(samples: &[Sample], counter: impl Fn(&Stats) -> u64) -> Vec<f64> {
    samples
        .windows(2)
        .map(|w| {
            let seconds = ((w[1].at - w[0].at) / 1000.0).max(0.001);
            counter(&w[1].stats).saturating_sub(counter(&w[0].stats)) as f64 / seconds
        })
        .collect()
}

/// A gauge's value at each sample.
pub fn level(samples: &[Sample], gauge: impl Fn(&Stats) -> f64) -> Vec<f64> {
    samples.iter().map(|s| gauge(&s.stats)).collect()
}

/// Tasks in `status` over every executor.
fn tasks_in(stats: &Stats, status: &str) -> f64 {
    stats.tasks.values().filter_map(|by| by.get(status)).sum::<i64>() as f64
}

/// The `points` of an SVG polyline drawing `values` in a 100 x 30 box (0 at the bottom).
pub fn polyline(values: &[f64]) -> String {
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let step = if values.len() > 1 { 100.0 / (values.len() - 1) as f64 } else { 0.0 };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, 30.0 - v / top * 28.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Props of [`Sparkline`].
#[derive(Properties, PartialEq)]
pub struct SparklineProps {
    /// What it shows.
    pub title: &'static str,
    /// The series, oldest first.
    pub values: Vec<f64>,
    /// The latest value as text.
    pub latest: String,
}

/// One figure over the last minutes: a line and its latest value.
#[function_component(Sparkline)]
pub fn sparkline(props: &SparklineProps) -> Html {
    html! {
        <figure class="spark" data-title={props.title}>
            <figcaption>{ props.title }<strong>{ props.latest.clone() }</strong></figcaption>
            <svg viewBox="0 0 100 30" preserveAspectRatio="none" role="img"
                 aria-label={format!("{} over the last minutes", props.title)}>
                <polyline points={polyline(&props.values)} />
            </svg>
        </figure>
    }
}

/// Horizontal bars: `(label, value, text)`, scaled to the largest.
fn bars(class: &'static str, rows: Vec<(String, f64, String)>, empty: &'static str) -> Html {
    let top = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(f64::MIN_POSITIVE);
    if rows.is_empty() {
        return html! { <p class="empty">{ empty }</p> };
    }
    html! {
        <ul class={format!("bars {class}")}>
            { for rows.into_iter().map(|(label, value, text)| html! {
                <li>
                    <span class="bar-label">{ label }</span>
                    <span class="bar" style={format!("width: {:.1}%", value / top * 100.0)}></span>
                    <span class="bar-value">{ text }</span>
                </li>
            }) }
        </ul>
    }
}

/// Props of [`OperationsView`].
#[derive(Properties, PartialEq)]
pub struct OperationsViewProps {
    /// The samples so far, oldest first.
    pub samples: Rc<Vec<Sample>>,
    /// Called with a user name to disconnect.
    pub on_disconnect: Callback<String>,
    /// What the last disconnect did.
    pub status: Option<String>,
}

/// The charts and the form, for the samples given (rendering only).
#[function_component(OperationsView)]
pub fn operations_view(props: &OperationsViewProps) -> Html {
    let samples = &props.samples[..];
    let Some(last) = samples.last() else {
        return html! { <section class="operations"><p class="empty">{ "Reading the figures…" }</p></section> };
    };
    let stats = &last.stats;
    let deliveries = rate(samples, |s| s.messages.deliveries);
    let errors: Vec<f64> =
        rate(samples, |s| s.errors.total).into_iter().map(|r| r * 60.0).collect();
    let connections = level(samples, |s| s.connections.open as f64);
    let running = level(samples, |s| tasks_in(s, "processing"));
    let queued = level(samples, |s| tasks_in(s, "queued"));
    let latest = |values: &[f64], unit: &str| {
        values.last().map_or_else(|| "…".to_owned(), |v| format!("{v:.0}{unit}"))
    };
    let slowest = stats
        .slowest_tasks
        .iter()
        .map(|t| {
            let label =
                format!("{} · {} · {}", &t.task_no[..t.task_no.len().min(8)], t.owner, t.executor);
            (label, t.running_seconds, format!("{:.0} s, {}%", t.running_seconds, t.progress))
        })
        .collect();
    // ERRORs by code over the samples kept.
    let first = &samples[0].stats.errors.by_code;
    let mut recent: Vec<(String, f64, String)> = stats
        .errors
        .by_code
        .iter()
        .filter_map(|(code, n)| {
            let delta = n.saturating_sub(first.get(code).copied().unwrap_or(0));
            (delta > 0).then(|| (code.clone(), delta as f64, delta.to_string()))
        })
        .collect();
    recent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let input = use_node_ref();
    let on_submit = {
        let (input, on_disconnect) = (input.clone(), props.on_disconnect.clone());
        Callback::from(move |event: SubmitEvent| {
            event.prevent_default();
            if let Some(field) = input.cast::<HtmlInputElement>() {
                let user = field.value().trim().to_owned();
                if !user.is_empty() {
                    on_disconnect.emit(user);
                    field.set_value("");
                }
            }
        })
    };
    html! {
        <section class="operations" aria-labelledby="operations-title">
            <h2 id="operations-title">{ "Operations" }</h2>
            <div class="sparks">
                <Sparkline title="Connections" values={connections.clone()} latest={latest(&connections, "")} />
                <Sparkline title="Deliveries/s" values={deliveries.clone()} latest={latest(&deliveries, "/s")} />
                <Sparkline title="Tasks running" values={running.clone()} latest={latest(&running, "")} />
                <Sparkline title="Tasks queued" values={queued.clone()} latest={latest(&queued, "")} />
                <Sparkline title="ERRORs/min" values={errors.clone()} latest={latest(&errors, "/min")} />
            </div>
            <h3>{ "Running longest" }</h3>
            { bars("slowest", slowest, "No task is running.") }
            <h3>{ "ERRORs in the last minutes, by code" }</h3>
            { bars("errors", recent, "No ERROR in the last minutes.") }
            <h3>{ "Disconnect a user" }</h3>
            <form class="disconnect" onsubmit={on_submit}>
                <input ref={input} id="disconnect-user" aria-label="User name" placeholder="user name" />
                <button type="submit">{ "Disconnect" }</button>
            </form>
            if let Some(status) = &props.status {
                <p class="disconnect-status" role="status">{ status.clone() }</p>
            }
        </section>
    }
}

/// Props of [`Operations`].
#[derive(Properties, PartialEq)]
pub struct OperationsProps {
    /// The operator's token.
    pub token: String,
    /// The token was refused.
    pub on_unauthorized: Callback<()>,
}

/// The operator page: samples the figures every [`EVERY_MS`] while it is shown.
#[function_component(Operations)]
pub fn operations(props: &OperationsProps) -> Html {
    let samples = use_state(|| Rc::new(Vec::<Sample>::new()));
    let status = use_state(|| None::<String>);
    {
        let (samples, status, unauthorized) =
            (samples.clone(), status.clone(), props.on_unauthorized.clone());
        use_effect_with(props.token.clone(), move |token: &String| {
            let token = token.clone();
            let kept = Rc::new(std::cell::RefCell::new(Vec::<Sample>::new()));
            let read = move || {
                let (token, samples, status, kept, unauthorized) = (
                    token.clone(),
                    samples.clone(),
                    status.clone(),
                    kept.clone(),
                    unauthorized.clone(),
                );
                wasm_bindgen_futures::spawn_local(async move {
                    match api::stats(&token).await {
                        Ok(stats) => {
                            let mut list = kept.borrow_mut();
                            list.push(Sample { at: js_sys::Date::now(), stats });
                            if list.len() > KEPT {
                                list.remove(0);
                            }
                            samples.set(Rc::new(list.clone()));
                        }
                        Err(failure) if failure.is_unauthorized() => unauthorized.emit(()),
                        Err(failure) => status
                            .set(Some(format!("Cannot read the figures: {}", failure.message))),
                    }
                });
            };
            read();
            let timer = Interval::new(EVERY_MS, read);
            move || drop(timer)
        });
    }
    let on_disconnect = {
        let (token, status) = (props.token.clone(), status.clone());
        Callback::from(move |user: String| {
            let (token, status) = (token.clone(), status.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let text = match api::disconnect(&token, &user).await {
                    Ok(closed) => format!("Closed {closed} connection(s) of {user}."),
                    Err(failure) => format!("Cannot disconnect {user}: {}", failure.message),
                };
                status.set(Some(text));
            });
        })
    };
    html! { <OperationsView samples={(*samples).clone()} on_disconnect={on_disconnect} status={(*status).clone()} /> }
}
