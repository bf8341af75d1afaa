//! How a document's sync state starts in a session: resumed from what was saved, or presumed
//! (a document just made), and heads compared in whatever order.

use automerge::ChangeHash;
use automerge::sync;

/// A sync state as loaded from the store, ready to go on from.
///
/// Automerge saves only the heads both sides hold, and a decoded state has "never answered"
/// set, so the first message it is given always gets an answer, even one saying nothing new.
/// A state saved at exactly the heads held here describes a document the peer already holds
/// in full: it starts as having told the peer so. Without this, two sessions with more
/// documents under way than [`super::MAX_SLOTS`] can keep evicting and reloading each other's
/// documents, each reload answering a message that needed no answer, forever (seed 1999 of
/// the simulation did, with 300 documents).
pub(super) fn resumed(saved: Option<sync::State>, mut ours: Vec<ChangeHash>) -> sync::State {
    let Some(mut state) = saved else {
        return sync::State::new();
    };
    ours.sort();
    if !ours.is_empty() && same_heads(&state.shared_heads, &ours) {
        state.last_sent_heads = ours;
        state.have_responded = true;
    }
    state
}

/// The state of a document the peer is presumed not to hold (see
/// [`crate::replication::just_created`]): as if it had said "I have nothing, send everything",
/// so the first message carries the changes. Whatever the peer then says replaces this.
pub(super) fn presumed_lacking() -> sync::State {
    let mut state = sync::State::new();
    state.their_heads = Some(Vec::new());
    state.their_need = Some(Vec::new());
    state.their_have = Some(vec![sync::Have::default()]);
    state
}

/// Whether two sets of heads are the same, in whatever order.
pub(super) fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}
