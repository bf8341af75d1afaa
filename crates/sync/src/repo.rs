//! The documents of one device: loaded lazily from the store, changed in transactions whose
//! result is durable before the caller hears of it, merged with peers through the Automerge
//! sync protocol, and announced on a broadcast channel whenever they change.
//!
//! Architecture invariant: documents are written to the store in the order they were changed.
//! Every writer (a local change, a merge, an import, a compaction) holds the write lock from
//! before it touches a document until its write is durable, so a change is never durable
//! before one made earlier, and when the write lock is free everything in memory is stored.
//!
//! A local change is announced (and so pushed to peers) as soon as it is made, while its
//! durable write is still under way: the network and the disk then work at the same time. The
//! caller still hears of success only once the write is durable. A crash in between can leave a
//! peer with a change this device lost; each session writes as its own actor
//! ([`crate::ids::session_actor`]), so that change simply comes back at the next sync.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ChangeHash, ReadDoc};
use tokio::sync::broadcast;

use crate::ids::{DeviceId, session_actor};
use crate::limits::Limits;
use crate::replication::{Catalog, Digest, Docs, DocsError, HeadsHash};
use crate::schema::{DocId, now_millis};
use crate::store::{Store, StoreError};

/// Fold a document's chunks into one snapshot once it has more than this many.
pub const COMPACT_AFTER_CHUNKS: usize = 64;
/// A change set larger than this is stored as a fresh snapshot rather than appended.
const SNAPSHOT_ABOVE_BYTES: usize = 64 * 1024;

