//! The documents of one device: loaded lazily from the store, changed in transactions whose
//! result is durable before the caller hears of it, merged with peers through the Automerge
//! sync protocol, and announced on a broadcast channel whenever they change.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ChangeHash};
use tokio::sync::broadcast;

use crate::ids::DeviceId;
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
    /// `true` when this device made the change, `false` when it came from a peer.
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

/// The documents of this device.
#[derive(Debug)]
pub struct Repo {
    store: Arc<Store>,
    actor: ActorId,
    docs: Mutex<HashMap<DocId, Entry>>,
    changes: broadcast::Sender<DocChanged>,
}

impl Repo {
    /// A repo whose changes are written as `device`: every change's actor is the device id, so
    /// history can say which device did what.
    pub fn new(store: Arc<Store>, device: DeviceId) -> Repo {
        let (changes, _) = broadcast::channel(1024);
        Repo {
            store,
            actor: ActorId::from(device.as_bytes().as_slice()),
            docs: Mutex::new(HashMap::new()),
            changes,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Changes as they happen. A receiver that falls behind gets `Lagged` and should treat
    /// every document as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<DocChanged> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DocId, Entry>> {
        // A panic while holding the lock happens only inside automerge, on a document that we
        // then reload; the map itself stays consistent, so poisoning carries no information.
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
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
            doc.set_actor(self.actor.clone());
            let saved_heads = doc.get_heads();
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

    /// Whether the document exists here (stored, or received and not yet empty).
    pub fn contains(&self, id: &DocId) -> Result<bool, LoadError> {
        let mut docs = self.lock();
        Ok(self.load_entry(&mut docs, id)?.is_some())
    }

    /// Ids of the documents stored here.
    pub fn doc_ids(&self) -> Result<Vec<DocId>, StoreError> {
        let mut ids: Vec<DocId> = self
            .store
            .doc_ids()?
            .iter()
            .filter_map(|s| DocId::parse(s))
            .collect();
        for id in self.lock().keys() {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        Ok(ids)
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
        let mut docs = self.lock();
        if self.load_entry(&mut docs, id)?.is_some() {
            return Err(ChangeError::Exists(id.clone()));
        }
        docs.insert(
            id.clone(),
            Entry {
                doc: Automerge::new().with_actor(self.actor.clone()),
                saved_heads: Vec::new(),
                chunks: 0,
            },
        );
        let out = self.change_locked(&mut docs, id, message, f);
        if out.is_err() {
            docs.remove(id);
        }
        out
    }

    /// Changes a document in one commit carrying `message` and the current time, and returns
    /// once that commit is durable.
    pub fn change<T>(
        &self,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let mut docs = self.lock();
        self.change_locked(&mut docs, id, message, f)
    }

    fn change_locked<T>(
        &self,
        docs: &mut HashMap<DocId, Entry>,
        id: &DocId,
        message: &str,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ChangeError> {
        let entry = self
            .load_entry(docs, id)?
            .ok_or_else(|| ChangeError::NoSuchDoc(id.clone()))?;
        let options = CommitOptions::default()
            .with_message(message)
            .with_time(now_millis());
        let out = entry
            .doc
            .transact_with(|_| options, f)
            .map_err(|failure| failure.error)?
            .result;
        if self.persist(id, entry)? {
            let _ = self.changes.send(DocChanged {
                doc: id.clone(),
                local: true,
            });
        }
        Ok(out)
    }

    /// Appends whatever the store does not have yet. Returns whether there was anything.
    ///
    /// Incremental chunks hold changes uncompressed, about fifteen times the size of a
    /// snapshot; so a document arriving whole (a fresh device's first sync) or a large batch of
    /// changes is written as a compressed snapshot instead, in the same single transaction.
    fn persist(&self, id: &DocId, entry: &mut Entry) -> Result<bool, StoreError> {
        let heads = entry.doc.get_heads();
        if heads == entry.saved_heads {
            return Ok(false);
        }
        let chunk = entry.doc.save_after(&entry.saved_heads);
        if entry.saved_heads.is_empty() || chunk.len() > SNAPSHOT_ABOVE_BYTES {
            let snapshot = entry.doc.save();
            self.store.replace_with_snapshot(id.as_str(), &snapshot)?;
            entry.chunks = 1;
        } else {
            self.store.append_chunk(id.as_str(), &chunk)?;
            entry.chunks += 1;
        }
        entry.saved_heads = heads;
        Ok(true)
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
        let message = match catch_unwind(|| sync::Message::decode(bytes)) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(malformed(id, e.to_string())),
            Err(_) => return Err(malformed(id, "decoding panicked".into())),
        };
        let mut docs = self.lock();
        if self.load_entry(&mut docs, id)?.is_none() {
            docs.insert(
                id.clone(),
                Entry {
                    doc: Automerge::new().with_actor(self.actor.clone()),
                    saved_heads: Vec::new(),
                    chunks: 0,
                },
            );
        }
        let Some(entry) = docs.get_mut(id) else {
            return Err(malformed(id, "document vanished".into()));
        };
        let applied = catch_unwind(AssertUnwindSafe(|| {
            entry.doc.receive_sync_message(state, message)
        }));
        let failure = match applied {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("applying it panicked".to_owned()),
        };
        if let Some(reason) = failure {
            docs.remove(id);
            *state = sync::State::new();
            return Err(malformed(id, reason));
        }
        let changed = self.persist(id, entry)?;
        if changed {
            let _ = self.changes.send(DocChanged {
                doc: id.clone(),
                local: false,
            });
        }
        Ok(changed)
    }

    /// Current heads of a document (empty when it does not exist here).
    pub fn heads(&self, id: &DocId) -> Result<Vec<ChangeHash>, LoadError> {
        Ok(self.read(id, Automerge::get_heads)?.unwrap_or_default())
    }

    /// Folds the chunks of every loaded document that has more than `threshold` of them into a
    /// snapshot. Returns how many documents were compacted.
    pub fn compact(&self, threshold: usize) -> Result<usize, StoreError> {
        let mut docs = self.lock();
        let mut compacted = 0;
        for (id, entry) in docs.iter_mut() {
            if entry.chunks > threshold {
                let snapshot = entry.doc.save();
                self.store.replace_with_snapshot(id.as_str(), &snapshot)?;
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
        let loaded = match catch_unwind(|| Automerge::load(bytes)) {
            Ok(Ok(doc)) => doc,
            Ok(Err(e)) => return Err(malformed(id, e.to_string())),
            Err(_) => return Err(malformed(id, "loading panicked".into())),
        };
        let mut docs = self.lock();
        if self.load_entry(&mut docs, id)?.is_none() {
            docs.insert(
                id.clone(),
                Entry {
                    doc: Automerge::new().with_actor(self.actor.clone()),
                    saved_heads: Vec::new(),
                    chunks: 0,
                },
            );
        }
        let Some(entry) = docs.get_mut(id) else {
            return Err(malformed(id, "document vanished".into()));
        };
        let mut incoming = loaded;
        if let Err(e) = entry.doc.merge(&mut incoming) {
            docs.remove(id);
            return Err(malformed(id, e.to_string()));
        }
        if self.persist(id, entry)? {
            let _ = self.changes.send(DocChanged {
                doc: id.clone(),
                local: false,
            });
        }
        Ok(())
    }
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
        assert_eq!(history[0].actor, device.to_string());
        assert!(history.iter().all(|h| h.time > 0));
    }
}
