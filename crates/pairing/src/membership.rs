//! Signed membership: who belongs to a space, checkable by every member offline.
//!
//! A [`Certificate`] says "device D, named N, has role R in space S", signed by the device that
//! added it. A [`Revocation`] says "device D is no longer a member of S", signed by a device that
//! may add devices. Both travel in the space's index document, which every member replicates,
//! and every member also keeps those it has verified in a ledger of its own
//! ([`crate::trust`]), so [`evaluate`] decides membership offline, with no server and no network,
//! and no write to the document can take back a certificate or a revocation once seen.
//!
//! Trust starts at the space's root, the desktop that created the space. The space id is derived
//! from the root's key ([`space_id`]), so a device that knows the space id (from its ticket) can
//! check which key is the root, and pins both; no document can name another root. Everything
//! else has to chain back to it.
//!
//! The signed bytes are a fixed binary layout (domain string, fixed-size fields, a
//! length-prefixed name) rather than JSON or the record form, so that no re-encoding can change
//! what was signed and no two different certificates share signed bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use errand_sync::ids::{hex, parse_hex};
use errand_sync::{DeviceId, Role, SpaceId};
use iroh::{SecretKey, Signature};
use serde::{Deserialize, Serialize};

const CERT_DOMAIN: &[u8] = b"errand/member/1";
const REVOKE_DOMAIN: &[u8] = b"errand/revoke/1";
const SPACE_DOMAIN: &[u8] = b"errand/space/1";

/// The id of the space whose root is `root`: the first 16 bytes of
/// SHA-256("errand/space/1" || root key). A space id names its root: a joiner checks that the
/// root it is told derives the space id in its ticket, and nobody can create a second space
/// with the same id under another key.
pub fn space_id(root: &DeviceId) -> SpaceId {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(SPACE_DOMAIN);
    hasher.update(root.as_bytes());
    let digest = hasher.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    SpaceId(out)
}

/// Whether `root` is the key `space` was derived from.
pub fn is_root_of(space: &SpaceId, root: &DeviceId) -> bool {
    space_id(root) == *space
}

/// A member's signed entry in a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub space: SpaceId,
    /// The device this certificate admits.
    pub device: DeviceId,
    /// Human-readable device name, shown in device lists.
    pub name: String,
    pub role: Role,
    /// The device that signed this certificate.
    pub added_by: DeviceId,
    /// Unix seconds, by the signer's clock.
    pub added_at: u64,
    pub signature: Signature,
}

impl Certificate {
    /// Signs a certificate with `signer`'s key; `added_by` is the signer's public key.
    pub fn sign(
        signer: &SecretKey,
        space: SpaceId,
        device: DeviceId,
        name: impl Into<String>,
        role: Role,
        added_at: u64,
    ) -> Certificate {
        let name = name.into();
        let added_by = signer.public();
        let bytes = cert_signed_bytes(&space, &device, &added_by, added_at, role, &name);
        Certificate {
            space,
            device,
            name,
            role,
            added_by,
            added_at,
            signature: signer.sign(&bytes),
        }
    }

    /// The exact bytes the signature covers: "errand/member/1" || space (16) || device (32) ||
    /// added_by (32) || added_at (u64 BE) || role (1) || name length (u64 BE) || name (UTF-8).
    pub fn signed_bytes(&self) -> Vec<u8> {
        cert_signed_bytes(
            &self.space,
            &self.device,
            &self.added_by,
            self.added_at,
            self.role,
            &self.name,
        )
    }

