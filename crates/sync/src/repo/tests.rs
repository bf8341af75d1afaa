//! The repo's own tests: durability, crashes, signatures and what a forging peer sends.

use automerge::sync::{self, SyncDoc};

use super::*;
use crate::authorship::{self, Envelope};
use crate::schema::thread;

/// A sync message on which automerge 0.12 panics inside `receive_sync_message`.
const PANICS_AUTOMERGE: &[u8] = &[
    0x42, 0x00, 0x00, 0x00, 0x01, 0x12, 0x85, 0x6f, 0x4a, 0x83, 0x91, 0x34, 0x04, 0xe4, 0x01, 0x08,
    0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00,
];

const SPACE: SpaceId = SpaceId([3; 16]);

/// A repo of `key` in [`SPACE`] where every device counts as a desktop.
fn open(path: &std::path::Path, key: &iroh::SecretKey) -> Repo {
    let store = Arc::new(Store::open(path).unwrap());
    let repo = Repo::new(
        store,
        key.clone(),
        Arc::new(authorship::FixedAuthors::anyone(crate::Role::Desktop)),
    );
    repo.set_space(SPACE).unwrap();
    repo
}

fn repo() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(&dir.path().join("db.redb"), &iroh::SecretKey::generate());
    (dir, repo)
}

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

/// A peer that names documents this device does not hold, without bringing them, leaves
/// nothing of them in memory.
#[test]
fn a_document_a_peer_only_names_takes_no_memory() {
    let (_dir, repo) = repo();
    let lookup = Envelope {
        sigs: Vec::new(),
        message: Automerge::new()
            .generate_sync_message(&mut sync::State::new())
            .unwrap()
            .encode(),
    }
    .encode();
    for _ in 0..50 {
        let named = DocId::new_thread();
        let changed = repo
            .receive_sync_message(&named, &mut sync::State::new(), &lookup)
            .unwrap();
        assert!(!changed);
        assert!(!repo.holds(&named));
    }
    assert_eq!(repo.lock().len(), 0, "documents left in memory");
    assert_eq!(repo.held(), 0);
}

