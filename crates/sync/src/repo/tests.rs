//! The repo's own tests, a module per area; the helpers they share are here.

mod durability;
mod memory;
mod prepare;
mod received;
mod views;

use automerge::sync::{self, SyncDoc};

use super::*;
use crate::authorship::{self, Envelope};
use crate::schema::thread;

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