    /// Whether the signature is `added_by`'s over these fields. Says nothing about whether the
    /// signer was allowed to sign; that is what [`evaluate`] decides.
    pub fn verify_signature(&self) -> bool {
        self.added_by
            .verify(&self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// The storable form of this certificate.
    pub fn to_record(&self) -> CertificateRecord {
        CertificateRecord {
            space: hex(&self.space.0),
            device: hex(self.device.as_bytes()),
            name: self.name.clone(),
            role: self.role.as_str().to_owned(),
            added_by: hex(self.added_by.as_bytes()),
            added_at: self.added_at,
            signature: hex(&self.signature.to_bytes()),
        }
    }
}

fn cert_signed_bytes(
    space: &SpaceId,
    device: &DeviceId,
    added_by: &DeviceId,
    added_at: u64,
    role: Role,
    name: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(CERT_DOMAIN.len() + 16 + 32 + 32 + 8 + 1 + 8 + name.len());
    out.extend_from_slice(CERT_DOMAIN);
    out.extend_from_slice(&space.0);
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(added_by.as_bytes());
    out.extend_from_slice(&added_at.to_be_bytes());
    out.push(role_byte(role));
    out.extend_from_slice(&(name.len() as u64).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Stable numbering of roles for signing; never reuse a number.
fn role_byte(role: Role) -> u8 {
    match role {
        Role::Desktop => 1,
        Role::Phone => 2,
        Role::Viewer => 3,
    }
}

/// A signed statement that a device is no longer a member of a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub space: SpaceId,
    /// The device being removed.
    pub device: DeviceId,
    /// The device that signed the revocation.
    pub revoked_by: DeviceId,
    /// Unix seconds, by the signer's clock.
    pub revoked_at: u64,
    pub signature: Signature,
}

impl Revocation {
    /// Signs a revocation with `signer`'s key; `revoked_by` is the signer's public key.
    pub fn sign(
        signer: &SecretKey,
        space: SpaceId,
        device: DeviceId,
        revoked_at: u64,
    ) -> Revocation {
        let revoked_by = signer.public();
        let bytes = revoke_signed_bytes(&space, &device, &revoked_by, revoked_at);
        Revocation {
            space,
            device,
            revoked_by,
            revoked_at,
            signature: signer.sign(&bytes),
        }
    }

    /// The exact bytes the signature covers: "errand/revoke/1" || space (16) || device (32) ||
    /// revoked_by (32) || revoked_at (u64 BE).
    pub fn signed_bytes(&self) -> Vec<u8> {
        revoke_signed_bytes(&self.space, &self.device, &self.revoked_by, self.revoked_at)
    }

    /// Whether the signature is `revoked_by`'s over these fields.
    pub fn verify_signature(&self) -> bool {
        self.revoked_by
            .verify(&self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// The storable form of this revocation.
    pub fn to_record(&self) -> RevocationRecord {
        RevocationRecord {
            space: hex(&self.space.0),
            device: hex(self.device.as_bytes()),
            revoked_by: hex(self.revoked_by.as_bytes()),
            revoked_at: self.revoked_at,
            signature: hex(&self.signature.to_bytes()),
        }
    }
}

fn revoke_signed_bytes(
    space: &SpaceId,
    device: &DeviceId,
    revoked_by: &DeviceId,
    revoked_at: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(REVOKE_DOMAIN.len() + 16 + 32 + 32 + 8);
    out.extend_from_slice(REVOKE_DOMAIN);
    out.extend_from_slice(&space.0);
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(revoked_by.as_bytes());
    out.extend_from_slice(&revoked_at.to_be_bytes());
    out
}

/// A [`Certificate`] as plain fields (lower-case hex for ids and the signature, the role's
/// name), so the sync layer can store it as scalar fields of an Automerge map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub space: String,
    pub device: String,
    pub name: String,
    pub role: String,
    pub added_by: String,
    pub added_at: u64,
    pub signature: String,
}

/// A [`Revocation`] as plain fields, like [`CertificateRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub space: String,
    pub device: String,
    pub revoked_by: String,
    pub revoked_at: u64,
    pub signature: String,
}

/// A stored membership record that cannot be turned back into a certificate or revocation.
///
/// Converting does not check the signature; [`evaluate`] does, and reports bad ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "membership record has an invalid {field} ({value:?}): the space's index document is \
     damaged or was written by an incompatible version"
)]
pub struct RecordError {
    /// Which field failed to parse.
    pub field: &'static str,
    /// Its stored value, shortened.
    pub value: String,
}

impl RecordError {
    fn new(field: &'static str, value: &str) -> RecordError {
        RecordError {
            field,
            value: value.chars().take(80).collect(),
        }
    }
}

fn parse_space(field: &'static str, s: &str) -> Result<SpaceId, RecordError> {
    parse_hex::<16>(s)
        .map(SpaceId)
        .ok_or_else(|| RecordError::new(field, s))
}

fn parse_device(field: &'static str, s: &str) -> Result<DeviceId, RecordError> {
    parse_hex::<32>(s)
        .and_then(|b| DeviceId::from_bytes(&b).ok())
        .ok_or_else(|| RecordError::new(field, s))
}

fn parse_signature(s: &str) -> Result<Signature, RecordError> {
    parse_hex::<64>(s)
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| RecordError::new("signature", s))
}

impl TryFrom<CertificateRecord> for Certificate {
    type Error = RecordError;
    fn try_from(r: CertificateRecord) -> Result<Self, Self::Error> {
        Ok(Certificate {
            space: parse_space("space", &r.space)?,
            device: parse_device("device", &r.device)?,
            role: r
                .role
                .parse()
                .map_err(|_| RecordError::new("role", &r.role))?,
            added_by: parse_device("added_by", &r.added_by)?,
            added_at: r.added_at,
            signature: parse_signature(&r.signature)?,
            name: r.name,
        })
    }
}

impl TryFrom<RevocationRecord> for Revocation {
    type Error = RecordError;
    fn try_from(r: RevocationRecord) -> Result<Self, Self::Error> {
        Ok(Revocation {
            space: parse_space("space", &r.space)?,
            device: parse_device("device", &r.device)?,
            revoked_by: parse_device("revoked_by", &r.revoked_by)?,
            revoked_at: r.revoked_at,
            signature: parse_signature(&r.signature)?,
        })
    }
}

/// A current member of a space, from its effective certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub device: DeviceId,
    pub name: String,
    pub role: Role,
    pub added_by: DeviceId,
    pub added_at: u64,
}

/// Why a certificate does not make its device a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// The signature does not match the signer and the fields.
    BadSignature,
    /// The certificate is for another space.
    WrongSpace,
    /// The signer is not linked to the space's root by valid certificates.
    UnknownSigner,
    /// The signer is linked to the root but its role may not add devices.
    SignerMayNotAdd,
    /// The signer has been revoked, and this certificate is dated at or after that.
    SignerRevoked,
    /// The certified device itself has been revoked.
    Revoked,
    /// A device other than the root signed its own certificate: a member cannot raise its own
    /// role (or name itself the root).
    SelfSigned,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::BadSignature => "signature does not verify",
            Rejection::WrongSpace => "certificate is for another space",
            Rejection::UnknownSigner => "signed by a device that is not a member",
            Rejection::SignerMayNotAdd => "signed by a member whose role may not add devices",
            Rejection::SignerRevoked => "signed by a revoked device after its revocation",
            Rejection::Revoked => "device has been revoked",
            Rejection::SelfSigned => "signed by the device itself, which is not the root",
        })
    }
}

