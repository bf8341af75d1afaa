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

    /// [`Repo::change`], written without a disk flush of its own: durable with the next durable
    /// write (any, or [`Repo::flush`]).
    pub fn change_lazily<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let _writing = lock(&self.writes);
        let out = self.change_and_write(id, message, New::Existing, Commit::Lazy, f)?;
        self.owe_to_peers();
        Ok(out)
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
        let (out, staged) = self.change_in_memory(id, message, new, f)?;
        if let Some(staged) = staged {
            self.write_staged(vec![staged], commit)?;
        }
        Ok(out)
    }

    /// Creates `id` with its first change (`f`) and makes a second change (`g`) to another
    /// document, `then`; both are written in one transaction and return once durable. For a
    /// new thread and its listing in the index: one write, not two, and a crash keeps both or
    /// neither. If `g` fails, the new document is kept, alone, and `g`'s error returned.
    pub fn create_and_change<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
        then: (&DocId, &str),
        g: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
    ) -> Result<T, ChangeError> {
        let before = self.written.load(Ordering::Acquire);
        let made = {
            let _writing = lock(&self.writes);
            let (out, first) = match self.change_in_memory(id, message, New::Create, f) {
                Ok(made) => made,
                Err(e) => {
                    if !matches!(e, ChangeError::Exists(_)) {
                        self.forget(id);
                    }
                    return Err(e);
                }
            };
            match self.change_in_memory(then.0, then.1, New::Existing, g) {
                Ok(((), second)) => {
                    self.write_staged(first.into_iter().chain(second).collect(), Commit::Lazy)?;
                    Ok(out)
                }
                Err(e) => {
                    self.write_staged(first.into_iter().collect(), Commit::Lazy)?;
                    Err(e)
                }
            }
        };
        // Durable either way: the new document is kept even when the second change failed.
        self.made_durable(before)?;
        made
    }

    /// Makes a local change in memory, signs it and announces it; returns what is left to
    /// write (nothing if it changed nothing). The caller holds the write lock, and writes what
    /// this returns before it lets go (documents are written in the order they changed).
    fn change_in_memory<T>(
        &self,
        id: &DocId,
        message: &str,
        new: New,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<(T, Option<Staged>), ChangeError> {
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
                if new == New::Create {
                    entry.first_change = change.as_ref().map(|c| (hash, c.raw_bytes().len()));
                }
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
            return Ok((out, None));
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
        let pending = self
            .lock()
            .get_mut(id)
            .and_then(|entry| pending_write(entry, made.as_slice()));
        Ok((
            out,
            pending.map(|pending| Staged {
                id: id.clone(),
                pending,
                touched,
            }),
        ))
    }

    /// Writes local changes made in memory, in one transaction. On a failed write each
    /// change is only in memory, and may already be with a peer: the documents are forgotten
    /// here (they reload from the store) and this device writes as a new actor from now on,
    /// so their actor and sequence numbers are never used for different changes.
    fn write_staged(&self, staged: Vec<Staged>, commit: Commit) -> Result<(), ChangeError> {
        let writes: Vec<_> = staged
            .into_iter()
            .map(|s| (s.id, s.pending, s.touched.tasks.clone()))
            .collect();
        if let Err(e) = self.write_all(&writes, commit) {
            for (id, _, _) in &writes {
                self.forget(id);
            }
            *lock(&self.actor) = session_actor(&self.device);
            return Err(e.into());
        }
        Ok(())
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
        self.write_all(&[(id.clone(), pending, tasks.clone())], commit)
    }

    /// [`Repo::write`] of several documents, in one transaction.
    fn write_all(
        &self,
        writes: &[(DocId, PendingWrite, BTreeSet<String>)],
        commit: Commit,
    ) -> Result<(), StoreError> {
        let heads: Vec<Vec<u8>> = writes
            .iter()
            .map(|(_, pending, _)| encode_heads(&pending.heads))
            .collect();
        let tasks: Vec<Vec<&str>> = writes
            .iter()
            .map(|(_, _, tasks)| tasks.iter().map(String::as_str).collect())
            .collect();
        let docs: Vec<DocWrite<'_>> = writes
            .iter()
            .zip(heads.iter().zip(&tasks))
            .map(|((id, pending, _), (heads, tasks))| DocWrite {
                doc: id.as_str(),
                bytes: &pending.bytes,
                replaces: pending.snapshot,
                heads,
                sigs: &pending.sigs,
                tasks,
            })
            .collect();
        self.store.write_docs(&docs, commit)?;
        self.committed(commit);
        let mut held = self.lock();
        for (id, pending, _) in writes {
            if let Some(entry) = held.get_mut(id) {
                // Only the writer (us) adds signatures, so the first ones are those just written.
                let written = pending.sigs.len().min(entry.unsaved_sigs.len());
                entry.unsaved_sigs.drain(..written);
                entry.saved_heads = pending.heads.clone();
                entry.chunks = if pending.snapshot {
                    1
                } else {
                    entry.chunks + 1
                };
            }
        }
        Ok(())
    }
}

/// A local change made in memory and announced, waiting to be written.
struct Staged {
    id: DocId,
    pending: PendingWrite,
    touched: Arc<Touched>,
}
