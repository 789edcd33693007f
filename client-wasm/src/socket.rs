//! The browser's `WebSocket` as an async stream of events and a `send`. The only place that
//! touches the socket; the handlers are removed and the socket closed when it is dropped.

use futures_util::StreamExt;
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

use crate::channel::{Receiver, channel};

/// What the socket reports.
#[derive(Debug)]
pub(crate) enum SocketEvent {
    /// The handshake finished.
    Open,
    /// One WebSocket message, text or binary, as bytes.
    Data(Vec<u8>),
    /// The socket closed (after an `error` event too, which carries no detail in browsers).
    Closed { code: u16, reason: String, was_clean: bool },
}

/// An open or opening WebSocket.
pub(crate) struct Socket {
    ws: WebSocket,
    /// The events, in order; a fused stream, so usable in `select!`.
    pub(crate) events: Receiver<SocketEvent>,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Socket {
    /// Starts opening `url`.
    ///
    /// No STOMP subprotocol (`v12.stomp`, …) is requested: the CONNECT frame's
    /// `accept-version` settles the version, and a browser fails the handshake outright when
    /// it asked for a subprotocol that a proxy on the way drops (`trunk serve`'s does).
    ///
    /// # Errors
    /// The browser's exception text, e.g. for a malformed URL.
    pub(crate) fn open(url: &str) -> Result<Socket, String> {
        let ws = WebSocket::new(url).map_err(describe)?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let (tx, events) = channel();

        let open_tx = tx.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            open_tx.send(SocketEvent::Open);
        });
        let message_tx = tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let data = event.data();
            let bytes = match data.as_string() {
                Some(text) => text.into_bytes(),
                None => match data.dyn_into::<ArrayBuffer>() {
                    Ok(buffer) => Uint8Array::new(&buffer).to_vec(),
                    Err(_) => return,
                },
            };
            message_tx.send(SocketEvent::Data(bytes));
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |event: CloseEvent| {
            tx.send(SocketEvent::Closed {
                code: event.code(),
                reason: event.reason(),
                was_clean: event.was_clean(),
            });
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Socket { ws, events, _on_open: on_open, _on_message: on_message, _on_close: on_close })
    }

    /// The next event; `None` never happens while the socket lives.
    pub(crate) async fn next(&mut self) -> Option<SocketEvent> {
        self.events.next().await
    }

    /// A handle for sending from outside the task that reads events.
    pub(crate) fn sender(&self) -> SocketSender {
        SocketSender { ws: self.ws.clone() }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// The sending half: frames go out as text when they are UTF-8 (what browsers' dev tools
/// show best), as binary otherwise.
#[derive(Clone)]
pub(crate) struct SocketSender {
    ws: WebSocket,
}

impl SocketSender {
    /// Sends one WebSocket message.
    ///
    /// # Errors
    /// The browser's exception text (the socket is closing or closed).
    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), String> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.ws.send_with_str(text),
            Err(_) => self.ws.send_with_u8_array(bytes),
        }
        .map_err(describe)
    }
}

/// A thrown JavaScript value as text.
pub(crate) fn describe(value: JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    value
        .as_string()
        .or_else(|| js_sys::JSON::stringify(&value).ok().map(String::from))
        .unwrap_or_else(|| "an exception without a message".to_owned())
}