/// Why a revocation does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RevocationRejection {
    /// The signature does not match the signer and the fields.
    BadSignature,
    /// The revocation is for another space.
    WrongSpace,
    /// The signer was never a member whose role may add devices.
    NoAuthority,
    /// It names the root, which no one may revoke.
    RevokesRoot,
    /// It names a desktop, and only the root may revoke a desktop.
    DesktopNeedsRoot,
}

impl fmt::Display for RevocationRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevocationRejection::BadSignature => "signature does not verify",
            RevocationRejection::WrongSpace => "revocation is for another space",
            RevocationRejection::NoAuthority => "signed by a device that may not revoke",
            RevocationRejection::RevokesRoot => "the space's creator cannot be revoked",
            RevocationRejection::DesktopNeedsRoot => {
                "only the space's creator may revoke a desktop"
            }
        })
    }
}

/// The outcome of [`evaluate`]: the members of one space, the revoked devices, the
/// certificates and revocations that did not count, and those worth remembering.
#[derive(Debug, Clone)]
pub struct Membership {
    space: SpaceId,
    root: DeviceId,
    members: BTreeMap<DeviceId, Member>,
    revoked: BTreeMap<DeviceId, u64>,
    rejected: Vec<(DeviceId, Rejection)>,
    ignored_revocations: Vec<(DeviceId, RevocationRejection)>,
    chained: Vec<Certificate>,
    counted_revocations: Vec<Revocation>,
    /// Devices that ever held a chained certificate whose role may add devices.
    ever_may_add: HashSet<DeviceId>,
    /// Devices that ever held a chained desktop certificate.
    ever_desktops: HashSet<DeviceId>,
}

impl Membership {
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The space's creator, the anchor of all certificate chains.
    pub fn root(&self) -> DeviceId {
        self.root
    }

    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.members.contains_key(device)
    }

    pub fn get(&self, device: &DeviceId) -> Option<&Member> {
        self.members.get(device)
    }

    /// Whether `device` is a member whose role may decide approvals.
    pub fn may_approve(&self, device: &DeviceId) -> bool {
        self.get(device).is_some_and(|m| m.role.may_approve())
    }

    /// All current members, ordered by device id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains_key(device)
    }

    /// When `device` was revoked (the earliest valid revocation), if it was.
    pub fn revoked_at(&self, device: &DeviceId) -> Option<u64> {
        self.revoked.get(device).copied()
    }

    /// Certificates that did not count, with the device each one named and the reason.
    pub fn rejected(&self) -> &[(DeviceId, Rejection)] {
        &self.rejected
    }

    /// Whether a revocation of `device` signed by `by` would count (signature aside): the
    /// check `Node::revoke` makes before signing, the same rule [`evaluate`] applies.
    pub fn may_revoke(&self, by: &DeviceId, device: &DeviceId) -> Result<(), RevocationRejection> {
        revocation_rule(
            self.root,
            &self.ever_may_add,
            &self.ever_desktops,
            by,
            device,
        )
    }

    /// Revocations that did not count, with the device each one named and the reason.
    pub fn ignored_revocations(&self) -> &[(DeviceId, RevocationRejection)] {
        &self.ignored_revocations
    }

    /// The certificates with a valid chain from the root, revocations aside (those of devices
    /// revoked since included): what a node keeps in its ledger so that deleting them from a
    /// document changes nothing. Ordered by device, then signature.
    pub fn chained_certificates(&self) -> &[Certificate] {
        &self.chained
    }

    /// The revocations that count: what a node keeps in its ledger so that deleting one from a
    /// document un-revokes nobody. Ordered by device, then signature.
    pub fn counted_revocations(&self) -> &[Revocation] {
        &self.counted_revocations
    }
}

