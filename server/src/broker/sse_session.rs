//! A read-only session for Server-Sent Events: one user's task updates
//! (`/user/queue/tasks-progress`), or a share link's one task, resumed from a position like
//! any subscription, on the same
//! broker core as STOMP and the JSON protocol (connection limits, revocation, replay,
//! snapshots, the outbound ceiling). The client sends nothing; the transport writes the
//! outbox as events.

use std::sync::Arc;

use taskpulse_shared::{
    resume::{ResumePosition, TASKS_DESTINATION, TASKS_PATH},
    stomp::AckMode,
};

use super::{Broker, Destination, Outbox, Principal, Subscriber};

/// The subscription's id in the outbox (a session has only this one).
const SUB: &str = "tasks";

/// One open event stream.
#[derive(Debug)]
pub struct SseSession {
    broker: Broker,
    outbox: Arc<Outbox>,
    destination: Destination,
}

impl SseSession {
    /// Registers a stream of `principal`'s task updates (a share link's watcher: of its one
    /// task), authenticated by the token `token_id` (so that revoking it ends the stream);
    /// with `resume`, what was missed comes first (or a snapshot; a watcher always gets
    /// its task's current state first).
    ///
    /// # Errors
    /// Why the broker refused it (`limits.connections_per_user`).
    pub fn open(
        broker: Broker,
        principal: &Principal,
        resume: Option<ResumePosition>,
    ) -> Result<SseSession, String> {
        let outbox = broker.new_outbox();
        let name: Arc<str> = Arc::from(principal.name.as_str());
        let (destination, task) = match &principal.watches {
            None => {
                (Destination::resolve(TASKS_DESTINATION, &name).map_err(|e| e.to_string())?, None)
            }
            Some(shared) => (
                Destination::User { user: shared.owner.clone(), path: TASKS_PATH.to_owned() },
                Some(Arc::from(shared.task_no.as_str())),
            ),
        };
        broker.attach(&name, principal.token_id.as_deref(), &outbox)?;
        let subscriber =
            Subscriber { outbox: outbox.clone(), sub: Arc::from(SUB), ack: AckMode::Auto, task };
        broker.subscribe_with_replay(&destination, subscriber, resume, None);
        Ok(SseSession { broker, outbox, destination })
    }

    /// The queue the transport writes from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl Drop for SseSession {
    fn drop(&mut self) {
        self.broker.unsubscribe(&self.destination, self.outbox.id, SUB);
        self.broker.detach(self.outbox.id);
        self.broker.redeliver(self.outbox.finish());
    }
}
