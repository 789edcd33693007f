//! What a client keeps to end with the true state of every task after any number of
//! reconnects (the server's contract is in the README, "Never losing a final status"):
//! the log position (`epoch`, highest `seq` applied), the latest state per task, and the rule
//! that turns each incoming MESSAGE into at most one update for the application.
//!
//! No I/O and no clock: the transport feeds frames in and reads resume headers out.

use taskpulse_shared::{
    TaskProgressDto,
    resume::{self, ResumePosition},
    stomp::Frame,
};

/// The client's position in its user's log: the highest `seq` applied (or the position a
/// snapshot reflected) in an epoch.
pub type Position = ResumePosition;

/// A subscription's place in the user's log: which numbered messages were already applied.
/// Every `/user/...` subscription keeps one, so that a resume asks for exactly what it missed.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    position: Option<Position>,
    duplicates: u64,
}

impl Cursor {
    /// Headers for the next SUBSCRIBE: `x-resume-epoch`/`x-resume-seq` once a position is
    /// known, none before.
    pub fn resume_headers(&self) -> Vec<(&'static str, String)> {
        self.position.iter().flat_map(ResumePosition::headers).collect()
    }

    /// The position, once known.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// How many numbered messages were dropped as already applied.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Moves the position for one MESSAGE; `false` when it was already applied (a replay
    /// overlapping what was seen). A snapshot entry sets the position it reflects; a
    /// message from another epoch (a wiped server) restarts the position; an unnumbered
    /// message (an older server) is always new.
    pub fn admit(&mut self, frame: &Frame) -> bool {
        let epoch = frame.header(resume::EPOCH);
        if frame.header(resume::SNAPSHOT).is_some() {
            let seq = frame.header(resume::SNAPSHOT_SEQ).and_then(|s| s.parse().ok());
            if let (Some(epoch), Some(seq)) = (epoch, seq) {
                self.position = Some(Position { epoch: epoch.to_owned(), seq });
            }
            return true;
        }
        let seq: Option<i64> = frame.header(resume::SEQ).and_then(|s| s.parse().ok());
        match (epoch, seq, &mut self.position) {
            (Some(epoch), Some(seq), Some(p)) if p.epoch == epoch => {
                if seq <= p.seq {
                    self.duplicates += 1;
                    return false;
                }
                p.seq = seq;
            }
            (Some(epoch), Some(seq), _) => {
                self.position = Some(Position { epoch: epoch.to_owned(), seq });
            }
            _ => {}
        }
        true
    }
}

/// Task states by number, plus the cursor that makes a resume exact.
#[derive(Debug, Default, Clone)]
pub struct TaskStore {
    cursor: Cursor,
    /// In the order first seen. A Vec rather than a map: a user has hundreds of tasks at
    /// most, and a map's code is a tenth of the npm package.
    tasks: Vec<TaskProgressDto>,
}

impl TaskStore {
    /// An empty store: the first SUBSCRIBE is plain and gets a snapshot.
    pub fn new() -> TaskStore {
        TaskStore::default()
    }

    /// Headers for the next SUBSCRIBE to `/user/queue/tasks-progress`.
    pub fn resume_headers(&self) -> Vec<(&'static str, String)> {
        self.cursor.resume_headers()
    }

    /// The position, once known.
    pub fn position(&self) -> Option<&Position> {
        self.cursor.position()
    }

    /// Forgets the position (keeping the tasks): the next SUBSCRIBE is plain and gets a
    /// snapshot.
    pub fn forget_position(&mut self) {
        self.cursor = Cursor::default();
    }

    /// The latest state of every task seen, in the order first seen.
    pub fn tasks(&self) -> &[TaskProgressDto] {
        &self.tasks
    }

    /// The latest state of one task.
    pub fn get(&self, task_no: &str) -> Option<&TaskProgressDto> {
        self.tasks.iter().find(|t| t.task_no == task_no)
    }

    /// How many numbered messages were dropped as already applied.
    pub fn duplicates(&self) -> u64 {
        self.cursor.duplicates()
    }

