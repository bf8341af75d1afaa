//! The documents of a simulated peer: in memory, with what a crash would leave of them.

use std::collections::BTreeMap;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};

use super::super::{Catalog, Digest, Docs, DocsError, HeadsHash};
use crate::ids::DeviceId;
use crate::schema::DocId;

/// A peer's documents in memory, with what a crash would leave of them. Local changes are
/// durable at once (the repo commits them durably); a peer's changes are written lazily, as
/// the repo's replicator writes them, and become durable at the next flush or local change;
/// sync states are a cache written lazily too. A crash loses whatever is not durable.
#[derive(Default)]
pub(super) struct MemDocs {
    pub(super) docs: BTreeMap<DocId, Automerge>,
    /// What a crash leaves: each document's heads at its last durable write.
    pub(super) durable: BTreeMap<DocId, Vec<ChangeHash>>,
    /// Documents merged since the last durable write.
    pub(super) dirty: Vec<DocId>,
    pub(super) catalog: Catalog,
    pub(super) saved: BTreeMap<(DeviceId, DocId), Vec<u8>>,
    pub(super) pending: BTreeMap<(DeviceId, DocId), Vec<u8>>,
    /// Documents changed by a merge since the driver last looked (to tell other sessions).
    pub(super) merged: Vec<DocId>,
}

impl MemDocs {
    /// A durable write: it carries every lazy one before it to disk.
    pub(super) fn flush(&mut self) {
        // As the repo does: nothing to write, no commit, and the sync states written lazily
        // stay as lazy as they were.
        if self.dirty.is_empty() {
            return;
        }
        self.saved.append(&mut self.pending);
        for doc in std::mem::take(&mut self.dirty) {
            if let Some(d) = self.docs.get(&doc) {
                self.durable.insert(doc, d.get_heads());
            }
        }
    }

    /// A crash: back to what is durable.
    pub(super) fn crash(&mut self) {
        self.pending.clear();
        self.dirty.clear();
        let docs = std::mem::take(&mut self.docs);
        for (doc, d) in docs {
            if let Some(heads) = self.durable.get(&doc) {
                let kept = d.fork_at(heads).expect("durable heads are in the document");
                self.docs.insert(doc, kept);
            }
        }
        self.catalog = Catalog::default();
        for (doc, d) in &self.docs {
            self.catalog.set(doc, &d.get_heads());
        }
    }
}

impl Docs for MemDocs {
    fn generate(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, DocsError> {
        let message = match self.docs.get(doc) {
            Some(d) => d.generate_sync_message(state),
            None => Automerge::new().generate_sync_message(state),
        };
        Ok(message.map(sync::Message::encode))
    }

    fn receive(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), DocsError> {
        let message =
            sync::Message::decode(message).map_err(|e| DocsError::Malformed(e.to_string()))?;
        let d = self.docs.entry(doc.clone()).or_default();
        let before = d.get_heads();
        d.receive_sync_message(state, message)
            .map_err(|e| DocsError::Malformed(e.to_string()))?;
        let heads = d.get_heads();
        if heads != before {
            self.catalog.set(doc, &heads);
            self.merged.push(doc.clone());
            self.dirty.push(doc.clone());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DocsError> {
        MemDocs::flush(self);
        Ok(())
    }

    fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        self.docs
            .get(doc)
            .map(Automerge::get_heads)
            .unwrap_or_default()
    }

    fn just_created(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(super::super::just_created)
    }

    fn digest(&self) -> Digest {
        self.catalog.digest()
    }

    fn fingerprint(&self, doc: &DocId) -> Option<HeadsHash> {
        self.catalog.get(doc)
    }

    fn held(&self) -> usize {
        self.catalog.len()
    }

    fn catalog_range(
        &self,
        after: Option<&DocId>,
        before: Option<&DocId>,
        max: usize,
    ) -> Vec<(DocId, HeadsHash)> {
        self.catalog.range(after, before, max)
    }

    fn saved_state(&self, peer: &DeviceId, doc: &DocId) -> Option<sync::State> {
        let key = (*peer, doc.clone());
        let bytes = self.pending.get(&key).or_else(|| self.saved.get(&key))?;
        sync::State::decode(bytes).ok()
    }

    fn unsynced(&self, peer: &DeviceId) -> Vec<DocId> {
        self.catalog
            .iter()
            .filter(|(doc, hash)| {
                let shared = self
                    .saved_state(peer, doc)
                    .map(|s| HeadsHash::of(&s.shared_heads));
                shared.as_ref() != Some(*hash)
            })
            .map(|(d, _)| d.clone())
            .collect()
    }
}
