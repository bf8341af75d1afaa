//! Short fingerprints of what a device holds: one per document ([`HeadsHash`]) and one for all
//! of them together ([`Digest`]).
//!
//! The digest is the XOR of every document's fingerprint, so a change to one document updates
//! it in constant time, and two devices holding the same documents at the same versions have
//! equal digests whatever order they learned them in. That is what lets a reconnect with
//! nothing new cost two small messages instead of one exchange per document.

use automerge::ChangeHash;
use sha2::{Digest as _, Sha256};

use crate::schema::DocId;

/// The length of a fingerprint. 128 bits: a collision between two different versions of a
/// space is not a practical concern, and a wrong "equal" only delays a sync until either side
/// changes again.
pub const FINGERPRINT_LEN: usize = 16;

/// A fingerprint of one document's heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadsHash(pub [u8; FINGERPRINT_LEN]);

impl HeadsHash {
    /// The fingerprint of a set of heads, whatever their order.
    pub fn of(heads: &[ChangeHash]) -> HeadsHash {
        let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
        sorted.sort();
        let mut hasher = Sha256::new();
        for h in sorted {
            hasher.update(h.0);
        }
        HeadsHash(truncate(&hasher.finalize()))
    }
}

/// A fingerprint of every document a device holds, with its heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; FINGERPRINT_LEN]);

impl Digest {
    /// Adds a document at a version, or (applied a second time) takes it away again.
    pub fn toggle(&mut self, doc: &DocId, heads: &HeadsHash) {
        let mut hasher = Sha256::new();
        hasher.update(doc.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(heads.0);
        let entry = truncate(&hasher.finalize());
        for (d, e) in self.0.iter_mut().zip(entry) {
            *d ^= e;
        }
    }
}

fn truncate(bytes: &[u8]) -> [u8; FINGERPRINT_LEN] {
    let mut out = [0; FINGERPRINT_LEN];
    out.copy_from_slice(&bytes[..FINGERPRINT_LEN]);
    out
}

/// The fingerprints of the documents a device holds, kept current as they change.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    docs: std::collections::BTreeMap<DocId, HeadsHash>,
    digest: Digest,
}

impl Catalog {
    /// Records `doc` at `heads` (empty heads: the document is not held).
    pub fn set(&mut self, doc: &DocId, heads: &[ChangeHash]) {
        let new = (!heads.is_empty()).then(|| HeadsHash::of(heads));
        let old = self.docs.get(doc).copied();
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.digest.toggle(doc, &old);
            self.docs.remove(doc);
        }
        if let Some(new) = new {
            self.digest.toggle(doc, &new);
            self.docs.insert(doc.clone(), new);
        }
    }

    pub fn get(&self, doc: &DocId) -> Option<HeadsHash> {
        self.docs.get(doc).copied()
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Every document held, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&DocId, &HeadsHash)> {
        self.docs.iter()
    }

    pub fn ids(&self) -> impl Iterator<Item = &DocId> {
        self.docs.keys()
    }

    /// Up to `max` entries strictly between `after` and `before` (open ends when `None`).
    pub fn range(
        &self,
        after: Option<&DocId>,
        before: Option<&DocId>,
        max: usize,
    ) -> Vec<(DocId, HeadsHash)> {
        use std::ops::Bound;
        if let (Some(a), Some(b)) = (after, before)
            && a >= b
        {
            return Vec::new();
        }
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        self.docs
            .range::<DocId, _>((lower, upper))
            .take(max)
            .map(|(d, h)| (d.clone(), *h))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hash(n: u8) -> ChangeHash {
        ChangeHash([n; 32])
    }

    #[test]
    fn the_digest_depends_on_what_is_held_not_on_the_order_it_was_learned() {
        let (a, b) = (DocId::new_thread(), DocId::new_thread());
        let mut one = Catalog::default();
        one.set(&a, &[hash(1)]);
        one.set(&b, &[hash(2), hash(3)]);
        let mut two = Catalog::default();
        two.set(&b, &[hash(3), hash(2)]);
        two.set(&a, &[hash(9)]);
        assert_ne!(one.digest(), two.digest());
        two.set(&a, &[hash(1)]);
        assert_eq!(one.digest(), two.digest());
        // Dropping a document takes it out of the digest again.
        two.set(&b, &[]);
        let mut only_a = Catalog::default();
        only_a.set(&a, &[hash(1)]);
        assert_eq!(two.digest(), only_a.digest());
        assert_eq!(two.len(), 1);
        // The empty space has the zero digest.
        two.set(&a, &[]);
        assert_eq!(two.digest(), Digest::default());
    }
}
