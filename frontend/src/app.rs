//! The page: the sign-in form until there is a session, then the monitor (header with the
//! connection, submit form, task list, toasts), which owns the live connection. At `/share`
//! it is a share link's page instead, which needs no session.

use std::{cell::RefCell, collections::HashSet, rc::Rc};

use taskpulse_shared::dto::SubmitTaskRequest;
use yew::{
    Callback, Html, Properties, UseReducerDispatcher, function_component, html, use_effect_with,
    use_mut_ref, use_reducer, use_state,
};

use crate::{
    components::{
        auth::AuthForm, connection::ConnectionIndicator, operations::Operations,
        shared::SharedTaskPage, submit::SubmitForm, task_list::TaskList, toasts::Toasts,
    },
    services::{
        api, live,
        live::Live,
        notify,
        session::{self, Session},
    },
    state::{Action, Board, Filter, Tone},
};

const SESSION_ENDED: &str = "Your session has ended. Please sign in again.";

/// The page's path, and its fragment without `#`.
fn location() -> (String, String) {
    let location = web_sys::window().map(|w| w.location());
    let path = location.as_ref().and_then(|l| l.pathname().ok()).unwrap_or_default();
    let hash = location.as_ref().and_then(|l| l.hash().ok()).unwrap_or_default();
    (path, hash.trim_start_matches('#').to_owned())
}

/// The whole page.
#[function_component(App)]
pub fn app() -> Html {
    let (path, fragment) = location();
    if path == "/share" {
        return html! { <SharedTaskPage token={fragment} /> };
    }
    html! { <Account /> }
}

/// The signed-in monitor, or the sign-in form.
#[function_component(Account)]
fn account() -> Html {
    let session = use_state(session::load);
    let notice = use_state(|| None::<String>);
    let on_signed_in = {
        let (session, notice) = (session.clone(), notice.clone());
        Callback::from(move |signed_in: Session| {
            session::save(&signed_in);
            notice.set(None);
            session.set(Some(signed_in));
        })
    };
    let on_signed_out = {
        let (session, notice) = (session.clone(), notice.clone());
        Callback::from(move |why: Option<String>| {
            session::clear();
            notice.set(why);
            session.set(None);
        })
    };
    match (*session).clone() {
        Some(session) => html! { <Monitor {session} on_signed_out={on_signed_out} /> },
        None => html! { <AuthForm on_signed_in={on_signed_in} notice={(*notice).clone()} /> },
    }
}

/// Props of [`Monitor`].
#[derive(Properties, PartialEq)]
pub struct MonitorProps {
    /// The signed-in user.
    pub session: Session,
    /// Signed out, with the reason when it was not the user's choice.
    pub on_signed_out: Callback<Option<String>>,
}

/// Loads the task list (or one task) and puts it on the board; a refused token signs out.
fn load(
    token: String,
    task_no: Option<String>,
    board: UseReducerDispatcher<Board>,
    signed_out: Callback<Option<String>>,
) {
    wasm_bindgen_futures::spawn_local(async move {
        let result = match task_no {
            Some(task_no) => api::task(&token, &task_no).await.map(Action::Details),
            None => api::tasks(&token, None)
                .await
                .map(|page| Action::Loaded { tasks: page.tasks, older: page.next_cursor }),
        };
        match result {
            Ok(action) => board.dispatch(action),
            Err(failure) if failure.is_unauthorized() => {
                signed_out.emit(Some(SESSION_ENDED.into()))
            }
            Err(failure) => {
                board.dispatch(Action::Notify { text: failure.message, tone: Tone::Failure })
            }
        }
    });
}

