//! Component and reducer tests in headless Chromium (`wasm-bindgen-test-runner`): a task
//! card for every status, rendered by Yew into a real DOM, and the board's transitions.
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use taskpulse_client::ConnectionState;
use taskpulse_frontend::{
    components::{
        task_card::{TaskCard, TaskCardProps},
        task_list::{TaskList, TaskListProps},
    },
    state::{Action, Board, Connection, Filter, TaskEntry, Tone},
};
use taskpulse_shared::{
    TaskProgressDto, TaskStatus,
    dto::{AspectRatio, SubmitTaskRequest, TaskDetails},
};
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::Element;
use yew::{Callback, Reducible};

wasm_bindgen_test_configure!(run_in_browser);

const TASK: &str = "0123456789abcdef0123456789abcdef";

fn request() -> SubmitTaskRequest {
    SubmitTaskRequest::TextToImage { prompt: "a red fox".into(), aspect_ratio: AspectRatio::Square }
}

fn entry(status: TaskStatus, progress: u8) -> TaskEntry {
    let mut update = TaskProgressDto::new(TASK, status, progress, "working");
    match status {
        TaskStatus::Queued => update.queue_position = Some(3),
        TaskStatus::Completed => update.result_url = Some("/result.png?signature=x".into()),
        TaskStatus::Failed => update.error_message = Some("out of memory".into()),
        _ => {}
    }
    TaskEntry {
        update,
        request: Some(request()),
        created_at: 1_700_000_000_000.0,
        finished_at: status.is_terminal().then_some(1_700_000_012_300.0),
        live_rank: None,
        shared: false,
        share_url: None,
    }
}

/// Renders component `C` with `props` into a fresh element and lets Yew's scheduler run.
async fn mount<C: yew::BaseComponent>(props: C::Properties) -> Element {
    let document = web_sys::window().unwrap().document().unwrap();
    let root = document.create_element("div").unwrap();
    document.body().unwrap().append_child(&root).unwrap();
    yew::Renderer::<C>::with_root_and_props(root.clone(), props).render();
    TimeoutFuture::new(0).await;
    root
}

/// Renders a card.
async fn render(entry: TaskEntry) -> Element {
    mount::<TaskCard>(TaskCardProps {
        entry,
        on_cancel: Some(Callback::noop()),
        on_share: Some(Callback::noop()),
        show_times: true,
    })
    .await
}

fn text(root: &Element, selector: &str) -> Option<String> {
    root.query_selector(selector).unwrap().and_then(|e| e.text_content())
}

#[wasm_bindgen_test]
async fn a_card_shows_what_each_status_means() {
    for status in TaskStatus::ALL {
        let progress = if status == TaskStatus::Completed { 100 } else { 40 };
        let root = render(entry(status, progress)).await;
        let card = root.query_selector("article.task-card").unwrap().expect("a card");
        assert_eq!(card.get_attribute("data-status").as_deref(), Some(status.as_str()));
        assert_eq!(text(&root, ".badge").as_deref(), Some(status.as_str()));
        assert_eq!(text(&root, ".task-no").as_deref(), Some("01234567"));
        assert_eq!(text(&root, ".prompt").as_deref(), Some("a red fox"));
        assert_eq!(text(&root, ".kind").as_deref(), Some("text-to-image"));

        let bar = root.query_selector("[role=progressbar]").unwrap().expect("a progress bar");
        assert_eq!(bar.get_attribute("aria-valuenow"), Some(progress.to_string()));
        assert_eq!(bar.get_attribute("aria-valuemax").as_deref(), Some("100"));
        assert!(bar.get_attribute("aria-label").unwrap().contains("01234567"));
        assert_eq!(text(&root, ".percent"), Some(format!("{progress}%")));
        assert_eq!(text(&root, ".message").as_deref(), Some("working"));

        let queue = text(&root, ".queue");
        let image = root.query_selector(".result img").unwrap();
        let error = text(&root, ".error");
        let cancel = root.query_selector("button.cancel").unwrap();
        let took = text(&root, ".duration");
        match status {
            TaskStatus::Queued => assert_eq!(queue.as_deref(), Some("Position in queue: 3")),
            _ => assert_eq!(queue, None, "{status:?}"),
        }
        match status {
            TaskStatus::Completed => {
                let image = image.expect("a thumbnail");
                assert_eq!(image.get_attribute("src").as_deref(), Some("/result.png?signature=x"));
                assert!(image.get_attribute("alt").unwrap().contains("01234567"));
                let link = root.query_selector("a.result").unwrap().unwrap();
                assert_eq!(link.get_attribute("target").as_deref(), Some("_blank"));
            }
            _ => assert!(image.is_none(), "{status:?}"),
        }
        match status {
            TaskStatus::Failed => assert_eq!(error.as_deref(), Some("out of memory")),
            _ => assert_eq!(error, None, "{status:?}"),
        }
        assert_eq!(
            cancel.is_some(),
            !status.is_terminal(),
            "{status:?}: cancel only while running"
        );
        assert_eq!(took.as_deref(), status.is_terminal().then_some("12.3 s"), "{status:?}");
        root.remove();
    }
}

