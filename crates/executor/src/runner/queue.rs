//! The tasks aimed at this desktop that wait to run, by thread, in each thread's order.
//!
//! Kept current from what each change wrote (`DocChanged::touched`): a change costs the
//! executor a read of the tasks it touched, not of the thread, so a thread of 10,000 tasks is
//! as quick to add to as one of ten. A thread is read whole once, the first time the executor
//! sees it (at start, or when it arrives), and again only when a subscriber fell behind.
//!
//! Architecture invariant: a task is in the queue exactly when its last state read here was
//! `queued` and aimed at this device. Taking a task out of the queue to run it does not claim
//! it: the claim is the durable `running` write, made after the task is read again.

use std::collections::{BTreeSet, HashMap};

use errand_sync::schema::DocId;
use errand_sync::schema::thread::{TaskOrder, TaskState, TaskStatus};

#[derive(Debug, Default)]
pub(super) struct Queue {
    threads: HashMap<DocId, BTreeSet<TaskOrder>>,
}

impl Queue {
    /// Whether the thread has been read whole since the executor started.
    pub(super) fn knows(&self, doc: &DocId) -> bool {
        self.threads.contains_key(doc)
    }

    /// Takes in every task of a thread, as just read.
    pub(super) fn scanned<'a>(
        &mut self,
        doc: &DocId,
        me: &str,
        states: impl IntoIterator<Item = &'a TaskState>,
    ) {
        let waiting = states
            .into_iter()
            .filter(|s| waits(s, me))
            .map(|s| s.order.clone())
            .collect();
        self.threads.insert(doc.clone(), waiting);
    }

    /// Takes in one task's state, as just read. A thread not read whole yet is left alone:
    /// it is read whole first.
    pub(super) fn update(&mut self, doc: &DocId, me: &str, state: &TaskState) {
        let Some(waiting) = self.threads.get_mut(doc) else {
            return;
        };
        if waits(state, me) {
            waiting.insert(state.order.clone());
        } else {
            waiting.remove(&state.order);
        }
    }

    /// Takes the first waiting task of a thread, to run it.
    pub(super) fn next(&mut self, doc: &DocId) -> Option<String> {
        let order = self.threads.get_mut(doc)?.pop_first()?;
        Some(order.id().to_owned())
    }

    /// The first waiting task of a thread, left in the queue.
    pub(super) fn first(&self, doc: &DocId) -> Option<String> {
        let order = self.threads.get(doc)?.first()?;
        Some(order.id().to_owned())
    }

    /// Takes the first waiting task of a thread if it is `id`; whether it was.
    pub(super) fn take_first(&mut self, doc: &DocId, id: &str) -> bool {
        let Some(waiting) = self.threads.get_mut(doc) else {
            return false;
        };
        if waiting.first().is_none_or(|o| o.id() != id) {
            return false;
        }
        waiting.pop_first();
        true
    }

    /// How many tasks wait, in every thread.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.threads.values().map(BTreeSet::len).sum()
    }
}

fn waits(state: &TaskState, me: &str) -> bool {
    state.target == me && state.status == TaskStatus::Queued
}

#[cfg(test)]
mod tests {
    use automerge::AutoCommit;
    use errand_sync::schema::thread;

    use super::*;

    /// A thread with tasks `ids` (in that order) aimed at `targets`, and their states.
    fn thread_of(tasks: &[(&str, &str)]) -> (AutoCommit, Vec<TaskState>) {
        let mut doc = AutoCommit::new();
        thread::create(&mut doc, "t", "a thread").unwrap();
        for (id, target) in tasks {
            thread::add_task(
                &mut doc,
                &thread::NewTask {
                    id,
                    prompt: "p",
                    target,
                    created: 1,
                },
            )
            .unwrap();
        }
        let states = thread::task_states(&doc, &Default::default());
        (doc, states)
    }

    #[test]
    fn waiting_tasks_come_out_in_the_threads_order_and_only_mine() {
        let ids = ["0c", "0a", "0b", "0d"];
        let (_, states) = thread_of(&[
            (ids[0], "me"),
            (ids[1], "other"),
            (ids[2], "me"),
            (ids[3], "me"),
        ]);
        let doc = DocId::new_thread();
        let mut q = Queue::default();
        assert!(!q.knows(&doc));
        q.scanned(&doc, "me", &states);
        assert!(q.knows(&doc) && q.len() == 3);
        // The first can be looked at and taken only as the first.
        assert_eq!(q.first(&doc).as_deref(), Some("0c"));
        assert!(!q.take_first(&doc, "0b"));
        assert!(q.take_first(&doc, "0c"));
        assert_eq!(q.next(&doc).as_deref(), Some("0b"));
        assert_eq!(q.next(&doc).as_deref(), Some("0d"));
        assert_eq!(q.next(&doc), None);
    }

    #[test]
    fn a_task_leaves_the_queue_when_it_no_longer_waits_and_comes_back_in_place() {
        let (mut doc, states) = thread_of(&[("01", "me"), ("02", "me"), ("03", "me")]);
        let thread_id = DocId::new_thread();
        let mut q = Queue::default();
        q.scanned(&thread_id, "me", &states);
        // The first starts running elsewhere (read as running): it leaves.
        thread::set_status(&mut doc, "01", TaskStatus::Running, 2).unwrap();
        q.update(&thread_id, "me", &thread::task_state(&doc, "01").unwrap());
        assert_eq!(q.len(), 2);
        // The second is taken to run, then read again while still queued: it comes back, in
        // its place before the third.
        assert_eq!(q.next(&thread_id).as_deref(), Some("02"));
        q.update(&thread_id, "me", &thread::task_state(&doc, "02").unwrap());
        assert_eq!(q.next(&thread_id).as_deref(), Some("02"));
        assert_eq!(q.next(&thread_id).as_deref(), Some("03"));
        // A thread never read whole is not made known by one task.
        let other = DocId::new_thread();
        q.update(&other, "me", &thread::task_state(&doc, "03").unwrap());
        assert!(!q.knows(&other));
        assert_eq!(q.next(&other), None);
    }
}
