//! Who may connect: the verified membership of the space, enforced during the QUIC handshake.
//!
//! The gate recomputes membership whenever the index changes, from what no document can
//! rewrite:
//!
//! * the space and its root, pinned in the store's metadata when this device created or joined
//!   the space ([`MembershipGate::pin`]); the index document's own `space` and `root` fields are
//!   never read for this (a home made before pinning existed pins them once, on first use);
//! * every certificate and revocation the index holds, together with the node's ledger: each
//!   certificate with a valid chain from the root and each counting revocation this device has
//!   ever seen, kept as store records. So deleting or overwriting an entry of the index changes
//!   nothing: a revoked device stays revoked, a member stays a member.
//!
//! The endpoint hook consults the gate right after the TLS handshake, when the remote key is
//! known and before any application stream is read: a device that is not a current member is
//! refused on every protocol except pairing, which admits strangers only to check a proof.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use errand_sync::ids::hex;
use errand_sync::schema::{DocId, index};
use errand_sync::store::StoreError;
use errand_sync::{DeviceId, Gate, Repo, SpaceId, Store};
use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, VarInt};
use tracing::{info, warn};

use crate::membership::{
    self, Certificate, CertificateRecord, Membership, Revocation, RevocationRecord,
};
use crate::protocol::PAIR_ALPN;

/// Metadata key of the pinned space id (hex), the one the node reads as its space.
pub const META_SPACE: &str = "space";
/// Metadata key of the pinned root device id (hex).
pub const META_ROOT: &str = "space-root";
/// Record kind of the ledger's certificates, keyed `device:signature` (hex).
pub const LEDGER_CERTS: &str = "membership-cert";
/// Record kind of the ledger's revocations, keyed `device:signature` (hex).
pub const LEDGER_REVOCATIONS: &str = "membership-revocation";

/// The stored form of a certificate.
pub fn member_entry(cert: &Certificate) -> index::MemberEntry {
    let record = cert.to_record();
    index::MemberEntry {
        device: record.device,
        name: record.name,
        role: record.role,
        added_by: record.added_by,
        added_at: record.added_at,
        signature: record.signature,
    }
}

/// The stored form of a revocation.
pub fn revocation_entry(rev: &Revocation) -> index::RevocationEntry {
    let record = rev.to_record();
    index::RevocationEntry {
        device: record.device,
        revoked_by: record.revoked_by,
        revoked_at: record.revoked_at,
        signature: record.signature,
    }
}

/// The certificates and revocations an index document holds, read as statements about `space`
/// (entries do not name their space; one signed for another space fails its signature check).
/// Entries that do not parse are left out.
pub fn index_entries(
    doc: &automerge::Automerge,
    space: SpaceId,
) -> (Vec<Certificate>, Vec<Revocation>) {
    let certs = index::members(doc)
        .into_iter()
        .filter_map(|m| {
            Certificate::try_from(CertificateRecord {
                space: space.to_string(),
                device: m.device,
                name: m.name,
                role: m.role,
                added_by: m.added_by,
                added_at: m.added_at,
                signature: m.signature,
            })
            .ok()
        })
        .collect();
    let revs = index::revocations(doc)
        .into_iter()
        .filter_map(|r| {
            Revocation::try_from(RevocationRecord {
                space: space.to_string(),
                device: r.device,
                revoked_by: r.revoked_by,
                revoked_at: r.revoked_at,
                signature: r.signature,
            })
            .ok()
        })
        .collect();
    (certs, revs)
}

/// Verifies the membership recorded in an index document alone, for `space` rooted at `root`
/// (the pinned ones). The gate adds its ledger to this.
pub fn evaluate_index(doc: &automerge::Automerge, space: SpaceId, root: DeviceId) -> Membership {
    let (certs, revs) = index_entries(doc, space);
    membership::evaluate(space, root, &certs, &revs)
}

/// The space and root pinned in `store`, if both are.
pub fn pinned(store: &Store) -> Option<(SpaceId, DeviceId)> {
    let read = |key| {
        let bytes = store.meta(key).ok()??;
        String::from_utf8(bytes).ok()
    };
    let space = read(META_SPACE)?.parse().ok()?;
    let root = read(META_ROOT)?.parse().ok()?;
    Some((space, root))
}