#[wasm_bindgen_test]
async fn a_card_offers_its_share_link_to_the_owner_only() {
    // The owner's card: "Share" until a link exists; then the link, Copy and Stop sharing.
    let asked = Rc::new(std::cell::RefCell::new(Vec::new()));
    let card = |entry: TaskEntry| {
        let asked = asked.clone();
        mount::<TaskCard>(TaskCardProps {
            entry,
            on_cancel: None,
            on_share: Some(Callback::from(move |choice| asked.borrow_mut().push(choice))),
            show_times: true,
        })
    };
    let root = card(entry(TaskStatus::Processing, 40)).await;
    assert!(
        root.query_selector("button.cancel").unwrap().is_none(),
        "no cancel without a callback"
    );
    let share: web_sys::HtmlElement =
        root.query_selector("button.share-make").unwrap().unwrap().dyn_into().unwrap();
    assert_eq!(share.text_content().as_deref(), Some("Share"));
    assert!(root.query_selector("button.share-revoke").unwrap().is_none());
    share.click();
    assert_eq!(asked.borrow().as_slice(), [(TASK.to_owned(), true)]);
    root.remove();

    let mut shared = entry(TaskStatus::Processing, 40);
    shared.shared = true;
    shared.share_url = Some(format!("http://example.test/share#{}", "f".repeat(64)));
    let root = card(shared.clone()).await;
    let url: web_sys::HtmlInputElement =
        root.query_selector("input.share-url").unwrap().unwrap().dyn_into().unwrap();
    assert_eq!(url.value(), shared.share_url.clone().unwrap());
    assert!(url.read_only());
    assert!(root.query_selector("button.share-copy").unwrap().is_some());
    assert!(root.query_selector("button.share-make").unwrap().is_none());
    let revoke: web_sys::HtmlElement =
        root.query_selector("button.share-revoke").unwrap().unwrap().dyn_into().unwrap();
    revoke.click();
    assert_eq!(asked.borrow().last(), Some(&(TASK.to_owned(), false)));
    root.remove();

    // Shared before this page was opened: the token is not known here, so it can be
    // revoked or replaced but not shown.
    shared.share_url = None;
    let root = card(shared.clone()).await;
    assert!(root.query_selector("input.share-url").unwrap().is_none());
    assert_eq!(text(&root, "button.share-make").as_deref(), Some("New link"));
    assert!(root.query_selector("button.share-revoke").unwrap().is_some());
    root.remove();

    // The board keeps what the API and the buttons say.
    let mut details = TaskDetails {
        progress: TaskProgressDto::new(TASK, TaskStatus::Processing, 10, "x"),
        request: request(),
        created_at: 1,
        updated_at: 1,
        finished_at: None,
        cost: 1,
        shared: true,
    };
    let url = "http://example.test/share#abc".to_owned();
    let board = board([Action::Details(details.clone())]);
    assert!(board.tasks[0].shared && board.tasks[0].share_url.is_none());
    let board = board.reduce(Action::Shared { task_no: TASK.into(), url: url.clone() });
    assert_eq!(board.tasks[0].share_url.as_ref(), Some(&url));
    let board = board.reduce(Action::Unshared(TASK.into()));
    assert!(!board.tasks[0].shared && board.tasks[0].share_url.is_none());
    details.shared = false;
    let board =
        board.reduce(Action::Shared { task_no: TASK.into(), url }).reduce(Action::Details(details));
    assert!(!board.tasks[0].shared, "revoked elsewhere: the API's answer wins");
}

