//! The documents a session has work for: those to take up now, and the backlog of exchanges
//! to start on our initiative once fewer are under way (`MAX_ACTIVE`).

use std::collections::{BTreeSet, VecDeque};

use crate::schema::DocId;

/// Each document at most once, in the queue or in the backlog.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Documents with work to do that hold a slot (or may take one).
    now: VecDeque<DocId>,
    /// Documents with work to do that wait for fewer exchanges to be under way.
    backlog: VecDeque<DocId>,
    /// The documents in `backlog`.
    backlogged: BTreeSet<DocId>,
    /// The documents in either.
    queued: BTreeSet<DocId>,
    /// Queued documents the peer has just spoken of: their message is the peer's exchange,
    /// which holds a slot on its side already, so our answer never waits for ours to settle.
    answers: BTreeSet<DocId>,
}

impl Queue {
    /// Queues `doc`: to be taken up now if it holds a slot (`held`: an exchange under way, or
    /// just ended), else in the backlog, to start an exchange in its turn. `answer`: the peer
    /// has just spoken of it, and our answer may not be put off behind our own exchanges.
    ///
    /// A document already waiting in the backlog moves up once it holds a slot: the peer has
    /// just spoken of it, and the answer must not wait for the exchanges on our initiative to
    /// settle, since it counts among them. Left in the backlog, such answers held each other
    /// back until `SETTLE_AFTER` had passed, a hundred at a time.
    pub(super) fn enqueue(&mut self, doc: DocId, held: bool, answer: bool) {
        if answer {
            self.answers.insert(doc.clone());
        }
        if self.queued.insert(doc.clone()) {
            if held {
                self.now.push_back(doc);
            } else {
                self.push_backlog(doc);
            }
        } else if held && self.backlogged.remove(&doc) {
            self.backlog.retain(|d| *d != doc);
            self.now.push_back(doc);
        }
    }

    /// Queues `doc` to be taken up first, unless it is queued already.
    pub(super) fn enqueue_first(&mut self, doc: &DocId) {
        if self.queued.insert(doc.clone()) {
            self.now.push_front(doc.clone());
        }
    }

    /// The next document to take up now; it stays queued until [`Queue::taken`].
    pub(super) fn pop_now(&mut self) -> Option<DocId> {
        self.now.pop_front()
    }

    /// Puts back a document just popped, at the end of the backlog (it still counts as
    /// queued).
    pub(super) fn push_backlog(&mut self, doc: DocId) {
        self.backlogged.insert(doc.clone());
        self.backlog.push_back(doc);
    }

    /// The first document of the backlog; it stays queued until [`Queue::taken`].
    pub(super) fn pop_backlog(&mut self) -> Option<DocId> {
        let doc = self.backlog.pop_front()?;
        self.backlogged.remove(&doc);
        Some(doc)
    }

    /// `doc`, popped, is being taken up: it may be queued again.
    pub(super) fn taken(&mut self, doc: &DocId) {
        self.queued.remove(doc);
        self.answers.remove(doc);
    }

    /// Whether `doc` is queued to answer the peer (see [`Queue::enqueue`]).
    pub(super) fn answers(&self, doc: &DocId) -> bool {
        self.answers.contains(doc)
    }

    /// How many queued documents answer the peer (for descriptions).
    pub(super) fn answer_count(&self) -> usize {
        self.answers.len()
    }

    pub(super) fn contains(&self, doc: &DocId) -> bool {
        self.queued.contains(doc)
    }

    /// Whether nothing is to be taken up now.
    pub(super) fn now_is_empty(&self) -> bool {
        self.now.is_empty()
    }

    pub(super) fn backlog_is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    /// How many are to be taken up now, and how many wait in the backlog.
    pub(super) fn lens(&self) -> (usize, usize) {
        (self.now.len(), self.backlog.len())
    }

    pub(super) fn clear(&mut self) {
        *self = Queue::default();
    }
}
