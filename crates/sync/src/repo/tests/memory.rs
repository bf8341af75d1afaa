//! What a space costs in memory: documents a peer only names, a full space, a bounded number
//! of documents loaded, duplicates that would pin one, and upkeep that compacts and drops.

use super::*;

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

/// Many quiet documents are folded together: a thousand small threads going quiet at once
/// cost one durable write, not one each, and every one reads back whole from its snapshot.
#[test]
fn quiet_documents_are_folded_in_one_write() {
    let (_dir, a) = repo();
    let docs: Vec<DocId> = (0..40).map(|_| DocId::new_thread()).collect();
    for doc in &docs {
        create_thread(&a, doc);
        put(&a, doc, "one");
    }
    let fsyncs = a.fsyncs();
    let later = std::time::Instant::now() + IDLE_AFTER;
    assert_eq!(
        a.tidy(later).unwrap(),
        Tidied {
            compacted: 40,
            dropped: 40
        }
    );
    assert_eq!(a.fsyncs() - fsyncs, 1, "one write for the forty");
    assert_eq!(a.loaded(), 0);
    for doc in &docs {
        assert_eq!(a.store.load_doc(doc.as_str()).unwrap().unwrap().1, 1);
        assert_eq!(keys(&a, doc), ["one"]);
    }
}

/// A document made here is presumed new to a peer by the size its first change had when it
/// was made, without rebuilding the change; a large one is not, and neither is one changed
/// since.
#[test]
fn a_document_made_here_is_presumed_new_by_the_size_it_was_made_with() {
    use crate::replication::Docs;
    use automerge::transaction::Transactable;
    let (_dir, repo) = repo();
    let small = DocId::new_thread();
    repo.create(&small, "made", |tx| {
        tx.put(automerge::ROOT, "title", "a new thread")?;
        Ok(())
    })
    .unwrap();
    let large = DocId::new_thread();
    repo.create(&large, "made", |tx| {
        tx.put(automerge::ROOT, "title", "x".repeat(100 * 1024))?;
        Ok(())
    })
    .unwrap();
    let made_with = |id: &DocId| repo.lock().get(id).and_then(|e| e.first_change);
    assert!(made_with(&small).is_some_and(|(_, len)| len < 1024));
    assert!(made_with(&large).is_some_and(|(_, len)| len > 100 * 1024));
    let docs = repo.docs();
    assert!(docs.just_created(&small));
    assert!(!docs.just_created(&large));
    repo.change(&small, "again", |tx| {
        tx.put(automerge::ROOT, "title", "renamed")?;
        Ok(())
    })
    .unwrap();
    assert!(!repo.docs().just_created(&small));
}