#[wasm_bindgen_test]
async fn a_share_links_page_shows_its_task_read_only_and_says_when_the_link_ended() {
    use taskpulse_frontend::components::shared::{SharedTaskView, SharedTaskViewProps, WatchState};
    let root =
        mount::<SharedTaskView>(SharedTaskViewProps { entry: None, state: WatchState::Connecting })
            .await;
    assert_eq!(text(&root, ".empty").as_deref(), Some("Loading the shared task…"));
    root.remove();

    let live = SharedTaskViewProps {
        entry: Some(TaskEntry::seen(
            TaskProgressDto::new(TASK, TaskStatus::Processing, 60, "step 3"),
            0.0,
        )),
        state: WatchState::Live,
    };
    let root = mount::<SharedTaskView>(live).await;
    assert_eq!(text(&root, ".connection").as_deref(), Some("Live"));
    assert_eq!(text(&root, ".percent").as_deref(), Some("60%"));
    for control in ["button.cancel", "button.share-make", "button.share-revoke", ".times"] {
        assert!(root.query_selector(control).unwrap().is_none(), "{control}: read-only, no times");
    }
    root.remove();

    let ended = SharedTaskViewProps { entry: None, state: WatchState::Ended("revoked".into()) };
    let root = mount::<SharedTaskView>(ended).await;
    assert_eq!(text(&root, "[role=alert]").as_deref(), Some("revoked"));
    assert!(root.query_selector(".empty").unwrap().is_none());
    root.remove();
}

fn board(actions: impl IntoIterator<Item = Action>) -> Rc<Board> {
    actions.into_iter().fold(Rc::new(Board::default()), Reducible::reduce)
}

fn update(status: TaskStatus, progress: u8) -> Action {
    Action::Update { update: TaskProgressDto::new(TASK, status, progress, ""), now: 5.0 }
}

#[wasm_bindgen_test]
fn a_submitted_task_appears_at_once_and_follows_the_live_updates() {
    let submitted = Action::Submitted { task_no: TASK.into(), request: request(), now: 1.0 };
    let b = board([submitted.clone()]);
    assert_eq!(b.tasks.len(), 1);
    assert_eq!(b.tasks[0].update.status, TaskStatus::Created);
    assert_eq!(b.tasks[0].prompt(), Some("a red fox"));

    // Live updates come in the server's order: a restart puts a running task back in the
    // queue, and the card says so.
    let b = board([
        submitted.clone(),
        update(TaskStatus::Processing, 50),
        update(TaskStatus::Queued, 0),
    ]);
    assert_eq!(b.tasks[0].update.status, TaskStatus::Queued);

    let b =
        board([submitted, update(TaskStatus::Processing, 90), update(TaskStatus::Completed, 100)]);
    assert_eq!(b.tasks[0].update.status, TaskStatus::Completed);
    assert_eq!(b.tasks[0].finished_at, Some(5.0));
    assert_eq!(b.toasts.len(), 1, "a finish seen live is announced");
    assert_eq!(b.toasts[0].tone, Tone::Success);
    assert_eq!(b.toasts[0].task_no.as_deref(), Some(TASK));
}

