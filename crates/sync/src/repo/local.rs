//! Local changes: a document changed in one transaction of this device's, signed, announced
//! and written (see the module docs of [`crate::repo`] for the order and the durability).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{AutomergeError, ReadDoc};

use super::{
    ChangeError, DocChanged, Entry, New, PendingWrite, Repo, encode_heads, insert, lock,
    pending_write,
};
use crate::authorship;
use crate::ids::session_actor;
use crate::schema::ownership::Checker;
use crate::schema::touched::Touched;
use crate::schema::{DocId, now_millis};
use crate::store::{Commit, DocWrite, StoreError};

impl Repo {
    /// Creates a document with its first change. Fails if it exists.
    pub fn create<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        self.durably(|| self.create_with(id, message, Commit::Lazy, f))
    }

    /// Changes a document in one commit carrying `message` and the current time, and returns
    /// once that commit is durable. Peers may receive the change before that (module docs).
    ///
    /// On an error nothing is stored here; but a peer that already received the change keeps
    /// it, and it comes back with the next sync.
    pub fn change<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        self.durably(|| {
            let _writing = lock(&self.writes);
            self.change_and_write(id, message, New::Existing, Commit::Lazy, f)
        })
    }

    /// Runs `write` (which commits lazily, with the write lock let go when it returns) and
    /// waits until what it committed is durable, sharing a flush with anyone waiting too.
    fn durably<T>(&self, write: impl FnOnce() -> Result<T, ChangeError>) -> Result<T, ChangeError> {
        let before = self.written.load(Ordering::Acquire);
        let out = write()?;
        self.made_durable(before)?;
        Ok(out)
    }

    /// [`Repo::create`], written without a disk flush of its own: the write becomes durable
    /// with the next durable one (the caller's next [`Repo::change`], say). For changes that
    /// belong together, such as a new thread, its listing and its first task: they share one
    /// flush, and a crash before it loses all of them, never a later one without the earlier.
    pub fn create_lazily<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        self.create_with(id, message, Commit::Lazy, f)
    }

    pub(super) fn create_with<T>(
        &self,
        id: &DocId,
        message: &str,
        commit: Commit,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let _writing = lock(&self.writes);
        let out = self.change_and_write(id, message, New::Create, commit, f);
        if matches!(out, Err(ref e) if !matches!(e, ChangeError::Exists(_))) {
            self.forget(id);
        }
        out
    }

    /// [`Repo::change`], written without a disk flush of its own (see [`Repo::create_lazily`]).
    pub fn change_lazily<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let _writing = lock(&self.writes);
        self.change_and_write(id, message, New::Existing, Commit::Lazy, f)
    }

    /// The body of a local change; the caller holds the write lock.
    pub(super) fn change_and_write<T>(
        &self,
        id: &DocId,
        message: &str,
        new: New,
        commit: Commit,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let (out, changed) = {
            let mut docs = self.lock();
            if new == New::Create {
                if self.load_entry(&mut docs, id)?.is_some() {
                    return Err(ChangeError::Exists(id.clone()));
                }
                self.quotas.check_new_document(self.held())?;
                // Made and changed under one hold of the lock: an empty entry has nothing
                // unstored, so anyone making room while the lock was let go could drop it.
                insert(&mut docs, id, Entry::empty(self.actor()));
            }
            let entry = self
                .load_entry(&mut docs, id)?
                .ok_or_else(|| ChangeError::NoSuchDoc(id.clone()))?;
            let space = self.space().ok_or(ChangeError::NoSpace)?;
            let options = CommitOptions::default()
                .with_message(message)
                .with_time(now_millis());
            let stored = entry.doc.get_heads() == entry.saved_heads;
            let done = entry
                .doc
                .transact_with(|_| options, f)
                .map_err(|failure| failure.error)?;
            let mut touched = None;
            let mut made = None;
            if let Some(hash) = done.hash {
                let change = entry.doc.get_change_by_hash(&hash);
                let refused = change.as_ref().and_then(|c| {
                    self.own_limits
                        .check_change(c.raw_bytes().len() as u64, c.len() as u64)
                        .err()
                });
                if let Some(refusal) = refused {
                    // Every peer would refuse it (and drop this device for sending it): it
                    // never leaves here. Nobody has seen it, since the document lock is still
                    // held, and everything before it is stored: the document reloads from the
                    // store, and its actor and sequence number are never used again.
                    docs.remove(id);
                    *lock(&self.actor) = session_actor(&self.device);
                    return Err(ChangeError::TooLarge(refusal));
                }
                let sig = authorship::sign(&self.key, &space, id, &hash);
                entry.unsaved_sigs.push((hash.0, sig));
                if let Some(change) = change {
                    touched = Some(
                        Checker::new(&entry.doc, id, &mut entry.paths).touched(&change.decode()),
                    );
                    made = Some(change).filter(|_| stored);
                }
            }
            let out = done.result;
            // With everything before it stored (as it is under the write lock), this change
            // is all the next chunk holds.
            let heads = entry.doc.get_heads();
            let changed = heads != entry.saved_heads;
            if changed {
                self.note_change(id, &heads, touched.as_ref());
            }
            (out, changed.then_some((touched, made)))
        };
        let Some((touched, made)) = changed else {
            return Ok(out);
        };
        // Not known (automerge did not give the change back): anything, to be safe, and the
        // tasks it wrote are listed by reading every thread again.
        if touched.is_none()
            && let Err(e) = self.store.forget_task_index()
        {
            tracing::warn!("cannot mark the listing of tasks as incomplete: {e}");
        }
        let touched = Arc::new(touched.unwrap_or(Touched {
            other: true,
            ..Touched::default()
        }));
        // Announce first: the replicator pushes the change while it is encoded and written.
        let _ = self.changes.send(DocChanged {
            doc: id.clone(),
            local: true,
            touched: touched.clone(),
        });
        // Only writers remove documents from memory, and we are the writer.
        let Some(pending) = self
            .lock()
            .get_mut(id)
            .and_then(|entry| pending_write(entry, made.as_slice()))
        else {
            return Ok(out);
        };
        if let Err(e) = self.write(id, pending, commit, &touched.tasks) {
            // The change is only in memory now, and may already be with a peer. Forget it here
            // (the document reloads from the store) and write from now on as a new actor, so
            // its actor and sequence number are never used for a different change.
            self.forget(id);
            *lock(&self.actor) = session_actor(&self.device);
            return Err(e.into());
        }
        Ok(out)
    }

    /// Writes a pending write of `id` and records it as stored; `tasks` are those its changes
    /// wrote. The caller holds the write lock; the document lock is not held, so readers (and
    /// the replicator) go on meanwhile.
    pub(super) fn write(
        &self,
        id: &DocId,
        pending: PendingWrite,
        commit: Commit,
        tasks: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let heads = encode_heads(&pending.heads);
        let tasks: Vec<&str> = tasks.iter().map(String::as_str).collect();
        let write = DocWrite {
            doc: id.as_str(),
            bytes: &pending.bytes,
            replaces: pending.snapshot,
            heads: &heads,
            sigs: &pending.sigs,
            tasks: &tasks,
        };
        self.store.write_docs(&[write], commit)?;
        self.committed(commit);
        if let Some(entry) = self.lock().get_mut(id) {
            // Only the writer (us) adds signatures, so the first ones are those just written.
            let written = pending.sigs.len().min(entry.unsaved_sigs.len());
            entry.unsaved_sigs.drain(..written);
            entry.saved_heads = pending.heads;
            entry.chunks = if pending.snapshot {
                1
            } else {
                entry.chunks + 1
            };
        }
        Ok(())
    }
}