/// Past `max_documents`, this device creates no document, its own (one line naming the
/// quota) or a peer's (refused as malformed, so the peer is dropped), and keeps none of
/// the refused one in memory; the documents held still take changes.
#[test]
fn a_full_space_creates_no_document_of_its_own_or_a_peers() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = Quotas {
        max_documents: 2,
        ..Quotas::DEFAULT
    };
    let repo = open(&dir.path().join("db.redb"), &iroh::SecretKey::generate()).with_quotas(quotas);
    let (_peer_dir, peer) = self::repo();
    let mut made = Vec::new();
    for _ in 0..2 {
        let doc = DocId::new_thread();
        repo.create(&doc, "thread created", |tx| {
            thread::create(tx, doc.as_str(), "t")
        })
        .unwrap();
        made.push(doc);
    }
    let third = DocId::new_thread();
    let err = repo
        .create(&third, "thread created", |tx| {
            thread::create(tx, third.as_str(), "t")
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "this space holds 2 documents, the most a space may hold (2, max_documents)"
    );
    assert!(!repo.contains(&third).unwrap());

    let theirs = DocId::new_thread();
    peer.create(&theirs, "thread created", |tx| {
        thread::create(tx, theirs.as_str(), "theirs")
    })
    .unwrap();
    let message = peer
        .generate_sync_message(&theirs, &mut sync::State::new())
        .unwrap()
        .unwrap();
    let err = repo
        .receive_sync_message(&theirs, &mut sync::State::new(), &message)
        .unwrap_err();
    assert!(matches!(err, ReceiveError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("max_documents"), "{err}");
    assert!(!repo.lock().contains_key(&theirs));
    assert_eq!(repo.held(), 2);
    put(&repo, &made[0], "still-works");
}

/// Exchanges sync messages between two repos until neither has anything to say.
fn sync_pair(a: &Repo, b: &Repo, doc: &DocId) {
    let (mut a_state, mut b_state) = (sync::State::new(), sync::State::new());
    for _ in 0..20 {
        let to_b = a.generate_sync_message(doc, &mut a_state).unwrap();
        if let Some(m) = &to_b {
            b.receive_sync_message(doc, &mut b_state, m).unwrap();
        }
        let to_a = b.generate_sync_message(doc, &mut b_state).unwrap();
        if let Some(m) = &to_a {
            a.receive_sync_message(doc, &mut a_state, m).unwrap();
        }
        if to_b.is_none() && to_a.is_none() {
            return;
        }
    }
    panic!("sync did not settle");
}

/// Syncs `doc` from `from` to `to` with fresh sync states until `to` refuses a message:
/// its refusal, or `None` if it took everything.
fn first_refusal(from: &Repo, to: &Repo, doc: &DocId) -> Option<ReceiveError> {
    let (mut state, mut theirs) = (sync::State::new(), sync::State::new());
    for _ in 0..6 {
        if let Some(m) = from.generate_sync_message(doc, &mut state).unwrap()
            && let Err(e) = to.receive_sync_message(doc, &mut theirs, &m)
        {
            return Some(e);
        }
        if let Some(m) = to.generate_sync_message(doc, &mut theirs).unwrap() {
            from.receive_sync_message(doc, &mut state, &m).unwrap();
        }
    }
    None
}

/// Sends a task with id `key` from this repo's device to itself.
fn put(repo: &Repo, doc: &DocId, key: &str) {
    let me = repo.device.to_string();
    repo.change(doc, &format!("sent {key}"), |tx| {
        thread::add_task(
            tx,
            &thread::NewTask {
                id: key,
                prompt: "p",
                target: &me,
                created: 1,
            },
        )
    })
    .unwrap();
}

fn keys(repo: &Repo, doc: &DocId) -> Vec<String> {
    let mut ids: Vec<String> = repo
        .read(doc, |d| thread::tasks(d, doc.as_str()))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

fn create_thread(repo: &Repo, doc: &DocId) {
    repo.create(doc, "thread created", |tx| {
        thread::create(tx, doc.as_str(), "t")
    })
    .unwrap();
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

/// A peer may receive a local change before it is durable here. If this device then
/// crashes and comes back without it, its next change must not clash with the one the peer
/// holds (same actor and sequence number), or the document would stop syncing for good.
#[test]
fn a_change_a_crash_lost_here_but_a_peer_holds_comes_back_and_sync_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("desk.redb");
    let before_crash = dir.path().join("before-crash.redb");
    let desk = iroh::SecretKey::generate();
    let (_peer_dir, peer) = self::repo();
    let doc = DocId::new_thread();
    {
        let repo = open(&path, &desk);
        create_thread(&repo, &doc);
        put(&repo, &doc, "created");
        sync_pair(&repo, &peer, &doc);
    }
    std::fs::copy(&path, &before_crash).unwrap();
    {
        let repo = open(&path, &desk);
        put(&repo, &doc, "sent before the crash");
        sync_pair(&repo, &peer, &doc);
    }
    // The crash: the file as it was before that change was durable.
    std::fs::rename(&before_crash, &path).unwrap();
    let repo = open(&path, &desk);
    assert_eq!(keys(&repo, &doc), ["created"]);
    put(&repo, &doc, "after the restart");
    sync_pair(&repo, &peer, &doc);
    let expected = ["after the restart", "created", "sent before the crash"];
    assert_eq!(keys(&repo, &doc), expected);
    assert_eq!(keys(&peer, &doc), expected);
    let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
    assert!(
        history
            .iter()
            .all(|h| h.device_id == desk.public().to_string())
    );
}

#[test]
fn changes_are_durable_and_reload_with_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let key = iroh::SecretKey::generate();
    let doc = DocId::new_thread();
    {
        let repo = open(&dir.path().join("db.redb"), &key);
        create_thread(&repo, &doc);
        put(&repo, &doc, "a");
    }
    let repo = open(&dir.path().join("db.redb"), &key);
    let history = repo.read(&doc, crate::schema::history).unwrap().unwrap();
    let messages: Vec<&str> = history.iter().map(|h| h.message.as_str()).collect();
    assert_eq!(messages, ["thread created", "sent a"]);
    assert_eq!(history[0].device_id, key.public().to_string());
    assert!(history.iter().all(|h| h.time > 0));
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

/// However many documents are read, memory holds at most [`MAX_LOADED`] of them; the rest
/// come back from the store as they were, and can be changed again.
#[test]
fn memory_holds_a_bounded_number_of_documents_and_dropped_ones_come_back() {
    let (_dir, repo) = repo();
    let docs: Vec<DocId> = (0..MAX_LOADED + 60).map(|_| DocId::new_thread()).collect();
    let mut heads = Vec::new();
    for doc in &docs {
        create_thread(&repo, doc);
        put(&repo, doc, "one");
        heads.push(repo.heads(doc).unwrap());
        assert!(repo.loaded() <= MAX_LOADED, "{} loaded", repo.loaded());
    }
    // The heads of every document, those dropped included, without loading any: each as it
    // was last written.
    let loaded = repo.loaded();
    for (doc, heads) in docs.iter().zip(&heads) {
        assert_eq!(&repo.heads(doc).unwrap(), heads);
    }
    assert_eq!(repo.loaded(), loaded, "asking for heads loaded documents");
    assert!(repo.heads(&DocId::new_thread()).unwrap().is_empty());
    for doc in &docs {
        assert_eq!(keys(&repo, doc), ["one"]);
        assert!(repo.loaded() <= MAX_LOADED, "{} loaded", repo.loaded());
    }
    // The first ones were dropped long ago: changed again, they keep both tasks.
    put(&repo, &docs[0], "two");
    assert_eq!(keys(&repo, &docs[0]), ["one", "two"]);
}

/// The sync protocol may bring a change twice (both sides sent at once, or a restarted
/// peer). The second copy's signatures must not stay behind waiting for a change that is held
/// already: a document holding them could never be dropped from memory, and enough such
/// documents would have every newly made one dropped as soon as it was made.
#[test]
fn a_change_delivered_twice_leaves_its_document_free_to_drop() {
    let (_a_dir, a) = repo();
    let (_b_dir, b) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    put(&a, &doc, "one");
    let mut first = sync::State::new();
    let all = a.generate_sync_message(&doc, &mut first).unwrap().unwrap();
    // The first message only names heads; answer it and get the changes.
    let mut b_state = sync::State::new();
    b.receive_sync_message(&doc, &mut b_state, &all).unwrap();
    let ask = b
        .generate_sync_message(&doc, &mut b_state)
        .unwrap()
        .unwrap();
    a.receive_sync_message(&doc, &mut first, &ask).unwrap();
    let changes = a.generate_sync_message(&doc, &mut first).unwrap().unwrap();
    b.receive_sync_message(&doc, &mut b_state, &changes)
        .unwrap();
    assert_eq!(keys(&b, &doc), ["one"]);
    // The same changes again, as a peer that lost its sync state sends them.
    b.receive_sync_message(&doc, &mut sync::State::new(), &changes)
        .unwrap();
    let later = std::time::Instant::now() + IDLE_AFTER;
    assert_eq!(
        b.tidy(later).unwrap().dropped,
        1,
        "the document stays pinned"
    );
    assert_eq!(b.loaded(), 0);
    assert_eq!(keys(&b, &doc), ["one"]);
}

/// Upkeep folds a quiet document's chunks into one snapshot, however few, drops it from
/// memory, and loses nothing: it reads back, syncs, and takes new changes.
#[test]
fn idle_documents_are_compacted_and_dropped_and_lose_nothing() {
    let (_dir, a) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    put(&a, &doc, "one");
    put(&a, &doc, "two");
    let index = DocId::index();
    a.create(&index, "index", |tx| {
        crate::schema::index::create(tx, "space", "root")
    })
    .unwrap();
    assert_eq!(a.store.load_doc(doc.as_str()).unwrap().unwrap().1, 3);
    // Just used: nothing to do yet.
    assert_eq!(
        a.tidy(std::time::Instant::now()).unwrap(),
        Tidied::default()
    );
    assert_eq!(a.loaded(), 2);
    let later = std::time::Instant::now() + IDLE_AFTER;
    assert_eq!(
        a.tidy(later).unwrap(),
        Tidied {
            compacted: 1,
            dropped: 1
        }
    );
    // The index stays in memory; the thread is one snapshot in the store.
    assert_eq!(a.loaded(), 1);
    assert_eq!(a.store.load_doc(doc.as_str()).unwrap().unwrap().1, 1);
    assert_eq!(keys(&a, &doc), ["one", "two"]);
    put(&a, &doc, "three");
    let (_b_dir, b) = repo();
    sync_pair(&a, &b, &doc);
    assert_eq!(keys(&b, &doc), ["one", "three", "two"]);
}

/// A stored view stands in for a document not in memory only at the version it was derived
/// from: a changed document is read again, a damaged view is derived again, and views outlive
/// the process.
#[test]
fn views_are_read_from_the_store_only_while_current() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let key = iroh::SecretKey::generate();
    let a = open(&path, &key);
    let docs = [DocId::new_thread(), DocId::new_thread()];
    let add = |repo: &Repo, doc: &DocId, id: &str| {
        repo.change(doc, "task", |tx| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id,
                    prompt: "p",
                    target: "t",
                    created: 1,
                },
            )
        })
        .unwrap();
    };
    for doc in &docs {
        create_thread(&a, doc);
        add(&a, doc, "one");
    }
    let derived = std::cell::Cell::new(0);
    let list = |repo: &Repo| -> Vec<Option<Vec<String>>> {
        let absent = DocId::new_thread();
        let ids = [docs[0].clone(), docs[1].clone(), absent];
        repo.read_views("test-ids/1", &ids, |doc, id| {
            derived.set(derived.get() + 1);
            thread::tasks(doc, id.as_str())
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<String>>()
        })
        .unwrap()
    };
    let idle = || std::time::Instant::now() + IDLE_AFTER;
    let one = Some(vec!["one".to_owned()]);
    // In memory: read from the documents (and stored); the third is held nowhere.
    assert_eq!(list(&a), [one.clone(), one.clone(), None]);
    assert_eq!(derived.replace(0), 2);
    // Dropped from memory: read from the store.
    a.tidy(idle()).unwrap();
    assert_eq!(a.loaded(), 0);
    assert_eq!(list(&a), [one.clone(), one.clone(), None]);
    assert_eq!(derived.replace(0), 0, "current views are not derived again");
    assert_eq!(a.loaded(), 0, "nor are their documents loaded");
    // A changed document is read anew, whether in memory or not.
    add(&a, &docs[0], "two");
    a.tidy(idle()).unwrap();
    let both = Some(vec!["one".to_owned(), "two".to_owned()]);
    assert_eq!(list(&a), [both.clone(), one.clone(), None]);
    assert_eq!(derived.replace(0), 1);
    // A view that does not decode is derived again.
    a.tidy(idle()).unwrap();
    let mut damaged = Vec::new();
    a.store
        .each_view("test-ids/1", &[docs[1].as_str()], |_, v| {
            damaged = v.unwrap().to_vec();
        })
        .unwrap();
    damaged.truncate(damaged.len() - 2);
    a.store
        .set_views("test-ids/1", &[(docs[1].as_str(), damaged)])
        .unwrap();
    assert_eq!(list(&a), [both.clone(), one.clone(), None]);
    assert_eq!(derived.replace(0), 1);
    // After a restart, the stored views serve again.
    a.tidy(idle()).unwrap();
    drop(a);
    let a = open(&path, &key);
    assert_eq!(list(&a), [both, one, None]);
    assert_eq!(derived.replace(0), 0);
}