/// Decides who is a member of `space`, given every certificate and revocation known.
///
/// `space` and `root` are the ones this device pinned when it created or joined the space
/// (`space` is [`space_id`] of `root` for every space made by this version), never values read
/// from a document. The inputs are everything known: the index document's entries and the
/// node's ledger of entries seen before, so deleting an entry from the document changes nothing.
///
/// Rules:
///
/// * The `root` is admitted by a valid certificate it signed for itself with role desktop.
/// * Any other certificate for this space counts if its signature is valid, it was not signed by
///   the device it names (only the root certifies itself: a member cannot raise its own role),
///   and its signer holds a counting certificate whose role may add devices
///   ([`Role::may_add_devices`]). Chains are resolved from the root outwards with a work list, so
///   depth costs no stack, every certificate is looked at a bounded number of times, and a group
///   of devices certifying each other without a path from the root gains nothing.
/// * A revocation counts if its signature is valid, it is for this space, its signer was at
///   some point admitted with a role that may add devices (it may itself have been revoked
///   since: removing a lost device must not need the device that added it), and:
///   - it does not name the root: no one revokes the root, not even the root itself;
///   - if it names a device that holds (or held) a desktop certificate, the root signed it:
///     only the root revokes a desktop.
/// * A revoked device is not a member, whatever certificates it has. In this version that is
///   final: a later certificate does not re-admit it; pair the device again under a new key.
/// * Revoking a device does not remove the devices it added. A revocation signed by the root
///   also stops the revoked device from adding more: its certificates dated at or after the
///   revocation do not count. A revocation signed by any other member removes the device it
///   names and nothing else, whatever date it claims. Dates are the signer's claim: with a cutoff
///   taken from any member's revocation, a hostile phone could revoke another phone "at time 0"
///   and so cut off every device that phone ever added (and, before desktops and the root were
///   protected, the whole space). And the cutoff protects little against a stolen key anyway,
///   which can backdate what it signs; what keeps a revoked device's later certificates out is
///   that members refuse its connections, so they can reach the index only through a member
///   that has not yet learned of the revocation. Review the device list after revoking a lost
///   device, and revoke what it added since.
/// * If a device has several counting certificates, the one with the latest `added_at` gives
///   its name and role. The right to add devices comes from any counting certificate with such
///   a role; a newer certificate with a lesser role does not withdraw it (revoke for that).
///
/// The result does not depend on the order of the inputs, nor on duplicates among them.
pub fn evaluate(
    space: SpaceId,
    root: DeviceId,
    certificates: &[Certificate],
    revocations: &[Revocation],
) -> Membership {
    let mut rejected = Vec::new();
    let mut candidates = Vec::with_capacity(certificates.len());
    let mut seen = HashSet::new();
    for cert in certificates {
        // Whole copies only: a tampered copy that shares the signature must not hide the
        // genuine one.
        if !seen.insert((cert.signature.to_bytes(), cert.signed_bytes())) {
            continue;
        }
        if cert.space != space {
            rejected.push((cert.device, Rejection::WrongSpace));
        } else if !cert.verify_signature() {
            rejected.push((cert.device, Rejection::BadSignature));
        } else if cert.added_by == cert.device && cert.device != root {
            rejected.push((cert.device, Rejection::SelfSigned));
        } else {
            candidates.push(cert);
        }
    }

    // Revocation authority is judged on chains without any revocation applied, so that a
    // revocation never depends on another one (no circularity, no order dependence).
    let ever = resolve(root, &candidates, &HashMap::new());
    let desktops: HashSet<DeviceId> = candidates
        .iter()
        .zip(&ever.accepted)
        .filter(|(c, accepted)| **accepted && c.role == Role::Desktop)
        .map(|(c, _)| c.device)
        .collect();
    let mut revoked: HashMap<DeviceId, u64> = HashMap::new();
    let mut cutoff: HashMap<DeviceId, u64> = HashMap::new();
    let mut counted_revocations = Vec::new();
    let mut ignored_revocations = Vec::new();
    let mut seen = HashSet::new();
    for rev in revocations {
        if !seen.insert((rev.signature.to_bytes(), rev.signed_bytes())) {
            continue;
        }
        let verdict = if rev.space != space {
            Err(RevocationRejection::WrongSpace)
        } else if let Err(reason) =
            revocation_rule(root, &ever.may_add, &desktops, &rev.revoked_by, &rev.device)
        {
            Err(reason)
        } else if !rev.verify_signature() {
            Err(RevocationRejection::BadSignature)
        } else {
            Ok(())
        };
        match verdict {
            Ok(()) => {
                revoked
                    .entry(rev.device)
                    .and_modify(|t| *t = (*t).min(rev.revoked_at))
                    .or_insert(rev.revoked_at);
                if rev.revoked_by == root {
                    cutoff
                        .entry(rev.device)
                        .and_modify(|t| *t = (*t).min(rev.revoked_at))
                        .or_insert(rev.revoked_at);
                }
                counted_revocations.push(rev.clone());
            }
            Err(reason) => ignored_revocations.push((rev.device, reason)),
        }
    }

    let chains = resolve(root, &candidates, &cutoff);
    let mut best: HashMap<DeviceId, &Certificate> = HashMap::new();
    for (cert, accepted) in candidates.iter().zip(&chains.accepted) {
        if revoked.contains_key(&cert.device) {
            rejected.push((cert.device, Rejection::Revoked));
        } else if *accepted {
            best.entry(cert.device)
                .and_modify(|b| {
                    if sort_key(cert) > sort_key(b) {
                        *b = cert;
                    }
                })
                .or_insert(cert);
        } else {
            let reason = if chains.may_add.contains(&cert.added_by) {
                // The signer had authority, so only its revocation cutoff can have excluded it.
                Rejection::SignerRevoked
            } else if chains.linked.contains(&cert.added_by) {
                Rejection::SignerMayNotAdd
            } else {
                Rejection::UnknownSigner
            };
            rejected.push((cert.device, reason));
        }
    }

    let members = best
        .into_iter()
        .map(|(device, c)| {
            let member = Member {
                device,
                name: c.name.clone(),
                role: c.role,
                added_by: c.added_by,
                added_at: c.added_at,
            };
            (device, member)
        })
        .collect();
    let mut chained: Vec<Certificate> = candidates
        .iter()
        .zip(&ever.accepted)
        .filter(|(_, accepted)| **accepted)
        .map(|(c, _)| (*c).clone())
        .collect();
    chained.sort_by_key(|c| (c.device, c.signature.to_bytes()));
    counted_revocations.sort_by_key(|r| (r.device, r.signature.to_bytes()));
    rejected.sort();
    ignored_revocations.sort();
    Membership {
        space,
        root,
        members,
        revoked: revoked.into_iter().collect(),
        rejected,
        ignored_revocations,
        chained,
        counted_revocations,
        ever_may_add: ever.may_add,
        ever_desktops: desktops,
    }
}

/// Who may revoke whom (see [`evaluate`]).
fn revocation_rule(
    root: DeviceId,
    may_add: &HashSet<DeviceId>,
    desktops: &HashSet<DeviceId>,
    by: &DeviceId,
    device: &DeviceId,
) -> Result<(), RevocationRejection> {
    if !may_add.contains(by) {
        Err(RevocationRejection::NoAuthority)
    } else if *device == root {
        Err(RevocationRejection::RevokesRoot)
    } else if desktops.contains(device) && *by != root {
        Err(RevocationRejection::DesktopNeedsRoot)
    } else {
        Ok(())
    }
}

