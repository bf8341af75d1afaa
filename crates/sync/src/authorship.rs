//! Who wrote a change, proven: every automerge change carries its author's ed25519 signature.
//!
//! A change's actor names the device that wrote it (the first 32 bytes, see
//! [`crate::ids::session_actor`]), but any member could write a change under any actor. So
//! each device signs every change it makes, over the space, the document and the change hash
//! ([`signed_bytes`]); the signature is stored beside the change and travels with it in every
//! sync message ([`Envelope`]), so a change passed on by a third member still proves its
//! author. A node applies a change only if that signature verifies against the device its
//! actor names and that device is, or was, a member of the space ([`Authors`]); then
//! [`crate::schema::ownership`] decides whether the author may write what the change writes.
//!
//! Binding the document id means a change signed for one document is refused in another, and
//! binding the space means a change cannot be replayed into a different space.

use std::fmt;

use automerge::{ActorId, Automerge, ChangeHash};

use crate::ids::{DeviceId, SpaceId};
use crate::schema::DocId;
pub use crate::schema::ownership::Standing;

const CHANGE_DOMAIN: &[u8] = b"errand/change/1";
/// The bytes of a signature.
pub const SIG_BYTES: usize = 64;
/// The bytes of a change hash that key its signature in an [`Envelope`]: the receiver
/// computes the whole hash from the change itself and checks the signature against that, so a
/// prefix only has to tell the changes of one message apart.
const KEY_BYTES: usize = 8;

/// What the repo needs to know about the devices of its space. The node implements it over the
/// verified membership.
pub trait Authors: Send + Sync + fmt::Debug {
    /// What `device` is in the space, as far as this device knows.
    fn standing(&self, device: &DeviceId) -> Standing;
    /// The index document changed here. Called with the repo's documents locked: it must not
    /// call back into the repo.
    fn index_changed(&self, index: &Automerge);
}

/// Authors decided by a fixed rule rather than a space's membership: for tools and tests that
/// drive a bare repo. A node uses its verified membership instead.
#[derive(Clone, Debug, Default)]
pub struct FixedAuthors {
    members: std::collections::HashMap<DeviceId, crate::ids::Role>,
    /// The standing of every device not listed.
    others: Option<crate::ids::Role>,
}

impl FixedAuthors {
    /// Every device counts as a member with `role`.
    pub fn anyone(role: crate::ids::Role) -> FixedAuthors {
        FixedAuthors {
            members: Default::default(),
            others: Some(role),
        }
    }

    /// Exactly these devices are members.
    pub fn only(members: impl IntoIterator<Item = (DeviceId, crate::ids::Role)>) -> FixedAuthors {
        FixedAuthors {
            members: members.into_iter().collect(),
            others: None,
        }
    }
}

impl Authors for FixedAuthors {
    fn standing(&self, device: &DeviceId) -> Standing {
        match self.members.get(device).copied().or(self.others) {
            Some(role) => Standing::Member(role),
            None => Standing::Unknown,
        }
    }

    fn index_changed(&self, _index: &Automerge) {}
}