#[wasm_bindgen_test]
fn finished_tasks_from_a_snapshot_are_not_announced() {
    let b = board([update(TaskStatus::Completed, 100)]);
    assert_eq!(b.tasks.len(), 1);
    assert!(b.toasts.is_empty(), "it finished before this page saw it run");
    let failed = Action::Update {
        update: TaskProgressDto {
            error_message: Some("boom".into()),
            ..TaskProgressDto::new(TASK, TaskStatus::Failed, 0, "")
        },
        now: 6.0,
    };
    let b = board([update(TaskStatus::Processing, 10), failed]);
    assert_eq!(b.toasts[0].tone, Tone::Failure);
    assert!(b.toasts[0].text.contains("boom"), "{}", b.toasts[0].text);
}

#[wasm_bindgen_test]
fn api_details_fill_in_without_undoing_live_updates() {
    let details = |status: TaskStatus, created_at: i64, task_no: &str| TaskDetails {
        progress: TaskProgressDto::new(task_no, status, 0, ""),
        request: request(),
        created_at,
        updated_at: created_at,
        finished_at: None,
        cost: 0,
        shared: false,
    };
    // A live update got here before the list did: the list's older state loses.
    let b = board([
        update(TaskStatus::Processing, 70),
        Action::Loaded {
            tasks: vec![
                details(TaskStatus::Queued, 100, TASK),
                details(TaskStatus::Queued, 200, "newer"),
            ],
            older: None,
        },
    ]);
    assert_eq!(
        b.tasks.iter().map(|t| t.update.task_no.as_str()).collect::<Vec<_>>(),
        ["newer", TASK]
    );
    let ours = &b.tasks[1];
    assert_eq!((ours.update.status, ours.update.progress), (TaskStatus::Processing, 70));
    assert_eq!(ours.created_at, 100.0, "the server's submission time");
    assert_eq!(ours.prompt(), Some("a red fox"));
}

#[wasm_bindgen_test]
fn live_updates_in_flight_when_the_api_answered_do_not_undo_it_but_a_live_step_back_does() {
    let details = |status: TaskStatus| TaskDetails {
        progress: TaskProgressDto::new(TASK, status, 0, ""),
        request: request(),
        created_at: 100,
        updated_at: 100,
        finished_at: None,
        cost: 0,
        shared: false,
    };
    // A second window hears `created`, asks the API for the task, which is `processing` by
    // then; `queued` was still on its way.
    let b = board([
        update(TaskStatus::Created, 0),
        Action::Details(details(TaskStatus::Processing)),
        update(TaskStatus::Queued, 0),
    ]);
    assert_eq!(b.tasks[0].update.status, TaskStatus::Processing, "no step back to queued");
    let b = Rc::clone(&b).reduce(Action::Update {
        update: TaskProgressDto::new(TASK, TaskStatus::Processing, 40, ""),
        now: 3.0,
    });
    assert_eq!(
        (b.tasks[0].update.status, b.tasks[0].update.progress),
        (TaskStatus::Processing, 40)
    );
    // The live stream itself going back (a restarted server re-queues the task) is the truth.
    let b = Rc::clone(&b).reduce(Action::Update {
        update: TaskProgressDto::new(TASK, TaskStatus::Queued, 0, ""),
        now: 4.0,
    });
    assert_eq!(b.tasks[0].update.status, TaskStatus::Queued);
}

