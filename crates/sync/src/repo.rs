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

use crate::authorship::{self, Authors, Envelope, Refusal, Standing};
use crate::ids::{DeviceId, SpaceId, session_actor};
use crate::limits::Limits;
use crate::quota::{Quotas, TooManyDocuments};
use crate::replication::{Catalog, Digest, Docs, DocsError, HeadsHash};
use crate::schema::{DocId, now_millis};
use crate::store::{ChangeSig, Store, StoreError};

/// The store's metadata key for the space id (text), which change signatures cover.
pub const META_SPACE: &str = "space";
/// Signatures received ahead of their changes (which wait for a dependency) kept per document;
/// beyond this they are dropped and come again with the changes.
const MAX_WAITING_SIGS: usize = 200_000;

/// Fold a document's chunks into one snapshot once it has more than this many.
pub const COMPACT_AFTER_CHUNKS: usize = 64;
/// A change set larger than this is stored as a fresh snapshot rather than appended.
const SNAPSHOT_ABOVE_BYTES: usize = 64 * 1024;

/// A whole document with the signatures of its changes ([`Repo::save_signed`]).
#[derive(Clone, Debug)]
pub struct SignedDoc {
    pub bytes: Vec<u8>,
    pub sigs: Vec<ChangeSig>,
}

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
    #[error("this device belongs to no space yet, so it cannot sign changes")]
    NoSpace,
    #[error(transparent)]
    Quota(#[from] TooManyDocuments),
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
    /// A change the peer may rightly hold and this device cannot check yet (its author's
    /// certificate has not arrived here); nothing of the message was kept.
    #[error("cannot check a change for {doc} yet: {reason}")]
    Early { doc: DocId, reason: String },
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
    /// Signatures of changes in memory that the store does not hold yet.
    unsaved_sigs: Vec<ChangeSig>,
    /// Signatures a peer sent for changes not applied yet (waiting for a dependency).
    waiting_sigs: HashMap<[u8; 8], [u8; 64]>,
    /// Where this document's objects are, as the owner rules found them.
    paths: crate::schema::ownership::Paths,
}

impl Entry {
    fn empty(actor: ActorId) -> Entry {
        Entry::new(Automerge::new().with_actor(actor), Vec::new(), 0)
    }