fn ledger_key(device: &DeviceId, signature: &iroh::Signature) -> String {
    format!("{}:{}", hex(device.as_bytes()), hex(&signature.to_bytes()))
}

/// A ledger entry not yet written to the store.
#[derive(Debug)]
struct Unsaved {
    kind: &'static str,
    key: String,
    value: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    pin: Option<(SpaceId, DeviceId)>,
    /// A pin taken on first use by a home made before pinning, not yet written.
    unsaved_pin: bool,
    certs: HashMap<String, Certificate>,
    revocations: HashMap<String, Revocation>,
    unsaved: Vec<Unsaved>,
    membership: Option<Membership>,
    /// What the document last said its space and root were, when that disagreed with the pin
    /// (logged once per change).
    disagreement: Option<(Option<String>, Option<String>)>,
    /// How many devices the index lacked entries for at the last refresh (logged when it grows).
    missing: usize,
    /// The last evaluation and what it was evaluated from (see [`Evaluated`]).
    evaluated: Option<(Evaluated, Membership)>,
}

/// Everything [`membership::evaluate`] is given, as bytes: equal inputs give an equal
/// membership, so a refresh whose inputs are those of the last one reuses its result rather
/// than checking every signature again. The index changes with every new thread, but its
/// certificates and revocations rarely do, and a phone refreshes on every send.
#[derive(Debug, PartialEq, Eq)]
struct Evaluated {
    space: SpaceId,
    root: DeviceId,
    certs: Vec<(Vec<u8>, [u8; 64])>,
    revocations: Vec<(Vec<u8>, [u8; 64])>,
}

impl Evaluated {
    fn of(space: SpaceId, root: DeviceId, certs: &[Certificate], revs: &[Revocation]) -> Self {
        Evaluated {
            space,
            root,
            certs: certs
                .iter()
                .map(|c| (c.signed_bytes(), c.signature.to_bytes()))
                .collect(),
            revocations: revs
                .iter()
                .map(|r| (r.signed_bytes(), r.signature.to_bytes()))
                .collect(),
        }
    }
}

/// The set of devices this device will sync with, and the membership it comes from.
#[derive(Debug)]
pub struct MembershipGate {
    me: DeviceId,
    store: Arc<Store>,
    state: Mutex<State>,
    members: RwLock<HashSet<DeviceId>>,
}

