//! What the fuzz targets share: a repo on a temporary store holding one real thread
//! document, which peer bytes are applied to exactly as a node applies them.

use std::sync::{Arc, OnceLock};

use errand_sync::{DocId, Repo, Store};

/// The hostile inputs and the structured mutator, shared with the tests as source: depending
/// on errand-tests would pull the executor (and its screen and input libraries) into every
/// instrumented fuzz build.
#[path = "../../tests/src/hostile.rs"]
pub mod hostile;

/// The repo and the document the targets apply peer bytes to.
#[derive(Debug)]
pub struct Target {
    pub repo: Repo,
    pub doc: DocId,
    /// Real sync messages about `doc`, for the structured fuzzer to mutate.
    pub messages: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
}

/// The shared target, made on first use.
pub fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        // The repo contains automerge's panics (catch_unwind at the boundary), but libFuzzer's
        // panic hook aborts before unwinding starts. A panic that escapes the repo still ends
        // the run: libfuzzer-sys catches it around each input and aborts.
        std::panic::set_hook(Box::new(|_| {}));
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = Arc::new(Store::open(&dir.path().join("db.redb")).expect("a store"));
        let repo = Repo::new(
            store,
            iroh::SecretKey::generate(),
            Arc::new(errand_sync::authorship::FixedAuthors::anyone(
                errand_sync::Role::Desktop,
            )),
        );
        repo.set_space(errand_sync::SpaceId([1; 16]))
            .expect("a space");
        let sample = hostile::real_sync_messages();
        let doc = sample.doc.clone();
        repo.import(&doc, &sample.saved, &sample.sigs)
            .expect("import the document");
        Target {
            repo,
            doc,
            messages: sample.messages,
            _dir: dir,
        }
    })
}

/// Applies bytes as a peer's sync message for the target document, as a node does.
pub fn apply(bytes: &[u8]) {
    let t = target();
    let mut state = automerge::sync::State::new();
    let _ = t
        .repo
        .receive_sync_message(&t.doc, &mut state, &hostile::envelope(bytes));
}