    fn new(doc: Automerge, saved_heads: Vec<ChangeHash>, chunks: usize) -> Entry {
        Entry {
            doc,
            saved_heads,
            chunks,
            unsaved_sigs: Vec::new(),
            waiting_sigs: HashMap::new(),
            paths: Default::default(),
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
    /// Signatures of the changes it adds.
    sigs: Vec<ChangeSig>,
}

/// The documents of this device.
#[derive(Debug)]
pub struct Repo {
    store: Arc<Store>,
    device: DeviceId,
    /// Signs every change made here (see `crate::authorship`).
    key: iroh::SecretKey,
    /// Who the authors of received changes are.
    authors: Arc<dyn Authors>,
    /// The space changes are signed for; from the store, or set when the space is made or
    /// joined.
    space: Mutex<Option<SpaceId>>,
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
    /// What this device lets anyone, itself included, make it hold.
    quotas: Quotas,
}

/// A panic while holding one of the repo's locks happens only inside automerge, on a document
/// that is then reloaded; what the locks guard stays consistent, so poisoning carries no
/// information.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Repo {
    /// A repo whose changes are written and signed as the device of `key`: every change's actor
    /// starts with the device id, so history can say which device did what, and carries its
    /// signature, so every other device can check that. Received changes are checked against
    /// `authors`.
    pub fn new(store: Arc<Store>, key: iroh::SecretKey, authors: Arc<dyn Authors>) -> Repo {
        let (changes, _) = broadcast::channel(1024);
        let device = key.public();
        let space = store
            .meta(META_SPACE)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok());
        let repo = Repo {
            store,
            device,
            key,
            authors,
            space: Mutex::new(space),
            actor: Mutex::new(session_actor(&device)),
            docs: Mutex::new(HashMap::new()),
            catalog: Mutex::new(Catalog::default()),
            writes: Mutex::new(()),
            changes,
            quotas: Quotas::DEFAULT,
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

    /// This repo with other quotas than [`Quotas::DEFAULT`] (tests set small ones).
    pub fn with_quotas(mut self, quotas: Quotas) -> Repo {
        self.quotas = quotas;
        self
    }

    /// The quotas this repo applies, and the sessions with its peers.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// The device whose changes these are.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The space this device's changes are signed for.
    pub fn space(&self) -> Option<SpaceId> {
        *lock(&self.space)
    }

    /// Sets (and stores) the space, when it is created or joined: before the first change.
    pub fn set_space(&self, space: SpaceId) -> Result<(), StoreError> {
        self.store
            .set_meta(META_SPACE, space.to_string().as_bytes())?;
        *lock(&self.space) = Some(space);
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
            docs.insert(id.clone(), Entry::new(doc, saved_heads, chunks));
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
            self.quotas.check_new_document(self.held())?;
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
            let space = self.space().ok_or(ChangeError::NoSpace)?;
            let options = CommitOptions::default()
                .with_message(message)
                .with_time(now_millis());
            let done = entry
                .doc
                .transact_with(|_| options, f)
                .map_err(|failure| failure.error)?;
            if let Some(hash) = done.hash {
                let sig = authorship::sign(&self.key, &space, id, &hash);
                entry.unsaved_sigs.push((hash.0, sig));
            }
            let out = done.result;
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
                .replace_with_snapshot(id.as_str(), &pending.bytes, &heads, &pending.sigs)?;
        } else {
            self.store
                .append_chunk(id.as_str(), &pending.bytes, &heads, &pending.sigs)?;
        }
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

    /// The signatures of some changes of a loaded document, from memory or the store.
    fn sigs_of(
        &self,
        id: &DocId,
        entry: &Entry,
        hashes: &[ChangeHash],
    ) -> Result<Vec<Option<[u8; 64]>>, StoreError> {
        let unsaved: HashMap<[u8; 32], [u8; 64]> = entry.unsaved_sigs.iter().copied().collect();
        let missing: Vec<[u8; 32]> = hashes
            .iter()
            .map(|h| h.0)
            .filter(|h| !unsaved.contains_key(h))
            .collect();
        let mut stored = if missing.is_empty() {
            Vec::new()
        } else {
            self.store.change_sigs(id.as_str(), &missing)?
        }
        .into_iter();
        Ok(hashes
            .iter()
            .map(|h| match unsaved.get(&h.0) {
                Some(sig) => Some(*sig),
                None => stored.next().flatten(),
            })
            .collect())
    }

    /// A whole document as bytes, with the signatures of all its changes: what a new member
    /// is handed at pairing.
    pub fn save_signed(&self, id: &DocId) -> Result<Option<SignedDoc>, LoadError> {
        let mut docs = self.lock();
        let Some(entry) = self.load_entry(&mut docs, id)? else {
            return Ok(None);
        };
        let hashes: Vec<ChangeHash> = entry
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.hash)
            .collect();
        let sigs = self.sigs_of(id, entry, &hashes)?;
        let sigs = hashes
            .iter()
            .zip(sigs)
            .filter_map(|(h, s)| Some((h.0, s?)))
            .collect();
        Ok(Some(SignedDoc {
            bytes: entry.doc.save(),
            sigs,
        }))
    }

    /// Checks the changes a merge added to `entry` since `before`: each signed by the device
    /// its actor names, that device a member (or former member) of the space, and writing only
    /// what it owns. Returns their signatures, to store with them.
    ///
    /// `carried` are the changes of the message as received, if at hand: rebuilding a change
    /// from the document costs more than parsing it.
    fn verify_new(
        &self,
        id: &DocId,
        entry: &mut Entry,
        before: &[ChangeHash],
        carried: Vec<automerge::Change>,
    ) -> Result<Vec<ChangeSig>, Refusal> {
        let space = self.space().ok_or(Refusal::NoSpace)?;
        let metas: Vec<(ChangeHash, ActorId)> = entry
            .doc
            .get_changes_meta(before)
            .into_iter()
            .map(|m| (m.hash, m.actor.into_owned()))
            .collect();
        if metas.is_empty() {
            return Ok(Vec::new());
        }
        if id.is_index() {
            // Certificates that arrived in this very merge count for its other changes.
            self.authors.index_changed(&entry.doc);
        }
        let mut standing: HashMap<DeviceId, Standing> = HashMap::new();
        let mut signed = Vec::with_capacity(metas.len());
        for (hash, actor) in &metas {
            let device = authorship::author(actor).ok_or(Refusal::NoAuthor(*hash))?;
            let sig =
                *entry
                    .waiting_sigs
                    .get(&authorship::key_of(hash))
                    .ok_or(Refusal::Unsigned {
                        hash: *hash,
                        device,
                    })?;
            let is = *standing
                .entry(device)
                .or_insert_with(|| self.authors.standing(&device));
            if is == Standing::Unknown {
                return Err(Refusal::NotAMember {
                    hash: *hash,
                    device,
                });
            }
            signed.push((*hash, device, sig));
        }
        authorship::verify_all(&space, id, &signed)?;
        let sigs: Vec<ChangeSig> = signed.iter().map(|(h, _, s)| (h.0, *s)).collect();
        let mut carried: HashMap<ChangeHash, automerge::Change> =
            carried.into_iter().map(|c| (c.hash(), c)).collect();
        let changes: Vec<automerge::Change> = if metas.iter().all(|(h, _)| carried.contains_key(h))
        {
            metas
                .iter()
                .filter_map(|(h, _)| carried.remove(h))
                .collect()
        } else {
            entry.doc.get_changes(before)
        };
        let mut owners = crate::schema::ownership::Checker::new(&entry.doc, id, &mut entry.paths);
        for change in &changes {
            let device =
                authorship::author(change.actor_id()).ok_or(Refusal::NoAuthor(change.hash()))?;
            let is = standing.get(&device).copied().unwrap_or(Standing::Unknown);
            owners.check(&change.decode(), &device, is)?;
        }
        for (hash, _) in &metas {
            entry.waiting_sigs.remove(&authorship::key_of(hash));
        }
        Ok(sigs)
    }

    /// Keeps the signatures a peer sent until their changes are applied.
    fn take_sigs(entry: &mut Entry, sigs: Vec<([u8; 8], [u8; 64])>) {
        if entry.waiting_sigs.len() + sigs.len() > MAX_WAITING_SIGS {
            entry.waiting_sigs.clear();
        }
        entry.waiting_sigs.extend(sigs);
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
        let envelope = match Envelope::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                *state = sync::State::new();
                return Err(malformed(id, e.to_string()));
            }
        };
        let bytes = envelope.message.as_slice();
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
        let pending = {
            let mut docs = self.lock();
            let entry = self.load_or_empty(&mut docs, id)?;
            Self::take_sigs(entry, envelope.sigs);
            let before = entry.doc.get_heads();
            // The changes as they came, parsed once: what the owner rules are checked on.
            let carried: Vec<automerge::Change> = message
                .changes
                .iter()
                .flat_map(chunks)
                .filter(|c| matches!(c.get(8), Some(1 | 2)))
                .filter_map(|c| automerge::Change::try_from(c).ok())
                .collect();
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
            let failure = failure.map(|r| (r, false)).or_else(|| {
                match catch_unwind(AssertUnwindSafe(|| {
                    self.verify_new(id, entry, &before, carried)
                })) {
                    Ok(Ok(sigs)) => {
                        entry.unsaved_sigs.extend(sigs);
                        None
                    }
                    Ok(Err(refusal)) => Some((refusal.to_string(), refusal.may_be_early())),
                    Err(_) => Some(("checking its changes panicked".to_owned(), false)),
                }
            });
            // Automerge can accept a crafted change and then panic when saving the document
            // it made of it (a dependency it never checked): that too is the peer's doing.
            let pending = match failure {
                None => catch_unwind(AssertUnwindSafe(|| pending_write(entry)))
                    .map_err(|_| ("saving what it brought panicked".to_owned(), false)),
                Some(reason) => Err(reason),
            };
            match pending {
                Ok(pending) => {
                    let heads = entry.doc.get_heads();
                    self.note_heads(id, &heads);
                    // A document the peer only named, and that is not held here: nothing of
                    // it is kept in memory (a peer naming ids at random grows nothing).
                    if heads.is_empty() && names_only && entry.waiting_sigs.is_empty() {
                        docs.remove(id);
                    }
                    pending
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
                // Under the write lock everything in memory is stored, signatures included.
                self.store
                    .replace_with_snapshot(id.as_str(), &snapshot, &heads, &[])?;
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

    /// Stores a whole document received out of band (pairing), merging with what is here;
    /// `sigs` are the signatures of its changes, checked as a sync message's are.
    pub fn import(&self, id: &DocId, bytes: &[u8], sigs: &[ChangeSig]) -> Result<(), ReceiveError> {
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
                Ok(Ok(Ok(sigs))) => {
                    entry.unsaved_sigs.extend(sigs);
                    let pending = pending_write(entry);
                    self.note_heads(id, &entry.doc.get_heads());
                    break 'merged pending;
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
        self.write_merged(id, pending).map(|_| ())
    }
}

impl Repo {
    /// After a refused merge into the index: the authors learn the index as stored again (the
    /// refused one may have shown them certificates of its own).
    fn reindex(&self, id: &DocId) {
        if id.is_index() {
            let _ = self.read(id, |doc| self.authors.index_changed(doc));
        }
    }

    /// Drops a document from memory after a failed change or merge; it reloads from the store
    /// (which holds only fully applied changes) on next use, and the catalog follows.
    fn forget(&self, id: &DocId) {
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
            Err(e @ ReceiveError::Early { .. }) => Err(DocsError::Early(e.to_string())),
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
        sigs: entry.unsaved_sigs.clone(),
    })
}

/// The hashes of the changes a sync message carries: each change chunk's, or every change of
/// the document when it carries the whole document.
fn carried_hashes(doc: &Automerge, message: &sync::Message) -> Vec<ChangeHash> {
    let mut out = Vec::with_capacity(message.changes.len());
    for bytes in message.changes.iter() {
        // One entry may hold several chunks back to back (automerge's v2 messages).
        for chunk in chunks(bytes) {
            // A chunk is 4 bytes of magic, 4 of checksum, then its type: 1 and 2 are a change
            // (plain, compressed); anything else here is the whole document.
            match chunk.get(8) {
                Some(1 | 2) => match automerge::Change::try_from(chunk) {
                    Ok(change) => out.push(change.hash()),
                    Err(e) => tracing::warn!("cannot read a change we are sending: {e}"),
                },
                _ => {
                    return doc
                        .get_changes_meta(&[])
                        .into_iter()
                        .map(|m| m.hash)
                        .collect();
                }
            }
        }
    }
    out
}

/// Splits concatenated automerge chunks (magic, checksum, type, LEB128 length, body). These
/// are our own document's bytes; a malformed tail is returned whole.
fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let mut len: u64 = 0;
        let mut header = 9;
        let mut shift = 0;
        loop {
            let Some(&b) = rest.get(header) else {
                out.push(rest);
                return out;
            };
            len |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            header += 1;
            shift += 7;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
            .filter(|e| *e <= rest.len())
            .unwrap_or(rest.len());
        out.push(&rest[..end]);
        at += end;
    }
    out
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

    const SPACE: SpaceId = SpaceId([3; 16]);

    /// A repo of `key` in [`SPACE`] where every device counts as a desktop.
    fn open(path: &std::path::Path, key: &iroh::SecretKey) -> Repo {
        let store = Arc::new(Store::open(path).unwrap());
        let repo = Repo::new(
            store,
            key.clone(),
            Arc::new(authorship::FixedAuthors::anyone(crate::Role::Desktop)),
        );
        repo.set_space(SPACE).unwrap();
        repo
    }

    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(&dir.path().join("db.redb"), &iroh::SecretKey::generate());
        (dir, repo)
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
        let panics = Envelope {
            sigs: Vec::new(),
            message: PANICS_AUTOMERGE.to_vec(),
        }
        .encode();
        let err = repo
            .receive_sync_message(&doc, &mut state, &panics)
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
            repo.receive_sync_message(&fresh, &mut sync::State::new(), &panics)
                .is_err()
        );
        assert!(!repo.contains(&fresh).unwrap());
    }