/// Why a space could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("space {space} does not belong to root {root}: its id is not derived from that key")]
    NotDerived { space: SpaceId, root: DeviceId },
    #[error("cannot record the space: {0}")]
    Store(#[from] StoreError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MembershipGate {
    /// A gate for this device (`me`), with the pin and the ledger kept in `store`.
    pub fn new(me: DeviceId, store: Arc<Store>) -> Self {
        let mut state = State {
            pin: pinned(&store),
            ..State::default()
        };
        match store.records(LEDGER_CERTS) {
            Ok(records) => {
                for (key, value) in records {
                    let cert = serde_json::from_slice::<CertificateRecord>(&value)
                        .ok()
                        .and_then(|r| Certificate::try_from(r).ok());
                    if let Some(cert) = cert {
                        state.certs.insert(key, cert);
                    }
                }
            }
            Err(e) => warn!("cannot read the membership ledger: {e}"),
        }
        match store.records(LEDGER_REVOCATIONS) {
            Ok(records) => {
                for (key, value) in records {
                    let rev = serde_json::from_slice::<RevocationRecord>(&value)
                        .ok()
                        .and_then(|r| Revocation::try_from(r).ok());
                    if let Some(rev) = rev {
                        state.revocations.insert(key, rev);
                    }
                }
            }
            Err(e) => warn!("cannot read the membership ledger: {e}"),
        }
        MembershipGate {
            me,
            store,
            state: Mutex::new(state),
            members: RwLock::new(HashSet::new()),
        }
    }

    /// Pins this device's space and its root, durably, when it creates or joins the space.
    /// `space` must be derived from `root` ([`membership::space_id`]). Call
    /// [`MembershipGate::refresh`] afterwards.
    pub fn pin(&self, space: SpaceId, root: DeviceId) -> Result<(), PinError> {
        if !membership::is_root_of(&space, &root) {
            return Err(PinError::NotDerived { space, root });
        }
        // The root first: a home whose space is set always has its root.
        self.store
            .set_meta(META_ROOT, root.to_string().as_bytes())?;
        self.store
            .set_meta(META_SPACE, space.to_string().as_bytes())?;
        let mut state = lock(&self.state);
        state.pin = Some((space, root));
        state.unsaved_pin = false;
        Ok(())
    }

    /// The pinned space and root, if this device belongs to a space.
    pub fn pinned(&self) -> Option<(SpaceId, DeviceId)> {
        lock(&self.state).pin
    }

    /// Recomputes the allowed set from the index document and the ledger, and writes what the
    /// ledger learned. Returns the membership, if this device belongs to a space.
    pub fn refresh(&self, repo: &Repo) -> Option<Membership> {
        let membership = match repo.read(&DocId::index(), |doc| self.refresh_from(doc)) {
            Ok(Some(m)) => m,
            // No index here (yet): the ledger alone, if anything.
            Ok(None) => self.refresh_from(&automerge::Automerge::new()),
            Err(e) => {
                warn!("cannot read the index to check membership: {e}");
                self.membership()
            }
        };
        if let Err(e) = self.save_ledger() {
            warn!("cannot record the membership ledger (kept in memory, retried): {e}");
        }
        membership
    }

    /// Recomputes the allowed set from an index document already at hand and the ledger.
    /// Touches nothing but this gate (no repo, no store writes), so it may be called with the
    /// repo's lock held; what the ledger learned is kept in memory and written by the next
    /// [`MembershipGate::refresh`] or [`MembershipGate::save_ledger`].
    pub fn refresh_from(&self, index: &automerge::Automerge) -> Option<Membership> {
        let mut state = lock(&self.state);
        if state.pin.is_none() {
            self.pin_on_first_use(&mut state, index);
        }
        let Some((space, root)) = state.pin else {
            state.membership = None;
            *self.members.write().unwrap_or_else(|e| e.into_inner()) = HashSet::new();
            return None;
        };
        note_disagreement(&mut state, index, space, root);

        let (mut certs, mut revs) = index_entries(index, space);
        // A device the ledger knows but the index has no entry for: an entry was deleted. (A
        // newer entry for the same device is normal: the members map holds one per device.)
        let certified: HashSet<DeviceId> = certs.iter().map(|c| c.device).collect();
        let revoked: HashSet<DeviceId> = revs.iter().map(|r| r.device).collect();
        let mut gone: HashSet<DeviceId> = state
            .certs
            .values()
            .map(|c| c.device)
            .filter(|d| !certified.contains(d))
            .collect();
        gone.extend(
            state
                .revocations
                .values()
                .map(|r| r.device)
                .filter(|d| !revoked.contains(d)),
        );
        let missing = gone.len();
        if missing > state.missing {
            warn!(
                missing,
                "the index lacks certificates or revocations this device has seen (deleted by a \
                 member?); they still count"
            );
        }
        state.missing = missing;
        certs.extend(state.certs.values().cloned());
        revs.extend(state.revocations.values().cloned());
        let inputs = Evaluated::of(space, root, &certs, &revs);
        let m = match &state.evaluated {
            Some((last, m)) if *last == inputs => m.clone(),
            _ => {
                let m = membership::evaluate(space, root, &certs, &revs);
                state.evaluated = Some((inputs, m.clone()));
                m
            }
        };

        for cert in m.chained_certificates() {
            let key = ledger_key(&cert.device, &cert.signature);
            if !state.certs.contains_key(&key) {
                if let Ok(value) = serde_json::to_vec(&cert.to_record()) {
                    state.unsaved.push(Unsaved {
                        kind: LEDGER_CERTS,
                        key: key.clone(),
                        value,
                    });
                }
                state.certs.insert(key, cert.clone());
            }
        }
        for rev in m.counted_revocations() {
            let key = ledger_key(&rev.device, &rev.signature);
            if !state.revocations.contains_key(&key) {
                if let Ok(value) = serde_json::to_vec(&rev.to_record()) {
                    state.unsaved.push(Unsaved {
                        kind: LEDGER_REVOCATIONS,
                        key: key.clone(),
                        value,
                    });
                }
                state.revocations.insert(key, rev.clone());
            }
        }
        for (device, reason) in m.ignored_revocations() {
            tracing::debug!(%device, "revocation ignored: {reason}");
        }

        let allowed: HashSet<DeviceId> = m
            .members()
            .map(|m| m.device)
            .filter(|d| *d != self.me)
            .collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = allowed;
        state.membership = Some(m.clone());
        Some(m)
    }

    /// The membership last computed, if any.
    pub fn membership(&self) -> Option<Membership> {
        lock(&self.state).membership.clone()
    }

    /// Writes, durably, the ledger entries (and a pin taken on first use) learned since the
    /// last call. On failure they stay in memory for the next call.
    pub fn save_ledger(&self) -> Result<(), StoreError> {
        let (unsaved, pin) = {
            let mut state = lock(&self.state);
            let pin = state.unsaved_pin.then_some(state.pin).flatten();
            state.unsaved_pin = false;
            (std::mem::take(&mut state.unsaved), pin)
        };
        let mut result = Ok(());
        if let Some((_, root)) = pin {
            result = self.store.set_meta(META_ROOT, root.to_string().as_bytes());
            if result.is_err() {
                lock(&self.state).unsaved_pin = true;
            }
        }
        let mut left = Vec::new();
        for entry in unsaved {
            if result.is_ok() {
                match self.store.set_record(entry.kind, &entry.key, &entry.value) {
                    Ok(()) => continue,
                    Err(e) => result = Err(e),
                }
            }
            left.push(entry);
        }
        if !left.is_empty() {
            lock(&self.state).unsaved.extend(left);
        }
        result
    }

    /// A home made before pinning existed has a space but no pinned root: pin the root its
    /// index names, once, if that index is for the home's space. (Such a space id is not
    /// derived from its root, so this is trust on first use; spaces created since are pinned
    /// when created or joined.)
    fn pin_on_first_use(&self, state: &mut State, index: &automerge::Automerge) {
        let Some(space) = self
            .store
            .meta(META_SPACE)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<SpaceId>().ok())
        else {
            return;
        };
        let doc_space = index::space(index).and_then(|s| s.parse::<SpaceId>().ok());
        let root = index::root(index).and_then(|s| s.parse::<DeviceId>().ok());
        if let (Some(doc_space), Some(root)) = (doc_space, root)
            && doc_space == space
        {
            info!(%space, %root, "pinning this space's root, which this home had not recorded");
            state.pin = Some((space, root));
            state.unsaved_pin = true;
        }
    }
}

