//! Bounds on what a peer may send, checked on the raw bytes before automerge decodes them.
//!
//! Why: automerge 0.12 trusts the numbers in a sync message. A bloom filter that claims four
//! billion probes makes it allocate 17 GB (an abort `catch_unwind` cannot contain); one with
//! zero bits divides by zero; a compressed change inflates without limit; a run-length column
//! can claim more operations than a lifetime of real use, and automerge walks every one. So the
//! receive path parses the sync message's wire format itself (the layout of automerge 0.12's
//! `sync.rs`, `sync/bloom.rs` and `storage/chunk.rs`), walks every change and document chunk
//! inside it, and refuses anything outside [`Limits`] before automerge sees a byte.
//!
//! This module is pure: bytes in, a verdict out.

mod chunk;
mod reader;

use reader::Reader;

/// The bounds errand sets on peer input. Every default is far above what real use reaches (a
/// thread of a thousand tasks holds some tens of thousands of operations in a few thousand
/// changes) and far below what would hurt a desktop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Heads in one sync message, and hashes in one `have`'s `last_sync`. Heads are the
    /// concurrent tips of a document: a handful in practice.
    pub max_heads: u64,
    /// Hashes a peer may ask for in one message (`need`).
    pub max_needs: u64,
    /// `have` entries in one message. Automerge sends zero or one.
    pub max_haves: u64,
    /// Entries a bloom filter may claim: the changes since the last sync.
    pub max_bloom_entries: u64,
    /// Bloom filter bits per entry (automerge uses 10). At least one, always.
    pub max_bloom_bits_per_entry: u64,
    /// Bloom filter probes (automerge uses 7); each costs work for every change we hold.
    pub max_bloom_probes: u64,
    /// Change chunks in one message (a fresh device's first sync sends the whole history).
    pub max_changes: u64,
    /// Bytes of one change, after inflating a compressed one.
    pub max_change_bytes: u64,
    /// Operations in one change.
    pub max_ops_per_change: u64,
    /// Bytes of one whole-document chunk, after inflating its columns.
    pub max_document_bytes: u64,
    /// Operations in one message (all its changes and documents), and in a whole document.
    pub max_document_ops: u64,
    /// Actors named in one document chunk.
    pub max_actors: u64,
}

impl Limits {
    /// The bounds every node applies to its peers.
    pub const DEFAULT: Limits = Limits {
        max_heads: 1_024,
        max_needs: 16_384,
        max_haves: 16,
        max_bloom_entries: 1_000_000,
        max_bloom_bits_per_entry: 32,
        max_bloom_probes: 32,
        max_changes: 200_000,
        max_change_bytes: 4 * 1024 * 1024,
        max_ops_per_change: 100_000,
        max_document_bytes: 64 * 1024 * 1024,
        max_document_ops: 4_000_000,
        max_actors: 100_000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a peer's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the message ends inside its {0}")]
    Truncated(&'static str),
    #[error("{what}: {count}, more than the limit of {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: u64,
    },
    #[error("unknown sync message type {0:#04x}")]
    UnknownType(u8),
    #[error(
        "bloom filter with {entries} entries, {bits_per_entry} bits per entry, {probes} probes"
    )]
    Bloom {
        entries: u64,
        bits_per_entry: u64,
        probes: u64,
    },
    #[error("a number in its {0} is not a valid LEB128 integer")]
    BadNumber(&'static str),
    #[error("chunk without automerge's magic bytes")]
    BadMagic,
    #[error("chunk of type {0}, which errand does not accept from peers")]
    ChunkType(u8),
    #[error("compressed data that does not inflate")]
    Deflate,
}

/// What a valid message holds, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub heads: u64,
    pub needs: u64,
    pub haves: u64,
    /// Change and document chunks, across all entries.
    pub chunks: u64,
    /// Operations those chunks claim.
    pub ops: u64,
}

const HASH_LEN: u64 = 32;
/// A chunk's header: magic bytes, checksum, type and a LEB128 length.
pub const CHANGE_HEADER_MAX: u64 = 4 + 4 + 1 + 10;
const SYNC_V1: u8 = 0x42;
const SYNC_V2: u8 = 0x43;

