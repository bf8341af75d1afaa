//! The documents of one device: loaded lazily from the store, changed in transactions whose
//! result is durable before the caller hears of it, merged with peers through the Automerge
//! sync protocol, and announced on a broadcast channel whenever they change.
//!
//! Architecture invariant: documents are written to the store in the order they were changed.
//! Every writer (a local change, a merge, an import, a compaction) holds the write lock from
//! before it touches a document until its write is committed, and commits reach the disk in
//! the order they were made (a durable commit makes every earlier one durable), so a change is
//! never durable before one made earlier, and when the write lock is free everything in memory
//! is stored.
//!
//! A local change is committed without a flush of its own; the caller then waits, with the
//! write lock let go, for a flush that covers its commit ([`Repo::flush`]). Callers that change
//! documents at the same time share one flush (group commit), and a merge from a peer can
//! apply and check its changes while a local change's fsync is under way (its own commit
//! still follows the flush: redb has one writer at a time).
//!
//! A local change is announced (and so pushed to peers) as soon as it is made, while its
//! durable write is still under way: the network and the disk then work at the same time. The
//! caller still hears of success only once the write is durable. A crash in between can leave a
//! peer with a change this device lost; each session writes as its own actor
//! ([`crate::ids::session_actor`]), so that change simply comes back at the next sync.

use std::collections::HashMap;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, Automerge, AutomergeError, ChangeHash};
use tokio::sync::{broadcast, watch};

use crate::authorship::Authors;
use crate::ids::{DeviceId, SpaceId, session_actor};
use crate::limits::Limits;
use crate::quota::{Quotas, TooManyDocuments};
use crate::replication::{Catalog, Digest, HeadsHash};
use crate::schema::DocId;
use crate::schema::touched::Touched;
use crate::store::{ChangeSig, Commit, DocWrite, Store, StoreError};
pub use docs::RepoDocs;

/// The store's metadata key for the space id (text), which change signatures cover.
pub const META_SPACE: &str = "space";
/// Signatures received ahead of their changes (which wait for a dependency) kept per document;
/// beyond this they are dropped and come again with the changes.
const MAX_WAITING_SIGS: usize = 200_000;

/// Fold a document's chunks into one snapshot once it has more than this many.
pub const COMPACT_AFTER_CHUNKS: usize = 64;
/// A change set larger than this is stored as a fresh snapshot rather than appended.
const SNAPSHOT_ABOVE_BYTES: usize = 64 * 1024;
/// At most this many documents stay in memory: loading one more drops the least recently used
/// document that is fully stored. Documents are loaded on use, so a space of any size costs the
/// memory of the documents in use, not of all it holds.
pub const MAX_LOADED: usize = 256;
/// [`Repo::tidy`] drops documents unused for this long from memory (after folding their chunks
/// into one snapshot, however few they are).
pub const IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(120);
/// [`Repo::fold`] writes snapshots in transactions of about this many bytes.
const FOLD_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
    /// What the change wrote: a subscriber that keeps state reads only that.
    pub touched: Arc<Touched>,
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
    /// The change is beyond what any peer takes of one change ([`crate::limits::Limits`]):
    /// it is not kept.
    #[error("the change is too large to sync ({0}); nothing was changed")]
    TooLarge(crate::limits::Refusal),
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
    /// When it was last loaded or used.
    used: std::time::Instant,
    /// The views this process stored of it, each with the heads it was derived at.
    views: Vec<(String, HeadsHash)>,
    /// The hash and size of the first change, when this device made the document: spares
    /// rebuilding that change to learn whether it is small ([`crate::replication::just_created`]).
    first_change: Option<(ChangeHash, usize)>,
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
            used: std::time::Instant::now(),
            views: Vec::new(),
            first_change: None,
        }
    }

    /// Whether memory holds nothing the store lacks, so dropping it loses nothing. The index
    /// stays: every node reads it all the time.
    fn droppable(&self, id: &DocId) -> bool {
        !id.is_index()
            && self.doc.get_heads() == self.saved_heads
            && self.unsaved_sigs.is_empty()
            && self.waiting_sigs.is_empty()
    }
}

/// Whether a local change makes its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum New {
    Create,
    Existing,
}

