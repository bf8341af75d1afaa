//! The membership gate: what it admits, as the index and the pinned root say.

use super::*;
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use errand_sync::Role;
use iroh::SecretKey;

struct Space {
    root: SecretKey,
    desk: SecretKey,
    phone: SecretKey,
    hostile: SecretKey,
    space: SpaceId,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

/// A space made by `root`, with a second desktop, an honest phone and a phone that turns
/// hostile; and a store for this device (the second desktop).
fn space() -> Space {
    let root = SecretKey::generate();
    let space = membership::space_id(&root.public());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("errand.redb")).unwrap());
    Space {
        root,
        desk: SecretKey::generate(),
        phone: SecretKey::generate(),
        hostile: SecretKey::generate(),
        space,
        _dir: dir,
        store,
    }
}

impl Space {
    fn cert(&self, by: &SecretKey, device: &SecretKey, role: Role, at: u64) -> Certificate {
        Certificate::sign(by, self.space, device.public(), "x", role, at)
    }

    /// The index as the honest devices wrote it.
    fn index(&self) -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        index::create(
            &mut tx,
            &self.space.to_string(),
            &self.root.public().to_string(),
        )
        .unwrap();
        for cert in [
            self.cert(&self.root, &self.root, Role::Desktop, 1),
            self.cert(&self.root, &self.desk, Role::Desktop, 2),
            self.cert(&self.desk, &self.phone, Role::Phone, 3),
            self.cert(&self.desk, &self.hostile, Role::Phone, 4),
        ] {
            index::put_member(&mut tx, &member_entry(&cert)).unwrap();
        }
        tx.commit();
        doc
    }

    fn gate(&self) -> MembershipGate {
        MembershipGate::new(self.desk.public(), self.store.clone())
    }

    fn pinned_gate(&self) -> MembershipGate {
        let gate = self.gate();
        gate.pin(self.space, self.root.public()).unwrap();
        gate
    }
}

/// A hostile member's write to the index.
fn write(doc: &mut Automerge, f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) {
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
}

fn devices(m: &Membership) -> Vec<(DeviceId, Role)> {
    m.members().map(|m| (m.device, m.role)).collect()
}

#[test]
fn a_rewritten_root_field_and_a_self_signed_certificate_change_nothing() {
    let s = space();
    let gate = s.pinned_gate();
    let mut doc = s.index();
    let honest = gate.refresh_from(&doc).unwrap();
    assert_eq!(honest.members().count(), 4);
    assert!(gate.allows(&s.phone.public()));

    // The hostile phone names itself the root (and the space after its own key), and
    // signs itself a desktop certificate.
    let hostile = s.hostile.public();
    let own = Certificate::sign(
        &s.hostile,
        membership::space_id(&hostile),
        hostile,
        "boss",
        Role::Desktop,
        9,
    );
    write(&mut doc, |tx| {
        tx.put(ROOT, "root", hostile.to_string()).unwrap();
        index::put_member(tx, &member_entry(&own)).unwrap();
    });
    let m = gate.refresh_from(&doc).unwrap();
    assert_eq!(m.root(), s.root.public());
    assert!(gate.allows(&s.phone.public()) && gate.allows(&s.root.public()));
    // Its own certificate replaced its entry in the index, but the ledger remembers the
    // desktop's certificate for it; the self-signed one counts for nothing.
    assert_eq!(m.get(&hostile).map(|m| m.role), Some(Role::Phone));
    assert_eq!(devices(&m), devices(&honest));

    // So does a rewritten space field.
    write(&mut doc, |tx| {
        tx.put(ROOT, "space", SpaceId::random().to_string())
            .unwrap();
    });
    assert_eq!(devices(&gate.refresh_from(&doc).unwrap()), devices(&honest));
}

#[test]
fn deleted_member_entries_are_remembered_across_restarts() {
    let s = space();
    let gate = s.pinned_gate();
    let mut doc = s.index();
    let honest = gate.refresh_from(&doc).unwrap();
    gate.save_ledger().unwrap();

    // The hostile phone deletes the desktops' and the honest phone's entries.
    write(&mut doc, |tx| {
        let members = match tx.get(ROOT, "members").unwrap() {
            Some((_, id)) => id,
            None => unreachable!(),
        };
        for key in [&s.root, &s.desk, &s.phone] {
            tx.delete(&members, key.public().to_string()).unwrap();
        }
    });
    assert_eq!(index::members(&doc).len(), 1);
    assert_eq!(devices(&gate.refresh_from(&doc).unwrap()), devices(&honest));
    assert!(gate.allows(&s.phone.public()));

    // A restart: a new gate from the same store.
    let gate = s.gate();
    assert_eq!(gate.pinned(), Some((s.space, s.root.public())));
    assert_eq!(devices(&gate.refresh_from(&doc).unwrap()), devices(&honest));
    // Even with no index at all.
    assert_eq!(
        devices(&gate.refresh_from(&Automerge::new()).unwrap()),
        devices(&honest)
    );
}

