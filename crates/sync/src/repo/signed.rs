//! The repo's side of signed changes (`crate::authorship`): finding the signatures of the
//! changes a message carries, and checking what a merge brought before it is kept.

use std::collections::HashMap;

use automerge::sync;
use automerge::{ActorId, Automerge, ChangeHash};

use super::{Entry, MAX_WAITING_SIGS, Repo, SignedDoc};
use crate::authorship::{self, Refusal, Standing};
use crate::ids::DeviceId;
use crate::limits::Limits;
use crate::repo::LoadError;
use crate::schema::DocId;
use crate::schema::touched::Touched;
use crate::store::{ChangeSig, StoreError};

impl Repo {
    /// The signatures of some changes of a loaded document, from memory or the store.
    pub(super) fn sigs_of(
        &self,
        id: &DocId,
        entry: &Entry,
        hashes: &[ChangeHash],
    ) -> Result<Vec<Option<[u8; 64]>>, StoreError> {
        let unsaved: HashMap<[u8; 32], [u8; 64]> = entry.unsaved_sigs.iter().copied().collect();
        let missing: Vec<[u8; 32]> = hashes
            .iter()
            .map(|h| h.0)
            .filter(|h| !unsaved.contains_key(h))
            .collect();
        let mut stored = if missing.is_empty() {
            Vec::new()
        } else {
            self.store.change_sigs(id.as_str(), &missing)?
        }
        .into_iter();
        Ok(hashes
            .iter()
            .map(|h| match unsaved.get(&h.0) {
                Some(sig) => Some(*sig),
                None => stored.next().flatten(),
            })
            .collect())
    }

    /// A whole document as bytes, with the signatures of all its changes: what a new member
    /// is handed at pairing.
    pub fn save_signed(&self, id: &DocId) -> Result<Option<SignedDoc>, LoadError> {
        let mut docs = self.lock();
        let Some(entry) = self.load_entry(&mut docs, id)? else {
            return Ok(None);
        };
        let hashes: Vec<ChangeHash> = entry
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.hash)
            .collect();
        let sigs = self.sigs_of(id, entry, &hashes)?;
        let sigs = hashes
            .iter()
            .zip(sigs)
            .filter_map(|(h, s)| Some((h.0, s?)))
            .collect();
        Ok(Some(SignedDoc {
            bytes: entry.doc.save(),
            sigs,
        }))
    }

    /// Checks the changes a merge added to `entry` since `before`: each within the bounds of
    /// one change however it came (`Limits::check_change`), signed by the device its actor
    /// names, that device a member (or former member) of the space, and writing only
    /// what it owns. Returns their signatures, to store with them, what they wrote, and the
    /// standing of each author the verdict rested on.
    ///
    /// `carried` are the changes of the message as received, if at hand: rebuilding a change
    /// from the document costs more than parsing it.
    pub(super) fn verify_new(
        &self,
        id: &DocId,
        entry: &mut Entry,
        before: &[ChangeHash],
        carried: Vec<automerge::Change>,
    ) -> Result<Verified, Refusal> {
        let space = self.space().ok_or(Refusal::NoSpace)?;
        let metas: Vec<(ChangeHash, ActorId)> = entry
            .doc
            .get_changes_meta(before)
            .into_iter()
            .map(|m| (m.hash, m.actor.into_owned()))
            .collect();
        if metas.is_empty() {
            return Ok(Verified::default());
        }
        let mut carried: HashMap<ChangeHash, automerge::Change> =
            carried.into_iter().map(|c| (c.hash(), c)).collect();
        let mut changes = None;
        if id.is_index() {
            // Certificates that arrived in this very merge count for its other changes; and
            // revocations do too. A merge that only lists threads (the index's most frequent
            // change) can bring neither, and evaluating the membership checks every
            // certificate, so it is done only for a merge that writes more.
            let all = changes_of(entry, before, &metas, &mut carried);
            let mut paths =
                crate::schema::ownership::Checker::new(&entry.doc, id, &mut entry.paths);
            if all.iter().any(|c| paths.touched(&c.decode()).other) {
                self.authors.index_changed(&entry.doc);
            }
            changes = Some(all);
        }
        let mut standing: HashMap<DeviceId, Standing> = HashMap::new();
        let mut signed = Vec::with_capacity(metas.len());
        for (hash, actor) in &metas {
            let device = authorship::author(actor).ok_or(Refusal::NoAuthor(*hash))?;
            let sig =
                *entry
                    .waiting_sigs
                    .get(&authorship::key_of(hash))
                    .ok_or(Refusal::Unsigned {
                        hash: *hash,
                        device,
                    })?;
            let is = *standing
                .entry(device)
                .or_insert_with(|| self.authors.standing(&device));
            if is == Standing::Unknown {
                return Err(Refusal::NotAMember {
                    hash: *hash,
                    device,
                });
            }
            signed.push((*hash, device, sig));
        }
        authorship::verify_all(&space, id, &signed)?;
        let sigs: Vec<ChangeSig> = signed.iter().map(|(h, _, s)| (h.0, *s)).collect();
        let changes = match changes {
            Some(changes) => changes,
            None => changes_of(entry, before, &metas, &mut carried),
        };
        let mut owners = crate::schema::ownership::Checker::new(&entry.doc, id, &mut entry.paths);
        let mut touched = Touched::default();
        for change in &changes {
            Limits::DEFAULT
                .check_change(change.raw_bytes().len() as u64, change.len() as u64)
                .map_err(|limit| Refusal::TooLarge {
                    hash: change.hash(),
                    limit,
                })?;
            let device =
                authorship::author(change.actor_id()).ok_or(Refusal::NoAuthor(change.hash()))?;
            let is = standing.get(&device).copied().unwrap_or(Standing::Unknown);
            owners.check(&change.decode(), &device, is, &mut touched)?;
        }
        for (hash, _) in &metas {
            entry.waiting_sigs.remove(&authorship::key_of(hash));
        }
        Ok(Verified {
            sigs,
            touched,
            standing,
        })
    }

    /// Keeps the signatures a peer sent until their changes are applied.
    pub(super) fn take_sigs(entry: &mut Entry, sigs: Vec<([u8; 8], [u8; 64])>) {
        if entry.waiting_sigs.len() + sigs.len() > MAX_WAITING_SIGS {
            entry.waiting_sigs.clear();
        }
        entry.waiting_sigs.extend(sigs);
    }
}