/// Views are stored deflated (a listing of a big space keeps every page it reads in redb's
/// cache, so their size is memory), and one stored by an older build, as plain JSON after the
/// fingerprint, reads as stale and is derived again.
#[test]
fn views_are_stored_deflated_and_older_ones_derived_again() {
    let (_dir, a) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    a.change(&doc, "tasks", |tx| {
        for n in 0..20 {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: &format!("{n:032x}"),
                    prompt: "summarise the PDFs in the inbox and file them by sender",
                    target: &"d".repeat(64),
                    created: 1_795_000_000_000 + n,
                },
            )?;
        }
        Ok(())
    })
    .unwrap();
    let derived = std::cell::Cell::new(0);
    let list = |repo: &Repo| {
        repo.read_views("test-tasks/1", std::slice::from_ref(&doc), |d, id| {
            derived.set(derived.get() + 1);
            thread::tasks(d, id.as_str())
        })
        .unwrap()
        .remove(0)
        .unwrap()
    };
    let tasks = list(&a);
    assert_eq!(tasks.len(), 20);
    let stored = || {
        let mut bytes = Vec::new();
        a.store
            .each_view("test-tasks/1", &[doc.as_str()], |_, v| {
                bytes = v.unwrap().to_vec();
            })
            .unwrap();
        bytes
    };
    let json = serde_json::to_vec(&tasks).unwrap();
    let compact = stored();
    assert!(
        compact.len() * 4 < json.len(),
        "a view of {} bytes of JSON is stored in {} bytes",
        json.len(),
        compact.len()
    );
    // The older format: the fingerprint, then the JSON.
    let fingerprint = crate::replication::HeadsHash::of(&a.heads(&doc).unwrap());
    let mut older = fingerprint.0.to_vec();
    older.extend_from_slice(&json);
    a.store
        .set_views("test-tasks/1", &[(doc.as_str(), older)])
        .unwrap();
    a.tidy(std::time::Instant::now() + IDLE_AFTER).unwrap();
    assert_eq!(a.loaded(), 0);
    derived.set(0);
    assert_eq!(list(&a), tasks);
    assert_eq!(derived.get(), 1, "the older view is derived again");
    assert_eq!(stored(), compact, "and stored in the current format");
    // Read from the store from then on.
    a.tidy(std::time::Instant::now() + IDLE_AFTER).unwrap();
    assert_eq!(list(&a), tasks);
    assert_eq!(derived.get(), 1);
}