#[wasm_bindgen_test]
fn filters_connection_and_toasts() {
    let b = board([
        update(TaskStatus::Processing, 10),
        Action::Update {
            update: TaskProgressDto::new("done", TaskStatus::Completed, 100, ""),
            now: 7.0,
        },
        Action::Filter(Filter::Active),
    ]);
    assert_eq!(b.visible().map(|t| t.update.task_no.as_str()).collect::<Vec<_>>(), [TASK]);
    assert_eq!(
        (b.count(Filter::All), b.count(Filter::Completed), b.count(Filter::Failed)),
        (2, 1, 0)
    );

    let reconnecting =
        Connection { state: ConnectionState::Reconnecting, next_retry_at: Some(9.0) };
    let b = board([Action::Connection(reconnecting)]);
    assert_eq!(b.connection, reconnecting);

    let b = board([
        Action::Notify { text: "one".into(), tone: Tone::Failure },
        Action::Notify { text: "two".into(), tone: Tone::Failure },
    ]);
    let first = b.toasts[0].id;
    let b = Rc::clone(&b).reduce(Action::Dismiss(first));
    assert_eq!(b.toasts.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["two"]);
}

#[wasm_bindgen_test]
async fn older_tasks_load_page_by_page_behind_a_button_until_the_oldest() {
    let details = |created_at: i64, task_no: &str| TaskDetails {
        progress: TaskProgressDto::new(task_no, TaskStatus::Completed, 100, ""),
        request: request(),
        created_at,
        updated_at: created_at,
        finished_at: Some(created_at + 1),
        cost: 0,
        shared: false,
    };
    let first = Action::Loaded {
        tasks: vec![details(300, "c"), details(200, "b")],
        older: Some("b".into()),
    };
    let b = board([first.clone()]);
    assert_eq!(b.older.as_deref(), Some("b"));
    // The button asks for the next page; it says so while the page is on its way.
    let clicked = Rc::new(std::cell::Cell::new(0));
    let root = render_list((*b).clone(), clicked.clone()).await;
    let button = root.query_selector("button.load-older").unwrap().expect("a load-older button");
    assert_eq!(button.text_content().as_deref(), Some("Load older tasks"));
    wasm_bindgen::JsCast::dyn_ref::<web_sys::HtmlElement>(&button).unwrap().click();
    assert_eq!(clicked.get(), 1);
    let loading = b.reduce(Action::LoadingOlder);
    let root = render_list((*loading).clone(), clicked.clone()).await;
    let button = root.query_selector("button.load-older").unwrap().unwrap();
    assert!(button.has_attribute("disabled"));
    assert_eq!(button.text_content().as_deref(), Some("Loading older tasks…"));
    // The last page: older tasks go below, and the button goes.
    let done = loading.reduce(Action::LoadedOlder(Some((vec![details(100, "a")], None))));
    let order: Vec<&str> = done.tasks.iter().map(|t| t.update.task_no.as_str()).collect();
    assert_eq!(order, ["c", "b", "a"]);
    assert!(!done.loading_older && done.older.is_none());
    let root = render_list((*done).clone(), clicked.clone()).await;
    assert!(root.query_selector("button.load-older").unwrap().is_none());
    // A reconnect reloads the newest page; the older pages shown stay, and so does the end.
    let reloaded = done.reduce(first);
    assert_eq!(reloaded.tasks.len(), 3);
    assert!(reloaded.older.is_none(), "the newest page's cursor does not bring the button back");
    // A failed page leaves the button to try again.
    let failed =
        board([Action::Loaded { tasks: vec![details(300, "c")], older: Some("c".into()) }])
            .reduce(Action::LoadingOlder)
            .reduce(Action::LoadedOlder(None));
    assert!(!failed.loading_older && failed.older.as_deref() == Some("c"));
}

/// Renders the task list of `board` (the load-older button counts into `clicked`).
async fn render_list(board: Board, clicked: Rc<std::cell::Cell<u32>>) -> Element {
    mount::<TaskList>(TaskListProps {
        board: Rc::new(board),
        on_filter: Callback::noop(),
        on_cancel: Callback::noop(),
        on_share: Callback::noop(),
        on_older: Callback::from(move |()| clicked.set(clicked.get() + 1)),
    })
    .await
}

