//! Whether a peer holds a version of a document, from the heads it last shared with us.
//!
//! Every send asks this (is the task already with the desktop?), and so does every wait for
//! delivery each time the sessions make progress, so the common answers must not walk the
//! document's history: a version we have just made, still a head here and not among the
//! shared heads, cannot be with the peer yet.

use std::collections::HashSet;

use automerge::{Automerge, ChangeHash, ReadDoc};

/// Whether a peer whose shared heads with us are `shared` holds every change up to `heads` of
/// `doc` (ours). `heads` may be older than the document's current heads.
pub fn holds(doc: &Automerge, shared: &[ChangeHash], heads: &[ChangeHash]) -> bool {
    if heads.iter().all(|h| shared.contains(h)) {
        return true;
    }
    // The peer has changes we lack: what they build on is unknown here, so nothing beyond
    // the shared heads can be vouched for.
    if !doc.get_missing_deps(shared).is_empty() {
        return false;
    }
    // Every shared head is held here. A current head of ours has no descendant here, so none
    // among the shared heads either: unless shared itself, the peer lacks it.
    let current = doc.get_heads();
    if heads
        .iter()
        .any(|h| !shared.contains(h) && current.contains(h))
    {
        return false;
    }
    // Older heads: delivered if none of them is among the changes the peer lacks. This walks
    // the history, and only a wait whose document moved on since it began comes here.
    let missing: HashSet<ChangeHash> = doc
        .get_changes_meta(shared)
        .iter()
        .map(|c| c.hash)
        .collect();
    heads.iter().all(|h| !missing.contains(h))
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};

    use super::*;

    fn change(doc: &mut Automerge, key: &str) -> ChangeHash {
        let mut tx = doc.transaction();
        tx.put(ROOT, key, 1).unwrap();
        tx.commit().0.unwrap()
    }

    /// Every answer against the one a walk of the history gives, over a document that grows
    /// on two devices (so its heads branch) while the peer's shared heads trail, catch up and
    /// run ahead of ours.
    #[test]
    fn answers_as_a_walk_of_the_history_does() {
        let mut ours = Automerge::new().with_actor(ActorId::from(&[1u8][..]));
        let mut theirs = Automerge::new().with_actor(ActorId::from(&[2u8][..]));
        let mut versions: Vec<Vec<ChangeHash>> = vec![];
        let mut checked = 0;
        let mut held = 0;
        for round in 0..12 {
            change(&mut ours, &format!("a{round}"));
            versions.push(ours.get_heads());
            if round % 3 == 0 {
                change(&mut theirs, &format!("b{round}"));
            }
            if round % 2 == 0 {
                // The peer takes everything we have: its heads become shared.
                theirs.merge(&mut ours.clone()).unwrap();
            }
            if round % 4 == 1 {
                ours.merge(&mut theirs.clone()).unwrap();
                versions.push(ours.get_heads());
            }
            let shared = theirs.get_heads();
            for heads in &versions {
                let walked = heads.iter().all(|h| shared.contains(h)) || {
                    let missing: HashSet<ChangeHash> = ours
                        .get_changes_meta(&shared)
                        .iter()
                        .map(|c| c.hash)
                        .collect();
                    heads.iter().all(|h| !missing.contains(h))
                        && ours.get_missing_deps(&shared).is_empty()
                };
                let truth = heads.iter().all(|h| theirs.get_change_by_hash(h).is_some());
                // The walk is exact where the peer's heads are all known here, and says no
                // otherwise (unless they include ours); `holds` must agree with it, and never
                // claim what is false.
                let answer = holds(&ours, &shared, heads);
                assert_eq!(answer, walked, "round {round}");
                assert!(!answer || truth, "round {round}");
                held += usize::from(answer);
                checked += 1;
            }
        }
        // Both answers came up, many times.
        assert!(
            checked > 50 && held > 10 && checked - held > 10,
            "{held} of {checked}"
        );
    }

    #[test]
    fn a_change_just_made_is_not_held_and_then_is() {
        let mut ours = Automerge::new();
        change(&mut ours, "first");
        let mut theirs = ours.clone();
        let shared = theirs.get_heads();
        change(&mut ours, "second");
        let heads = ours.get_heads();
        assert!(!holds(&ours, &shared, &heads));
        assert!(holds(&ours, &shared, &shared));
        theirs.merge(&mut ours.clone()).unwrap();
        assert!(holds(&ours, &theirs.get_heads(), &heads));
        // The peer moves on past it: still held.
        change(&mut theirs, "third");
        ours.merge(&mut theirs.clone()).unwrap();
        assert!(holds(&ours, &theirs.get_heads(), &heads));
    }
}