/// Local changes made at the same time share one flush (group commit), and each caller
/// hears of success only once its change is durable: eight writers whose commits are all in
/// while a flush is under way are covered by the next one, one fsync for the eight, and every
/// change is there after a restart.
#[test]
fn changes_made_together_share_one_flush_and_each_is_durable_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let key = iroh::SecretKey::generate();
    let repo = open(&path, &key);
    let doc = DocId::new_thread();
    create_thread(&repo, &doc);
    let ids: Vec<String> = (0..8).map(|i| format!("task-{i}")).collect();
    let fsyncs = repo.fsyncs();
    let durable = repo.durability();
    std::thread::scope(|scope| {
        // A flush under way: the writers commit, then wait for it.
        let flushing = lock(&repo.flushing);
        let before = repo.written.load(Ordering::Acquire);
        let writers: Vec<_> = ids
            .iter()
            .map(|id| scope.spawn(|| put(&repo, &doc, id)))
            .collect();
        while repo.written.load(Ordering::Acquire) < before + 8 {
            std::thread::yield_now();
        }
        assert!(!*durable.borrow(), "committed, not yet durable");
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "none returned before its flush"
        );
        drop(flushing);
        for w in writers {
            w.join().unwrap();
        }
    });
    assert_eq!(repo.fsyncs() - fsyncs, 1, "one flush for the eight");
    assert!(*durable.borrow());
    let heads = repo.heads(&doc).unwrap();
    drop(repo);
    let repo = open(&path, &key);
    assert_eq!(repo.heads(&doc).unwrap(), heads);
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(keys(&repo, &doc), expected);
}