/// The exact bytes a change signature covers: "errand/change/1" || space (16) || document id
/// (length-prefixed) || change hash (32).
pub fn signed_bytes(space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> Vec<u8> {
    let id = doc.as_str().as_bytes();
    let mut out = Vec::with_capacity(CHANGE_DOMAIN.len() + 16 + 1 + id.len() + 32);
    out.extend_from_slice(CHANGE_DOMAIN);
    out.extend_from_slice(&space.0);
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(id);
    out.extend_from_slice(&hash.0);
    out
}

/// Signs a change made here.
pub fn sign(key: &iroh::SecretKey, space: &SpaceId, doc: &DocId, hash: &ChangeHash) -> [u8; 64] {
    key.sign(&signed_bytes(space, doc, hash)).to_bytes()
}

/// Whether `sig` is `device`'s signature of the change `hash` in `doc`. The same check as
/// iroh's `PublicKey::verify` (strict verification), with the key decompressed once per
/// device rather than once per signature.
pub fn verify(
    device: &DeviceId,
    space: &SpaceId,
    doc: &DocId,
    hash: &ChangeHash,
    sig: &[u8; 64],
) -> bool {
    let Some(known) = known(device.as_bytes()) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    known
        .key
        .verify_strict(&signed_bytes(space, doc, hash), &sig)
        .is_ok()
}

/// A device key seen before, decompressed: decompressing a point costs a good part of a
/// verification, and every received change names its author's key (twice: as the actor that
/// is turned into a device, and as the key its signature is checked with).
#[derive(Clone, Copy)]
struct Known {
    device: DeviceId,
    key: ed25519_dalek::VerifyingKey,
}

/// How many keys are kept. A space has a handful of devices; the bound is for a member that
/// names made-up actors (the cache then starts over, which only costs time).
const MAX_KNOWN: usize = 1024;

type KnownKeys = std::collections::HashMap<[u8; 32], Known>;
static KNOWN: std::sync::LazyLock<std::sync::Mutex<KnownKeys>> =
    std::sync::LazyLock::new(Default::default);

fn known(bytes: &[u8; 32]) -> Option<Known> {
    let mut keys = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = keys.get(bytes) {
        return Some(*known);
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).ok()?;
    let device = DeviceId::from_bytes(bytes).ok()?;
    if keys.len() >= MAX_KNOWN {
        keys.clear();
    }
    let known = Known { device, key };
    keys.insert(*bytes, known);
    Some(known)
}

/// Verifies many changes' signatures (a new device's first sync brings thousands), on every
/// core when there are many.
pub fn verify_all(
    space: &SpaceId,
    doc: &DocId,
    signed: &[(ChangeHash, DeviceId, [u8; 64])],
) -> Result<(), Refusal> {
    let check = |part: &[(ChangeHash, DeviceId, [u8; 64])]| {
        part.iter()
            .find(|(hash, device, sig)| !verify(device, space, doc, hash, sig))
            .map(|(hash, device, _)| Refusal::BadSignature {
                hash: *hash,
                device: *device,
            })
    };
    // Asking how many cores there are reads cgroup files: about as long as one verification,
    // so it is asked only when there are enough signatures to share out.
    let threads = || std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let shared = (signed.len() >= 256).then(threads).filter(|&n| n >= 2);
    let failure = if let Some(threads) = shared {
        let per = signed.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = signed
                .chunks(per)
                .map(|p| s.spawn(move || check(p)))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(Some(Refusal::Unverifiable)))
                .find(Option::is_some)
                .flatten()
        })
    } else {
        check(signed)
    };
    match failure {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// The device an actor names, if its first 32 bytes are a valid public key.
pub fn author(actor: &ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    let key: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
    known(&key).map(|k| k.device)
}

/// The key of a change's signature in an [`Envelope`].
pub fn key_of(hash: &ChangeHash) -> [u8; KEY_BYTES] {
    let mut key = [0; KEY_BYTES];
    key.copy_from_slice(&hash.0[..KEY_BYTES]);
    key
}

/// An automerge sync message with the signatures of the changes it carries: the payload of a
/// `Sync` message of `errand/sync/5`. Layout: the number of signatures (LEB128), then each as
/// 8 bytes of the change hash and 64 of signature, then the automerge message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub sigs: Vec<([u8; KEY_BYTES], [u8; SIG_BYTES])>,
    pub message: Vec<u8>,
}

