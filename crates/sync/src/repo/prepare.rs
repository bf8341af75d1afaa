//! Merges worked out ahead, in parallel.
//!
//! A fresh device's first sync, or any batch of new threads, brings many documents this device
//! does not hold, each whole. Applying one (automerge loads it and checks its hashes) and
//! checking it (rebuilding its changes, their signatures and owners) is most of the work of a
//! sync, and the session does it one message at a time on one core. So when several sync
//! messages arrive together, the driver first hands them to [`Repo::prepare`], which works out
//! the merge of each whole document not held here on a document of its own, outside the repo,
//! on as many threads as there are cores. The session then takes the messages in turn as
//! always, and [`Repo::receive`] uses a prepared merge only if nothing it rested on changed
//! since: the document still not held here, the very same message, and every author the check
//! relied on still of the same standing. Otherwise it does the work itself.
//!
//! Nothing of a prepared merge is visible until `receive` puts it in the repo, under the write
//! lock and in the session's order, so readers never see an unchecked change and documents are
//! still written in the order they changed (see the repo's invariants).

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use automerge::ReadDoc;
use automerge::sync::{self, SyncDoc};

use super::signed::{Verified, carried_changes, carries_whole_document};
use super::{Entry, PendingWrite, Repo, insert, lock, pending_write};
use crate::authorship::{Envelope, Standing};
use crate::ids::DeviceId;
use crate::limits::Limits;
use crate::schema::DocId;
use crate::schema::touched::Touched;

/// Fewer messages than this at hand are not worth sharing out.
const MIN_BATCH: usize = 2;

/// A merge worked out ahead of its turn.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The message it was worked out from, as received (envelope and all).
    message: Vec<u8>,
    /// The document as the message makes it, checked, its signatures to store.
    entry: Entry,
    pending: Option<PendingWrite>,
    touched: Touched,
    /// The standing of each author the check rested on.
    standing: HashMap<DeviceId, Standing>,
}

/// How many threads to share work out to: the cores, asked once (the question reads cgroup
/// files).
fn workers() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

impl Repo {
    /// Works out ahead, in parallel, the merges of the sync messages among `messages` that
    /// bring a whole document not held here (see the module docs). Forgets what an earlier
    /// call worked out and was not used.
    pub fn prepare(&self, messages: &[(&DocId, &[u8])]) {
        lock(&self.prepared).clear();
        if messages.len() < MIN_BATCH || self.space().is_none() {
            return;
        }
        // A document named twice in one batch is merged twice, the second time into what the
        // first brought: that is the session's to do in order.
        let mut seen = HashSet::new();
        let twice: HashSet<&DocId> = messages
            .iter()
            .filter(|(id, _)| !seen.insert(*id))
            .map(|(id, _)| *id)
            .collect();
        let candidates: Vec<&(&DocId, &[u8])> = messages
            .iter()
            .filter(|(id, _)| !id.is_index() && !twice.contains(id) && !self.holds(id))
            .collect();
        if candidates.len() < MIN_BATCH {
            return;
        }
        // On one core this only moves the work (the same work) ahead of its turn.
        let threads = workers().min(candidates.len());
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(DocId, Prepared)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some((id, bytes)) =
                        candidates.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        // Nothing a peer sends may take the process down: a panic here
                        // would cross the scope.
                        let one = catch_unwind(AssertUnwindSafe(|| self.prepare_one(id, bytes)));
                        if let Ok(Some(prepared)) = one {
                            lock(&done).push(((*id).clone(), prepared));
                        }
                    }
                });
            }
        });
        let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        lock(&self.prepared).extend(done);
    }

    /// The merge of one message, if it brings a whole document and everything about it
    /// checks out; `None` leaves the message to [`Repo::receive`], which says what is wrong.
    fn prepare_one(&self, id: &DocId, bytes: &[u8]) -> Option<Prepared> {
        let (sigs, body) = Envelope::split(bytes).ok()?;
        Limits::DEFAULT.check_sync_message(body).ok()?;
        let message = catch_unwind(|| sync::Message::decode(body)).ok()?.ok()?;
        if !carries_whole_document(&message) {
            return None;
        }
        let work = catch_unwind(AssertUnwindSafe(|| {
            let mut entry = Entry::empty(self.actor());
            Self::take_sigs(&mut entry, sigs);
            let carried = carried_changes(&message);
            // What automerge's `receive_sync_message` does with the changes of a message for
            // a document it does not hold: load them as one.
            let joined: Vec<u8> = message.changes.iter().flatten().copied().collect();
            entry.doc.load_incremental(&joined).ok()?;
            Limits::DEFAULT
                .check_document_ops(entry.doc.stats().num_ops)
                .ok()?;
            let Verified {
                sigs,
                touched,
                standing,
            } = self.verify_new(id, &mut entry, &[], carried).ok()?;
            entry.unsaved_sigs.extend(sigs);
            let pending = pending_write(&mut entry, &[]);
            if entry.doc.get_missing_deps(&[]).is_empty() {
                entry.waiting_sigs.clear();
            }
            Some((entry, pending, touched, standing))
        }));
        let (entry, pending, touched, standing) = work.ok()??;
        Some(Prepared {
            message: bytes.to_vec(),
            entry,
            pending,
            touched,
            standing,
        })
    }

    /// Forgets the merges worked out ahead that were not used (the batch is over).
    pub fn forget_prepared(&self) {
        lock(&self.prepared).clear();
    }

    /// The merge worked out ahead for this message, if there is one.
    pub(super) fn take_prepared(&self, id: &DocId, bytes: &[u8]) -> Option<Prepared> {
        let mut prepared = lock(&self.prepared);
        if prepared.is_empty() {
            return None;
        }
        prepared.remove(id).filter(|p| p.message == bytes)
    }

    /// Puts a merge worked out ahead into the repo, if it still holds; `None` if the caller
    /// must do the work itself. The caller holds the write lock.
    ///
    /// The message is then taken by automerge without its changes (the document holds them
    /// already), which moves the sync state just as taking it with them would, except that a
    /// message with no changes naming our own heads marks them as sent: so that mark is put
    /// back as it was.
    pub(super) fn receive_prepared(
        &self,
        id: &DocId,
        state: &mut sync::State,
        message: &sync::Message,
        prepared: Prepared,
    ) -> Option<Result<Option<(PendingWrite, Touched)>, String>> {
        if state.read_only {
            return None;
        }
        let mut docs = self.lock();
        if docs.contains_key(id) || self.holds(id) {
            return None;
        }
        let still = prepared
            .standing
            .iter()
            .all(|(device, was)| self.authors.standing(device) == *was);
        if !still {
            return None;
        }
        let Prepared {
            mut entry,
            pending,
            touched,
            ..
        } = prepared;
        let mut bare = message.clone();
        bare.changes = sync::ChunkList::empty();
        let last_sent = state.last_sent_heads.clone();
        let taken = catch_unwind(AssertUnwindSafe(|| {
            entry.doc.receive_sync_message(state, bare)
        }));
        state.last_sent_heads = last_sent;
        match taken {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(Err(e.to_string())),
            Err(_) => return Some(Err("applying it panicked".to_owned())),
        }
        // The actor this device writes as may have been replaced since.
        entry.doc.set_actor(self.actor());
        let heads = entry.doc.get_heads();
        insert(&mut docs, id, entry);
        self.note_change(id, &heads, Some(&touched));
        Some(Ok(pending.map(|p| (p, touched))))
    }
}
