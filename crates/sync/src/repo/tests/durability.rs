//! Durability: crashes that lose a change a peer holds, reloads with history, and local
//! changes that share one flush.

use super::*;

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

/// Changes written lazily (the executor's, say) wait for the next durable write, then share
/// its flush: until it, the repo says not everything is durable; after it, it does, and all of
/// them are there after a restart.
#[test]
fn lazy_local_changes_become_durable_with_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let key = iroh::SecretKey::generate();
    let a = open(&path, &key);
    let doc = DocId::new_thread();
    let durable = a.durability();
    create_thread(&a, &doc);
    assert!(*durable.borrow());
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
    assert!(!*durable.borrow(), "a lazy change waits for a flush");
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

/// A new document and a change to another (a new thread and its listing in the index) are
/// one write: one transaction, one flush, and after a restart both are there. If the second
/// change cannot be made (here its document does not exist), the new document is kept alone,
/// durable, and the error says why.
#[test]
fn a_document_made_with_a_change_to_another_is_one_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let key = iroh::SecretKey::generate();
    let a = open(&path, &key);
    let index = DocId::index();
    a.create(&index, "index", |tx| {
        crate::schema::index::create(tx, &SPACE.to_string(), "root")
    })
    .unwrap();
    let listed = |doc: &DocId| crate::schema::index::ThreadEntry {
        id: doc.to_string(),
        title: "t".into(),
        created: 1,
        created_by: "d".into(),
        archived: false,
    };
    let (written, fsyncs) = (a.written.load(Ordering::Acquire), a.fsyncs());
    let doc = DocId::new_thread();
    let entry = listed(&doc);
    a.create_and_change(
        &doc,
        "thread created",
        |tx| thread::create(tx, doc.as_str(), "t"),
        (&index, "thread listed"),
        |tx| crate::schema::index::add_thread(tx, &entry),
    )
    .unwrap();
    assert_eq!(a.written.load(Ordering::Acquire) - written, 1, "one write");
    assert_eq!(a.fsyncs() - fsyncs, 1, "one flush");
    assert!(*a.durability().borrow());
    let heads = (a.heads(&doc).unwrap(), a.heads(&index).unwrap());

    let alone = DocId::new_thread();
    let nowhere = DocId::new_thread();
    let refused = a.create_and_change(
        &alone,
        "thread created",
        |tx| thread::create(tx, alone.as_str(), "t"),
        (&nowhere, "listed"),
        |tx| crate::schema::index::add_thread(tx, &listed(&alone)),
    );
    assert!(
        matches!(refused, Err(ChangeError::NoSuchDoc(ref d)) if *d == nowhere),
        "{refused:?}"
    );
    assert!(*a.durability().borrow());
    drop(a);

    let a = open(&path, &key);
    assert_eq!((a.heads(&doc).unwrap(), a.heads(&index).unwrap()), heads);
    let threads: Vec<String> = a
        .read(&index, crate::schema::index::threads)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(threads, [doc.to_string()]);
    let title = a
        .read(&alone, |d| {
            crate::schema::get_str(d, &automerge::ROOT, "title")
        })
        .unwrap()
        .flatten();
    assert_eq!(title.as_deref(), Some("t"), "the new document is kept");
}

/// Before the replicator says anything to a peer it makes durable what no peer may hear of
/// before it is: a peer's changes written lazily (we would tell the peer we hold them) and
/// local changes written lazily (an executor's outcome a crash could take back). A local
/// change whose maker is flushing it anyway is not waited for: it is pushed while its write
/// is under way.
#[test]
fn before_a_message_what_a_peer_may_not_hear_of_yet_is_made_durable_and_only_that() {
    use crate::replication::Docs;
    let (_a_dir, a) = repo();
    let (_b_dir, b) = repo();
    let doc = DocId::new_thread();
    create_thread(&a, &doc);
    let me = a.device.to_string();
    let task = |key: &'static str| {
        let target = me.clone();
        move |tx: &mut automerge::transaction::Transaction<'_>| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: key,
                    prompt: "p",
                    target: &target,
                    created: 1,
                },
            )
        }
    };
    // A change as `Repo::change` makes it, written and not yet flushed by its maker.
    {
        let _writing = lock(&a.writes);
        a.change_and_write(&doc, "sent", New::Existing, Commit::Lazy, task("one"))
            .unwrap();
    }
    let fsyncs = a.fsyncs();
    RepoDocs(&a, Commit::Lazy).flush().unwrap();
    assert_eq!(a.fsyncs(), fsyncs, "its maker's flush is not waited for");
    assert!(!*a.durability().borrow());
    a.change_lazily(&doc, "settled", task("two")).unwrap();
    RepoDocs(&a, Commit::Lazy).flush().unwrap();
    assert_eq!(a.fsyncs(), fsyncs + 1, "a lazy local change is flushed");
    assert!(*a.durability().borrow());

    // A peer's changes, written lazily as several messages at hand are.
    let (mut a_state, mut b_state) = (sync::State::new(), sync::State::new());
    let mut b_docs = RepoDocs(&b, Commit::Lazy);
    for _ in 0..4 {
        if let Some(m) = a.generate_sync_message(&doc, &mut a_state).unwrap() {
            b_docs.receive(&doc, &mut b_state, &m).unwrap();
        }
        if let Some(m) = b.generate_sync_message(&doc, &mut b_state).unwrap() {
            a.receive_sync_message(&doc, &mut a_state, &m).unwrap();
        }
    }
    assert_eq!(keys(&b, &doc), ["one", "two"]);
    assert!(!*b.durability().borrow(), "received lazily");
    b_docs.flush().unwrap();
    assert!(*b.durability().borrow(), "a peer's changes are flushed");
}