impl Limits {
    /// Checks an encoded automerge sync message against these bounds.
    pub fn check_sync_message(&self, bytes: &[u8]) -> Result<Shape, Refusal> {
        let mut r = Reader::new(bytes);
        let version = r.u8("message type")?;
        if version != SYNC_V1 && version != SYNC_V2 {
            return Err(Refusal::UnknownType(version));
        }
        let mut shape = Shape {
            heads: self.hashes(&mut r, "heads", self.max_heads)?,
            needs: self.hashes(&mut r, "needs", self.max_needs)?,
            ..Shape::default()
        };
        shape.haves = bounded(r.uleb("haves")?, "haves", self.max_haves)?;
        for _ in 0..shape.haves {
            self.hashes(&mut r, "last sync hashes", self.max_heads)?;
            let len = r.uleb("bloom filter")?;
            self.check_bloom(r.take(len, "bloom filter")?)?;
        }
        let entries = bounded(r.uleb("changes")?, "changes", self.max_changes)?;
        let mut tally = chunk::Tally::default();
        for _ in 0..entries {
            let len = r.uleb("changes")?;
            chunk::walk(self, r.take(len, "changes")?, &mut tally)?;
        }
        // What follows is the flags section, which automerge reads leniently and past which it
        // ignores everything: nothing there is trusted with a size.
        shape.chunks = tally.chunks;
        shape.ops = tally.ops;
        Ok(shape)
    }

    /// Reads a count of hashes and skips them.
    fn hashes(&self, r: &mut Reader<'_>, what: &'static str, max: u64) -> Result<u64, Refusal> {
        let count = bounded(r.uleb(what)?, what, max)?;
        r.take(count * HASH_LEN, what)?;
        Ok(count)
    }

    /// A bloom filter: empty, or entries, bits per entry and probes, then at least the bits
    /// those claim. Automerge sizes its probe list from the probes and takes every probe
    /// modulo the number of bits, so both must be small and nonzero.
    fn check_bloom(&self, bytes: &[u8]) -> Result<(), Refusal> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut r = Reader::new(bytes);
        let entries = r.uleb("bloom filter")?;
        let bits_per_entry = r.uleb("bloom filter")?;
        let probes = r.uleb("bloom filter")?;
        let refusal = Refusal::Bloom {
            entries,
            bits_per_entry,
            probes,
        };
        if !(1..=self.max_bloom_entries).contains(&entries)
            || !(1..=self.max_bloom_bits_per_entry).contains(&bits_per_entry)
            || !(1..=self.max_bloom_probes).contains(&probes)
        {
            return Err(refusal);
        }
        r.take((entries * bits_per_entry).div_ceil(8), "bloom filter")?;
        Ok(())
    }

    /// Checks a whole document (or concatenated changes) received outside a sync message,
    /// such as the index a new member receives while pairing.
    pub fn check_document(&self, bytes: &[u8]) -> Result<Shape, Refusal> {
        let mut tally = chunk::Tally::default();
        chunk::walk(self, bytes, &mut tally)?;
        Ok(Shape {
            chunks: tally.chunks,
            ops: tally.ops,
            ..Shape::default()
        })
    }

    /// Checks one change as merged, whatever chunk brought it: a change inside a whole
    /// document is held to the bounds of one sent alone, or a member could pass a change of
    /// any size to a device that does not hold its document yet, and from there to everyone.
    /// `encoded` is the change's encoding with its chunk header (at most
    /// [`CHANGE_HEADER_MAX`] bytes beyond what [`Limits::check_sync_message`] bounds).
    pub fn check_change(&self, encoded: u64, ops: u64) -> Result<(), Refusal> {
        bounded(
            encoded.saturating_sub(CHANGE_HEADER_MAX),
            "bytes in one change",
            self.max_change_bytes,
        )?;
        bounded(ops, "operations in one change", self.max_ops_per_change).map(|_| ())
    }

    /// Checks a document's size once merged: a peer may reach it in many small messages.
    pub fn check_document_ops(&self, ops: u64) -> Result<(), Refusal> {
        bounded(ops, "operations in the document", self.max_document_ops).map(|_| ())
    }
}

fn bounded(count: u64, what: &'static str, max: u64) -> Result<u64, Refusal> {
    if count > max {
        return Err(Refusal::TooMany { what, count, max });
    }
    Ok(count)
}

#[cfg(test)]
mod tests;