/// A document changed, locally or by a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocChanged {
    pub doc: DocId,
    /// `true` when this device made the change, `false` when it came from a peer. A local
    /// change is announced while its durable write is under way; a merged one once it is
    /// durable.
    pub local: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no document {0} on this device")]
    NoSuchDoc(DocId),
    #[error("document {0} already exists")]
    Exists(DocId),
    #[error("the change does not fit the document: {0}")]
    Schema(#[from] AutomergeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the change could not be saved: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("stored document {doc} is damaged: {reason}")]
    Damaged { doc: DocId, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A peer sent something that could not be applied. The caller drops that peer's session; the
/// document is left as it was before the message.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("malformed sync message for {doc}: {reason}")]
    Malformed { doc: DocId, reason: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the merged change could not be saved: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Entry {
    doc: Automerge,
    /// Heads covered by what the store holds; `save_after` these to get the next chunk.
    saved_heads: Vec<ChangeHash>,
    chunks: usize,
}

impl Entry {
    fn empty(actor: ActorId) -> Entry {
        Entry {
            doc: Automerge::new().with_actor(actor),
            saved_heads: Vec::new(),
            chunks: 0,
        }
    }
}

/// What a document needs written to catch the store up with memory.
#[derive(Debug)]
struct PendingWrite {
    bytes: Vec<u8>,
    /// Replace every stored chunk with `bytes` (a whole document) rather than append it.
    snapshot: bool,
    heads: Vec<ChangeHash>,
}

/// The documents of this device.
#[derive(Debug)]
pub struct Repo {
    store: Arc<Store>,
    device: DeviceId,
    /// This session's actor; replaced when a change that may have reached peers is lost.
    actor: Mutex<ActorId>,
    docs: Mutex<HashMap<DocId, Entry>>,
    /// What is held, with fingerprints, kept current with every change in memory; known at
    /// start from the store without loading documents. Taken after `docs`, never before.
    catalog: Mutex<Catalog>,
    /// Held from before a document is changed until the change is durable; taken before
    /// `docs`, never while holding it. See the module docs.
    writes: Mutex<()>,
    changes: broadcast::Sender<DocChanged>,
}

/// A panic while holding one of the repo's locks happens only inside automerge, on a document
/// that is then reloaded; what the locks guard stays consistent, so poisoning carries no
/// information.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Repo {
    /// A repo whose changes are written as `device`: every change's actor starts with the
    /// device id, so history can say which device did what.
    pub fn new(store: Arc<Store>, device: DeviceId) -> Repo {
        let (changes, _) = broadcast::channel(1024);
        let repo = Repo {
            store,
            device,
            actor: Mutex::new(session_actor(&device)),
            docs: Mutex::new(HashMap::new()),
            catalog: Mutex::new(Catalog::default()),
            writes: Mutex::new(()),
            changes,
        };
        if let Err(e) = repo.load_catalog() {
            tracing::warn!("cannot read what the store holds: {e}");
        }
        repo
    }

    /// Fills the catalog from the heads recorded with each document's last write; a document
    /// stored before heads were recorded is loaded once to learn them.
    fn load_catalog(&self) -> Result<(), StoreError> {
        let recorded = self.store.doc_heads()?;
        let mut catalog = Catalog::default();
        for (id, bytes) in &recorded {
            if let Some(id) = DocId::parse(id) {
                catalog.set(&id, &decode_heads(bytes));
            }
        }
        let missing: Vec<DocId> = self
            .store
            .doc_ids()?
            .iter()
            .filter_map(|s| DocId::parse(s))
            .filter(|d| catalog.get(d).is_none())
            .collect();
        *lock(&self.catalog) = catalog;
        for id in missing {
            match self.heads(&id) {
                Ok(heads) => {
                    self.store
                        .set_doc_heads(id.as_str(), &encode_heads(&heads))?;
                }
                Err(e) => tracing::warn!(%id, "cannot load a stored document: {e}"),
            }
        }
        Ok(())
    }

    /// Records the heads of a document as it is in memory now.
    fn note_heads(&self, id: &DocId, heads: &[ChangeHash]) {
        lock(&self.catalog).set(id, heads);
    }

    /// The digest of everything held here.
    pub fn digest(&self) -> Digest {
        lock(&self.catalog).digest()
    }

    /// Whether `id` is held here (with at least one change), without loading it.
    pub fn holds(&self, id: &DocId) -> bool {
        lock(&self.catalog).get(id).is_some()
    }

    /// How many documents are held here.
    pub fn held(&self) -> usize {
        lock(&self.catalog).len()
    }

    /// The replication core's view of these documents.
    pub fn docs(&self) -> RepoDocs<'_> {
        RepoDocs(self)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The actor this session writes as.
    pub fn actor(&self) -> ActorId {
        lock(&self.actor).clone()
    }

    /// Changes as they happen. A receiver that falls behind gets `Lagged` and should treat
    /// every document as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<DocChanged> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DocId, Entry>> {
        lock(&self.docs)
    }

    fn load_entry<'a>(
        &self,
        docs: &'a mut HashMap<DocId, Entry>,
        id: &DocId,
    ) -> Result<Option<&'a mut Entry>, LoadError> {
        if !docs.contains_key(id) {
            let Some((bytes, chunks)) = self.store.load_doc(id.as_str())? else {
                return Ok(None);
            };
            let loaded = catch_unwind(|| Automerge::load(&bytes));
            let mut doc = match loaded {
                Ok(Ok(doc)) => doc,
                Ok(Err(e)) => {
                    return Err(LoadError::Damaged {
                        doc: id.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(LoadError::Damaged {
                        doc: id.clone(),
                        reason: "automerge panicked while loading it".into(),
                    });
                }
            };
            doc.set_actor(self.actor());
            let saved_heads = doc.get_heads();
            self.note_heads(id, &saved_heads);
            docs.insert(
                id.clone(),
                Entry {
                    doc,
                    saved_heads,
                    chunks,
                },
            );
        }
        Ok(docs.get_mut(id))
    }

    /// The document, loaded from the store, or a new empty one when it is not stored: for
    /// merging what a peer sends into.
    fn load_or_empty<'a>(
        &self,
        docs: &'a mut HashMap<DocId, Entry>,
        id: &DocId,
    ) -> Result<&'a mut Entry, LoadError> {
        self.load_entry(docs, id)?;
        Ok(docs
            .entry(id.clone())
            .or_insert_with(|| Entry::empty(self.actor())))
    }

    /// Whether the document exists here (stored, or received and not yet empty).
    pub fn contains(&self, id: &DocId) -> Result<bool, LoadError> {
        let mut docs = self.lock();
        Ok(self.load_entry(&mut docs, id)?.is_some())
    }

    /// Ids of the documents stored here.
    pub fn doc_ids(&self) -> Result<Vec<DocId>, StoreError> {
        Ok(lock(&self.catalog).ids().cloned().collect())
    }

    /// Reads a document. `None` when it does not exist here.
    pub fn read<T>(
        &self,
        id: &DocId,
        f: impl FnOnce(&Automerge) -> T,
    ) -> Result<Option<T>, LoadError> {
        let mut docs = self.lock();
        Ok(self.load_entry(&mut docs, id)?.map(|e| f(&e.doc)))
    }

    /// Creates a document with its first change. Fails if it exists.
    pub fn create<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let _writing = lock(&self.writes);
        {
            let mut docs = self.lock();
            if self.load_entry(&mut docs, id)?.is_some() {
                return Err(ChangeError::Exists(id.clone()));
            }
            docs.insert(id.clone(), Entry::empty(self.actor()));
        }
        let out = self.change_and_write(id, message, f);
        if out.is_err() {
            self.forget(id);
        }
        out
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
        let _writing = lock(&self.writes);
        self.change_and_write(id, message, f)
    }

    /// The body of a local change; the caller holds the write lock.
    fn change_and_write<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let (out, changed) = {
            let mut docs = self.lock();
            let entry = self
                .load_entry(&mut docs, id)?
                .ok_or_else(|| ChangeError::NoSuchDoc(id.clone()))?;
            let options = CommitOptions::default()
                .with_message(message)
                .with_time(now_millis());
            let out = entry
                .doc
                .transact_with(|_| options, f)
                .map_err(|failure| failure.error)?
                .result;
            // Under the write lock everything before this change is stored.
            let heads = entry.doc.get_heads();
            let changed = heads != entry.saved_heads;
            if changed {
                self.note_heads(id, &heads);
            }
            (out, changed)
        };
        if !changed {
            return Ok(out);
        }
        // Announce first: the replicator pushes the change while it is encoded and written.
        let _ = self.changes.send(DocChanged {
            doc: id.clone(),
            local: true,
        });
        // Only writers remove documents from memory, and we are the writer.
        let Some(pending) = self.lock().get_mut(id).and_then(pending_write) else {
            return Ok(out);
        };
        if let Err(e) = self.write(id, pending) {
            // The change is only in memory now, and may already be with a peer. Forget it here
            // (the document reloads from the store) and write from now on as a new actor, so
            // its actor and sequence number are never used for a different change.
            self.forget(id);
            *lock(&self.actor) = session_actor(&self.device);
            return Err(e.into());
        }
        Ok(out)
    }

    /// Writes a pending write of `id` and records it as stored. The caller holds the write
    /// lock; the document lock is not held, so readers (and the replicator) go on meanwhile.
    fn write(&self, id: &DocId, pending: PendingWrite) -> Result<(), StoreError> {
        let heads = encode_heads(&pending.heads);
        if pending.snapshot {
            self.store
                .replace_with_snapshot(id.as_str(), &pending.bytes, &heads)?;
        } else {
            self.store
                .append_chunk(id.as_str(), &pending.bytes, &heads)?;
        }
        if let Some(entry) = self.lock().get_mut(id) {
            entry.saved_heads = pending.heads;
            entry.chunks = if pending.snapshot {
                1
            } else {
                entry.chunks + 1
            };
        }
        Ok(())
    }

    /// The next sync message for a peer, if there is anything to say.
    pub fn generate_sync_message(
        &self,
        id: &DocId,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, LoadError> {
        let mut docs = self.lock();
        let message = match self.load_entry(&mut docs, id)? {
            Some(entry) => entry.doc.generate_sync_message(state),
            // A document we do not have yet: an empty one asks the peer for everything.
            None => Automerge::new().generate_sync_message(state),
        };
        Ok(message.map(sync::Message::encode))
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
        let _writing = lock(&self.writes);
        let pending = {
            let mut docs = self.lock();
            let entry = self.load_or_empty(&mut docs, id)?;
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
            // Automerge can accept a crafted change and then panic when saving the document
            // it made of it (a dependency it never checked): that too is the peer's doing.
            let pending = match failure {
                None => catch_unwind(AssertUnwindSafe(|| pending_write(entry)))
                    .map_err(|_| "saving what it brought panicked".to_owned()),
                Some(reason) => Err(reason),
            };
            match pending {
                Ok(pending) => {
                    self.note_heads(id, &entry.doc.get_heads());
                    pending
                }
                Err(reason) => {
                    docs.remove(id);
                    drop(docs);
                    self.forget(id);
                    *state = sync::State::new();
                    return Err(malformed(id, reason));
                }
            }
        };
        self.write_merged(id, pending)
    }

    /// Writes what a merge brought and announces it. On a failed write the document is
    /// reloaded from the store (the peer sends the changes again at the next sync).
    fn write_merged(
        &self,
        id: &DocId,
        pending: Option<PendingWrite>,
    ) -> Result<bool, ReceiveError> {
        let Some(pending) = pending else {
            return Ok(false);
        };
        if let Err(e) = self.write(id, pending) {
            self.forget(id);
            return Err(e.into());
        }
        let _ = self.changes.send(DocChanged {
            doc: id.clone(),
            local: false,
        });
        Ok(true)
    }

    /// Current heads of a document (empty when it does not exist here).
    pub fn heads(&self, id: &DocId) -> Result<Vec<ChangeHash>, LoadError> {
        Ok(self.read(id, Automerge::get_heads)?.unwrap_or_default())
    }

    /// Folds the chunks of every loaded document that has more than `threshold` of them into a
    /// snapshot. Returns how many documents were compacted.
    pub fn compact(&self, threshold: usize) -> Result<usize, StoreError> {
        let _writing = lock(&self.writes);
        let mut docs = self.lock();
        let mut compacted = 0;
        for (id, entry) in docs.iter_mut() {
            if entry.chunks > threshold {
                let snapshot = entry.doc.save();
                let heads = encode_heads(&entry.doc.get_heads());
                self.store
                    .replace_with_snapshot(id.as_str(), &snapshot, &heads)?;
                entry.saved_heads = entry.doc.get_heads();
                entry.chunks = 1;
                compacted += 1;
            }
        }
        Ok(compacted)
    }

    /// A whole document as bytes (`Automerge::save`), e.g. to hand the index to a new member.
    pub fn save(&self, id: &DocId) -> Result<Option<Vec<u8>>, LoadError> {
        self.read(id, Automerge::save)
    }

    /// Stores a whole document received out of band (pairing), merging with what is here.
    pub fn import(&self, id: &DocId, bytes: &[u8]) -> Result<(), ReceiveError> {
        if let Err(refusal) = Limits::DEFAULT.check_document(bytes) {
            return Err(malformed(id, refusal.to_string()));
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
            let merged = catch_unwind(AssertUnwindSafe(|| {
                entry.doc.merge(&mut incoming)?;
                Ok(pending_write(entry))
            }));
            let reason = match merged {
                Ok(Ok(pending)) => {
                    self.note_heads(id, &entry.doc.get_heads());
                    break 'merged pending;
                }
                Ok(Err(e)) => AutomergeError::to_string(&e),
                Err(_) => "merging it panicked".to_owned(),
            };
            docs.remove(id);
            drop(docs);
            self.forget(id);
            return Err(malformed(id, reason));
        };
        self.write_merged(id, pending).map(|_| ())
    }
}

