//! The live connection: `client-wasm`'s [`Client`] for the signed-in user, its events turned
//! into board actions. One client per session; dropping the [`Live`] handle disconnects.

use taskpulse_client::{Client, ClientError, ClientEvent, ClientOptions, TokenSource};

use crate::state::{Action, Connection};

/// What the live connection reports to the page.
pub enum Event {
    /// Something for the board.
    Board(Action),
    /// A task changed; the page may want its details from the API.
    Changed { task_no: String, finished: bool },
    /// A session (re)opened: the page refreshes the list, which may have changed meanwhile.
    Reconnected,
    /// The server refused the token: the user must sign in again.
    SignedOut(String),
}

/// A running client; `Drop` disconnects it.
pub struct Live {
    client: Client,
}

impl Live {
    /// Connects to this page's server with `token` and reports through `on_event`.
    pub fn start(token: &str, on_event: impl Fn(Event) + 'static) -> Live {
        let origin = web_sys::window()
            .and_then(|w| w.location().origin().ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let options = ClientOptions::new(&origin, TokenSource::Fixed(token.to_owned()))
            .expect("a page origin is an http(s) URL");
        let client = Client::new(options);
        let connects = std::cell::Cell::new(0u32);
        client.listen(move |event| match event {
            ClientEvent::TaskUpdate(update) => {
                let (task_no, finished) = (update.task_no.clone(), update.status.is_terminal());
                let now = js_sys::Date::now();
                on_event(Event::Board(Action::Update { update: update.clone(), now }));
                on_event(Event::Changed { task_no, finished });
            }
            ClientEvent::StateChanged { state, next_retry_at } => {
                on_event(Event::Board(Action::Connection(Connection {
                    state: *state,
                    next_retry_at: *next_retry_at,
                })));
            }
            ClientEvent::Connected(_) => {
                connects.set(connects.get() + 1);
                if connects.get() > 1 {
                    on_event(Event::Reconnected);
                }
            }
            ClientEvent::Error(ClientError::Rejected { message, .. }) => {
                on_event(Event::SignedOut(message.clone()))
            }
            _ => {}
        });
        let connecting = client.clone();
        wasm_bindgen_futures::spawn_local(async move {
            // Failures are reported through the events above; a refusal ends in SignedOut.
            let _ = connecting.connect().await;
        });
        Live { client }
    }

    /// Starts the next attempt now ("retry now").
    pub fn retry_now(&self) {
        self.client.retry_now();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let client = self.client.clone();
        wasm_bindgen_futures::spawn_local(async move { client.disconnect().await });
    }
}
