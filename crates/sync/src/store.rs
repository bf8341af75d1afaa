//! The device's database: one redb file per home.
//!
//! Documents are stored as a compacted snapshot followed by appended incremental chunks, keyed by
//! `(doc id, sequence)`. A local change is appended with a durable commit before the caller hears
//! of success; compaction later folds the chunks into one snapshot in a single transaction, so a
//! crash at any point leaves either the old chunks or the new snapshot, never neither.
//!
//! Per-peer sync states are a cache (losing one costs bandwidth, not data), so they are written
//! with non-durable commits that ride along with the next durable one.

use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

/// Small named values: the space id, the device name, the listening port.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `(doc id, seq)` to a chunk of a saved document; chunks concatenate into a loadable document.
const DOC_CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_chunks");
/// `(peer id, doc id)` to an encoded automerge sync state.
const SYNC_STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sync_states");
/// Doc id to its heads as stored (32-byte hashes, concatenated): written with every chunk, so
/// what a device holds is known at start without loading a single document.
const DOC_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_heads");
/// Free-form records owned by upper layers (pairing tickets, peer addresses), keyed by
/// `(kind, key)`.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// `(doc id, change hash)` to the author's signature of that change
/// ([`crate::authorship`]): written in the same transaction as the chunk that holds the change,
/// so a stored change always has its signature to forward with.
const CHANGE_SIGS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("change_sigs");
/// Content-addressed blobs: SHA-256 (hex) to bytes.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (doc, kind) -> a view derived from the document at some version, with that version's
/// fingerprint (see `crate::repo::views`). A cache: losing it loses nothing.
const VIEWS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("views");

/// `(task id, thread id)` of every task a stored thread holds: written in the same
/// transaction as the chunk that brings the task, so that a task is found by its id, or by the
/// beginning of it, without reading every thread of the space. Keyed by both, as a member could
/// write the same task id into two threads.
const TASK_THREADS: TableDefinition<(&str, &str), ()> = TableDefinition::new("task_threads");
/// The `META` key saying `TASK_THREADS` lists every task stored (a store from before the table
/// lists only the tasks written since, until it is filled in once: [`Store::index_tasks`]).
const META_TASKS_INDEXED: &str = "task_threads_complete";

/// A change's hash and its author's signature.
pub type ChangeSig = ([u8; 32], [u8; 64]);

fn insert_sigs(
    tx: &redb::WriteTransaction,
    doc: &str,
    sigs: &[ChangeSig],
) -> Result<(), StoreError> {
    if sigs.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(CHANGE_SIGS)?;
    for (hash, sig) in sigs {
        table.insert((doc, hash.as_slice()), sig.as_slice())?;
    }
    Ok(())
}

/// Lists `tasks` as in `doc`; only those not listed yet are written, so that rewriting a task's
/// fields (most writes) leaves the table untouched.
fn insert_tasks(tx: &redb::WriteTransaction, doc: &str, tasks: &[&str]) -> Result<(), StoreError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(TASK_THREADS)?;
    for task in tasks {
        if table.get((*task, doc))?.is_none() {
            table.insert((*task, doc), ())?;
        }
    }
    Ok(())
}

/// One write of a document (see [`Store::write_docs`]).
#[derive(Debug, Clone, Copy)]
pub struct DocWrite<'a> {
    pub doc: &'a str,
    /// Changes to append, or the whole document when `replaces`.
    pub bytes: &'a [u8],
    /// Whether `bytes` replaces every chunk stored before (a snapshot).
    pub replaces: bool,
    /// The document's heads with `bytes` applied.
    pub heads: &'a [u8],
    /// The signatures of the changes `bytes` adds.
    pub sigs: &'a [ChangeSig],
    /// The ids of the tasks its changes wrote (those new to the document are listed, see
    /// [`Store::tasks_like`]).
    pub tasks: &'a [&'a str],
}

impl<'a> DocWrite<'a> {
    /// Changes to append, with nothing else to record (for tests and tools).
    pub fn chunk(doc: &'a str, bytes: &'a [u8]) -> Self {
        DocWrite {
            doc,
            bytes,
            replaces: false,
            heads: &[],
            sigs: &[],
            tasks: &[],
        }
    }
}

