//! Signed membership: who belongs to a space, checkable by every member offline.
//!
//! A [`Certificate`] says "device D, named N, has role R in space S", signed by the device that
//! added it. A [`Revocation`] says "device D is no longer a member of S", signed by a device that
//! may add devices. Both live in the space's index document, which every member replicates, so
//! [`evaluate`] can decide membership from the document alone, with no server and no network.
//!
//! Trust starts at the space's root, the desktop that created the space, whose id every member
//! learns when it pairs. Everything else has to chain back to it.
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
        })
    }
}

/// The outcome of [`evaluate`]: the members of one space, the revoked devices and the
/// certificates that did not count.
#[derive(Debug, Clone)]
pub struct Membership {
    space: SpaceId,
    root: DeviceId,
    members: BTreeMap<DeviceId, Member>,
    revoked: BTreeMap<DeviceId, u64>,
    rejected: Vec<(DeviceId, Rejection)>,
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
}

/// Decides who is a member of `space`, given every certificate and revocation known.
///
/// Rules:
///
/// * The `root` is admitted by a valid certificate it signed for itself with role desktop.
/// * Any other certificate for this space counts if its signature is valid and its signer holds
///   a counting certificate whose role may add devices ([`Role::may_add_devices`]). Chains are
///   resolved from the root outwards with a work list, so depth costs no stack, every
///   certificate is looked at a bounded number of times, and a group of devices certifying each
///   other without a path from the root gains nothing.
/// * A revocation counts if its signature is valid, it is for this space, and its signer was at
///   some point admitted with a role that may add devices (it may itself have been revoked
///   since: removing a lost device must not need the device that added it).
/// * A revoked device is not a member, whatever certificates it has. In this version that is
///   final: a later certificate does not re-admit it; pair the device again under a new key.
/// * Revoking a device does not remove the devices it added before its revocation, because
///   otherwise losing one phone would cut off every device that phone had ever paired. It does
///   stop it from adding more: its certificates dated at or after the revocation do not count.
///   Dates are the signer's claim, so a stolen key could backdate a certificate; such a
///   certificate can only reach the index document before every member has seen the
///   revocation, since members refuse connections from revoked keys. Review the device list
///   after revoking a lost device.
/// * If a device has several counting certificates, the one with the latest `added_at` gives
///   its name and role. The right to add devices comes from any counting certificate with such
///   a role; a newer certificate with a lesser role does not withdraw it (revoke for that).
///
/// The result does not depend on the order of the inputs.
pub fn evaluate(
    space: SpaceId,
    root: DeviceId,
    certificates: &[Certificate],
    revocations: &[Revocation],
) -> Membership {
    let mut rejected = Vec::new();
    let mut candidates = Vec::with_capacity(certificates.len());
    for cert in certificates {
        if cert.space != space {
            rejected.push((cert.device, Rejection::WrongSpace));
        } else if !cert.verify_signature() {
            rejected.push((cert.device, Rejection::BadSignature));
        } else {
            candidates.push(cert);
        }
    }

    // Revocation authority is judged on chains without any revocation applied, so that a
    // revocation never depends on another one (no circularity, no order dependence).
    let ever = resolve(root, &candidates, &HashMap::new());
    let mut revoked: HashMap<DeviceId, u64> = HashMap::new();
    for rev in revocations {
        if rev.space == space && ever.may_add.contains(&rev.revoked_by) && rev.verify_signature() {
            revoked
                .entry(rev.device)
                .and_modify(|t| *t = (*t).min(rev.revoked_at))
                .or_insert(rev.revoked_at);
        }
    }

    let chains = resolve(root, &candidates, &revoked);
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
    rejected.sort();
    Membership {
        space,
        root,
        members,
        revoked: revoked.into_iter().collect(),
        rejected,
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
        // The phone (say, stolen) signs another device after its revocation.
        certs.push(phone.certify(s, &late, Role::Desktop, 20));
        let revs = vec![desk.revoke(s, phone, 10)];

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
        assert!(
            m.rejected()
                .iter()
                .all(|(_, r)| *r == Rejection::UnknownSigner)
        );

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
