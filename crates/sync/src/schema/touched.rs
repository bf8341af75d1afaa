//! What a change wrote, in the schema's terms: which tasks, approvals and messages of a
//! thread, which threads of the index.
//!
//! Readers that keep state across changes (the executor's queue, the event watcher) look only
//! at what a change touched, so their work per change is in proportion to the change and not
//! to the thread or the space. The repo finds it while it finds the paths of the objects a
//! change writes into, which it does anyway to check their owners
//! ([`crate::schema::ownership`]), and announces it with every change
//! ([`crate::DocChanged`]).

use std::collections::BTreeSet;

/// What one change (or the changes of one merge) wrote into a document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Thread: tasks created, or any of whose fields were written.
    pub tasks: BTreeSet<String>,
    /// Thread: approval requests made, or decided.
    pub approvals: BTreeSet<String>,
    /// Thread: whether anything was written into its messages (a question, an answer, the
    /// desktop's reply to a task).
    pub messages: bool,
    /// Index: threads listed, or whose entries were written.
    pub threads: BTreeSet<String>,
    /// Anything else: a document's skeleton; in the index, members, revocations, addresses,
    /// schedules and notification endpoints.
    pub other: bool,
}

impl Touched {
    /// Records one operation, by the keys from the root to where it writes: the keys of the
    /// objects on the path, then its own key (`#` for a list position).
    pub(crate) fn record<'a>(&mut self, index: bool, mut keys: impl Iterator<Item = &'a str>) {
        match (index, keys.next()) {
            (false, Some("tasks")) => match keys.nth(1) {
                Some(task) => note(&mut self.tasks, task),
                None => self.other = true,
            },
            (false, Some("approvals")) => match keys.next() {
                Some(approval) => note(&mut self.approvals, approval),
                None => self.other = true,
            },
            (false, Some("messages")) => self.messages = true,
            (true, Some("threads")) => match keys.next() {
                Some(thread) => note(&mut self.threads, thread),
                None => self.other = true,
            },
            _ => self.other = true,
        }
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }

    /// Adds what `other` touched.
    pub fn extend(&mut self, other: Touched) {
        self.tasks.extend(other.tasks);
        self.approvals.extend(other.approvals);
        self.messages |= other.messages;
        self.threads.extend(other.threads);
        self.other |= other.other;
    }
}

/// Adds `key` to `set`, allocating only when it is new: a change writes several fields of
/// each task, and this runs for every operation a node receives.
fn note(set: &mut BTreeSet<String>, key: &str) {
    if !set.contains(key) {
        set.insert(key.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched(index: bool, paths: &[&str]) -> Touched {
        let mut t = Touched::default();
        for p in paths {
            t.record(index, p.split('/'));
        }
        t
    }

    #[test]
    fn operations_are_told_apart_by_their_path() {
        let t = touched(
            false,
            &[
                "tasks/3/aaaa",
                "tasks/3/bbbb/status",
                "tasks/3/bbbb/artifacts/#",
                "approvals/cccc",
                "approvals/dddd/decisions/phone",
                "messages/#/answers/phone",
            ],
        );
        assert_eq!(t.tasks, BTreeSet::from(["aaaa".into(), "bbbb".into()]));
        assert_eq!(t.approvals, BTreeSet::from(["cccc".into(), "dddd".into()]));
        assert!(t.messages && !t.other);
        // The skeleton of a thread: its sections and buckets.
        assert!(touched(false, &["tasks"]).other);
        assert!(touched(false, &["tasks/3"]).other);
        assert!(touched(false, &["approvals"]).other);
        // The index: threads apart from the rest.
        let t = touched(
            true,
            &["threads/eeee/title", "members/phone", "schedules/x/run"],
        );
        assert_eq!(t.threads, BTreeSet::from(["eeee".into()]));
        assert!(t.other && t.tasks.is_empty());
        // The same keys mean nothing else in the other kind of document.
        assert!(touched(true, &["tasks/3/aaaa"]).other);
        assert!(touched(false, &["threads/eeee"]).other);
    }
}