/// Logs, once per change, an index whose `space` or `root` field disagrees with the pin: such a
/// write changes nothing, but it says a member misbehaves.
fn note_disagreement(
    state: &mut State,
    index: &automerge::Automerge,
    space: SpaceId,
    root: DeviceId,
) {
    let doc_space = index::space(index);
    let doc_root = index::root(index);
    let agrees = doc_space.as_deref().is_none_or(|s| s == space.to_string())
        && doc_root.as_deref().is_none_or(|r| r == root.to_string());
    if agrees {
        state.disagreement = None;
        return;
    }
    let said = (doc_space, doc_root);
    if state.disagreement.as_ref() != Some(&said) {
        warn!(
            document_space = ?said.0,
            document_root = ?said.1,
            %space,
            %root,
            "the index names another space or root than the one pinned here; ignored"
        );
        state.disagreement = Some(said);
    }
}

impl Gate for MembershipGate {
    fn allows(&self, peer: &DeviceId) -> bool {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }
}

/// Endpoint hooks that refuse non-members during the handshake.
#[derive(Debug)]
pub struct TrustHooks {
    gate: std::sync::Arc<MembershipGate>,
}

impl TrustHooks {
    pub fn new(gate: std::sync::Arc<MembershipGate>) -> Self {
        TrustHooks { gate }
    }
}

/// Close code sent to a device that is not a member.
pub const NOT_A_MEMBER: u32 = 1;

impl EndpointHooks for TrustHooks {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.alpn() == PAIR_ALPN || self.gate.allows(&conn.remote_id()) {
            AfterHandshakeOutcome::accept()
        } else {
            AfterHandshakeOutcome::Reject {
                error_code: VarInt::from_u32(NOT_A_MEMBER),
                reason: b"not a member of this space".to_vec(),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