/// Changes written lazily (a new thread and its listing, say) wait for the next durable write,
/// then share its flush: until it, the repo says not everything is durable; after it, it does,
/// and all of them are there after a restart.
#[test]
fn lazy_local_changes_become_durable_with_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let key = iroh::SecretKey::generate();
    let a = open(&path, &key);
    let doc = DocId::new_thread();
    let durable = a.durability();
    a.create_lazily(&doc, "thread created", |tx| {
        thread::create(tx, doc.as_str(), "t")
    })
    .unwrap();
    assert!(!*durable.borrow(), "a lazy create waits for a flush");
    let task = |id: &'static str| {
        move |tx: &mut automerge::transaction::Transaction<'_>| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id,
                    prompt: "p",
                    target: "t",
                    created: 1,
                },
            )
        }
    };
    a.change_lazily(&doc, "task", task("one")).unwrap();
    assert!(!*durable.borrow(), "so does a lazy change");
    a.change(&doc, "task", task("two")).unwrap();
    assert!(*durable.borrow(), "a durable change makes them durable too");
    let heads = a.heads(&doc).unwrap();
    drop(a);
    let a = open(&path, &key);
    assert_eq!(a.heads(&doc).unwrap(), heads);
    let ids: Vec<String> = a
        .read(&doc, |d| thread::tasks(d, doc.as_str()))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["one", "two"]);
}