fn write_doc(tx: &redb::WriteTransaction, write: &DocWrite<'_>) -> Result<(), StoreError> {
    let doc = write.doc;
    tx.open_table(DOC_HEADS)?.insert(doc, write.heads)?;
    insert_sigs(tx, doc, write.sigs)?;
    insert_tasks(tx, doc, write.tasks)?;
    let mut table = tx.open_table(DOC_CHUNKS)?;
    let last = table
        .range((doc, 0)..=(doc, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(key, _)| key.value().1);
    if write.replaces {
        table.retain_in((doc, 0)..=(doc, u64::MAX), |_, _| false)?;
    }
    // Sequence numbers only grow, so chunks never reorder across a compaction.
    let next = last.map_or(0, |last| last + 1);
    table.insert((doc, next), write.bytes)?;
    Ok(())
}

/// The content address of a blob: lower-case hex SHA-256.
pub fn blob_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::ids::hex(&sha2::Sha256::digest(bytes))
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another errand process is using this home ({0}); talk to it, or stop it first")]
    Locked(String),
    #[error("cannot open the database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot prepare the database {path}: {source}")]
    Prepare {
        path: String,
        #[source]
        source: StoreError,
    },
}

/// How a write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Survives a crash once the write returns (an fsync per write).
    Durable,
    /// Survives a crash once a later durable commit returns: many writes then share one
    /// fsync. For what can be had again if lost (a peer's changes, before we acknowledge them).
    Lazy,
}

impl Commit {
    fn apply(self, tx: &mut redb::WriteTransaction) -> Result<(), StoreError> {
        if self == Commit::Lazy {
            tx.set_durability(Durability::None)?;
        }
        Ok(())
    }
}

/// A read or write of the database failed.
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(String);

macro_rules! store_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError(e.to_string())
            }
        }
    )*};
}
store_error_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The device's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// Dropped after `db` (fields drop in order), so it outlives the closing of the file; see
    /// [`Store::closed`]. Nothing is ever sent on it: its receivers learn of the drop.
    open: tokio::sync::watch::Sender<()>,
}

/// Resolves once the store it came from has been dropped *and* its database file closed
/// ([`Store::closed`]).
#[derive(Debug, Clone)]
pub struct Closed(tokio::sync::watch::Receiver<()>);