/// The signed-in page.
#[function_component(Monitor)]
pub fn monitor(props: &MonitorProps) -> Html {
    let board = use_reducer(Board::default);
    let live_handle = use_mut_ref(|| None::<Live>);
    // Operators get a second view: the server's figures.
    let operator = use_state(|| false);
    let operations = use_state(|| false);
    {
        let operator = operator.clone();
        use_effect_with(props.session.token.clone(), move |token: &String| {
            let token = token.clone();
            wasm_bindgen_futures::spawn_local(async move {
                if let Ok(me) = api::me(&token).await {
                    operator.set(me.operator);
                }
            });
        });
    }
    // Tasks whose details (prompt, times) the board has asked the API for.
    let known: Rc<RefCell<HashSet<String>>> = use_mut_ref(HashSet::new);

    {
        let (dispatch, live_handle, known) =
            (board.dispatcher(), live_handle.clone(), known.clone());
        let signed_out = props.on_signed_out.clone();
        use_effect_with(props.session.token.clone(), move |token: &String| {
            load(token.clone(), None, dispatch.clone(), signed_out.clone());
            let (token_for_events, dispatch_events) = (token.clone(), dispatch.clone());
            let live = Live::start(token, move |event| match event {
                live::Event::Board(action) => dispatch_events.dispatch(action),
                live::Event::Changed { task_no, finished } => {
                    // Details once for a task first seen here, and again when it finishes
                    // (for the server's finish time).
                    let first = known.borrow_mut().insert(task_no.clone());
                    if first || finished {
                        load(
                            token_for_events.clone(),
                            Some(task_no),
                            dispatch_events.clone(),
                            signed_out.clone(),
                        );
                    }
                }
                live::Event::Reconnected => load(
                    token_for_events.clone(),
                    None,
                    dispatch_events.clone(),
                    signed_out.clone(),
                ),
                live::Event::SignedOut(_) => signed_out.emit(Some(SESSION_ENDED.into())),
            });
            *live_handle.borrow_mut() = Some(live);
            move || {
                live_handle.borrow_mut().take();
            }
        });
    }

    // A finished task while the tab is hidden: a system notification as well as the toast.
    {
        let newest = board.toasts.last().cloned();
        use_effect_with(newest.as_ref().map(|t| t.id), move |_| {
            if let Some(toast) = newest.filter(|t| t.task_no.is_some()) {
                if notify::page_hidden() {
                    notify::show("TaskPulse", &toast.text);
                }
            }
        });
    }

    let on_submitted = {
        let dispatch = board.dispatcher();
        Callback::from(move |(task_no, request): (String, SubmitTaskRequest)| {
            dispatch.dispatch(Action::Submitted { task_no, request, now: js_sys::Date::now() });
            notify::ask_permission();
        })
    };
    let on_unauthorized = {
        let signed_out = props.on_signed_out.clone();
        Callback::from(move |()| signed_out.emit(Some(SESSION_ENDED.into())))
    };
    let on_cancel = {
        let (dispatch, token, signed_out) =
            (board.dispatcher(), props.session.token.clone(), props.on_signed_out.clone());
        Callback::from(move |task_no: String| {
            let (dispatch, token, signed_out) =
                (dispatch.clone(), token.clone(), signed_out.clone());
            wasm_bindgen_futures::spawn_local(async move {
                match api::cancel(&token, &task_no).await {
                    Ok(_) => {}
                    Err(failure) if failure.is_unauthorized() => {
                        signed_out.emit(Some(SESSION_ENDED.into()))
                    }
                    Err(failure) => dispatch.dispatch(Action::Notify {
                        text: format!("Cannot cancel: {}", failure.message),
                        tone: Tone::Failure,
                    }),
                }
            });
        })
    };
    let on_share = {
        let (dispatch, token, signed_out) =
            (board.dispatcher(), props.session.token.clone(), props.on_signed_out.clone());
        Callback::from(move |(task_no, make): (String, bool)| {
            let (dispatch, token, signed_out) =
                (dispatch.clone(), token.clone(), signed_out.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let short = crate::state::short_task_no(&task_no).to_owned();
                let done = if make {
                    api::share(&token, &task_no).await.map(|link| {
                        let origin = web_sys::window()
                            .and_then(|w| w.location().origin().ok())
                            .unwrap_or_default();
                        let url = format!("{origin}{}", link.url);
                        dispatch.dispatch(Action::Shared { task_no: task_no.clone(), url });
                        format!("Anyone with the link can now watch task {short}")
                    })
                } else {
                    api::unshare(&token, &task_no).await.map(|()| {
                        dispatch.dispatch(Action::Unshared(task_no.clone()));
                        format!("The share link of task {short} no longer works")
                    })
                };
                match done {
                    Ok(text) => dispatch.dispatch(Action::Notify { text, tone: Tone::Success }),
                    Err(failure) if failure.is_unauthorized() => {
                        signed_out.emit(Some(SESSION_ENDED.into()))
                    }
                    Err(failure) => dispatch.dispatch(Action::Notify {
                        text: format!("Cannot change the share link: {}", failure.message),
                        tone: Tone::Failure,
                    }),
                }
            });
        })
    };
    let on_older = {
        let (dispatch, token, signed_out) =
            (board.dispatcher(), props.session.token.clone(), props.on_signed_out.clone());
        let cursor = board.older.clone();
        Callback::from(move |()| {
            let Some(cursor) = cursor.clone() else { return };
            let (dispatch, token, signed_out) =
                (dispatch.clone(), token.clone(), signed_out.clone());
            dispatch.dispatch(Action::LoadingOlder);
            wasm_bindgen_futures::spawn_local(async move {
                match api::tasks(&token, Some(&cursor)).await {
                    Ok(page) => {
                        dispatch.dispatch(Action::LoadedOlder(Some((page.tasks, page.next_cursor))))
                    }
                    Err(failure) if failure.is_unauthorized() => {
                        signed_out.emit(Some(SESSION_ENDED.into()))
                    }
                    Err(failure) => {
                        dispatch.dispatch(Action::LoadedOlder(None));
                        dispatch.dispatch(Action::Notify {
                            text: format!("Cannot load older tasks: {}", failure.message),
                            tone: Tone::Failure,
                        });
                    }
                }
            });
        })
    };
    let on_filter = {
        let dispatch = board.dispatcher();
        Callback::from(move |filter: Filter| dispatch.dispatch(Action::Filter(filter)))
    };
    let on_dismiss = {
        let dispatch = board.dispatcher();
        Callback::from(move |id: u64| dispatch.dispatch(Action::Dismiss(id)))
    };
    let on_retry = {
        let live_handle = live_handle.clone();
        Callback::from(move |()| {
            if let Some(live) = live_handle.borrow().as_ref() {
                live.retry_now();
            }
        })
    };
    let on_sign_out = {
        let (token, signed_out) = (props.session.token.clone(), props.on_signed_out.clone());
        Callback::from(move |_| {
            let (token, signed_out) = (token.clone(), signed_out.clone());
            wasm_bindgen_futures::spawn_local(async move {
                // Revoke the token on the server too; sign out here whatever it answers.
                let _ = api::logout(&token).await;
                signed_out.emit(None);
            });
        })
    };

    html! {
        <>
            <header class="top">
                <h1>{ "TaskPulse" }</h1>
                <ConnectionIndicator connection={board.connection} on_retry={on_retry} />
                if *operator {
                    <button type="button" class="view-switch" aria-pressed={operations.to_string()}
                            onclick={{
                                let operations = operations.clone();
                                Callback::from(move |_| operations.set(!*operations))
                            }}>
                        { if *operations { "Tasks" } else { "Operations" } }
                    </button>
                }
                <span class="user">{ props.session.username.clone() }</span>
                <button type="button" class="sign-out" onclick={on_sign_out}>{ "Sign out" }</button>
            </header>
            if *operations {
                <main class="monitor">
                    <Operations token={props.session.token.clone()} on_unauthorized={on_unauthorized.clone()} />
                </main>
            } else {
            <main class="monitor">
                <SubmitForm token={props.session.token.clone()} on_submitted={on_submitted}
                            on_unauthorized={on_unauthorized} />
                <TaskList board={Rc::new((*board).clone())} on_filter={on_filter} on_cancel={on_cancel}
                          on_share={on_share} on_older={on_older} />
            </main>
            }
            <Toasts toasts={board.toasts.clone()} on_dismiss={on_dismiss} />
        </>
    }
}