/// A fresh device's first sync of several threads: each request, and the desktop's answer
/// (each thread whole), as the session would send and receive them.
fn first_answers(desk: &Repo, fresh: &Repo, docs: &[DocId]) -> Vec<Vec<u8>> {
    docs.iter()
        .map(|doc| {
            let mut asking = sync::State::new();
            let request = fresh
                .generate_sync_message(doc, &mut asking)
                .unwrap()
                .unwrap();
            let mut answering = sync::State::new();
            desk.receive_sync_message(doc, &mut answering, &request)
                .unwrap();
            desk.generate_sync_message(doc, &mut answering)
                .unwrap()
                .unwrap()
        })
        .collect()
}

/// A desktop's repo holding `n` threads of one task each.
fn desk_with_threads(n: usize) -> (tempfile::TempDir, Repo, Vec<DocId>) {
    let (dir, desk) = repo();
    let docs: Vec<DocId> = (0..n).map(|_| DocId::new_thread()).collect();
    for doc in &docs {
        create_thread(&desk, doc);
        put(&desk, doc, "a-task");
    }
    (dir, desk, docs)
}

/// Messages as `Repo::prepare` takes them.
fn batch<'a>(docs: &'a [DocId], messages: &'a [Vec<u8>]) -> Vec<(&'a DocId, &'a [u8])> {
    docs.iter()
        .zip(messages)
        .map(|(d, m)| (d, m.as_slice()))
        .collect()
}

/// The sync state fields that decide what is said next.
fn said_next(state: &sync::State) -> impl PartialEq + std::fmt::Debug {
    (
        state.shared_heads.clone(),
        state.last_sent_heads.clone(),
        state.their_heads.clone(),
        state.their_need.clone(),
        state.sent_hashes.clone(),
        state.in_flight,
        state.have_responded,
    )
}