/// Orders certificates of one device: latest `added_at` wins, ties broken by signature bytes so
/// the choice never depends on input order.
fn sort_key(cert: &Certificate) -> (u64, [u8; 64]) {
    (cert.added_at, cert.signature.to_bytes())
}

/// Certificates reachable from the root.
struct Chains {
    /// Parallel to the candidate list: whether each certificate counts.
    accepted: Vec<bool>,
    /// Devices with at least one counting certificate (including revoked ones).
    linked: HashSet<DeviceId>,
    /// Devices with a counting certificate whose role may add devices.
    may_add: HashSet<DeviceId>,
}

/// Resolves chains from `root` over certificates whose signatures are already verified.
/// A certificate signed by a device in `cutoff` counts only if dated before that time.
fn resolve(root: DeviceId, certs: &[&Certificate], cutoff: &HashMap<DeviceId, u64>) -> Chains {
    let in_time = |c: &Certificate| cutoff.get(&c.added_by).is_none_or(|t| c.added_at < *t);
    let mut by_signer: HashMap<DeviceId, Vec<usize>> = HashMap::new();
    for (i, c) in certs.iter().enumerate() {
        by_signer.entry(c.added_by).or_default().push(i);
    }
    let mut chains = Chains {
        accepted: vec![false; certs.len()],
        linked: HashSet::new(),
        may_add: HashSet::new(),
    };

    // The root bootstraps itself; every other signer must be reached from it.
    let root_admitted = certs
        .iter()
        .any(|c| c.device == root && c.added_by == root && c.role == Role::Desktop && in_time(c));
    let mut work = Vec::new();
    if root_admitted {
        chains.may_add.insert(root);
        work.push(root);
    }
    // Each signer enters the work list once (when it first gains the right to add), so each
    // certificate is examined at most once.
    while let Some(signer) = work.pop() {
        for &i in by_signer
            .get(&signer)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let cert = certs[i];
            if chains.accepted[i] || !in_time(cert) {
                continue;
            }
            chains.accepted[i] = true;
            chains.linked.insert(cert.device);
            if cert.role.may_add_devices() && chains.may_add.insert(cert.device) {
                work.push(cert.device);
            }
        }
    }
    chains
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Dev {
        key: SecretKey,
    }

    impl Dev {
        fn new() -> Dev {
            Dev {
                key: SecretKey::generate(),
            }
        }
        fn id(&self) -> DeviceId {
            self.key.public()
        }
        fn certify(&self, space: SpaceId, other: &Dev, role: Role, at: u64) -> Certificate {
            Certificate::sign(&self.key, space, other.id(), format!("dev{at}"), role, at)
        }
        fn revoke(&self, space: SpaceId, other: &Dev, at: u64) -> Revocation {
            Revocation::sign(&self.key, space, other.id(), at)
        }
    }

    fn rejection(m: &Membership, d: &Dev) -> Vec<Rejection> {
        m.rejected()
            .iter()
            .filter(|(id, _)| *id == d.id())
            .map(|(_, r)| *r)
            .collect()
    }

    /// root -> desktop -> phone -> viewer, in space `s`.
    fn chain() -> (SpaceId, [Dev; 4], Vec<Certificate>) {
        let s = SpaceId::random();
        let devs = [Dev::new(), Dev::new(), Dev::new(), Dev::new()];
        let [root, desk, phone, viewer] = &devs;
        let certs = vec![
            root.certify(s, root, Role::Desktop, 1),
            root.certify(s, desk, Role::Desktop, 2),
            desk.certify(s, phone, Role::Phone, 3),
            phone.certify(s, viewer, Role::Viewer, 4),
        ];
        (s, devs, certs)
    }

    #[test]
    fn signatures_verify_and_cover_every_field() {
        let s = SpaceId::random();
        let (a, b) = (Dev::new(), Dev::new());
        let cert = a.certify(s, &b, Role::Phone, 10);
        assert!(cert.verify_signature());
        assert_eq!(cert.added_by, a.id());

        let mut c = cert.clone();
        c.name.push('x');
        assert!(!c.verify_signature());
        let mut c = cert.clone();
        c.role = Role::Desktop;
        assert!(!c.verify_signature());
        let mut c = cert.clone();
        c.added_at += 1;
        assert!(!c.verify_signature());
        let mut c = cert.clone();
        c.space = SpaceId::random();
        assert!(!c.verify_signature());
        let mut c = cert.clone();
        c.device = a.id();
        assert!(!c.verify_signature());
        let mut c = cert;
        c.added_by = b.id();
        assert!(!c.verify_signature());

        let rev = a.revoke(s, &b, 5);
        assert!(rev.verify_signature());
        let mut r = rev.clone();
        r.revoked_at = 6;
        assert!(!r.verify_signature());
    }

    #[test]
    fn chain_root_desktop_phone_viewer() {
        let (s, devs, certs) = chain();
        let [root, desk, phone, viewer] = &devs;
        let m = evaluate(s, root.id(), &certs, &[]);
        assert_eq!(m.members().count(), 4);
        assert!(m.rejected().is_empty(), "{:?}", m.rejected());
        assert_eq!(m.get(&root.id()).unwrap().role, Role::Desktop);
        assert_eq!(m.get(&desk.id()).unwrap().added_by, root.id());
        let p = m.get(&phone.id()).unwrap();
        assert_eq!(
            (p.role, p.added_by, p.added_at),
            (Role::Phone, desk.id(), 3)
        );
        assert_eq!(p.name, "dev3");
        assert_eq!(m.get(&viewer.id()).unwrap().role, Role::Viewer);
        assert_eq!(m.space(), s);
        assert_eq!(m.root(), root.id());

        // Order of the inputs does not matter.
        let mut reversed = certs.clone();
        reversed.reverse();
        let m2 = evaluate(s, root.id(), &reversed, &[]);
        assert_eq!(
            m.members().collect::<Vec<_>>(),
            m2.members().collect::<Vec<_>>()
        );
    }

    #[test]
    fn root_needs_a_self_signed_desktop_certificate() {
        let (s, devs, mut certs) = chain();
        let [root, desk, ..] = &devs;
        certs.remove(0);
        let m = evaluate(s, root.id(), &certs, &[]);
        assert_eq!(m.members().count(), 0);
        assert_eq!(rejection(&m, desk), vec![Rejection::UnknownSigner]);

        certs.push(root.certify(s, root, Role::Phone, 1));
        let m = evaluate(s, root.id(), &certs, &[]);
        assert_eq!(m.members().count(), 0);

        // A desktop certificate for the root signed by someone else does not bootstrap it.
        certs.push(desk.certify(s, root, Role::Desktop, 1));
        let m = evaluate(s, root.id(), &certs, &[]);
        assert_eq!(m.members().count(), 0);
    }

    #[test]
    fn forged_signature_is_rejected() {
        let (s, devs, mut certs) = chain();
        let [root, ..] = &devs;
        let intruder = Dev::new();
        // Claims the root signed it, but the intruder's key made the signature.
        let mut forged = intruder.certify(s, &intruder, Role::Desktop, 9);
        forged.added_by = root.id();
        certs.push(forged);
        // A genuine certificate whose role was edited afterwards.
        let mut edited = root.certify(s, &Dev::new(), Role::Viewer, 9);
        edited.role = Role::Desktop;
        let edited_dev = edited.device;
        certs.push(edited);

        let m = evaluate(s, root.id(), &certs, &[]);
        assert!(!m.is_member(&intruder.id()));
        assert!(!m.is_member(&edited_dev));
        assert_eq!(rejection(&m, &intruder), vec![Rejection::BadSignature]);
        assert!(
            m.rejected()
                .contains(&(edited_dev, Rejection::BadSignature))
        );
        assert_eq!(m.members().count(), 4);
    }

    #[test]
    fn viewer_cannot_add_devices() {
        let (s, devs, mut certs) = chain();
        let [root, _, _, viewer] = &devs;
        let newcomer = Dev::new();
        certs.push(viewer.certify(s, &newcomer, Role::Phone, 5));
        let m = evaluate(s, root.id(), &certs, &[]);
        assert!(!m.is_member(&newcomer.id()));
        assert_eq!(rejection(&m, &newcomer), vec![Rejection::SignerMayNotAdd]);
    }

    #[test]
    fn cross_space_certificate_is_rejected() {
        let (s, devs, mut certs) = chain();
        let [root, desk, ..] = &devs;
        let other_space = SpaceId::random();
        let stranger = Dev::new();
        certs.push(desk.certify(other_space, &stranger, Role::Desktop, 5));
        let m = evaluate(s, root.id(), &certs, &[]);
        assert!(!m.is_member(&stranger.id()));
        assert_eq!(rejection(&m, &stranger), vec![Rejection::WrongSpace]);

        // The same certificates say nothing about the other space.
        let m = evaluate(other_space, root.id(), &certs, &[]);
        assert_eq!(m.members().count(), 0);
    }

    #[test]
    fn revoked_device_is_out_but_devices_it_added_stay() {
        let (s, devs, mut certs) = chain();
        let [root, desk, phone, viewer] = &devs;
        let late = Dev::new();
        // The phone (say, stolen) signs another device after its revocation by the root.
        certs.push(phone.certify(s, &late, Role::Desktop, 20));
        let revs = vec![root.revoke(s, phone, 10)];

        let m = evaluate(s, root.id(), &certs, &revs);
        assert!(!m.is_member(&phone.id()));
        assert!(m.is_revoked(&phone.id()));
        assert_eq!(m.revoked_at(&phone.id()), Some(10));
        assert_eq!(rejection(&m, phone), vec![Rejection::Revoked]);
        assert!(m.is_member(&viewer.id()), "added before the revocation");
        assert!(!m.is_member(&late.id()));
        assert_eq!(rejection(&m, &late), vec![Rejection::SignerRevoked]);
        assert!(m.is_member(&root.id()) && m.is_member(&desk.id()));

        // A later certificate does not re-admit the revoked device.
        certs.push(root.certify(s, phone, Role::Phone, 30));
        let m = evaluate(s, root.id(), &certs, &revs);
        assert!(!m.is_member(&phone.id()));
        assert!(m.is_member(&viewer.id()));
    }

    #[test]
    fn space_id_is_derived_from_the_root_key() {
        let (a, b) = (Dev::new(), Dev::new());
        assert_eq!(space_id(&a.id()), space_id(&a.id()));
        assert_ne!(space_id(&a.id()), space_id(&b.id()));
        assert!(is_root_of(&space_id(&a.id()), &a.id()));
        assert!(!is_root_of(&space_id(&a.id()), &b.id()));
        assert!(!is_root_of(&SpaceId::random(), &a.id()));
    }

    #[test]
    fn a_member_signing_its_own_certificate_gains_nothing() {
        let (s, devs, mut certs) = chain();
        let [root, _, phone, viewer] = &devs;
        // The phone certifies itself as a desktop, later than its real certificate; the viewer
        // certifies itself as a phone.
        certs.push(phone.certify(s, phone, Role::Desktop, 50));
        certs.push(viewer.certify(s, viewer, Role::Phone, 50));
        let m = evaluate(s, root.id(), &certs, &[]);
        assert_eq!(m.get(&phone.id()).unwrap().role, Role::Phone);
        assert_eq!(m.get(&viewer.id()).unwrap().role, Role::Viewer);
        assert_eq!(rejection(&m, phone), vec![Rejection::SelfSigned]);
        assert_eq!(rejection(&m, viewer), vec![Rejection::SelfSigned]);
        assert_eq!(m.root(), root.id());
        // Only the root may be admitted by its own certificate; a member's self-signed
        // certificate is not worth remembering.
        assert!(
            m.chained_certificates()
                .iter()
                .all(|c| c.added_by != c.device || c.device == root.id())
        );
        // And evaluated with the phone as "root" (a document that says so), the phone's
        // self-signed certificate would make it the root: which is why the root is pinned.
        let m = evaluate(s, phone.id(), &certs, &[]);
        assert_eq!(m.get(&phone.id()).unwrap().role, Role::Desktop);
    }

    #[test]
    fn no_one_revokes_the_root_and_only_the_root_revokes_a_desktop() {
        let (s, devs, certs) = chain();
        let [root, desk, phone, viewer] = &devs;
        let revs = vec![
            phone.revoke(s, root, 5),
            desk.revoke(s, root, 5),
            root.revoke(s, root, 5),
            phone.revoke(s, desk, 5),
        ];
        let m = evaluate(s, root.id(), &certs, &revs);
        assert_eq!(m.members().count(), 4);
        assert!(!m.is_revoked(&root.id()) && !m.is_revoked(&desk.id()));
        let mut expected = [
            (root.id(), RevocationRejection::RevokesRoot),
            (root.id(), RevocationRejection::RevokesRoot),
            (root.id(), RevocationRejection::RevokesRoot),
            (desk.id(), RevocationRejection::DesktopNeedsRoot),
        ];
        expected.sort();
        assert_eq!(m.ignored_revocations(), &expected[..]);
        assert!(m.counted_revocations().is_empty());
        // The same answers up front, for `Node::revoke`.
        assert_eq!(
            m.may_revoke(&phone.id(), &root.id()),
            Err(RevocationRejection::RevokesRoot)
        );
        assert_eq!(
            m.may_revoke(&phone.id(), &desk.id()),
            Err(RevocationRejection::DesktopNeedsRoot)
        );
        assert_eq!(
            m.may_revoke(&desk.id(), &desk.id()),
            Err(RevocationRejection::DesktopNeedsRoot)
        );
        assert_eq!(
            m.may_revoke(&viewer.id(), &phone.id()),
            Err(RevocationRejection::NoAuthority)
        );
        assert_eq!(m.may_revoke(&phone.id(), &viewer.id()), Ok(()));
        assert_eq!(m.may_revoke(&root.id(), &desk.id()), Ok(()));

        // A phone made a desktop by a second certificate is protected as a desktop.
        let mut more = certs.clone();
        more.push(desk.certify(s, phone, Role::Desktop, 9));
        let m = evaluate(s, root.id(), &more, &[desk.revoke(s, phone, 10)]);
        assert!(m.is_member(&phone.id()));

        // The root revokes a desktop.
        let m = evaluate(s, root.id(), &certs, &[root.revoke(s, desk, 5)]);
        assert!(m.is_revoked(&desk.id()));
        assert!(m.is_member(&phone.id()), "added by the desktop before");
        assert_eq!(m.counted_revocations().len(), 1);
    }

    #[test]
    fn a_revocation_dated_zero_by_a_member_cuts_off_only_its_target() {
        let (s, devs, mut certs) = chain();
        let [root, desk, phone, viewer] = &devs;
        let (tablet, other) = (Dev::new(), Dev::new());
        // A second phone, added by the desktop; the first phone adds a tablet later.
        certs.push(desk.certify(s, &other, Role::Phone, 5));
        certs.push(phone.certify(s, &tablet, Role::Viewer, 6));
        // The other phone turns hostile and revokes the first one "at time 0".
        let revs = vec![other.revoke(s, phone, 0)];
        let m = evaluate(s, root.id(), &certs, &revs);
        assert!(m.is_revoked(&phone.id()));
        assert!(m.is_member(&viewer.id()) && m.is_member(&tablet.id()));
        assert!(m.is_member(&root.id()) && m.is_member(&desk.id()));
        assert_eq!(m.members().count(), 5);

        // Neither the root nor the desktop can be revoked at 0 by it either.
        let revs = vec![other.revoke(s, root, 0), other.revoke(s, desk, 0)];
        let m = evaluate(s, root.id(), &certs, &revs);
        assert_eq!(m.members().count(), 6);

        // The root's own revocation does set a cutoff, at its date.
        let m = evaluate(s, root.id(), &certs, &[root.revoke(s, phone, 5)]);
        assert!(m.is_member(&viewer.id()), "dated 4, before the cutoff");
        assert!(!m.is_member(&tablet.id()), "dated 6, after the cutoff");
        assert_eq!(rejection(&m, &tablet), vec![Rejection::SignerRevoked]);
    }

    #[test]
    fn a_tampered_copy_does_not_hide_the_genuine_entry() {
        let (s, devs, certs) = chain();
        let [root, desk, phone, _] = &devs;
        let mut tampered = certs[2].clone();
        tampered.role = Role::Desktop;
        let mut first = vec![tampered];
        first.extend(certs.iter().cloned());
        first.extend(certs.iter().cloned());
        let m = evaluate(s, root.id(), &first, &[]);
        assert_eq!(m.members().count(), 4);
        assert_eq!(m.get(&phone.id()).unwrap().role, Role::Phone);
        assert_eq!(m.chained_certificates().len(), 4);

        let rev = desk.revoke(s, phone, 7);
        let mut bad = rev.clone();
        bad.revoked_at = 0;
        let m = evaluate(s, root.id(), &certs, &[bad, rev.clone(), rev]);
        assert!(m.is_revoked(&phone.id()));
        assert_eq!(m.revoked_at(&phone.id()), Some(7));
        assert_eq!(m.counted_revocations().len(), 1);
    }

    #[test]
    fn revoking_the_revoker_keeps_its_revocations() {
        let (s, devs, certs) = chain();
        let [root, desk, phone, _] = &devs;
        let revs = vec![desk.revoke(s, phone, 10), root.revoke(s, desk, 11)];
        let m = evaluate(s, root.id(), &certs, &revs);
        assert!(m.is_revoked(&phone.id()) && m.is_revoked(&desk.id()));
        assert_eq!(m.members().count(), 2);
    }

    #[test]
    fn revocations_without_authority_are_ignored() {
        let (s, devs, certs) = chain();
        let [root, desk, phone, viewer] = &devs;
        let stranger = Dev::new();
        let mut forged = stranger.revoke(s, desk, 5);
        forged.revoked_by = root.id();
        let revs = vec![
            viewer.revoke(s, phone, 5),
            stranger.revoke(s, phone, 5),
            root.revoke(SpaceId::random(), phone, 5),
            forged,
        ];
        let m = evaluate(s, root.id(), &certs, &revs);
        assert_eq!(m.members().count(), 4);
        assert!(!m.is_revoked(&phone.id()) && !m.is_revoked(&desk.id()));
    }

    #[test]
    fn certification_cycle_without_root_admits_nobody() {
        let s = SpaceId::random();
        let (root, a, b) = (Dev::new(), Dev::new(), Dev::new());
        let certs = vec![
            a.certify(s, &b, Role::Desktop, 1),
            b.certify(s, &a, Role::Desktop, 1),
            a.certify(s, &a, Role::Desktop, 1),
        ];
        let m = evaluate(s, root.id(), &certs, &[]);
        assert!(!m.is_member(&a.id()) && !m.is_member(&b.id()));
        assert_eq!(m.members().count(), 0);
        assert_eq!(m.rejected().len(), 3);
        let mut expected = [
            (a.id(), Rejection::UnknownSigner),
            (b.id(), Rejection::UnknownSigner),
            (a.id(), Rejection::SelfSigned),
        ];
        expected.sort();
        assert_eq!(m.rejected(), &expected[..]);

        // With the root present but not linked to the cycle, still nothing for a and b.
        let mut with_root = certs;
        with_root.push(root.certify(s, &root, Role::Desktop, 0));
        let m = evaluate(s, root.id(), &with_root, &[]);
        assert_eq!(
            m.members().map(|m| m.device).collect::<Vec<_>>(),
            vec![root.id()]
        );
    }

    #[test]
    fn latest_certificate_wins() {
        let (s, devs, mut certs) = chain();
        let [root, desk, phone, _] = &devs;
        certs.push(Certificate::sign(
            &root.key,
            s,
            phone.id(),
            "new name",
            Role::Viewer,
            8,
        ));
        certs.push(Certificate::sign(
            &desk.key,
            s,
            phone.id(),
            "old name",
            Role::Desktop,
            2,
        ));
        let m = evaluate(s, root.id(), &certs, &[]);
        let p = m.get(&phone.id()).unwrap();
        assert_eq!(
            (p.name.as_str(), p.role, p.added_at),
            ("new name", Role::Viewer, 8)
        );
    }

    #[test]
    fn long_chains_resolve_without_recursion() {
        let s = SpaceId::random();
        let devs: Vec<Dev> = (0..3000).map(|_| Dev::new()).collect();
        let mut certs = vec![devs[0].certify(s, &devs[0], Role::Desktop, 0)];
        for (i, pair) in devs.windows(2).enumerate() {
            certs.push(pair[0].certify(s, &pair[1], Role::Phone, i as u64 + 1));
        }
        certs.reverse();
        let m = evaluate(s, devs[0].id(), &certs, &[]);
        assert_eq!(m.members().count(), devs.len());
    }

    #[test]
    fn records_round_trip() {
        let (s, devs, certs) = chain();
        let [_, desk, phone, _] = &devs;
        for cert in &certs {
            let rec = cert.to_record();
            let json = serde_json::to_string(&rec).unwrap();
            let back: CertificateRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(Certificate::try_from(back).unwrap(), *cert);
        }
        let rec = certs[2].to_record();
        assert_eq!(rec.role, "phone");
        assert_eq!(rec.space, s.to_string());
        assert_eq!(rec.signature.len(), 128);

        let rev = desk.revoke(s, phone, 7);
        let rec = rev.to_record();
        assert_eq!(Revocation::try_from(rec.clone()).unwrap(), rev);

        let mut bad = certs[1].to_record();
        bad.role = "admin".into();
        let err = Certificate::try_from(bad).unwrap_err();
        assert_eq!(err.field, "role");
        assert!(err.to_string().contains("role"));
        let mut bad = certs[1].to_record();
        bad.device = "zz".into();
        assert_eq!(Certificate::try_from(bad).unwrap_err().field, "device");
        let mut bad = certs[1].to_record();
        bad.signature.pop();
        assert_eq!(Certificate::try_from(bad).unwrap_err().field, "signature");
        let mut bad = rec;
        bad.revoked_by = hex(&{
            let mut k = [0u8; 32];
            k[0] = 2;
            k
        });
        assert_eq!(Revocation::try_from(bad).unwrap_err().field, "revoked_by");
    }
}
