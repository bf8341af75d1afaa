//! Quotas: how much state one device can make another hold. Where [`crate::limits::Limits`]
//! bounds one message, a quota bounds what messages add up to: documents in a space, documents
//! a peer names without bringing them, what a task's result and its artifacts take, what is
//! queued for a peer that does not read.
//!
//! Every default is far above what real use reaches and far below what would hurt a desktop.
//! Exceeding one is refused with a one-line error on the device that tried; a peer that makes
//! this device exceed one is logged and dropped (its connection only), and the others go on.
//!
//! The prompt limit is [`crate::schema::thread::MAX_PROMPT_BYTES`] (100 KiB), checked where a
//! task is written and where it is run; per message and per document bounds are in
//! [`crate::limits::Limits`].

/// The quotas a node applies. Plain numbers, so that tests can set small ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Documents a space may hold (the index and its threads). A thread per task sent every
    /// minute for a year is about 500,000 tasks, but in a few thousand threads; 100,000
    /// threads is far beyond any one person's use, and at a few KiB each still fits a phone.
    /// A node creates no document past it, its own or a peer's: a peer that names a new one
    /// then is dropped.
    pub max_documents: usize,
    /// Documents, per connection, that the peer names in sync messages while they are not
    /// held here and that its messages have not brought yet (an honest peer brings a document
    /// one round trip after naming it, and has at most `session::MAX_ACTIVE` (100) exchanges
    /// under way on its initiative, plus answers to ours). Past it the peer is dropped: each
    /// such name costs a sync state and a lookup, and a peer naming ids at random would make
    /// this node hold them all.
    pub max_unknown_docs: usize,
    /// Bytes of one artifact (a blob the executor stores for a task, the whole text of a long
    /// result among them). Below [`crate::wire::MAX_FRAME`] (32 MiB), so every blob can be
    /// fetched in one frame; tool outputs are bounded well below it (1 MiB of shell output,
    /// 4 MiB from `/fetch`, 8 MiB of images from a connector).
    pub max_blob_bytes: usize,
    /// Bytes of a task's `result` as written into the thread. A longer result keeps its start
    /// in the document and the whole text as the artifact `result.txt` (itself within
    /// `max_blob_bytes`), so a thread stays quick to sync however much a task printed.
    pub max_result_bytes: usize,
    /// Bytes of sync messages queued for one peer's stream and not yet written to it. While
    /// this many wait, the session produces nothing more for that peer (reading goes on), so a
    /// peer that stops reading holds at most this plus one message (at most
    /// [`crate::wire::MAX_FRAME`]) of this node's memory, whatever it asks for. A message is
    /// some hundred bytes in steady use and a document's history when a device catches up:
    /// 4 MiB keeps a fast link busy, and sixteen full frames (512 MiB) can no longer pile up.
    pub max_in_flight_bytes: usize,
}

impl Quotas {
    /// The quotas every node applies.
    pub const DEFAULT: Quotas = Quotas {
        max_documents: 100_000,
        max_unknown_docs: 1_000,
        max_blob_bytes: 16 * 1024 * 1024,
        max_result_bytes: 16 * 1024,
        max_in_flight_bytes: 4 * 1024 * 1024,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::DEFAULT
    }
}

/// This node holds [`Quotas::max_documents`] already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this space holds {held} documents, the most a space may hold ({max}, max_documents)")]
pub struct TooManyDocuments {
    pub held: usize,
    pub max: usize,
}

impl Quotas {
    /// Whether one more document may be created here, holding `held`.
    pub fn check_new_document(&self, held: usize) -> Result<(), TooManyDocuments> {
        if held >= self.max_documents {
            return Err(TooManyDocuments {
                held,
                max: self.max_documents,
            });
        }
        Ok(())
    }
}