/// What [`Repo::tidy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Documents whose chunks were folded into one snapshot.
    pub compacted: usize,
    /// Documents dropped from memory.
    pub dropped: usize,
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
    /// Held from before a document is changed until the change is committed; taken before
    /// `docs`, never while holding it. See the module docs.
    writes: Mutex<()>,
    /// How many commits the repo has made (counted under `writes`, once each has returned).
    written: AtomicU64,
    /// Every commit up to this count is durable.
    flushed: AtomicU64,
    /// The last commit no peer may hear of before it is durable: a peer's changes (we would
    /// tell the peer we hold them) and local changes written lazily (the executor's outcomes).
    /// A local change whose caller waits for its own flush ([`Repo::change`]) is not counted:
    /// it is pushed while its write is under way.
    owed_to_peers: AtomicU64,
    /// Held while a flush is under way: a caller that waited for it usually finds its own
    /// commit covered when it gets it, and has nothing left to do.
    flushing: Mutex<()>,
    /// How many fsyncs the repo asked for (durable commits and flushes), for measurements.
    fsyncs: AtomicU64,
    /// Whether everything written is durable: `flushed` has caught up with `written`.
    durable: watch::Sender<bool>,
    changes: broadcast::Sender<DocChanged>,
    /// What this device lets anyone, itself included, make it hold.
    quotas: Quotas,
    /// The bounds a change made here must keep: those every peer holds it to
    /// ([`Limits::DEFAULT`]), or it would be refused, and this device dropped, by all of them.
    /// A test's hostile member lifts them ([`Repo::with_own_limits`]).
    own_limits: Limits,
    /// Merges worked out ahead of their turn ([`Repo::prepare`]).
    prepared: Mutex<HashMap<DocId, prepare::Prepared>>,
    /// See [`Repo::index_epoch`].
    index_epoch: AtomicU64,
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
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            owed_to_peers: AtomicU64::new(0),
            flushing: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            durable: watch::Sender::new(true),
            changes,
            quotas: Quotas::DEFAULT,
            own_limits: Limits::DEFAULT,
            prepared: Mutex::new(HashMap::new()),
            index_epoch: AtomicU64::new(0),
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

    /// This repo making changes within `limits` rather than [`Limits::DEFAULT`], which its
    /// peers hold it to: for tests, whose hostile member makes changes no peer takes.
    pub fn with_own_limits(mut self, limits: Limits) -> Repo {
        self.own_limits = limits;
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

    /// Records the heads of a document as it is in memory now, after a change of unknown
    /// content (a load, a revert).
    fn note_heads(&self, id: &DocId, heads: &[ChangeHash]) {
        self.note_change(id, heads, None);
    }

    /// Records the heads of a document after a change that wrote `touched` (`None`: unknown,
    /// which counts as anything). Called once the change is visible to readers, so that a
    /// reader who sees the epoch move also sees what moved it.
    fn note_change(&self, id: &DocId, heads: &[ChangeHash], touched: Option<&Touched>) {
        lock(&self.catalog).set(id, heads);
        if id.is_index() && touched.is_none_or(|t| t.other) {
            self.index_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A number that changes whenever the index may have changed other than in its thread
    /// list: members, revocations, addresses, schedules. What is derived from those parts
    /// (the membership, which evaluates every certificate) is kept by this number, so that a
    /// new thread, the index's most frequent change by far, does not make it stale.
    ///
    /// Architecture invariant: every change of the index moves it unless what the change
    /// wrote is known and touches only thread entries.
    pub fn index_epoch(&self) -> u64 {
        self.index_epoch.load(Ordering::Acquire)
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
        RepoDocs(self, Commit::Durable)
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
        if let Some(entry) = docs.get_mut(id) {
            entry.used = std::time::Instant::now();
        } else {
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
            insert(docs, id, Entry::new(doc, saved_heads, chunks));
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
        if self.load_entry(docs, id)?.is_none() {
            insert(docs, id, Entry::empty(self.actor()));
        }
        Ok(docs.get_mut(id).expect("just inserted"))
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

    /// The ids held here that begin with `prefix`, at most `max` of them.
    pub fn doc_ids_like(&self, prefix: &str, max: usize) -> Vec<DocId> {
        lock(&self.catalog)
            .ids()
            .filter(|id| id.as_str().starts_with(prefix))
            .take(max)
            .cloned()
            .collect()
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

    /// Current heads of a document (empty when it does not exist here). A document out of
    /// memory is not loaded for this: everything of it is stored (it could not have been
    /// dropped otherwise), and the store keeps its heads with every write. Asking after many
    /// threads (`Node::wait_delivered` after a burst, the replicator's catalogue) then costs a
    /// read each, not a load of each.
    pub fn heads(&self, id: &DocId) -> Result<Vec<ChangeHash>, LoadError> {
        let mut docs = self.lock();
        if let Some(entry) = docs.get(id) {
            return Ok(entry.doc.get_heads());
        }
        // Under the lock: nobody can load it and change it meanwhile.
        if let Some(stored) = self.store.heads_of(id.as_str())? {
            return Ok(decode_heads(&stored));
        }
        Ok(self
            .load_entry(&mut docs, id)?
            .map(|e| e.doc.get_heads())
            .unwrap_or_default())
    }

    /// Upkeep, run every so often: folds the chunks of every loaded document that has more than
    /// [`COMPACT_AFTER_CHUNKS`] into a snapshot, and drops from memory the documents unused for
    /// [`IDLE_AFTER`], folding their chunks first if there are several (so a small thread is
    /// compacted too, once it goes quiet). The snapshots are written together
    /// ([`Repo::fold`]), and readers go on meanwhile.
    pub fn tidy(&self, now: std::time::Instant) -> Result<Tidied, StoreError> {
        let _writing = lock(&self.writes);
        let idle = |entry: &Entry| now.saturating_duration_since(entry.used) >= IDLE_AFTER;
        let (fold, quiet): (Vec<DocId>, Vec<DocId>) = {
            let docs = self.lock();
            let mut fold = Vec::new();
            let mut quiet = Vec::new();
            for (id, entry) in docs.iter() {
                let drop_it = idle(entry) && entry.droppable(id);
                if entry.chunks > COMPACT_AFTER_CHUNKS || (drop_it && entry.chunks > 1) {
                    fold.push(id.clone());
                }
                if drop_it {
                    quiet.push(id.clone());
                }
            }
            (fold, quiet)
        };
        let compacted = self.fold(&fold)?;
        let mut docs = self.lock();
        let mut dropped = 0;
        for id in quiet {
            // Looked at again: a reader may have used it while the snapshots were written.
            if docs.get(&id).is_some_and(|e| idle(e) && e.droppable(&id)) {
                docs.remove(&id);
                dropped += 1;
            }
        }
        Ok(Tidied { compacted, dropped })
    }

    /// Replaces the stored chunks of each of `ids` that is loaded by one snapshot. The
    /// snapshots are written a few MiB per transaction, durably: a thousand small threads going
    /// quiet at once cost one fsync and a few database pages each, not an fsync each. The
    /// document lock is taken for one document's snapshot at a time and let go for the writes,
    /// so readers are not held up behind the disk; the caller holds the write lock, so nothing
    /// changes a document meanwhile (every change is made under it), and everything in memory
    /// is stored, signatures included. Returns how many were folded.
    fn fold(&self, ids: &[DocId]) -> Result<usize, StoreError> {
        let mut batch: Vec<(DocId, Vec<u8>, Vec<ChangeHash>)> = Vec::new();
        let mut bytes = 0;
        let mut folded = 0;
        for id in ids {
            let snapshot = self
                .lock()
                .get(id)
                .map(|e| (e.doc.save(), e.doc.get_heads()));
            let Some((snapshot, heads)) = snapshot else {
                continue;
            };
            bytes += snapshot.len();
            batch.push((id.clone(), snapshot, heads));
            if bytes >= FOLD_BATCH_BYTES {
                folded += self.write_snapshots(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        folded += self.write_snapshots(batch)?;
        Ok(folded)
    }

    fn write_snapshots(
        &self,
        batch: Vec<(DocId, Vec<u8>, Vec<ChangeHash>)>,
    ) -> Result<usize, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let heads: Vec<Vec<u8>> = batch.iter().map(|(_, _, h)| encode_heads(h)).collect();
        let writes: Vec<DocWrite<'_>> = batch
            .iter()
            .zip(&heads)
            .map(|((id, snapshot, _), heads)| DocWrite {
                replaces: true,
                heads,
                ..DocWrite::chunk(id.as_str(), snapshot)
            })
            .collect();
        self.store.write_docs(&writes, Commit::Durable)?;
        self.committed(Commit::Durable);
        let mut docs = self.lock();
        for (id, _, heads) in batch.iter() {
            // A document dropped and loaded again meanwhile counted its chunks from the
            // store as it was then: one more fold some day, nothing lost.
            if let Some(entry) = docs.get_mut(id) {
                entry.saved_heads = heads.clone();
                entry.chunks = 1;
            }
        }
        Ok(batch.len())
    }

    /// How many documents are in memory.
    pub fn loaded(&self) -> usize {
        self.lock().len()
    }

    /// Folds the chunks of every loaded document that has more than `threshold` of them into a
    /// snapshot. Returns how many documents were compacted.
    pub fn compact(&self, threshold: usize) -> Result<usize, StoreError> {
        let _writing = lock(&self.writes);
        let ids: Vec<DocId> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.chunks > threshold)
            .map(|(id, _)| id.clone())
            .collect();
        self.fold(&ids)
    }

    /// A whole document as bytes (`Automerge::save`), e.g. to hand the index to a new member.
    pub fn save(&self, id: &DocId) -> Result<Option<Vec<u8>>, LoadError> {
        self.read(id, Automerge::save)
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

/// Puts a document in memory, making room first if [`MAX_LOADED`] are there.
fn insert(docs: &mut HashMap<DocId, Entry>, id: &DocId, entry: Entry) {
    if docs.len() >= MAX_LOADED {
        make_room(docs);
    }
    docs.insert(id.clone(), entry);
}

/// Drops the least recently used documents that memory may lose, down to three quarters of
/// [`MAX_LOADED`] (so that a scan of many documents does not pay for this on every load).
/// Documents with anything unstored stay, however many there are.
fn make_room(docs: &mut HashMap<DocId, Entry>) {
    let mut candidates: Vec<(std::time::Instant, DocId)> = docs
        .iter()
        .filter(|(id, entry)| entry.droppable(id))
        .map(|(id, entry)| (entry.used, id.clone()))
        .collect();
    candidates.sort();
    let excess = docs.len().saturating_sub(MAX_LOADED * 3 / 4);
    for (_, id) in candidates.into_iter().take(excess) {
        docs.remove(&id);
    }
}

/// What `entry` needs written to catch the store up, if anything.
///
/// Incremental chunks hold changes uncompressed, about fifteen times the size of a snapshot;
/// so a document arriving whole (a fresh device's first sync) or a large batch of changes is
/// written as a compressed snapshot instead, in the same single transaction.
///
/// `new` are the changes added since the last write, in the order they were applied, when the
/// caller has them at hand and trusts them (a local commit's); empty, they are collected from
/// the document, which walks its operations to rebuild them.
fn pending_write(entry: &mut Entry, new: &[automerge::Change]) -> Option<PendingWrite> {
    let heads = entry.doc.get_heads();
    if heads == entry.saved_heads {
        return None;
    }
    // A document not stored before is written whole, without first rebuilding its changes
    // only to learn their size (for a document that arrived whole, that costs about as much
    // as checking who wrote what).
    let chunk = if entry.saved_heads.is_empty() {
        None
    } else if new.is_empty() {
        Some(entry.doc.save_after(&entry.saved_heads))
    } else {
        // What `save_after` would give: the changes' bytes, one after another.
        Some(new.iter().flat_map(|c| c.raw_bytes()).copied().collect())
    };
    let (bytes, snapshot) = match chunk {
        Some(chunk) if chunk.len() <= SNAPSHOT_ABOVE_BYTES => (chunk, false),
        _ => (entry.doc.save(), true),
    };
    Some(PendingWrite {
        bytes,
        snapshot,
        heads,
        sigs: entry.unsaved_sigs.clone(),
    })
}

mod docs;
mod durability;
mod local;
mod prepare;
mod receive;
mod signed;
#[cfg(test)]
mod tests;
mod views;