/// The changes a merge added to `entry` since `before` (`metas`): those the message carried as
/// they came, else rebuilt from the document (which costs more than parsing them).
fn changes_of(
    entry: &Entry,
    before: &[ChangeHash],
    metas: &[(ChangeHash, ActorId)],
    carried: &mut HashMap<ChangeHash, automerge::Change>,
) -> Vec<automerge::Change> {
    if metas.iter().all(|(h, _)| carried.contains_key(h)) {
        metas
            .iter()
            .filter_map(|(h, _)| carried.remove(h))
            .collect()
    } else {
        entry.doc.get_changes(before)
    }
}

/// What [`Repo::verify_new`] found of the changes it passed.
#[derive(Debug, Default)]
pub(super) struct Verified {
    /// Their signatures, to store with them.
    pub(super) sigs: Vec<ChangeSig>,
    /// What they wrote.
    pub(super) touched: Touched,
    /// The standing of each of their authors when they were checked.
    pub(super) standing: HashMap<DeviceId, Standing>,
}

/// The hashes of the changes a sync message carries: each change chunk's, or every change of
/// the document when it carries the whole document.
pub(super) fn carried_hashes(doc: &Automerge, message: &sync::Message) -> Vec<ChangeHash> {
    let mut out = Vec::with_capacity(message.changes.len());
    for bytes in message.changes.iter() {
        // One entry may hold several chunks back to back (automerge's v2 messages).
        for chunk in chunks(bytes) {
            if !is_change(chunk) {
                return doc
                    .get_changes_meta(&[])
                    .into_iter()
                    .map(|m| m.hash)
                    .collect();
            }
            match automerge::Change::try_from(chunk) {
                Ok(change) => out.push(change.hash()),
                Err(e) => tracing::warn!("cannot read a change we are sending: {e}"),
            }
        }
    }
    out
}

/// Whether a chunk (4 bytes of magic, 4 of checksum, then its type) is a change, plain or
/// compressed; any other chunk in a sync message is a whole document.
fn is_change(chunk: &[u8]) -> bool {
    matches!(chunk.get(8), Some(1 | 2))
}

/// The changes a sync message carries as changes, parsed once (a whole document among them is
/// not: its changes are rebuilt from the document when needed).
pub(super) fn carried_changes(message: &sync::Message) -> Vec<automerge::Change> {
    message
        .changes
        .iter()
        .flat_map(chunks)
        .filter(|c| is_change(c))
        .filter_map(|c| automerge::Change::try_from(c).ok())
        .collect()
}

/// Whether a sync message carries a whole document (a peer sends one to a device that holds
/// none of it, or when it would send more than a third of it).
pub(super) fn carries_whole_document(message: &sync::Message) -> bool {
    message
        .changes
        .iter()
        .flat_map(chunks)
        .any(|c| !is_change(c))
}

/// Splits concatenated automerge chunks (magic, checksum, type, LEB128 length, body). These
/// are our own document's bytes; a malformed tail is returned whole.
pub(super) fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let mut len: u64 = 0;
        let mut header = 9;
        let mut shift = 0;
        loop {
            let Some(&b) = rest.get(header) else {
                out.push(rest);
                return out;
            };
            len |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            header += 1;
            shift += 7;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
            .filter(|e| *e <= rest.len())
            .unwrap_or(rest.len());
        out.push(&rest[..end]);
        at += end;
    }
    out
}