/// An envelope that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the signature count does not parse")]
    BadCount,
    #[error("{0} signatures claimed, more than the message holds")]
    Truncated(u64),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(5 + self.sigs.len() * (KEY_BYTES + SIG_BYTES) + self.message.len());
        let mut n = self.sigs.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        for (key, sig) in &self.sigs {
            out.extend_from_slice(key);
            out.extend_from_slice(sig);
        }
        out.extend_from_slice(&self.message);
        out
    }

    /// Parses an envelope; the count is checked against the bytes there are before anything
    /// is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (sigs, message) = Envelope::split(bytes)?;
        Ok(Envelope {
            sigs,
            message: message.to_vec(),
        })
    }

    /// The signatures, and the automerge message as a part of `bytes`: what the receive path
    /// uses, so that a message of many megabytes is not copied to be read.
    #[allow(clippy::type_complexity)]
    pub fn split(
        bytes: &[u8],
    ) -> Result<(Vec<([u8; KEY_BYTES], [u8; SIG_BYTES])>, &[u8]), EnvelopeError> {
        let mut count: u64 = 0;
        let mut at = 0;
        loop {
            let byte = *bytes.get(at).ok_or(EnvelopeError::BadCount)?;
            if at >= 5 {
                return Err(EnvelopeError::BadCount);
            }
            count |= u64::from(byte & 0x7f) << (7 * at);
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let each = (KEY_BYTES + SIG_BYTES) as u64;
        let rest = &bytes[at..];
        if count.saturating_mul(each) > rest.len() as u64 {
            return Err(EnvelopeError::Truncated(count));
        }
        let (sigs, message) = rest.split_at((count * each) as usize);
        let sigs = sigs
            .chunks_exact(KEY_BYTES + SIG_BYTES)
            .map(|c| {
                let (k, s) = c.split_at(KEY_BYTES);
                (
                    k.try_into().expect("split at KEY_BYTES"),
                    s.try_into().expect("the rest is SIG_BYTES"),
                )
            })
            .collect();
        Ok((sigs, message))
    }
}

/// Why a received change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("change {0} names no device as its author")]
    NoAuthor(ChangeHash),
    #[error("change {hash} by {device} carries no signature")]
    Unsigned { hash: ChangeHash, device: DeviceId },
    #[error("change {hash} is not signed by {device}, the device it names")]
    BadSignature { hash: ChangeHash, device: DeviceId },
    #[error("change {hash} is by {device}, which is not a member of this space")]
    NotAMember { hash: ChangeHash, device: DeviceId },
    #[error("change {hash} is larger than a node takes: {limit}")]
    TooLarge {
        hash: ChangeHash,
        limit: crate::limits::Refusal,
    },
    #[error(transparent)]
    Ownership(#[from] crate::schema::ownership::Violation),
    #[error("this device does not know its space yet")]
    NoSpace,
    #[error("the signatures could not be checked")]
    Unverifiable,
}

impl Refusal {
    /// Whether an honest peer could have sent it: a member this device has not heard of yet
    /// (its certificate is on the way in the index).
    pub fn may_be_early(&self) -> bool {
        matches!(self, Refusal::NotAMember { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_lying_counts_are_refused() {
        let env = Envelope {
            sigs: vec![([1; 8], [2; 64]), ([3; 8], [4; 64])],
            message: vec![9, 9, 9],
        };
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        let empty = Envelope {
            sigs: vec![],
            message: vec![],
        };
        assert_eq!(Envelope::decode(&empty.encode()).unwrap(), empty);
        // Claims 2^34 signatures in a few bytes.
        assert!(Envelope::decode(&[0xff, 0xff, 0xff, 0xff, 0x7f, 0]).is_err());
        assert!(Envelope::decode(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(Envelope::decode(&[]).is_err());
        assert_eq!(
            Envelope::decode(&[3, 0, 0]),
            Err(EnvelopeError::Truncated(3))
        );
    }

    #[test]
    fn a_signature_binds_the_space_the_document_and_the_change() {
        let key = iroh::SecretKey::generate();
        let space = SpaceId([7; 16]);
        let doc = DocId::new_thread();
        let hash = ChangeHash([5; 32]);
        let sig = sign(&key, &space, &doc, &hash);
        assert!(verify(&key.public(), &space, &doc, &hash, &sig));
        assert!(!verify(&key.public(), &SpaceId([8; 16]), &doc, &hash, &sig));
        assert!(!verify(&key.public(), &space, &DocId::index(), &hash, &sig));
        assert!(!verify(
            &key.public(),
            &space,
            &doc,
            &ChangeHash([6; 32]),
            &sig
        ));
        let other = iroh::SecretKey::generate().public();
        assert!(!verify(&other, &space, &doc, &hash, &sig));
    }
}
