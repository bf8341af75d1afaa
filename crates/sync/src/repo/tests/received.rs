//! The changes a peer sends, honest or crafted: automerge's own panics, signatures kept and
//! passed on, forgeries, changes over the limit (alone or inside a whole document), authors not
//! known yet, and a change of our own that peers would refuse.

use super::*;

/// A sync message on which automerge 0.12 panics inside `receive_sync_message`.
const PANICS_AUTOMERGE: &[u8] = &[
    0x42, 0x00, 0x00, 0x00, 0x01, 0x12, 0x85, 0x6f, 0x4a, 0x83, 0x91, 0x34, 0x04, 0xe4, 0x01, 0x08,
    0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn a_message_that_panics_automerge_is_an_error_and_the_document_survives() {
    let (_dir, repo) = repo();
    let doc = DocId::new_thread();
    repo.create(&doc, "thread created", |tx| {
        thread::create(tx, doc.as_str(), "t")
    })
    .unwrap();
    let heads = repo.heads(&doc).unwrap();
    let mut state = sync::State::new();
    let panics = Envelope {
        sigs: Vec::new(),
        message: PANICS_AUTOMERGE.to_vec(),
    }
    .encode();
    let err = repo
        .receive_sync_message(&doc, &mut state, &panics)
        .unwrap_err();
    assert!(matches!(err, ReceiveError::Malformed { .. }), "{err}");
    // Reloaded from the store, as it was.
    assert_eq!(repo.heads(&doc).unwrap(), heads);
    assert_eq!(
        repo.read(&doc, thread::title).unwrap().flatten().as_deref(),
        Some("t")
    );
    // And a fresh document that never existed is not left behind half-made.
    let fresh = DocId::new_thread();
    assert!(
        repo.receive_sync_message(&fresh, &mut sync::State::new(), &panics)
            .is_err()
    );
    assert!(!repo.contains(&fresh).unwrap());
}

/// A change this device makes beyond what its peers take of one change is refused here,
/// before anyone sees it (they would refuse it and drop this device for sending it): the
/// document stays as it was, in memory and stored, nothing is announced, and the next change
/// is made under a new actor, since the refused one used up a sequence number.
#[test]
fn an_own_change_beyond_what_peers_take_is_refused_and_leaves_nothing() {
    let (_dir, repo) = repo();
    let doc = DocId::new_thread();
    create_thread(&repo, &doc);
    put(&repo, &doc, "before");
    let heads = repo.heads(&doc).unwrap();
    let stored = repo.store().heads_of(doc.as_str()).unwrap();
    let actor = repo.actor();
    let mut changes = repo.subscribe();

    let big = "a".repeat(Limits::DEFAULT.max_change_bytes as usize + 1);
    let err = repo
        .change(&doc, "too big", |tx| {
            automerge::transaction::Transactable::put(tx, automerge::ROOT, "big", big.as_str())
        })
        .unwrap_err();
    assert!(matches!(err, ChangeError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("bytes in one change"), "{err}");
    assert_eq!(repo.heads(&doc).unwrap(), heads);
    assert_eq!(repo.store().heads_of(doc.as_str()).unwrap(), stored);
    assert!(
        changes.try_recv().is_err(),
        "the refused change was announced"
    );
    let has_big = repo
        .read(&doc, |d| {
            automerge::ReadDoc::get(d, automerge::ROOT, "big")
                .unwrap()
                .is_some()
        })
        .unwrap();
    assert_eq!(has_big, Some(false));
    assert_ne!(repo.actor(), actor);

    put(&repo, &doc, "after");
    let tasks = repo
        .read(&doc, |d| thread::tasks(d, doc.as_str()))
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["before", "after"]);
}

/// Signatures are stored with the changes and travel with them: a third device receives
/// a change from one that did not write it, and checks it against its author.
#[test]
fn signatures_are_kept_and_passed_on_through_a_third_device() {
    let (_a_dir, a) = repo();
    let (_b_dir, b) = repo();
    let (_c_dir, c) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    put(&a, &doc, "one");
    sync_pair(&a, &b, &doc);
    // Compacted and reloaded, b still has the signatures to forward.
    b.compact(0).unwrap();
    b.lock().clear();
    sync_pair(&b, &c, &doc);
    assert_eq!(keys(&c, &doc), ["one"]);
    let SignedDoc { bytes, sigs } = c.save_signed(&doc).unwrap().unwrap();
    assert_eq!(sigs.len(), 2);
    let (_d_dir, d) = repo();
    d.import(&doc, &bytes, &sigs).unwrap();
    assert_eq!(keys(&d, &doc), ["one"]);
    let (_e_dir, e) = repo();
    let err = e.import(&doc, &bytes, &sigs[..1]).unwrap_err();
    assert!(err.to_string().contains("carries no signature"), "{err}");
    assert!(!e.contains(&doc).unwrap());
    // A full space takes no new document this way either, and holds nothing of it.
    let (_f_dir, f) = repo();
    let f = f.with_quotas(crate::quota::Quotas {
        max_documents: 0,
        ..crate::quota::Quotas::DEFAULT
    });
    let err = f.import(&doc, &bytes, &sigs).unwrap_err();
    assert!(err.to_string().contains("documents"), "{err}");
    assert!(!f.contains(&doc).unwrap());
}

/// What a forging member sends: a change under another device's actor, signed with its
/// own key; a change signed for another document; a change with no signature.
#[test]
fn forged_misplaced_and_unsigned_changes_are_refused() {
    let (_a_dir, a) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    let (_b_dir, b) = repo();
    sync_pair(&a, &b, &doc);
    let victim = a.device;

    // The forger writes a change whose actor names the victim.
    let (_f_dir, forger) = repo();
    sync_pair(&a, &forger, &doc);
    {
        let mut docs = forger.lock();
        let entry = docs.get_mut(&doc).unwrap();
        let mut actor = victim.as_bytes().to_vec();
        actor.extend_from_slice(&[9; 12]);
        entry.doc.set_actor(ActorId::from(actor));
    }
    put(&forger, &doc, "forged");
    let refused = first_refusal(&forger, &b, &doc).expect("the forged change was refused");
    assert!(
        refused.to_string().contains("is not signed by"),
        "{refused}"
    );
    assert!(keys(&b, &doc).is_empty());

    // An honest change, its envelope emptied of signatures.
    put(&a, &doc, "honest");
    let mut state = sync::State::new();
    let mut theirs = sync::State::new();
    let mut refused = None;
    for _ in 0..6 {
        if let Some(m) = a.generate_sync_message(&doc, &mut state).unwrap() {
            let mut env = Envelope::decode(&m).unwrap();
            env.sigs.clear();
            if let Err(e) = b.receive_sync_message(&doc, &mut theirs, &env.encode()) {
                refused = Some(e);
                break;
            }
        }
        if let Some(m) = b.generate_sync_message(&doc, &mut theirs).unwrap() {
            a.receive_sync_message(&doc, &mut state, &m).unwrap();
        }
    }
    let refused = refused.expect("the unsigned change was refused");
    assert!(refused.to_string().contains("no signature"), "{refused}");

    // The same signed bytes delivered as another document's.
    let SignedDoc { bytes, sigs } = a.save_signed(&doc).unwrap().unwrap();
    let other = DocId::new_thread();
    let err = b.import(&other, &bytes, &sigs).unwrap_err();
    assert!(err.to_string().contains("is not signed by"), "{err}");
    assert!(!b.contains(&other).unwrap());
    // And in the right place they are fine.
    b.import(&doc, &bytes, &sigs).unwrap();
    assert_eq!(keys(&b, &doc), ["honest"]);
}

/// A member writes a change larger than a node takes from a peer, of values that each pass
/// (two prompts of 2.5 MiB). A device that holds the thread gets the change alone and refuses
/// it before automerge sees it; a fresh device is sent the whole document instead (automerge
/// sends a document to a peer that holds nothing, or lacks a third of the changes), which
/// bounds only its own size, and must refuse the change once merged just the same (else it
/// would hold it and pass it on, and its honest peers would drop it for what it passed on).
#[test]
fn a_change_over_the_limit_is_refused_alone_and_inside_a_whole_document() {
    let (_h_dir, hostile) = repo();
    // The hostile member's own code does not keep its changes within the bounds.
    let hostile = hostile.with_own_limits(crate::limits::Limits {
        max_change_bytes: u64::MAX,
        max_ops_per_change: u64::MAX,
        ..crate::limits::Limits::DEFAULT
    });
    let doc = DocId::new_thread();
    create_thread(&hostile, &doc);
    for key in ["one", "two", "three"] {
        put(&hostile, &doc, key);
    }
    let (_o_dir, holder) = repo();
    sync_pair(&hostile, &holder, &doc);

    let me = hostile.device.to_string();
    let half = "a".repeat(crate::limits::Limits::DEFAULT.max_change_bytes as usize * 5 / 8);
    hostile
        .change(&doc, "two prompts of 2.5 MiB", |tx| {
            for id in ["huge1", "huge2"] {
                thread::add_task(
                    tx,
                    &thread::NewTask {
                        id,
                        prompt: &half,
                        target: &me,
                        created: 1,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();

    let (_f_dir, fresh) = repo();
    for (who, peer) in [("holder", &holder), ("fresh", &fresh)] {
        let refused = first_refusal(&hostile, peer, &doc)
            .unwrap_or_else(|| panic!("{who}: the huge change was taken"))
            .to_string();
        // The change alone is refused on its raw bytes; inside a document, once merged.
        let (said, merged) = (
            "bytes in one change",
            refused.contains("is larger than a node takes"),
        );
        assert!(refused.contains(said), "{who}: {refused}");
        assert_eq!(merged, who == "fresh", "{who}: {refused}");
        let held = peer
            .read(&doc, |d| thread::tasks(d, doc.as_str()))
            .unwrap()
            .unwrap_or_default();
        assert!(
            held.iter().all(|t| !t.id.starts_with("huge")),
            "{who}: {held:?}"
        );
    }
    assert!(
        !fresh.contains(&doc).unwrap(),
        "the fresh device keeps nothing"
    );

    // Handed over whole, as at pairing: refused too.
    let SignedDoc { bytes, sigs } = hostile.save_signed(&doc).unwrap().unwrap();
    let err = fresh.import(&doc, &bytes, &sigs).unwrap_err();
    assert!(err.to_string().contains("bytes in one change"), "{err}");
    assert!(!fresh.contains(&doc).unwrap());
}

/// A device the authors do not know: its changes wait (the caller syncs the index first).
#[test]
fn a_change_by_an_unknown_device_is_early_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = iroh::SecretKey::generate();
    let store = Arc::new(Store::open(&dir.path().join("db.redb")).unwrap());
    let me = iroh::SecretKey::generate();
    let strict = Repo::new(
        store,
        me.clone(),
        Arc::new(authorship::FixedAuthors::only([(
            me.public(),
            crate::Role::Desktop,
        )])),
    );
    strict.set_space(SPACE).unwrap();
    let (_s_dir, s) = {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(&dir.path().join("db.redb"), &stranger);
        (dir, repo)
    };
    let doc = DocId::new_thread();
    create_thread(&s, &doc);
    let SignedDoc { bytes, sigs } = s.save_signed(&doc).unwrap().unwrap();
    let err = strict.import(&doc, &bytes, &sigs).unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    let mut state = sync::State::new();
    let mut theirs = sync::State::new();
    let m = strict
        .generate_sync_message(&doc, &mut theirs)
        .unwrap()
        .unwrap();
    s.receive_sync_message(&doc, &mut state, &m).unwrap();
    let m = s.generate_sync_message(&doc, &mut state).unwrap().unwrap();
    let err = strict
        .receive_sync_message(&doc, &mut theirs, &m)
        .unwrap_err();
    assert!(matches!(err, ReceiveError::Early { .. }), "{err}");
    assert!(!strict.contains(&doc).unwrap());
}