    /// A peer that names documents this device does not hold, without bringing them, leaves
    /// nothing of them in memory.
    #[test]
    fn a_document_a_peer_only_names_takes_no_memory() {
        let (_dir, repo) = repo();
        let lookup = Envelope {
            sigs: Vec::new(),
            message: Automerge::new()
                .generate_sync_message(&mut sync::State::new())
                .unwrap()
                .encode(),
        }
        .encode();
        for _ in 0..50 {
            let named = DocId::new_thread();
            let changed = repo
                .receive_sync_message(&named, &mut sync::State::new(), &lookup)
                .unwrap();
            assert!(!changed);
            assert!(!repo.holds(&named));
        }
        assert_eq!(repo.lock().len(), 0, "documents left in memory");
        assert_eq!(repo.held(), 0);
    }

    /// Past `max_documents`, this device creates no document, its own (one line naming the
    /// quota) or a peer's (refused as malformed, so the peer is dropped), and keeps none of
    /// the refused one in memory; the documents held still take changes.
    #[test]
    fn a_full_space_creates_no_document_of_its_own_or_a_peers() {
        let dir = tempfile::tempdir().unwrap();
        let quotas = Quotas {
            max_documents: 2,
            ..Quotas::DEFAULT
        };
        let repo =
            open(&dir.path().join("db.redb"), &iroh::SecretKey::generate()).with_quotas(quotas);
        let (_peer_dir, peer) = self::repo();
        let mut made = Vec::new();
        for _ in 0..2 {
            let doc = DocId::new_thread();
            repo.create(&doc, "thread created", |tx| {
                thread::create(tx, doc.as_str(), "t")
            })
            .unwrap();
            made.push(doc);
        }
        let third = DocId::new_thread();
        let err = repo
            .create(&third, "thread created", |tx| {
                thread::create(tx, third.as_str(), "t")
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "this space holds 2 documents, the most a space may hold (2, max_documents)"
        );
        assert!(!repo.contains(&third).unwrap());

        let theirs = DocId::new_thread();
        peer.create(&theirs, "thread created", |tx| {
            thread::create(tx, theirs.as_str(), "theirs")
        })
        .unwrap();
        let message = peer
            .generate_sync_message(&theirs, &mut sync::State::new())
            .unwrap()
            .unwrap();
        let err = repo
            .receive_sync_message(&theirs, &mut sync::State::new(), &message)
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("max_documents"), "{err}");
        assert!(!repo.lock().contains_key(&theirs));
        assert_eq!(repo.held(), 2);
        put(&repo, &made[0], "still-works");
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

    /// Sends a task with id `key` from this repo's device to itself.
    fn put(repo: &Repo, doc: &DocId, key: &str) {
        let me = repo.device.to_string();
        repo.change(doc, &format!("sent {key}"), |tx| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: key,
                    prompt: "p",
                    target: &me,
                    created: 1,
                },
            )
        })
        .unwrap();
    }

    fn keys(repo: &Repo, doc: &DocId) -> Vec<String> {
        let mut ids: Vec<String> = repo
            .read(doc, |d| thread::tasks(d, doc.as_str()))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    }

    fn create_thread(repo: &Repo, doc: &DocId) {
        repo.create(doc, "thread created", |tx| {
            thread::create(tx, doc.as_str(), "t")
        })
        .unwrap();
    }

    /// A peer may receive a local change before it is durable here. If this device then
    /// crashes and comes back without it, its next change must not clash with the one the peer
    /// holds (same actor and sequence number), or the document would stop syncing for good.
    #[test]
    fn a_change_a_crash_lost_here_but_a_peer_holds_comes_back_and_sync_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desk.redb");
        let before_crash = dir.path().join("before-crash.redb");
        let desk = iroh::SecretKey::generate();
        let (_peer_dir, peer) = self::repo();
        let doc = DocId::new_thread();
        {
            let repo = open(&path, &desk);
            create_thread(&repo, &doc);
            put(&repo, &doc, "created");
            sync_pair(&repo, &peer, &doc);
        }
        std::fs::copy(&path, &before_crash).unwrap();
        {
            let repo = open(&path, &desk);
            put(&repo, &doc, "sent before the crash");
            sync_pair(&repo, &peer, &doc);
        }
        // The crash: the file as it was before that change was durable.
        std::fs::rename(&before_crash, &path).unwrap();
        let repo = open(&path, &desk);
        assert_eq!(keys(&repo, &doc), ["created"]);
        put(&repo, &doc, "after the restart");
        sync_pair(&repo, &peer, &doc);
        let expected = ["after the restart", "created", "sent before the crash"];
        assert_eq!(keys(&repo, &doc), expected);
        assert_eq!(keys(&peer, &doc), expected);
        let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
        assert!(
            history
                .iter()
                .all(|h| h.device_id == desk.public().to_string())
        );
    }

    #[test]
    fn changes_are_durable_and_reload_with_their_history() {
        let dir = tempfile::tempdir().unwrap();
        let key = iroh::SecretKey::generate();
        let doc = DocId::new_thread();
        {
            let repo = open(&dir.path().join("db.redb"), &key);
            create_thread(&repo, &doc);
            put(&repo, &doc, "a");
        }
        let repo = open(&dir.path().join("db.redb"), &key);
        let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
        let messages: Vec<&str> = history.iter().map(|h| h.message.as_str()).collect();
        assert_eq!(messages, ["thread created", "sent a"]);
        assert_eq!(history[0].device_id, key.public().to_string());
        assert!(history.iter().all(|h| h.time > 0));
    }

    /// Signatures are stored with the changes and travel with them: a third device receives
    /// a change from one that did not write it, and checks it against its author.
    #[test]
    fn signatures_are_kept_and_passed_on_through_a_third_device() {
        let (_a_dir, a) = repo();
        let (_b_dir, b) = repo();
        let (_c_dir, c) = repo();
        let doc = DocId::new_thread();
        create_thread(&a, &doc);
        put(&a, &doc, "one");
        sync_pair(&a, &b, &doc);
        // Compacted and reloaded, b still has the signatures to forward.
        b.compact(0).unwrap();
        b.lock().clear();
        sync_pair(&b, &c, &doc);
        assert_eq!(keys(&c, &doc), ["one"]);
        let SignedDoc { bytes, sigs } = c.save_signed(&doc).unwrap().unwrap();
        assert_eq!(sigs.len(), 2);
        let (_d_dir, d) = repo();
        d.import(&doc, &bytes, &sigs).unwrap();
        assert_eq!(keys(&d, &doc), ["one"]);
        let (_e_dir, e) = repo();
        let err = e.import(&doc, &bytes, &sigs[..1]).unwrap_err();
        assert!(err.to_string().contains("carries no signature"), "{err}");
        assert!(!e.contains(&doc).unwrap());
    }

    /// What a forging member sends: a change under another device's actor, signed with its
    /// own key; a change signed for another document; a change with no signature.
    #[test]
    fn forged_misplaced_and_unsigned_changes_are_refused() {
        let (_a_dir, a) = repo();
        let doc = DocId::new_thread();
        create_thread(&a, &doc);
        let (_b_dir, b) = repo();
        sync_pair(&a, &b, &doc);
        let victim = a.device;

        // The forger writes a change whose actor names the victim.
        let (_f_dir, forger) = repo();
        sync_pair(&a, &forger, &doc);
        {
            let mut docs = forger.lock();
            let entry = docs.get_mut(&doc).unwrap();
            let mut actor = victim.as_bytes().to_vec();
            actor.extend_from_slice(&[9; 12]);
            entry.doc.set_actor(ActorId::from(actor));
        }
        put(&forger, &doc, "forged");
        let mut state = sync::State::new();
        let mut theirs = sync::State::new();
        let mut refused = None;
        for _ in 0..6 {
            if let Some(m) = forger.generate_sync_message(&doc, &mut state).unwrap()
                && let Err(e) = b.receive_sync_message(&doc, &mut theirs, &m)
            {
                refused = Some(e);
                break;
            }
            if let Some(m) = b.generate_sync_message(&doc, &mut theirs).unwrap() {
                forger.receive_sync_message(&doc, &mut state, &m).unwrap();
            }
        }
        let refused = refused.expect("the forged change was refused");
        assert!(
            refused.to_string().contains("is not signed by"),
            "{refused}"
        );
        assert!(keys(&b, &doc).is_empty());

        // An honest change, its envelope emptied of signatures.
        put(&a, &doc, "honest");
        let mut state = sync::State::new();
        let mut theirs = sync::State::new();
        let mut refused = None;
        for _ in 0..6 {
            if let Some(m) = a.generate_sync_message(&doc, &mut state).unwrap() {
                let mut env = Envelope::decode(&m).unwrap();
                env.sigs.clear();
                if let Err(e) = b.receive_sync_message(&doc, &mut theirs, &env.encode()) {
                    refused = Some(e);
                    break;
                }
            }
            if let Some(m) = b.generate_sync_message(&doc, &mut theirs).unwrap() {
                a.receive_sync_message(&doc, &mut state, &m).unwrap();
            }
        }
        let refused = refused.expect("the unsigned change was refused");
        assert!(refused.to_string().contains("no signature"), "{refused}");

        // The same signed bytes delivered as another document's.
        let SignedDoc { bytes, sigs } = a.save_signed(&doc).unwrap().unwrap();
        let other = DocId::new_thread();
        let err = b.import(&other, &bytes, &sigs).unwrap_err();
        assert!(err.to_string().contains("is not signed by"), "{err}");
        assert!(!b.contains(&other).unwrap());
        // And in the right place they are fine.
        b.import(&doc, &bytes, &sigs).unwrap();
        assert_eq!(keys(&b, &doc), ["honest"]);
    }

    /// A device the authors do not know: its changes wait (the caller syncs the index first).
    #[test]
    fn a_change_by_an_unknown_device_is_early_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stranger = iroh::SecretKey::generate();
        let store = Arc::new(Store::open(&dir.path().join("db.redb")).unwrap());
        let me = iroh::SecretKey::generate();
        let strict = Repo::new(
            store,
            me.clone(),
            Arc::new(authorship::FixedAuthors::only([(
                me.public(),
                crate::Role::Desktop,
            )])),
        );
        strict.set_space(SPACE).unwrap();
        let (_s_dir, s) = {
            let dir = tempfile::tempdir().unwrap();
            let repo = open(&dir.path().join("db.redb"), &stranger);
            (dir, repo)
        };
        let doc = DocId::new_thread();
        create_thread(&s, &doc);
        let SignedDoc { bytes, sigs } = s.save_signed(&doc).unwrap().unwrap();
        let err = strict.import(&doc, &bytes, &sigs).unwrap_err();
        assert!(err.to_string().contains("not a member"), "{err}");
        let mut state = sync::State::new();
        let mut theirs = sync::State::new();
        let m = strict
            .generate_sync_message(&doc, &mut theirs)
            .unwrap()
            .unwrap();
        s.receive_sync_message(&doc, &mut state, &m).unwrap();
        let m = s.generate_sync_message(&doc, &mut state).unwrap().unwrap();
        let err = strict
            .receive_sync_message(&doc, &mut theirs, &m)
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Early { .. }), "{err}");
        assert!(!strict.contains(&doc).unwrap());
    }
}
