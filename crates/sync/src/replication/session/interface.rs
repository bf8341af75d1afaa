//! What goes into a session and what comes out of it, besides messages: the inputs a driver
//! feeds it and the events it must act on.

use automerge::ChangeHash;

use crate::replication::Msg;
use crate::schema::DocId;

/// Something the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Persist these sync states for the peer (a cache: write lazily).
    SaveStates(Vec<(DocId, Vec<u8>)>),
    /// We now know the peer holds `doc` exactly as we do.
    Synced(DocId),
    /// What the peer is known to hold of `doc` changed.
    Shared { doc: DocId, heads: Vec<ChangeHash> },
    /// The peer broke the protocol: drop it, and forget its saved sync states.
    Misbehaved(String),
    /// Our side cannot go on (what was received could not be made durable): end the
    /// connection without blaming the peer; the next one starts from what the store holds.
    Failed(String),
    /// An answer has been overdue for [`super::STALL_AFTER`] with no sign of the peer, or a
    /// ping of ours for as long while the peer goes on speaking (it does not hear us): end the
    /// connection without blaming the peer, and dial again.
    Silent,
}

/// An input to the session.
#[derive(Clone, Debug)]
pub enum Input {
    /// A message from the peer.
    Message(Msg),
    /// A document changed here (locally, or merged from another peer).
    Changed(DocId),
    /// Change notifications were lost: anything may have changed.
    LostTrack,
    /// The driver saw packets from the peer (acknowledgements of ours, say) though no message:
    /// the link works, the peer is only slow to answer.
    Alive,
}