impl Closed {
    /// Waits until the file is closed (at once if it already is).
    pub async fn wait(mut self) {
        // The sender never sends, so `changed` returns only when it is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

impl Store {
    /// Opens (or creates) the database at `path`. Fails with [`OpenError::Locked`] when another
    /// process has it open.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        let shown = path.display().to_string();
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::Locked(shown)),
            Err(source) => {
                return Err(OpenError::Database {
                    path: shown,
                    source,
                });
            }
        };
        let store = Store {
            db,
            open: tokio::sync::watch::Sender::new(()),
        };
        store.create_tables().map_err(|source| OpenError::Prepare {
            path: shown,
            source,
        })?;
        Ok(store)
    }

    /// What resolves once this store has been dropped *and* its database file closed (closing
    /// can take a moment: redb writes a clean shutdown, and the last holder of the store may be
    /// a task still winding down). Whoever must reopen the same file right after letting go of
    /// the store waits for this, not for the store alone.
    pub fn closed(&self) -> Closed {
        Closed(self.open.subscribe())
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?;
        tx.open_table(DOC_CHUNKS)?;
        tx.open_table(SYNC_STATES)?;
        tx.open_table(DOC_HEADS)?;
        tx.open_table(RECORDS)?;
        tx.open_table(BLOBS)?;
        tx.open_table(CHANGE_SIGS)?;
        tx.open_table(VIEWS)?;
        let fresh = tx.open_table(DOC_CHUNKS)?.is_empty()?;
        tx.open_table(TASK_THREADS)?;
        if fresh {
            // Nothing stored yet: every task will be listed as it is written.
            tx.open_table(META)?
                .insert(META_TASKS_INDEXED, [1u8].as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether every stored task is listed by [`Store::tasks_like`]: always, but in a store
    /// made before tasks were listed, until [`Store::index_tasks`] filled it in.
    pub fn tasks_indexed(&self) -> Result<bool, StoreError> {
        Ok(self.meta(META_TASKS_INDEXED)?.is_some())
    }

    /// Lists the tasks of a store made before tasks were listed (`(task, thread)` pairs, from
    /// reading every thread once) and records that the listing is complete. Tasks written
    /// meanwhile list themselves.
    pub fn index_tasks(&self, tasks: &[(&str, &str)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TASK_THREADS)?;
            for key in tasks {
                table.insert(*key, ())?;
            }
        }
        tx.open_table(META)?
            .insert(META_TASKS_INDEXED, [1u8].as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Drops the listing of tasks, as when it may lack some (a change was written whose tasks
    /// are not known): the next lookup lists them all again ([`Store::index_tasks`]).
    pub fn forget_task_index(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.remove(META_TASKS_INDEXED)?;
        tx.open_table(TASK_THREADS)?.retain(|_, ()| false)?;
        tx.commit()?;
        Ok(())
    }

    /// The `(task, thread)` pairs whose task id begins with `prefix`, in order of task id, at
    /// most `limit` of them: what finding a task by its id costs, whatever the space holds.
    pub fn tasks_like(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TASK_THREADS)?;
        let mut out = Vec::new();
        for entry in table.range((prefix, "")..)? {
            let (key, _) = entry?;
            let (task, doc) = key.value();
            if !task.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((task.to_owned(), doc.to_owned()));
        }
        Ok(out)
    }

    /// Hands the stored view of `kind` of each of `docs` to `each` (with its place in `docs`;
    /// `None` where there is none), in one transaction, without copying it out of the store.
    pub fn each_view(
        &self,
        kind: &str,
        docs: &[&str],
        mut each: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(VIEWS)?;
        for (i, doc) in docs.iter().enumerate() {
            match table.get((*doc, kind))? {
                Some(v) => each(i, Some(v.value())),
                None => each(i, None),
            }
        }
        Ok(())
    }

    /// Stores views of `kind`, replacing older ones, in one transaction that is not made
    /// durable by itself (so it costs no disk flush): it is by the next durable write, or by
    /// [`Store::flush`]. Views are a cache; losing the last ones in a crash costs only time.
    pub fn set_views(&self, kind: &str, views: &[(&str, Vec<u8>)]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        {
            let mut table = tx.open_table(VIEWS)?;
            for (doc, bytes) in views {
                table.insert((*doc, kind), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes every write before it durable (those of [`Store::set_views`] included).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// Stores a blob durably and returns its hash.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = blob_hash(bytes);
        let tx = self.db.begin_write()?;
        tx.open_table(BLOBS)?.insert(hash.as_str(), bytes)?;
        tx.commit()?;
        Ok(hash)
    }

    pub fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BLOBS)?;
        Ok(table.get(hash)?.map(|v| v.value().to_vec()))
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Every stored chunk of a document, concatenated (loadable with `Automerge::load`), and the
    /// number of chunks. `None` when the document is not stored.
    pub fn load_doc(&self, doc: &str) -> Result<Option<(Vec<u8>, usize)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOC_CHUNKS)?;
        let mut bytes = Vec::new();
        let mut count = 0;
        for entry in table.range((doc, 0)..=(doc, u64::MAX))? {
            let (_, value) = entry?;
            bytes.extend_from_slice(value.value());
            count += 1;
        }
        Ok((count > 0).then_some((bytes, count)))
    }

    /// Ids of every stored document.
    pub fn doc_ids(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOC_CHUNKS)?;
        let mut ids: Vec<String> = Vec::new();
        for entry in table.iter()? {
            let (key, _) = entry?;
            let (doc, _) = key.value();
            if ids.last().map(String::as_str) != Some(doc) {
                ids.push(doc.to_owned());
            }
        }
        Ok(ids)
    }

    /// Stores writes of documents in one transaction. With [`Commit::Durable`] they survive
    /// a crash when this returns; with [`Commit::Lazy`], once a durable commit follows (any,
    /// or [`Store::flush`]). Readers of this store see them at once either way.
    pub fn write_docs(&self, writes: &[DocWrite<'_>], commit: Commit) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        commit.apply(&mut tx)?;
        for write in writes {
            write_doc(&tx, write)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored document's heads as recorded with its last write.
    pub fn doc_heads(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOC_HEADS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// One stored document's heads as recorded with its last write.
    pub fn heads_of(&self, doc: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOC_HEADS)?;
        Ok(table.get(doc)?.map(|v| v.value().to_vec()))
    }

    /// The stored signatures of some changes of `doc`, in the order asked (`None` where there
    /// is none).
    pub fn change_sigs(
        &self,
        doc: &str,
        hashes: &[[u8; 32]],
    ) -> Result<Vec<Option<[u8; 64]>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHANGE_SIGS)?;
        hashes
            .iter()
            .map(|h| {
                Ok(table
                    .get((doc, h.as_slice()))?
                    .and_then(|v| <[u8; 64]>::try_from(v.value()).ok()))
            })
            .collect()
    }

    /// Records a document's heads alone (for a store written before heads were kept).
    pub fn set_doc_heads(&self, doc: &str, heads: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(DOC_HEADS)?.insert(doc, heads)?;
        tx.commit()?;
        Ok(())
    }

    /// Every sync state saved for a peer, by document.
    pub fn sync_states_of(&self, peer: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SYNC_STATES)?;
        let mut out = Vec::new();
        for entry in table.range((peer, "")..)? {
            let (key, value) = entry?;
            let (p, doc) = key.value();
            if p != peer {
                break;
            }
            out.push((doc.to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Saves several sync states for a peer at once, without forcing them to disk.
    pub fn set_sync_states(
        &self,
        peer: &str,
        states: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            let mut table = tx.open_table(SYNC_STATES)?;
            for (doc, state) in states {
                table.insert((peer, doc.as_str()), state.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn sync_state(&self, peer: &str, doc: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SYNC_STATES)?;
        Ok(table.get((peer, doc))?.map(|v| v.value().to_vec()))
    }

    /// Saves a sync state without forcing it to disk; see the module docs for why.
    pub fn set_sync_state(&self, peer: &str, doc: &str, state: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(SYNC_STATES)?.insert((peer, doc), state)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets every sync state held for a peer, so the next session starts from scratch.
    pub fn clear_sync_states(&self, peer: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SYNC_STATES)?.retain(|(p, _), _| p != peer)?;
        tx.commit()?;
        Ok(())
    }

    pub fn record(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        Ok(table.get((kind, key))?.map(|v| v.value().to_vec()))
    }

    pub fn records(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for entry in table.range((kind, "")..)? {
            let (key, value) = entry?;
            let (k, name) = key.value();
            if k != kind {
                break;
            }
            out.push((name.to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes a record durably.
    pub fn set_record(&self, kind: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(RECORDS)?.insert((kind, key), value)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a record without forcing it to disk: for records whose loss in a crash is
    /// harmless (a stale entry that the reader recognises as such).
    pub fn remove_record_lazily(&self, kind: &str, key: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(RECORDS)?.remove((kind, key))?;
        tx.commit()?;
        Ok(())
    }

    /// Atomically reads a record, lets `update` decide its new value (or removal, with `None`),
    /// and writes it durably. Returns what `update` returned alongside. This is what makes a
    /// one-time ticket single-use even when two joiners race.
    pub fn update_record<T>(
        &self,
        kind: &str,
        key: &str,
        update: impl FnOnce(Option<&[u8]>) -> (Option<Vec<u8>>, T),
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write()?;
        let out = {
            let mut table = tx.open_table(RECORDS)?;
            let current = table.get((kind, key))?.map(|v| v.value().to_vec());
            let (new, out) = update(current.as_deref());
            match new {
                Some(value) => {
                    table.insert((kind, key), value.as_slice())?;
                }
                None => {
                    table.remove((kind, key))?;
                }
            }
            out
        };
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn append(store: &Store, doc: &str, bytes: &[u8], tasks: &[&str], commit: Commit) {
        let write = DocWrite {
            tasks,
            ..DocWrite::chunk(doc, bytes)
        };
        store.write_docs(&[write], commit).unwrap();
    }

    fn replace(store: &Store, doc: &str, bytes: &[u8], tasks: &[&str]) {
        let write = DocWrite {
            tasks,
            replaces: true,
            ..DocWrite::chunk(doc, bytes)
        };
        store.write_docs(&[write], Commit::Durable).unwrap();
    }

    #[test]
    fn chunks_append_and_compact_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        append(&store, "a", b"one", &[], Commit::Durable);
        append(&store, "a", b"two", &[], Commit::Durable);
        append(&store, "b", b"x", &[], Commit::Durable);
        assert_eq!(
            store.load_doc("a").unwrap().unwrap(),
            (b"onetwo".to_vec(), 2)
        );
        replace(&store, "a", b"snap", &[]);
        append(&store, "a", b"+1", &[], Commit::Durable);
        assert_eq!(
            store.load_doc("a").unwrap().unwrap(),
            (b"snap+1".to_vec(), 2)
        );
        assert_eq!(store.doc_ids().unwrap(), vec!["a", "b"]);
        assert!(store.load_doc("c").unwrap().is_none());
    }

    /// Tasks are listed with the chunk that brings them, each once per thread, and found by
    /// the beginning of their ids; a store that held documents before tasks were listed says
    /// so until it is filled in.
    #[test]
    fn tasks_are_listed_as_they_are_written_and_found_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = Store::open(&path).unwrap();
        assert!(
            store.tasks_indexed().unwrap(),
            "a new store lists every task"
        );
        append(&store, "t1", b"1", &["ab12", "ab34"], Commit::Durable);
        append(&store, "t1", b"2", &["ab12"], Commit::Lazy);
        replace(&store, "t2", b"s", &["ab12", "cd56"]);
        let pair = |t: &str, d: &str| (t.to_owned(), d.to_owned());
        assert_eq!(
            store.tasks_like("ab", 10).unwrap(),
            [pair("ab12", "t1"), pair("ab12", "t2"), pair("ab34", "t1")]
        );
        assert_eq!(store.tasks_like("ab", 2).unwrap().len(), 2);
        assert_eq!(store.tasks_like("cd56", 10).unwrap(), [pair("cd56", "t2")]);
        assert!(store.tasks_like("ab5", 10).unwrap().is_empty());
        assert!(store.tasks_like("e", 10).unwrap().is_empty());

        store.forget_task_index().unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(
            !store.tasks_indexed().unwrap(),
            "a store with documents and no complete listing must be filled in"
        );
        assert!(store.tasks_like("", 10).unwrap().is_empty());
        store
            .index_tasks(&[("ab12", "t1"), ("ef78", "t3")])
            .unwrap();
        assert!(store.tasks_indexed().unwrap());
        assert_eq!(
            store.tasks_like("", 10).unwrap(),
            [pair("ab12", "t1"), pair("ef78", "t3")]
        );
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let _first = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(OpenError::Locked(_))));
    }

    #[tokio::test]
    async fn closed_resolves_once_the_file_can_be_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = Store::open(&path).unwrap();
        let closed = store.closed();
        // Held elsewhere (a task winding down, say): not closed yet.
        let holder = std::thread::spawn(move || {
            std::thread::park();
            drop(store);
        });
        let waiting = tokio::spawn(closed.clone().wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(matches!(Store::open(&path), Err(OpenError::Locked(_))));
        holder.thread().unpark();
        waiting.await.unwrap();
        Store::open(&path).unwrap();
        // Waiting after the close returns at once.
        closed.wait().await;
    }

    #[test]
    fn records_update_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        store.set_record("ticket", "t1", b"fresh").unwrap();
        let first = store
            .update_record("ticket", "t1", |v| {
                (Some(b"spent".to_vec()), v == Some(b"fresh"))
            })
            .unwrap();
        let second = store
            .update_record("ticket", "t1", |v| {
                (Some(b"spent".to_vec()), v == Some(b"fresh"))
            })
            .unwrap();
        assert!(first && !second);
        assert_eq!(store.records("ticket").unwrap().len(), 1);
        assert!(store.records("peer").unwrap().is_empty());
    }
}