#[wasm_bindgen_test]
async fn the_operator_page_draws_its_figures_from_the_samples() {
    use taskpulse_frontend::components::operations::{
        OperationsView, OperationsViewProps, Sample, polyline, rate,
    };
    use taskpulse_shared::stats::{RunningTask, Stats};
    let stats = |deliveries: u64, errors: u64, open: i64| {
        let mut stats: Stats = zero_stats(open);
        stats.messages.deliveries = deliveries;
        stats.errors.total = errors;
        stats.errors.by_code.insert("slow-consumer".into(), errors);
        stats
    };
    let mut last = stats(1_000, 3, 4);
    last.slowest_tasks = vec![
        RunningTask {
            task_no: "aaaaaaaa1111".into(),
            owner: "alice".into(),
            executor: "demo".into(),
            progress: 40,
            running_seconds: 30.0,
        },
        RunningTask {
            task_no: "bbbbbbbb2222".into(),
            owner: "bob".into(),
            executor: "comfyui".into(),
            progress: 5,
            running_seconds: 15.0,
        },
    ];
    let samples = vec![
        Sample { at: 0.0, stats: stats(0, 1, 2) },
        Sample { at: 2_000.0, stats: stats(400, 1, 3) },
        Sample { at: 4_000.0, stats: last },
    ];
    // Rates per second between samples; lines scaled into the box.
    assert_eq!(rate(&samples, |s| s.messages.deliveries), [200.0, 300.0]);
    assert_eq!(polyline(&[0.0, 10.0]), "0.0,30.0 100.0,2.0");
    let root = mount::<OperationsView>(OperationsViewProps {
        samples: Rc::new(samples),
        on_disconnect: Callback::noop(),
        status: Some("Closed 1 connection(s) of alice.".into()),
    })
    .await;
    let spark = |title: &str| {
        root.query_selector(&format!("figure.spark[data-title=\"{title}\"]")).unwrap().unwrap()
    };
    assert_eq!(text(&spark("Deliveries/s"), "strong").as_deref(), Some("300/s"));
    assert_eq!(text(&spark("Connections"), "strong").as_deref(), Some("4"));
    let points = spark("Connections").query_selector("polyline").unwrap().unwrap();
    assert_eq!(points.get_attribute("points").unwrap().split(' ').count(), 3);
    // The longest-running task has the full bar, the other half of it.
    let widths: Vec<String> = (0..2)
        .map(|i| {
            let bar = root
                .query_selector(&format!(".bars.slowest li:nth-child({}) .bar", i + 1))
                .unwrap()
                .unwrap();
            bar.get_attribute("style").unwrap()
        })
        .collect();
    assert_eq!(widths, ["width: 100.0%", "width: 50.0%"]);
    assert!(text(&root, ".bars.slowest").unwrap().contains("alice"));
    // Two slow-consumer ERRORs since the first sample.
    assert_eq!(text(&root, ".bars.errors .bar-value").as_deref(), Some("2"));
    assert!(text(&root, ".disconnect-status").unwrap().contains("alice"));
}

/// Stats with `open` connections and everything else zero.
fn zero_stats(open: i64) -> taskpulse_shared::stats::Stats {
    use taskpulse_shared::stats::*;
    Stats {
        uptime_seconds: 1,
        connections: ConnectionStats {
            open,
            by_transport: Default::default(),
            connects: 0,
            disconnects: 0,
            disconnects_by_reason: Default::default(),
        },
        authentication: AuthStats {
            attempts: 0,
            successes: 0,
            failures: 0,
            success_rate: None,
            by_outcome: Default::default(),
        },
        messages: MessageStats {
            received: 0,
            sent: 0,
            received_by_kind: Default::default(),
            sent_by_kind: Default::default(),
            published: 0,
            deliveries: 0,
            coalesced_progress: 0,
        },
        errors: ErrorStats { total: 0, by_code: Default::default(), slow_consumer_disconnects: 0 },
        catch_ups: CatchUpStats { replays: 0, snapshots: 0, entries: 0 },
        user_log: LogStats { entries: 0, pruned: 0 },
        tasks: Default::default(),
        slowest_tasks: Vec::new(),
        cluster: None,
    }
}