/// Merges worked out ahead in parallel (`Repo::prepare`) leave a device exactly where taking
/// the messages one by one does: the same documents, stored, and the same sync states, so the
/// same answers to the peer.
#[test]
fn merges_worked_out_ahead_end_where_merging_in_turn_does() {
    let (_d, desk) = repo();
    let docs: Vec<DocId> = (0..5).map(|_| DocId::new_thread()).collect();
    for (n, doc) in docs.iter().enumerate() {
        create_thread(&desk, doc);
        for t in 0..=n {
            put(&desk, doc, &format!("task-{n}-{t}"));
        }
    }
    let (_a, in_turn) = repo();
    let (_b, ahead) = repo();
    let answers = first_answers(&desk, &in_turn, &docs);
    assert_eq!(answers, first_answers(&desk, &ahead, &docs));

    ahead.prepare(&batch(&docs, &answers));
    assert_eq!(
        lock(&ahead.prepared).len(),
        docs.len(),
        "every thread is worked out ahead"
    );
    assert!(
        docs.iter().all(|d| !ahead.holds(d)),
        "nothing is in the repo before its turn"
    );

    for (doc, answer) in docs.iter().zip(&answers) {
        let (mut one, mut other) = (sync::State::new(), sync::State::new());
        for (repo, state) in [(&in_turn, &mut one), (&ahead, &mut other)] {
            let mut asked = sync::State::new();
            repo.generate_sync_message(doc, &mut asked).unwrap();
            *state = asked;
            repo.receive(doc, state, answer, Commit::Lazy).unwrap();
        }
        assert_eq!(said_next(&one), said_next(&other), "{doc}");
        assert_eq!(in_turn.heads(doc).unwrap(), ahead.heads(doc).unwrap());
        assert_eq!(keys(&in_turn, doc), keys(&ahead, doc));
        assert_eq!(
            in_turn.generate_sync_message(doc, &mut one).unwrap(),
            ahead.generate_sync_message(doc, &mut other).unwrap(),
            "the same answer to the peer for {doc}"
        );
    }
    assert!(
        lock(&ahead.prepared).is_empty(),
        "every merge worked out ahead was used"
    );
    ahead.flush().unwrap();
    // What was stored is the document, with the signatures to pass its changes on.
    for doc in &docs {
        ahead.lock().remove(doc);
        assert_eq!(keys(&ahead, doc), keys(&in_turn, doc));
        let (_c, third) = repo();
        sync_pair(&ahead, &third, doc);
        assert_eq!(keys(&third, doc), keys(&in_turn, doc));
    }
}

/// A message whose changes do not check out is not worked out ahead, and is refused in its
/// turn as it would be anyway; the rest of the batch is unaffected.
#[test]
fn a_forged_message_in_a_batch_is_refused_in_its_turn() {
    let (_d, desk, docs) = desk_with_threads(3);
    let (_p, phone) = repo();
    let mut answers = first_answers(&desk, &phone, &docs);
    // The middle one loses its signatures.
    let (_, message) = Envelope::split(&answers[1]).unwrap();
    answers[1] = Envelope {
        sigs: Vec::new(),
        message: message.to_vec(),
    }
    .encode();
    phone.prepare(&batch(&docs, &answers));
    assert!(!lock(&phone.prepared).contains_key(&docs[1]));
    for (n, (doc, answer)) in docs.iter().zip(&answers).enumerate() {
        let mut state = sync::State::new();
        phone.generate_sync_message(doc, &mut state).unwrap();
        let got = phone.receive(doc, &mut state, answer, Commit::Lazy);
        if n == 1 {
            let err = got.unwrap_err();
            assert!(matches!(err, ReceiveError::Malformed { .. }), "{err}");
            assert!(!phone.holds(doc));
        } else {
            got.unwrap();
            assert_eq!(keys(&phone, doc), ["a-task"]);
        }
    }
}

/// Authors whose standing the test changes: every device a member with the role set, or
/// nobody a member.
#[derive(Debug)]
struct Switchable(std::sync::Mutex<Option<crate::Role>>);

impl Authors for Switchable {
    fn standing(&self, _device: &DeviceId) -> authorship::Standing {
        match *lock(&self.0) {
            Some(role) => authorship::Standing::Member(role),
            None => authorship::Standing::Unknown,
        }
    }

    fn index_changed(&self, _index: &Automerge) {}
}

