//! Automerge storage chunks (the changes inside a sync message): magic bytes, checksum, type,
//! length, then a change or a whole document laid out in columns. We count what each column
//! claims without building anything, inflating compressed data only up to the limit.
//!
//! Counting rows: every column automerge walks is run-length or boolean encoded, so a few bytes
//! can claim billions of rows. The rows of the longest column bound the operations (or changes)
//! automerge would iterate, so that is the number we check.

use std::io::Read;

use super::reader::Reader;
use super::{Limits, Refusal, bounded};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const COMPRESSED_CHANGE: u8 = 2;
/// Column spec bit that marks a deflated column.
const DEFLATE_BIT: u64 = 0b1000;

/// Totals over one message.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) chunks: u64,
    pub(super) ops: u64,
}

/// Walks the chunks concatenated in one `changes` entry of a sync message.
pub(super) fn walk(limits: &Limits, bytes: &[u8], tally: &mut Tally) -> Result<(), Refusal> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        if r.take(4, "chunk header")? != MAGIC {
            return Err(Refusal::BadMagic);
        }
        r.take(4, "chunk header")?; // checksum: automerge verifies it
        let kind = r.u8("chunk header")?;
        let len = r.uleb("chunk header")?;
        let body = r.take(len, "chunk")?;
        let ops = match kind {
            DOCUMENT => document(limits, body)?,
            CHANGE => change(limits, body)?,
            COMPRESSED_CHANGE => change(limits, &inflate(body, limits.max_change_bytes)?)?,
            // Bundles (type 3) are not something errand's automerge sends.
            other => return Err(Refusal::ChunkType(other)),
        };
        tally.chunks = bounded(tally.chunks + 1, "changes", limits.max_changes)?;
        tally.ops = bounded(
            tally.ops.saturating_add(ops),
            "operations in one message",
            limits.max_document_ops,
        )?;
    }
    Ok(())
}

/// One change: its header, then its operation columns. Returns its number of operations.
fn change(limits: &Limits, body: &[u8]) -> Result<u64, Refusal> {
    bounded(
        body.len() as u64,
        "bytes in one change",
        limits.max_change_bytes,
    )?;
    let mut r = Reader::new(body);
    let deps = bounded(r.uleb("change")?, "dependencies", limits.max_heads)?;
    r.take(deps * 32, "change")?;
    let actor = r.uleb("change")?;
    r.take(actor, "change")?;
    r.uleb("change")?; // seq
    r.uleb("change")?; // start op
    r.sleb("change")?; // time
    let message = r.uleb("change")?;
    r.take(message, "change")?;
    let others = bounded(r.uleb("change")?, "actors in one change", limits.max_actors)?;
    for _ in 0..others {
        let len = r.uleb("change")?;
        r.take(len, "change")?;
    }
    let columns = column_meta(&mut r)?;
    let mut budget = limits.max_change_bytes;
    let ops = rows(
        limits,
        &mut r,
        &columns,
        &mut budget,
        "operations in one change",
        limits.max_ops_per_change,
    )?;
    // Anything after the columns is extra data automerge keeps as it is.
    Ok(ops)
}

/// A whole document: actors, heads, change columns and operation columns.
fn document(limits: &Limits, body: &[u8]) -> Result<u64, Refusal> {
    bounded(
        body.len() as u64,
        "bytes in one document",
        limits.max_document_bytes,
    )?;
    let mut r = Reader::new(body);
    let actors = bounded(r.uleb("document")?, "actors", limits.max_actors)?;
    for _ in 0..actors {
        let len = r.uleb("document")?;
        r.take(len, "document")?;
    }
    let heads = bounded(r.uleb("document")?, "heads", limits.max_heads)?;
    r.take(heads * 32, "document")?;
    let change_columns = column_meta(&mut r)?;
    let op_columns = column_meta(&mut r)?;
    let mut budget = limits.max_document_bytes;
    rows(
        limits,
        &mut r,
        &change_columns,
        &mut budget,
        "changes in one document",
        limits.max_changes,
    )?;
    rows(
        limits,
        &mut r,
        &op_columns,
        &mut budget,
        "operations in one document",
        limits.max_document_ops,
    )
}