    /// Applies one MESSAGE of the tasks subscription and the update read from its body.
    /// Returns the update for the application, or `None` when it changes nothing: a
    /// duplicate from a replay, or a snapshot entry equal to what is held.
    pub fn apply(&mut self, frame: &Frame, update: TaskProgressDto) -> Option<TaskProgressDto> {
        if !self.cursor.admit(frame) {
            return None;
        }
        match self.tasks.iter_mut().find(|t| t.task_no == update.task_no) {
            Some(held) if *held == update => return None,
            Some(held) => *held = update.clone(),
            None => self.tasks.push(update.clone()),
        }
        Some(update)
    }
}

#[cfg(test)]
mod tests {
    use taskpulse_shared::{TaskStatus, stomp::Command};

    use super::*;

    fn message(task: &str, status: TaskStatus, headers: &[(&str, &str)]) -> Frame {
        let dto = TaskProgressDto::new(task, status, 0, status.as_str());
        let mut frame = Frame::new(Command::Message).with_body(serde_json::to_vec(&dto).unwrap());
        for (name, value) in headers {
            frame.headers.push(name, value);
        }
        frame
    }

    /// What the client does with a frame: read the update from its body, then apply both.
    fn apply(store: &mut TaskStore, frame: &Frame) -> Option<TaskProgressDto> {
        let update = serde_json::from_slice(&frame.body).unwrap();
        store.apply(frame, update)
    }

    fn numbered(task: &str, status: TaskStatus, seq: i64) -> Frame {
        message(task, status, &[("epoch", "e1"), ("seq", &seq.to_string())])
    }

    #[test]
    fn numbered_updates_move_the_position_and_duplicates_are_dropped() {
        let mut store = TaskStore::new();
        assert!(store.resume_headers().is_empty(), "the first SUBSCRIBE is plain");
        assert!(apply(&mut store, &numbered("T1", TaskStatus::Created, 1)).is_some());
        assert!(apply(&mut store, &numbered("T1", TaskStatus::Queued, 2)).is_some());
        // A replay that overlaps what was seen.
        assert!(apply(&mut store, &numbered("T1", TaskStatus::Queued, 2)).is_none());
        assert!(apply(&mut store, &numbered("T1", TaskStatus::Created, 1)).is_none());
        assert_eq!(store.duplicates(), 2);
        assert_eq!(store.get("T1").unwrap().status, TaskStatus::Queued, "never moved back");
        assert_eq!(
            store.resume_headers(),
            [("x-resume-epoch", "e1".to_owned()), ("x-resume-seq", "2".to_owned())]
        );
    }

    #[test]
    fn a_snapshot_sets_the_position_and_reports_only_changes() {
        let mut store = TaskStore::new();
        apply(&mut store, &numbered("T1", TaskStatus::Processing, 3));
        let snapshot = |task, status| {
            message(
                task,
                status,
                &[("epoch", "e1"), ("x-snapshot", "1/2"), ("x-snapshot-seq", "9")],
            )
        };
        // T1 finished while the client was away; T2 is new.
        assert_eq!(
            apply(&mut store, &snapshot("T1", TaskStatus::Completed)).unwrap().status,
            TaskStatus::Completed
        );
        assert!(apply(&mut store, &snapshot("T2", TaskStatus::Queued)).is_some());
        assert!(apply(&mut store, &snapshot("T2", TaskStatus::Queued)).is_none(), "unchanged");
        assert_eq!(store.position(), Some(&Position { epoch: "e1".into(), seq: 9 }));
        assert!(
            apply(&mut store, &numbered("T2", TaskStatus::Queued, 9)).is_none(),
            "covered by it"
        );
        assert!(apply(&mut store, &numbered("T2", TaskStatus::Processing, 10)).is_some());
    }

    #[test]
    fn another_epoch_restarts_the_position() {
        let mut store = TaskStore::new();
        apply(&mut store, &numbered("T1", TaskStatus::Processing, 50));
        let fresh = message("T2", TaskStatus::Created, &[("epoch", "e2"), ("seq", "1")]);
        assert!(apply(&mut store, &fresh).is_some(), "seq 1 of a new log is not a duplicate");
        assert_eq!(store.position(), Some(&Position { epoch: "e2".into(), seq: 1 }));
    }
}
