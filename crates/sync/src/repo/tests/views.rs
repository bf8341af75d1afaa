//! Stored views (task listings kept beside the documents) and the index epoch the membership
//! is kept by.

use super::*;

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
