//! What the client needs from `futures-channel` and `gloo-timers`, for one thread: an
//! unbounded channel (JavaScript callbacks to the session loop, and one-shot answers) and
//! timers as a future and a stream. Smaller in the `.wasm` than the general crates
//! (docs/BENCHMARKS.md, "Package size"), and the only use of `setTimeout` in the client.

use std::{
    cell::RefCell,
    collections::VecDeque,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use futures_util::{
    future::FusedFuture,
    stream::{FusedStream, Stream},
};
use wasm_bindgen::{JsValue, closure::Closure, prelude::wasm_bindgen};

struct Shared<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    senders: usize,
    receiving: bool,
}

/// The sending half; clones send to the same receiver.
pub(crate) struct Sender<T>(Rc<RefCell<Shared<T>>>);

/// The receiving half: a stream that ends when every sender is gone and the queue is empty.
pub(crate) struct Receiver<T> {
    shared: Rc<RefCell<Shared<T>>>,
    ended: bool,
}

/// A new channel.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Rc::new(RefCell::new(Shared {
        queue: VecDeque::new(),
        waker: None,
        senders: 1,
        receiving: true,
    }));
    (Sender(shared.clone()), Receiver { shared, ended: false })
}

impl<T> Sender<T> {
    /// Queues `value`; `false` when the receiver is gone (the value is dropped).
    pub(crate) fn send(&self, value: T) -> bool {
        let waker = {
            let mut shared = self.0.borrow_mut();
            if !shared.receiving {
                return false;
            }
            shared.queue.push_back(value);
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.0.borrow_mut();
            shared.senders -= 1;
            if shared.senders == 0 { shared.waker.take() } else { None }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut shared = self.shared.borrow_mut();
        if let Some(value) = shared.queue.pop_front() {
            return Poll::Ready(Some(value));
        }
        if shared.senders == 0 {
            drop(shared);
            self.ended = true;
            return Poll::Ready(None);
        }
        shared.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> FusedStream for Receiver<T> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.receiving = false;
        shared.queue.clear();
    }
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Closure<dyn FnMut()>, ms: u32) -> JsValue;
    #[wasm_bindgen(js_name = setInterval)]
    fn set_interval(handler: &Closure<dyn FnMut()>, ms: u32) -> JsValue;
    /// Clears intervals too: both kinds of timer live in one map of active timers (HTML).
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timer(id: &JsValue);
}

/// A JavaScript timer (`setTimeout` or `setInterval`) whose ticks arrive on a channel;
/// cleared when dropped.
struct Timer {
    ticks: Receiver<()>,
    id: JsValue,
    _handler: Closure<dyn FnMut()>,
}

impl Timer {
    fn new(ms: u32, repeat: bool) -> Timer {
        let (tick, ticks) = channel();
        let handler = Closure::<dyn FnMut()>::new(move || {
            tick.send(());
        });
        let id = if repeat { set_interval(&handler, ms) } else { set_timeout(&handler, ms) };
        Timer { ticks, id, _handler: handler }
    }

    fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.ticks).poll_next(cx).map(|_| ())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timer(&self.id);
    }
}

/// A future ready `ms` milliseconds after it was made (fused: usable in `select!`).
pub(crate) struct Timeout {
    timer: Timer,
    fired: bool,
}

impl Timeout {
    pub(crate) fn new(ms: u32) -> Timeout {
        Timeout { timer: Timer::new(ms, false), fired: false }
    }
}

impl Future for Timeout {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let tick = self.timer.poll_tick(cx);
        if tick.is_ready() {
            self.fired = true;
        }
        tick
    }
}

impl FusedFuture for Timeout {
    fn is_terminated(&self) -> bool {
        self.fired
    }
}

/// A stream that yields every `ms` milliseconds until dropped.
pub(crate) struct Interval(Timer);

impl Interval {
    pub(crate) fn new(ms: u32) -> Interval {
        Interval(Timer::new(ms, true))
    }
}

impl Stream for Interval {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.0.poll_tick(cx).map(Some)
    }
}