impl Repo {
    /// Drops a document from memory after a failed change or merge; it reloads from the store
    /// (which holds only fully applied changes) on next use, and the catalog follows.
    fn forget(&self, id: &DocId) {
        self.lock().remove(id);
        let stored = self
            .store
            .doc_heads()
            .ok()
            .and_then(|all| all.into_iter().find(|(d, _)| d == id.as_str()))
            .map(|(_, h)| decode_heads(&h))
            .unwrap_or_default();
        self.note_heads(id, &stored);
    }
}

/// The replication core's view of a repo: automerge's sync protocol over the loaded
/// documents, the catalog, and the sync states saved in the store.
#[derive(Debug)]
pub struct RepoDocs<'a>(&'a Repo);

impl Docs for RepoDocs<'_> {
    fn generate(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, DocsError> {
        self.0
            .generate_sync_message(doc, state)
            .map_err(|e| DocsError::Local(e.to_string()))
    }

    fn receive(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), DocsError> {
        match self.0.receive_sync_message(doc, state, message) {
            Ok(_) => Ok(()),
            Err(e @ ReceiveError::Malformed { .. }) => Err(DocsError::Malformed(e.to_string())),
            Err(e) => Err(DocsError::Local(e.to_string())),
        }
    }

    fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        self.0.heads(doc).unwrap_or_default()
    }

    fn digest(&self) -> Digest {
        self.0.digest()
    }

    fn fingerprint(&self, doc: &DocId) -> Option<HeadsHash> {
        lock(&self.0.catalog).get(doc)
    }

    fn held(&self) -> usize {
        self.0.held()
    }

    fn catalog_range(
        &self,
        after: Option<&DocId>,
        before: Option<&DocId>,
        max: usize,
    ) -> Vec<(DocId, HeadsHash)> {
        lock(&self.0.catalog).range(after, before, max)
    }

    fn saved_state(&self, peer: &DeviceId, doc: &DocId) -> Option<sync::State> {
        let bytes = self
            .0
            .store
            .sync_state(&peer.to_string(), doc.as_str())
            .ok()??;
        sync::State::decode(&bytes).ok()
    }

    fn unsynced(&self, peer: &DeviceId) -> Vec<DocId> {
        let saved: HashMap<String, HeadsHash> = self
            .0
            .store
            .sync_states_of(&peer.to_string())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(doc, bytes)| {
                let state = sync::State::decode(&bytes).ok()?;
                Some((doc, HeadsHash::of(&state.shared_heads)))
            })
            .collect();
        lock(&self.0.catalog)
            .iter()
            .filter(|(doc, hash)| saved.get(doc.as_str()) != Some(hash))
            .map(|(doc, _)| doc.clone())
            .collect()
    }
}