/// A merge worked out ahead rests on what its authors were when it was checked: if that
/// changed before its turn (here the desktop is no longer known), it is checked again then.
#[test]
fn a_merge_worked_out_ahead_is_checked_again_when_its_authors_changed() {
    let (_d, desk, docs) = desk_with_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let authors = Arc::new(Switchable(std::sync::Mutex::new(Some(
        crate::Role::Desktop,
    ))));
    let phone = Repo::new(
        Arc::new(Store::open(&dir.path().join("db.redb")).unwrap()),
        iroh::SecretKey::generate(),
        authors.clone(),
    );
    phone.set_space(SPACE).unwrap();
    let answers = first_answers(&desk, &phone, &docs);
    phone.prepare(&batch(&docs, &answers));
    assert_eq!(lock(&phone.prepared).len(), 2);
    *lock(&authors.0) = None;
    for (doc, answer) in docs.iter().zip(&answers) {
        let mut state = sync::State::new();
        phone.generate_sync_message(doc, &mut state).unwrap();
        let err = phone
            .receive(doc, &mut state, answer, Commit::Lazy)
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Early { .. }), "{err}");
        assert!(!phone.holds(doc));
    }
}

/// Every device a desktop, counting how often it was asked to look at the index again.
#[derive(Debug, Default)]
struct CountingAuthors(std::sync::atomic::AtomicUsize);

impl Authors for CountingAuthors {
    fn standing(&self, _device: &DeviceId) -> authorship::Standing {
        authorship::Standing::Member(crate::Role::Desktop)
    }

    fn index_changed(&self, _index: &Automerge) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the membership is kept by: the index epoch moves with every change of the index but a
/// thread listing, made here or received, and a device that receives a listing does not look
/// at the index's members again; any other change moves it on both sides.
#[test]
fn the_index_epoch_moves_for_every_index_change_but_a_thread_listing() {
    use crate::schema::index;
    let (_d, desk) = repo();
    let dir = tempfile::tempdir().unwrap();
    let authors = Arc::new(CountingAuthors::default());
    let phone = Repo::new(
        Arc::new(Store::open(&dir.path().join("db.redb")).unwrap()),
        iroh::SecretKey::generate(),
        authors.clone(),
    );
    phone.set_space(SPACE).unwrap();
    let id = DocId::index();
    let desk_device = desk.device.to_string();
    desk.create(&id, "index created", |tx| {
        index::create(tx, &SPACE.to_string(), &desk_device)
    })
    .unwrap();
    sync_pair(&desk, &phone, &id);
    let epochs = |what: &str| {
        (
            what.to_owned(),
            desk.index_epoch(),
            phone.index_epoch(),
            authors.0.load(Ordering::Relaxed),
        )
    };
    let before = epochs("a thread listed");
    desk.change(&id, "thread listed", |tx| {
        index::add_thread(
            tx,
            &index::ThreadEntry {
                id: DocId::new_thread().to_string(),
                title: "t".into(),
                created: 1,
                created_by: desk_device.clone(),
                archived: false,
            },
        )
    })
    .unwrap();
    sync_pair(&desk, &phone, &id);
    assert_eq!(phone.read(&id, index::threads).unwrap().unwrap().len(), 1);
    assert_eq!(epochs("a thread listed"), before);

    desk.change(&id, "addresses", |tx| {
        index::set_addrs(
            tx,
            &index::AddrEntry {
                device: desk_device.clone(),
                addrs: vec!["127.0.0.1:1".into()],
                relay: None,
            },
        )
        .map(|_| ())
    })
    .unwrap();
    sync_pair(&desk, &phone, &id);
    let after = epochs("addresses written");
    assert!(
        after.1 > before.1,
        "the desk's epoch: {before:?} then {after:?}"
    );
    assert!(
        after.2 > before.2,
        "the phone's epoch: {before:?} then {after:?}"
    );
    assert!(
        after.3 > before.3,
        "the phone's authors: {before:?} then {after:?}"
    );
}
