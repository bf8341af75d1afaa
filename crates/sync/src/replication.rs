//! The replication core: with whom, what and when to sync, as plain state machines with no IO
//! and explicit time. [`crate::net`] is the thin tokio driver that moves their bytes and runs
//! their timers; the simulation tests drive the same code with a seeded network.
//!
//! - [`session::Session`]: one connection with one peer. Every document travels over one
//!   stream, so the number of streams per connection is constant whatever the number of
//!   documents. A reconnect starts with one `Hello` each way carrying a [`digest::Digest`] of
//!   everything the side holds: equal digests end it there. Otherwise each side syncs the
//!   documents that changed since it last synced them with this peer (known from the sync
//!   states it saved), announces its digest when it runs out of work, and only if the digests
//!   still differ asks for the peer's catalog to find what else differs (a peer that lost its
//!   database, say).
//! - [`redial::Redial`]: when to dial a peer again, and which of two simultaneous connections
//!   to keep.
//! - [`Docs`]: what the core needs from the documents (automerge's sync protocol over them,
//!   fingerprints, saved sync states). The repo implements it over the store; the simulation
//!   over documents in memory.

use automerge::ChangeHash;
use automerge::sync;

use crate::ids::DeviceId;
use crate::schema::DocId;

pub mod digest;
pub mod held;
pub mod msg;
pub mod redial;
pub mod session;
#[cfg(test)]
mod sim;

pub use digest::{Catalog, Digest, HeadsHash};
pub use msg::Msg;
pub use redial::Redial;
pub use session::{Event, Session};

/// Operations and bytes of a change above which a document of one change is no longer
/// presumed to be new to the peer (see [`just_created`]): what crosses twice when the
/// presumption is wrong stays small.
const FRESH_AT_MOST_OPS: u64 = 256;
const FRESH_AT_MOST_BYTES: usize = 64 * 1024;

/// Whether `doc` holds exactly one small change, with no dependencies: a document just made
/// (a new thread and its first task). A session with no saved state for it presumes the peer
/// lacks it and sends the change in its first message, where automerge's protocol would
/// first exchange heads and ask: one round trip and two messages fewer per new thread. Should
/// the peer hold it after all, one small change crossed twice.
pub fn just_created(doc: &automerge::Automerge) -> bool {
    just_created_sized(doc, None)
}

/// [`just_created`], given the size of a change of the document when the caller knows it (a
/// document made here learnt it then): automerge rebuilds a change from the document's
/// columns to give its bytes, which costs about as much as applying it.
pub fn just_created_sized(
    doc: &automerge::Automerge,
    known: Option<(automerge::ChangeHash, usize)>,
) -> bool {
    match doc.get_heads().as_slice() {
        // The metadata first: only a document that passes has its one change looked at.
        [head] => {
            doc.get_change_meta_by_hash(head)
                .is_some_and(|m| m.deps.is_empty() && m.max_op <= FRESH_AT_MOST_OPS)
                && match known {
                    Some((hash, len)) if hash == *head => len <= FRESH_AT_MOST_BYTES,
                    _ => automerge::ReadDoc::get_change_by_hash(doc, head)
                        .is_some_and(|c| c.raw_bytes().len() <= FRESH_AT_MOST_BYTES),
                }
        }
        _ => false,
    }
}

/// Why a document operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocsError {
    /// The peer sent something that cannot be applied: drop the peer.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A change whose author this device does not know yet (its certificate is still on the
    /// way in the index): nothing was applied; try again once the index is in sync.
    #[error("early: {0}")]
    Early(String),
    /// Our side could not do it (storage): the peer is not at fault.
    #[error("{0}")]
    Local(String),
}

/// The documents of this device, as the replication core sees them.
pub trait Docs {
    /// The next automerge sync message about `doc` for a peer with sync state `state`, if there
    /// is anything to say (a document not held yet asks for everything).
    fn generate(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
    ) -> Result<Option<Vec<u8>>, DocsError>;
    /// Applies a peer's sync message. What it brings need not be durable until
    /// [`Docs::flush`].
    fn receive(
        &mut self,
        doc: &DocId,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<(), DocsError>;
    /// Makes durable everything received so far, and every change made here that was
    /// written lazily (a change whose maker waits for its own flush need not be). The session
    /// calls it before it sends anything after receiving or after a document changed, so a
    /// peer never hears that we hold what a crash could still take away, nor of an outcome a
    /// crash could take back.
    fn flush(&mut self) -> Result<(), DocsError>;
    /// The heads of `doc` here (empty when not held).
    fn heads(&self, doc: &DocId) -> Vec<ChangeHash>;
    /// Whether `doc` is held in memory here as one change with no dependencies (see
    /// [`just_created`]).
    fn just_created(&self, doc: &DocId) -> bool;
    /// The digest of everything held here.
    fn digest(&self) -> Digest;
    /// The fingerprint of `doc`, if held here.
    fn fingerprint(&self, doc: &DocId) -> Option<HeadsHash>;
    /// How many documents are held here.
    fn held(&self) -> usize;
    /// Up to `max` documents held here with ids after `after` and before `before` (either
    /// bound open when `None`), in id order, with their fingerprints.
    fn catalog_range(
        &self,
        after: Option<&DocId>,
        before: Option<&DocId>,
        max: usize,
    ) -> Vec<(DocId, HeadsHash)>;
    /// The sync state saved for `peer` and `doc`, if any.
    fn saved_state(&self, peer: &DeviceId, doc: &DocId) -> Option<sync::State>;
    /// Documents whose heads differ from what the saved sync states say `peer` last shared
    /// with us, or that have no saved state for it.
    fn unsynced(&self, peer: &DeviceId) -> Vec<DocId>;
}