/// `(spec, length)` of each column.
fn column_meta(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, Refusal> {
    let count = r.uleb("column metadata")?;
    // Each column takes at least two bytes to describe, which bounds the vector by the input.
    if count > r.rest().len() as u64 / 2 {
        return Err(Refusal::Truncated("column metadata"));
    }
    (0..count)
        .map(|_| Ok((r.uleb("column metadata")?, r.uleb("column metadata")?)))
        .collect()
}

/// Reads the data of `columns` and returns the rows of the longest, refusing past `max` rows
/// or past `budget` inflated bytes in all.
fn rows(
    limits: &Limits,
    r: &mut Reader<'_>,
    columns: &[(u64, u64)],
    budget: &mut u64,
    what: &'static str,
    max: u64,
) -> Result<u64, Refusal> {
    let mut longest = 0;
    for &(spec, len) in columns {
        let data = r.take(len, "column data")?;
        let inflated;
        let data = if spec & DEFLATE_BIT != 0 {
            inflated = inflate(data, *budget)?;
            *budget -= inflated.len() as u64;
            &inflated[..]
        } else {
            data
        };
        longest = longest.max(column_rows(
            spec & 0b111,
            data,
            what,
            max,
            limits.max_change_bytes,
        )?);
    }
    Ok(longest)
}

/// Rows a column of `kind` (automerge's column types 0-7) claims. A value's metadata gives
/// its length: none may pass `max_value`, the bytes of one change, since a whole document
/// bounds only its own size, and its changes are known only once it is merged.
fn column_rows(
    kind: u64,
    data: &[u8],
    what: &'static str,
    max: u64,
    max_value: u64,
) -> Result<u64, Refusal> {
    const BOOLEAN: u64 = 4;
    const DELTA: u64 = 3;
    const STRING: u64 = 5;
    const VALUE_META: u64 = 6;
    const VALUE: u64 = 7;
    let mut r = Reader::new(data);
    let mut rows = 0u64;
    let mut add = |n: u64| -> Result<(), Refusal> {
        rows = bounded(rows.saturating_add(n), what, max)?;
        Ok(())
    };
    match kind {
        // Raw bytes whose rows the metadata column counts.
        VALUE => {}
        // Alternating run lengths of false and true.
        BOOLEAN => {
            while !r.is_empty() {
                add(r.uleb("boolean column")?)?;
            }
        }
        // Run-length encoded: a positive count and one value, a negative count and that many
        // literal values, or zero and a count of nulls.
        _ => {
            while !r.is_empty() {
                let count = r.sleb("column")?;
                let values = match count {
                    0 => {
                        add(r.uleb("column")?)?;
                        0
                    }
                    c if c > 0 => {
                        add(c.unsigned_abs())?;
                        1
                    }
                    c => {
                        add(c.unsigned_abs())?;
                        c.unsigned_abs()
                    }
                };
                // Each literal takes at least a byte, so this loop is bounded by the input.
                for _ in 0..values {
                    match kind {
                        DELTA => {
                            r.sleb("column")?;
                        }
                        STRING => {
                            let len = r.uleb("column")?;
                            r.take(len, "column")?;
                        }
                        VALUE_META => {
                            // The length sits above the four bits of the value's type.
                            bounded(r.uleb("column")? >> 4, "bytes in one value", max_value)?;
                        }
                        _ => {
                            r.uleb("column")?;
                        }
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// Inflates raw deflate data, refusing it once it passes `max` bytes: memory stays bounded
/// whatever the ratio.
fn inflate(data: &[u8], max: u64) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| Refusal::Deflate)?;
    bounded(out.len() as u64, "bytes once inflated", max)?;
    Ok(out)
}
