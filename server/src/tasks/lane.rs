//! One executor with its queue: tasks wait in order until one of the executor's
//! `concurrency` slots is free (the seed's semaphore that keeps the GPU from overloading).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::Executor;

/// A task counted by [`Lane::running`] while it lives.
#[derive(Debug)]
pub(super) struct Running(Arc<Lane>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An executor, its waiting tasks and its free slots.
#[derive(Debug)]
pub(super) struct Lane {
    pub(super) executor: Arc<dyn Executor>,
    waiting: Mutex<VecDeque<String>>,
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    /// A task was queued.
    arrived: Notify,
    /// The queue changed: positions need announcing.
    moved: Notify,
}

impl Lane {
    pub(super) fn new(executor: Arc<dyn Executor>, concurrency: usize) -> Lane {
        Lane {
            executor,
            waiting: Mutex::default(),
            slots: Arc::new(Semaphore::new(concurrency)),
            running: AtomicUsize::new(0),
            arrived: Notify::new(),
            moved: Notify::new(),
        }
    }

    fn waiting_queue(&self) -> parking_lot::MutexGuard<'_, VecDeque<String>> {
        self.waiting.lock()
    }

    pub(super) fn waiting_len(&self) -> usize {
        self.waiting_queue().len()
    }

    pub(super) fn push(&self, task_no: String) {
        self.waiting_queue().push_back(task_no);
        self.arrived.notify_one();
    }

    /// Tasks running now (the dispatcher's waiting permit is not one).
    pub(super) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Counts a task as running until the guard drops.
    pub(super) fn started(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }

    /// Waits for a free slot, then for a task; the slot is held until the permit drops.
    pub(super) async fn next(&self) -> (String, OwnedSemaphorePermit) {
        let permit =
            self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            let next = self.waiting_queue().pop_front();
            if let Some(task_no) = next {
                self.moved.notify_one();
                return (task_no, permit);
            }
            self.arrived.notified().await;
        }
    }

    /// Takes a cancelled task out of the queue.
    pub(super) fn remove(&self, task_no: &str) {
        let mut waiting = self.waiting_queue();
        let before = waiting.len();
        waiting.retain(|t| t != task_no);
        if waiting.len() != before {
            self.moved.notify_one();
        }
    }

    /// The waiting tasks, first first.
    pub(super) fn waiting(&self) -> Vec<String> {
        self.waiting_queue().iter().cloned().collect()
    }

    /// 1 for the next task to run.
    pub(super) fn position(&self, task_no: &str) -> Option<u32> {
        self.waiting_queue().iter().position(|t| t == task_no).map(|i| i as u32 + 1)
    }

    /// Completes after the queue moved.
    pub(super) async fn moved(&self) {
        self.moved.notified().await;
    }
}
