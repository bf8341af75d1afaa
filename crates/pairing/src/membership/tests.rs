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
