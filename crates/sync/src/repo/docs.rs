//! The replication core's access to a repo ([`Docs`]).

use std::collections::HashMap;

use automerge::ChangeHash;
use automerge::sync;

use super::{ReceiveError, Repo, lock};
use crate::ids::DeviceId;
use crate::replication::{Digest, Docs, DocsError, HeadsHash};
use crate::schema::DocId;
use crate::store::Commit;

/// The replication core's view of a repo: automerge's sync protocol over the loaded
/// documents, the catalog, and the sync states saved in the store.
#[derive(Debug)]
pub struct RepoDocs<'a>(pub(super) &'a Repo, pub(super) Commit);

impl RepoDocs<'_> {
    /// How what peers send is written from now on: lazily when several messages are at hand
    /// (they then share the fsync of [`Docs::flush`]), durably at once when one is (a lazy
    /// write and a flush cost more than one durable write).
    pub fn write(&mut self, commit: Commit) {
        self.1 = commit;
    }

    /// Works out ahead, in parallel, the merges of the whole documents among `messages` that
    /// are not held here ([`Repo::prepare`]); the session then takes the messages in turn.
    pub fn prepare(&self, messages: &[(&DocId, &[u8])]) {
        self.0.prepare(messages);
    }

    /// Forgets what [`RepoDocs::prepare`] worked out and the session did not use.
    pub fn forget_prepared(&self) {
        self.0.forget_prepared();
    }
}

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
        match self.0.receive(doc, state, message, self.1) {
            Ok(_) => Ok(()),
            Err(e @ ReceiveError::Malformed { .. }) => Err(DocsError::Malformed(e.to_string())),
            Err(e @ ReceiveError::Early { .. }) => Err(DocsError::Early(e.to_string())),
            Err(e) => Err(DocsError::Local(e.to_string())),
        }
    }

    fn flush(&mut self) -> Result<(), DocsError> {
        self.0
            .flush_for_peers()
            .map_err(|e| DocsError::Local(e.to_string()))
    }

    fn heads(&self, doc: &DocId) -> Vec<ChangeHash> {
        self.0.heads(doc).unwrap_or_default()
    }

    fn just_created(&self, doc: &DocId) -> bool {
        // Only a document in memory: one dropped from memory went quiet long ago.
        self.0
            .lock()
            .get(doc)
            .is_some_and(|e| crate::replication::just_created_sized(&e.doc, e.first_change))
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