/// A refresh reuses the last evaluation only when certificates and revocations are
/// exactly as they were: a new thread changes nothing, but a revocation, a new member or a
/// certificate's field rewritten by a hostile member is seen by the very next refresh.
#[test]
fn a_refresh_sees_each_change_to_certificates_and_revocations() {
    let s = space();
    let gate = s.pinned_gate();
    let mut doc = s.index();
    let honest = gate.refresh_from(&doc).unwrap();
    write(&mut doc, |tx| {
        let entry = index::ThreadEntry {
            id: "t1".into(),
            title: "a thread".into(),
            created: 1,
            created_by: s.phone.public().to_string(),
            archived: false,
        };
        index::add_thread(tx, &entry).unwrap();
    });
    assert_eq!(devices(&gate.refresh_from(&doc).unwrap()), devices(&honest));

    // The hostile phone makes itself a desktop in its own entry, keeping the signature.
    let mut forged = member_entry(&s.cert(&s.desk, &s.hostile, Role::Phone, 4));
    forged.role = Role::Desktop.as_str().to_owned();
    write(&mut doc, |tx| index::put_member(tx, &forged).unwrap());
    let m = gate.refresh_from(&doc).unwrap();
    assert_eq!(
        m.get(&s.hostile.public()).map(|m| m.role),
        Some(Role::Phone),
        "the forged copy is checked, and does not count"
    );

    let newcomer = SecretKey::generate();
    write(&mut doc, |tx| {
        let cert = s.cert(&s.desk, &newcomer, Role::Phone, 5);
        index::put_member(tx, &member_entry(&cert)).unwrap();
    });
    assert!(
        gate.refresh_from(&doc)
            .unwrap()
            .get(&newcomer.public())
            .is_some()
    );

    let rev = Revocation::sign(&s.desk, s.space, s.hostile.public(), 10);
    write(&mut doc, |tx| {
        index::put_revocation(tx, &revocation_entry(&rev)).unwrap();
    });
    assert!(
        gate.refresh_from(&doc)
            .unwrap()
            .is_revoked(&s.hostile.public())
    );
    assert!(!gate.allows(&s.hostile.public()));
}

#[test]
fn a_deleted_revocation_revokes_still() {
    let s = space();
    let gate = s.pinned_gate();
    let mut doc = s.index();
    let rev = Revocation::sign(&s.desk, s.space, s.hostile.public(), 10);
    write(&mut doc, |tx| {
        index::put_revocation(tx, &revocation_entry(&rev)).unwrap();
    });
    let m = gate.refresh_from(&doc).unwrap();
    assert!(m.is_revoked(&s.hostile.public()));
    assert!(!gate.allows(&s.hostile.public()));
    gate.save_ledger().unwrap();

    // Someone deletes the revocation (or replaces the whole `revoked` map).
    write(&mut doc, |tx| {
        tx.put_object(ROOT, "revoked", automerge::ObjType::Map)
            .unwrap();
    });
    assert!(index::revocations(&doc).is_empty());
    let m = gate.refresh_from(&doc).unwrap();
    assert!(m.is_revoked(&s.hostile.public()));
    assert!(!gate.allows(&s.hostile.public()));
    let m = s.gate().refresh_from(&doc).unwrap();
    assert!(m.is_revoked(&s.hostile.public()), "after a restart too");
}

#[test]
fn revocations_of_the_root_or_a_desktop_by_a_phone_do_not_count() {
    let s = space();
    let gate = s.pinned_gate();
    let mut doc = s.index();
    for target in [&s.root, &s.desk, &s.phone] {
        // Dated 0, to void every chain if it counted as a cutoff.
        let rev = Revocation::sign(&s.hostile, s.space, target.public(), 0);
        write(&mut doc, |tx| {
            index::put_revocation(tx, &revocation_entry(&rev)).unwrap();
        });
    }
    let m = gate.refresh_from(&doc).unwrap();
    assert!(m.is_member(&s.root.public()) && m.is_member(&s.desk.public()));
    // A phone may revoke a phone: that one, and only that one, is out.
    assert!(m.is_revoked(&s.phone.public()));
    assert_eq!(m.members().count(), 3);
    assert_eq!(m.counted_revocations().len(), 1);
}

#[test]
fn the_pin_must_derive_the_space_from_the_root() {
    let s = space();
    let gate = s.gate();
    assert!(gate.refresh_from(&s.index()).is_none(), "no space here yet");
    assert!(matches!(
        gate.pin(SpaceId::random(), s.root.public()),
        Err(PinError::NotDerived { .. })
    ));
    assert!(matches!(
        gate.pin(s.space, s.desk.public()),
        Err(PinError::NotDerived { .. })
    ));
    assert_eq!(pinned(&s.store), None);
    gate.pin(s.space, s.root.public()).unwrap();
    assert_eq!(pinned(&s.store), Some((s.space, s.root.public())));
}

#[test]
fn a_home_from_before_pinning_pins_its_root_on_first_use() {
    let s = space();
    s.store
        .set_meta(META_SPACE, s.space.to_string().as_bytes())
        .unwrap();
    let gate = s.gate();
    let doc = s.index();
    assert_eq!(gate.refresh_from(&doc).unwrap().members().count(), 4);
    gate.save_ledger().unwrap();
    assert_eq!(pinned(&s.store), Some((s.space, s.root.public())));
    // From then on, the document's root field is not read.
    let mut doc = doc;
    write(&mut doc, |tx| {
        tx.put(ROOT, "root", s.hostile.public().to_string())
            .unwrap();
    });
    let m = s.gate().refresh_from(&doc).unwrap();
    assert_eq!(m.root(), s.root.public());
}
