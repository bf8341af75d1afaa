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
mod tests;