/// Heads as stored: 32-byte hashes, concatenated.
fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn decode_heads(bytes: &[u8]) -> Vec<ChangeHash> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| ChangeHash::try_from(c).ok())
        .collect()
}

/// What `entry` needs written to catch the store up, if anything.
///
/// Incremental chunks hold changes uncompressed, about fifteen times the size of a snapshot;
/// so a document arriving whole (a fresh device's first sync) or a large batch of changes is
/// written as a compressed snapshot instead, in the same single transaction.
fn pending_write(entry: &mut Entry) -> Option<PendingWrite> {
    let heads = entry.doc.get_heads();
    if heads == entry.saved_heads {
        return None;
    }
    let chunk = entry.doc.save_after(&entry.saved_heads);
    let (bytes, snapshot) = if entry.saved_heads.is_empty() || chunk.len() > SNAPSHOT_ABOVE_BYTES {
        (entry.doc.save(), true)
    } else {
        (chunk, false)
    };
    Some(PendingWrite {
        bytes,
        snapshot,
        heads,
    })
}

fn malformed(doc: &DocId, reason: String) -> ReceiveError {
    ReceiveError::Malformed {
        doc: doc.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::thread;

    /// A sync message on which automerge 0.12 panics inside `receive_sync_message`.
    const PANICS_AUTOMERGE: &[u8] = &[
        0x42, 0x00, 0x00, 0x00, 0x01, 0x12, 0x85, 0x6f, 0x4a, 0x83, 0x91, 0x34, 0x04, 0xe4, 0x01,
        0x08, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00,
    ];

    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db.redb")).unwrap());
        (dir, Repo::new(store, iroh::SecretKey::generate().public()))
    }

    #[test]
    fn a_message_that_panics_automerge_is_an_error_and_the_document_survives() {
        let (_dir, repo) = repo();
        let doc = DocId::new_thread();
        repo.create(&doc, "thread created", |tx| {
            thread::create(tx, doc.as_str(), "t")
        })
        .unwrap();
        let heads = repo.heads(&doc).unwrap();
        let mut state = sync::State::new();
        let err = repo
            .receive_sync_message(&doc, &mut state, PANICS_AUTOMERGE)
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Malformed { .. }), "{err}");
        // Reloaded from the store, as it was.
        assert_eq!(repo.heads(&doc).unwrap(), heads);
        assert_eq!(
            repo.read(&doc, thread::title).unwrap().flatten().as_deref(),
            Some("t")
        );
        // And a fresh document that never existed is not left behind half-made.
        let fresh = DocId::new_thread();
        assert!(
            repo.receive_sync_message(&fresh, &mut sync::State::new(), PANICS_AUTOMERGE)
                .is_err()
        );
        assert!(!repo.contains(&fresh).unwrap());
    }

    /// Exchanges sync messages between two repos until neither has anything to say.
    fn sync_pair(a: &Repo, b: &Repo, doc: &DocId) {
        let (mut a_state, mut b_state) = (sync::State::new(), sync::State::new());
        for _ in 0..20 {
            let to_b = a.generate_sync_message(doc, &mut a_state).unwrap();
            if let Some(m) = &to_b {
                b.receive_sync_message(doc, &mut b_state, m).unwrap();
            }
            let to_a = b.generate_sync_message(doc, &mut b_state).unwrap();
            if let Some(m) = &to_a {
                a.receive_sync_message(doc, &mut a_state, m).unwrap();
            }
            if to_b.is_none() && to_a.is_none() {
                return;
            }
        }
        panic!("sync did not settle");
    }

    fn put(repo: &Repo, doc: &DocId, key: &str) {
        repo.change(doc, &format!("set {key}"), |tx| {
            automerge::transaction::Transactable::put(tx, automerge::ROOT, key, true)
        })
        .unwrap();
    }

    fn keys(repo: &Repo, doc: &DocId) -> Vec<String> {
        use automerge::ReadDoc;
        repo.read(doc, |d| d.keys(automerge::ROOT).collect())
            .unwrap()
            .unwrap()
    }

    /// A peer may receive a local change before it is durable here. If this device then
    /// crashes and comes back without it, its next change must not clash with the one the peer
    /// holds (same actor and sequence number), or the document would stop syncing for good.
    #[test]
    fn a_change_a_crash_lost_here_but_a_peer_holds_comes_back_and_sync_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desk.redb");
        let before_crash = dir.path().join("before-crash.redb");
        let desk = iroh::SecretKey::generate().public();
        let (_peer_dir, peer) = repo();
        let doc = DocId::new_thread();
        {
            let repo = Repo::new(Arc::new(Store::open(&path).unwrap()), desk);
            repo.create(&doc, "created", |tx| {
                automerge::transaction::Transactable::put(tx, automerge::ROOT, "created", true)
            })
            .unwrap();
            sync_pair(&repo, &peer, &doc);
        }
        std::fs::copy(&path, &before_crash).unwrap();
        {
            let repo = Repo::new(Arc::new(Store::open(&path).unwrap()), desk);
            put(&repo, &doc, "sent before the crash");
            sync_pair(&repo, &peer, &doc);
        }
        // The crash: the file as it was before that change was durable.
        std::fs::rename(&before_crash, &path).unwrap();
        let repo = Repo::new(Arc::new(Store::open(&path).unwrap()), desk);
        assert_eq!(keys(&repo, &doc), ["created"]);
        put(&repo, &doc, "after the restart");
        sync_pair(&repo, &peer, &doc);
        let expected = ["after the restart", "created", "sent before the crash"];
        assert_eq!(keys(&repo, &doc), expected);
        assert_eq!(keys(&peer, &doc), expected);
        let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
        assert!(history.iter().all(|h| h.device_id == desk.to_string()));
    }

    #[test]
    fn changes_are_durable_and_reload_with_their_history() {
        let dir = tempfile::tempdir().unwrap();
        let device = iroh::SecretKey::generate().public();
        let doc = DocId::new_thread();
        {
            let store = Arc::new(Store::open(&dir.path().join("db.redb")).unwrap());
            let repo = Repo::new(store, device);
            repo.create(&doc, "thread created", |tx| {
                thread::create(tx, doc.as_str(), "t")
            })
            .unwrap();
            repo.change(&doc, "renamed", |tx| {
                automerge::transaction::Transactable::put(tx, automerge::ROOT, "title", "u")
            })
            .unwrap();
        }
        let store = Arc::new(Store::open(&dir.path().join("db.redb")).unwrap());
        let repo = Repo::new(store, device);
        let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
        let messages: Vec<&str> = history.iter().map(|h| h.message.as_str()).collect();
        assert_eq!(messages, ["thread created", "renamed"]);
        assert_eq!(history[0].device_id, device.to_string());
        assert!(history.iter().all(|h| h.time > 0));
    }
}
