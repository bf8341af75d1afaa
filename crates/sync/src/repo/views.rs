//! Views: what a reader derives from a whole document (a thread's task list, say), kept in the
//! store beside the document, so that reading it for many documents does not load them all.
//!
//! A listing across a space of a thousand threads would otherwise load every thread from disk
//! (only [`super::MAX_LOADED`] stay in memory) and walk it; with views it decodes one stored
//! value per thread and loads only the threads that changed since their view was stored.
//!
//! Architecture invariant: a view is used only at the version it was derived from. Each is
//! stored with the fingerprint of the heads it was derived at, and counts only while that
//! equals the document's current fingerprint in the catalog. Documents in memory are read
//! directly. So a view can be stale or lost (it is a cache, written without making anything
//! wait for it) but never wrong; and since every change a document holds was checked when it
//! was applied (signatures, owned fields), a view holds nothing a reader of the document would
//! not see.

use std::io::{Read, Write};

use automerge::Automerge;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, LoadError, Repo, lock};
use crate::replication::HeadsHash;
use crate::schema::DocId;

impl Repo {
    /// Reads the view `kind` of each of `ids` (`None` for a document not held here): from the
    /// document where it is in memory, else from the stored view if it is current, else by
    /// loading the document, in which case the new view is stored for next time.
    ///
    /// `kind` names what `view` computes and how it is encoded; change the name whenever
    /// either changes (stored views of another name are never read).
    pub fn read_views<T, F>(
        &self,
        kind: &str,
        ids: &[DocId],
        view: F,
    ) -> Result<Vec<Option<T>>, LoadError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(&Automerge, &DocId) -> T,
    {
        let mut out: Vec<Option<T>> = ids.iter().map(|_| None).collect();
        let mut absent = Vec::new();
        // Views derived here that the store lacks, to store in one go at the end.
        let mut fresh: Vec<(&str, Vec<u8>)> = Vec::new();
        {
            let mut docs = self.lock();
            let now = std::time::Instant::now();
            for (i, id) in ids.iter().enumerate() {
                let Some(entry) = docs.get_mut(id) else {
                    absent.push(i);
                    continue;
                };
                entry.used = now;
                out[i] = Some(derive(entry, id, kind, &view, &mut fresh));
            }
        }
        let current: Vec<Option<HeadsHash>> = {
            let catalog = lock(&self.catalog);
            absent.iter().map(|&i| catalog.get(&ids[i])).collect()
        };
        let names: Vec<&str> = absent.iter().map(|&i| ids[i].as_str()).collect();
        // Decoded straight from the store, one at a time: a listing of a big space never holds
        // all the encoded views at once.
        let mut stale = Vec::new();
        let mut json = Vec::new();
        if !names.is_empty() {
            self.store.each_view(kind, &names, |n, stored| {
                let i = absent[n];
                match (current[n], stored) {
                    (Some(current), Some(stored)) => match decode::<T>(stored, &current, &mut json)
                    {
                        Some(v) => out[i] = Some(v),
                        None => stale.push(i),
                    },
                    _ => stale.push(i),
                }
            })?;
        }
        for i in stale {
            let id = &ids[i];
            let mut docs = self.lock();
            let Some(entry) = self.load_entry(&mut docs, id)? else {
                continue;
            };
            out[i] = Some(derive(entry, id, kind, &view, &mut fresh));
        }
        if !fresh.is_empty()
            && let Err(e) = self.store.set_views(kind, &fresh)
        {
            // Only the next reading pays for it: it derives these views again.
            tracing::warn!("could not store {} views of {kind}: {e}", fresh.len());
        }
        Ok(out)
    }
}

/// Derives the view of a document in memory, and queues it in `fresh` to be stored unless
/// this process stored it at this version already: so that it serves once the document has
/// left memory, or after a restart.
fn derive<'a, T: Serialize>(
    entry: &mut Entry,
    id: &'a DocId,
    kind: &str,
    view: &impl Fn(&Automerge, &DocId) -> T,
    fresh: &mut Vec<(&'a str, Vec<u8>)>,
) -> T {
    let v = view(&entry.doc, id);
    let at = HeadsHash::of(&entry.doc.get_heads());
    let known = entry.views.iter_mut().find(|(k, _)| k == kind);
    if known.as_ref().is_none_or(|(_, stored)| *stored != at)
        && let Some(bytes) = encode(&at, &v)
    {
        fresh.push((id.as_str(), bytes));
        match known {
            Some((_, stored)) => *stored = at,
            None => entry.views.push((kind.to_owned(), at)),
        }
    }
    v
}

/// The format byte after a view's fingerprint: JSON, deflated. A listing of a big space reads
/// a view per thread, and redb keeps every page it reads in its cache: a thread of 20 tasks is
/// about 9 KB of JSON, which took a 16 KiB page of its own; deflated it is about 1 KB, and
/// several share a page. Any other byte (a view stored by an older build) reads as stale.
const DEFLATED_JSON: u8 = 1;

fn encode<T: Serialize>(at: &HeadsHash, view: &T) -> Option<Vec<u8>> {
    let json = serde_json::to_vec(view).ok()?;
    let mut bytes = Vec::with_capacity(at.0.len() + 5 + json.len() / 4);
    bytes.extend_from_slice(&at.0);
    bytes.push(DEFLATED_JSON);
    bytes.extend_from_slice(&u32::try_from(json.len()).ok()?.to_le_bytes());
    let mut deflate = flate2::write::DeflateEncoder::new(bytes, flate2::Compression::fast());
    deflate.write_all(&json).ok()?;
    deflate.finish().ok()
}

/// The view stored in `bytes` if it was derived at `current`; `json` is scratch space, reused
/// from one view to the next.
fn decode<T: DeserializeOwned>(bytes: &[u8], current: &HeadsHash, json: &mut Vec<u8>) -> Option<T> {
    let (at, rest) = bytes.split_at_checked(current.0.len())?;
    if at != current.0 {
        return None;
    }
    let (&format, rest) = rest.split_first()?;
    let (len, deflated) = rest.split_first_chunk::<4>()?;
    if format != DEFLATED_JSON {
        return None;
    }
    let len = u32::from_le_bytes(*len) as usize;
    json.clear();
    json.reserve(len);
    // Read one byte past the length it says, so that a longer stream counts as damaged.
    flate2::read::DeflateDecoder::new(deflated)
        .take(len as u64 + 1)
        .read_to_end(json)
        .ok()?;
    if json.len() != len {
        return None;
    }
    serde_json::from_slice(json).ok()
}
