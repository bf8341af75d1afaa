//! Merges worked out ahead of their turn (`Repo::prepare`): they end where merging in turn
//! does, a forged message among them is refused in its turn, and one whose authors changed is
//! checked again.

use super::*;

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
