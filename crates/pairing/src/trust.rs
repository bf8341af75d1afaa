//! Who may connect: the verified membership of the space, enforced during the QUIC handshake.
//!
//! The gate is recomputed from the index document's certificates and revocations whenever the
//! index changes. The endpoint hook consults it right after the TLS handshake, when the remote
//! key is known and before any application stream is read: a device that is not a current member
//! is refused on every protocol except pairing, which admits strangers only to check a proof.

use std::collections::HashSet;
use std::sync::RwLock;

use errand_sync::schema::{DocId, index};
use errand_sync::{DeviceId, Gate, Repo, SpaceId};
use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, VarInt};

use crate::membership::{self, Certificate, Membership, Revocation};
use crate::protocol::PAIR_ALPN;

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

/// Verifies the membership recorded in an index document. `None` when the document has no
/// readable space or root.
pub fn evaluate_index(doc: &automerge::Automerge) -> Option<Membership> {
    let space: SpaceId = index::space(doc)?.parse().ok()?;
    let root: DeviceId = index::root(doc)?.parse().ok()?;
    let certs: Vec<Certificate> = index::members(doc)
        .into_iter()
        .filter_map(|m| {
            Certificate::try_from(membership::CertificateRecord {
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
    let revs: Vec<Revocation> = index::revocations(doc)
        .into_iter()
        .filter_map(|r| {
            Revocation::try_from(membership::RevocationRecord {
                space: space.to_string(),
                device: r.device,
                revoked_by: r.revoked_by,
                revoked_at: r.revoked_at,
                signature: r.signature,
            })
            .ok()
        })
        .collect();
    Some(membership::evaluate(space, root, &certs, &revs))
}

/// The set of devices this device will sync with.
#[derive(Debug)]
pub struct MembershipGate {
    me: DeviceId,
    members: RwLock<HashSet<DeviceId>>,
    current: RwLock<Option<Membership>>,
}

impl MembershipGate {
    pub fn new(me: DeviceId) -> Self {
        MembershipGate {
            me,
            members: RwLock::new(HashSet::new()),
            current: RwLock::new(None),
        }
    }

    /// Recomputes the allowed set from the index document. Returns the membership, if the
    /// index exists.
    pub fn refresh(&self, repo: &Repo) -> Option<Membership> {
        repo.read(&DocId::index(), |doc| self.refresh_from(doc))
            .ok()
            .flatten()
            .flatten()
    }

    /// The membership as last computed.
    pub fn membership(&self) -> Option<Membership> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recomputes from an index document at hand. Calls nothing in the repo: the repo calls
    /// this with its documents locked.
    pub fn refresh_from(&self, index: &automerge::Automerge) -> Option<Membership> {
        let membership = evaluate_index(index);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = membership.clone();
        let allowed: HashSet<DeviceId> = membership
            .as_ref()
            .map(|m| {
                m.members()
                    .map(|m| m.device)
                    .filter(|d| *d != self.me)
                    .collect()
            })
            .unwrap_or_default();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = allowed;
        membership
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
