//! Sync messages to and from peers, and whole documents received out of band: what arrives
//! is applied, checked (bounds, signatures, owners) and written, or refused whole, the
//! document then reloaded as stored before.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, AutomergeError, ChangeHash, ReadDoc};

use super::signed::{carried_changes, carried_hashes};
use super::{
    DocChanged, LoadError, PendingWrite, ReceiveError, Repo, decode_heads, lock, pending_write,
};
use crate::authorship::{self, Envelope};
use crate::limits::Limits;
use crate::schema::DocId;
use crate::schema::touched::Touched;
use crate::store::{ChangeSig, Commit};

impl Repo {
    /// The next sync message for a peer, if there is anything to say.
    pub fn generate_sync_message(
        &self,
        id: &DocId,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, LoadError> {
        let mut docs = self.lock();
        let Some(entry) = self.load_entry(&mut docs, id)? else {
            // A document we do not have yet: an empty one asks the peer for everything.
            let message = Automerge::new().generate_sync_message(state);
            return Ok(message.map(|m| {
                Envelope {
                    sigs: Vec::new(),
                    message: m.encode(),
                }
                .encode()
            }));
        };
        let Some(message) = entry.doc.generate_sync_message(state) else {
            return Ok(None);
        };
        let hashes = carried_hashes(&entry.doc, &message);
        let sigs = self.sigs_of(id, entry, &hashes)?;
        let sigs = hashes
            .iter()
            .zip(sigs)
            .filter_map(|(hash, sig)| match sig {
                Some(sig) => Some((authorship::key_of(hash), sig)),
                None => {
                    tracing::warn!(%id, %hash, "a change to send has no signature here");
                    None
                }
            })
            .collect();
        Ok(Some(
            Envelope {
                sigs,
                message: message.encode(),
            }
            .encode(),
        ))
    }

    /// Applies a sync message from a peer, durably. Returns whether the document changed.
    ///
    /// Automerge can panic on crafted input (FACTS.md), and a failed apply may leave the
    /// in-memory document half-changed, so on any failure the document is dropped from memory
    /// and reloaded from the store on next use: the store only ever holds fully applied changes.
    pub fn receive_sync_message(
        &self,
        id: &DocId,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<bool, ReceiveError> {
        self.receive(id, state, bytes, Commit::Durable)
    }

    pub(super) fn receive(
        &self,
        id: &DocId,
        state: &mut sync::State,
        bytes: &[u8],
        commit: Commit,
    ) -> Result<bool, ReceiveError> {
        let envelope = bytes;
        let (sigs, bytes) = match Envelope::split(bytes) {
            Ok(e) => e,
            Err(e) => {
                *state = sync::State::new();
                return Err(malformed(id, e.to_string()));
            }
        };
        // Bounds first: automerge trusts the sizes a message claims (crate::limits).
        if let Err(refusal) = Limits::DEFAULT.check_sync_message(bytes) {
            *state = sync::State::new();
            return Err(malformed(id, refusal.to_string()));
        }
        let message = match catch_unwind(|| sync::Message::decode(bytes)) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(malformed(id, e.to_string())),
            Err(_) => return Err(malformed(id, "decoding panicked".into())),
        };
        if !self.holds(id)
            && let Err(full) = self.quotas.check_new_document(self.held())
        {
            *state = sync::State::new();
            return Err(malformed(id, full.to_string()));
        }
        let names_only = message.changes.is_empty();
        let _writing = lock(&self.writes);
        if let Some(prepared) = self.take_prepared(id, envelope) {
            match self.receive_prepared(id, state, &message, prepared) {
                Some(Ok(pending)) => return self.write_merged(id, pending, commit),
                Some(Err(reason)) => {
                    self.forget(id);
                    *state = sync::State::new();
                    tracing::warn!(%id, "refused a peer's changes: {reason}");
                    return Err(malformed(id, reason));
                }
                None => {}
            }
        }
        let pending = {
            let mut docs = self.lock();
            let entry = self.load_or_empty(&mut docs, id)?;
            Self::take_sigs(entry, sigs);
            let before = entry.doc.get_heads();
            // The changes as they came, parsed once: what the owner rules are checked on.
            let carried = carried_changes(&message);
            let applied = catch_unwind(AssertUnwindSafe(|| {
                entry.doc.receive_sync_message(state, message)
            }));
            let failure = match applied {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("applying it panicked".to_owned()),
            };
            // A peer can grow a document past any bound in messages that each pass: refuse
            // the one that crosses it, and keep nothing of it in memory.
            let failure = failure.or_else(|| {
                let ops = entry.doc.stats().num_ops;
                Limits::DEFAULT
                    .check_document_ops(ops)
                    .err()
                    .map(|refusal| refusal.to_string())
            });
            let mut touched = Touched::default();
            let failure = failure.map(|r| (r, false)).or_else(|| {
                match catch_unwind(AssertUnwindSafe(|| {
                    self.verify_new(id, entry, &before, carried)
                })) {
                    Ok(Ok(verified)) => {
                        entry.unsaved_sigs.extend(verified.sigs);
                        touched = verified.touched;
                        None
                    }
                    Ok(Err(refusal)) => Some((refusal.to_string(), refusal.may_be_early())),
                    Err(_) => Some(("checking its changes panicked".to_owned(), false)),
                }
            });
            // Automerge can accept a crafted change and then panic when saving the document
            // it made of it (a dependency it never checked): that too is the peer's doing.
            let pending = match failure {
                // A peer's changes are encoded again from the document, not stored as they
                // came: that is where such a change panics, before anything is stored.
                None => catch_unwind(AssertUnwindSafe(|| pending_write(entry, &[])))
                    .map_err(|_| ("saving what it brought panicked".to_owned(), false)),
                Some(reason) => Err(reason),
            };
            match pending {
                Ok(pending) => {
                    // Signatures wait only for changes automerge holds back for a missing
                    // dependency; with none held back, the rest were for changes held here
                    // already (sent twice), and kept they would pin the document in memory.
                    if entry.doc.get_missing_deps(&[]).is_empty() {
                        entry.waiting_sigs.clear();
                    }
                    let heads = entry.doc.get_heads();
                    self.note_change(id, &heads, Some(&touched));
                    // A document the peer only named, and that is not held here: nothing of
                    // it is kept in memory (a peer naming ids at random grows nothing).
                    if heads.is_empty() && names_only && entry.waiting_sigs.is_empty() {
                        docs.remove(id);
                    }
                    pending.map(|p| (p, touched))
                }
                Err((reason, early)) => {
                    docs.remove(id);
                    drop(docs);
                    self.forget(id);
                    self.reindex(id);
                    *state = sync::State::new();
                    if early {
                        return Err(ReceiveError::Early {
                            doc: id.clone(),
                            reason,
                        });
                    }
                    tracing::warn!(%id, "refused a peer's changes: {reason}");
                    return Err(malformed(id, reason));
                }
            }
        };
        self.write_merged(id, pending, commit)
    }

    /// Writes what a merge brought and announces it, with what it wrote. On a failed write
    /// the document is reloaded from the store (the peer sends the changes again at the next
    /// sync).
    fn write_merged(
        &self,
        id: &DocId,
        pending: Option<(PendingWrite, Touched)>,
        commit: Commit,
    ) -> Result<bool, ReceiveError> {
        let Some((pending, touched)) = pending else {
            return Ok(false);
        };
        if let Err(e) = self.write(id, pending, commit, &touched.tasks) {
            self.forget(id);
            return Err(e.into());
        }
        self.owe_to_peers();
        let _ = self.changes.send(DocChanged {
            doc: id.clone(),
            local: false,
            touched: Arc::new(touched),
        });
        Ok(true)
    }

    /// Stores a whole document received out of band (pairing), merging with what is here;
    /// `sigs` are the signatures of its changes, checked as a sync message's are.
    pub fn import(&self, id: &DocId, bytes: &[u8], sigs: &[ChangeSig]) -> Result<(), ReceiveError> {
        if let Err(refusal) = Limits::DEFAULT.check_document(bytes) {
            return Err(malformed(id, refusal.to_string()));
        }
        if !self.holds(id)
            && let Err(full) = self.quotas.check_new_document(self.held())
        {
            return Err(malformed(id, full.to_string()));
        }
        let mut incoming = match catch_unwind(|| Automerge::load(bytes)) {
            Ok(Ok(doc)) => doc,
            Ok(Err(e)) => return Err(malformed(id, e.to_string())),
            Err(_) => return Err(malformed(id, "loading panicked".into())),
        };
        let _writing = lock(&self.writes);
        let pending = 'merged: {
            let mut docs = self.lock();
            let entry = self.load_or_empty(&mut docs, id)?;
            Self::take_sigs(
                entry,
                sigs.iter()
                    .map(|(h, s)| (authorship::key_of(&ChangeHash(*h)), *s))
                    .collect(),
            );
            let before = entry.doc.get_heads();
            let merged = catch_unwind(AssertUnwindSafe(|| {
                entry.doc.merge(&mut incoming)?;
                Ok(self.verify_new(id, entry, &before, Vec::new()))
            }));
            let reason = match merged {
                Ok(Ok(Ok(verified))) => {
                    let touched = verified.touched;
                    entry.unsaved_sigs.extend(verified.sigs);
                    if entry.doc.get_missing_deps(&[]).is_empty() {
                        entry.waiting_sigs.clear();
                    }
                    let pending = pending_write(entry, &[]);
                    self.note_change(id, &entry.doc.get_heads(), Some(&touched));
                    break 'merged pending.map(|p| (p, touched));
                }
                Ok(Ok(Err(refusal))) => refusal.to_string(),
                Ok(Err(e)) => AutomergeError::to_string(&e),
                Err(_) => "merging it panicked".to_owned(),
            };
            docs.remove(id);
            drop(docs);
            self.forget(id);
            self.reindex(id);
            return Err(malformed(id, reason));
        };
        self.write_merged(id, pending, Commit::Durable).map(|_| ())
    }
    /// After a refused merge into the index: the authors learn the index as stored again (the
    /// refused one may have shown them certificates of its own).
    fn reindex(&self, id: &DocId) {
        if id.is_index() {
            let _ = self.read(id, |doc| self.authors.index_changed(doc));
        }
    }

    /// Drops a document from memory after a failed change or merge; it reloads from the store
    /// (which holds only fully applied changes) on next use, and the catalog follows.
    pub(super) fn forget(&self, id: &DocId) {
        self.lock().remove(id);
        let stored = self
            .store
            .heads_of(id.as_str())
            .ok()
            .flatten()
            .map(|h| decode_heads(&h))
            .unwrap_or_default();
        self.note_heads(id, &stored);
    }
}

fn malformed(doc: &DocId, reason: String) -> ReceiveError {
    ReceiveError::Malformed {
        doc: doc.clone(),
        reason,
    }
}
