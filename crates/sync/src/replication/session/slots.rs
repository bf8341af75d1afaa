//! The per-document sync states a session keeps in memory, and which of their exchanges are
//! under way.
//!
//! A session asks "how many exchanges are under way?" every time it may send and every time
//! it works out its next timer, so the answer must not cost a walk of every slot: with
//! [`MAX_SLOTS`] of them that walk was a fifth of a phone's time during a burst of sends. The
//! slots whose exchange may be under way are kept ordered by when they were last touched, so
//! the count is the size of that set less the few at its front that have settled since, and
//! the next one to settle is its first. That holds because what settles is a prefix of the
//! set ([`Clock`]: settled is monotone in when an exchange was last touched) and stays
//! settled (neither the time nor what the peer is known to have read goes back).
//!
//! Architecture invariant: `under_way` holds `(touched, doc)` for every slot that is not
//! synced, except entries found settled ([`Clock::settled`]) and pruned; only this module
//! changes a slot's `synced` and `touched`, so nothing else can break it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use automerge::sync;

use super::{MAX_SLOTS, SETTLE_AFTER};
use crate::schema::DocId;

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: sync::State,
    /// Whether `state` changed since it was last saved.
    pub(super) unsaved: bool,
    used: u64,
    synced: bool,
    /// When a message about this document last went either way.
    touched: Instant,
    /// Since when a message of ours that carried changes waits for the peer's answer (see
    /// [`super::HOLD_AT_MOST`]).
    pub(super) unanswered: Option<Instant>,
}

/// When exchanges stop counting as under way: [`SETTLE_AFTER`] after they were last touched,
/// and only once the peer is known to have read what we sent until then (`read_until`, from
/// its pongs: see `liveness`). By time alone, exchanges whose messages sat in a stalled
/// connection counted as settled, and the backlog sent hundreds more into it; when the link
/// came back the peer got them all at once, more than it keeps slots for, and both sides
/// evicted and restarted each other's exchanges for minutes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub(super) now: Instant,
    pub(super) read_until: Instant,
}

impl Clock {
    /// Whether an exchange last touched at `touched` (and not synced) has settled. If it has,
    /// so has every exchange touched before it.
    fn settled(self, touched: Instant) -> bool {
        settles(touched) <= self.now && touched <= self.read_until
    }
}

impl Slot {
    /// Whether the peer is known to hold this document exactly as we do.
    pub(super) fn synced(&self) -> bool {
        self.synced
    }

    fn active(&self, clock: Clock) -> bool {
        !self.synced && !clock.settled(self.touched)
    }
}

/// When an exchange last touched at `touched` stops counting as under way.
fn settles(touched: Instant) -> Instant {
    touched + SETTLE_AFTER
}

/// Ordered maps and sets throughout, not hashed ones: what a session does may depend on the
/// order it walks them in (which slot is evicted among equals), and that order must not
/// change from one run to the next, or a simulated seed would not replay.
#[derive(Debug, Default)]
pub(super) struct Slots {
    map: BTreeMap<DocId, Slot>,
    /// See the module's invariant.
    under_way: BTreeSet<(Instant, DocId)>,
    uses: u64,
    /// Slots evicted mid-exchange, for descriptions: each restarts an exchange, and a count
    /// that grows means the peer keeps more exchanges going than the slots hold.
    evicted_under_way: u64,
}

impl Slots {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn contains(&self, doc: &DocId) -> bool {
        self.map.contains_key(doc)
    }

    pub(super) fn get(&self, doc: &DocId) -> Option<&Slot> {
        self.map.get(doc)
    }

    pub(super) fn get_mut(&mut self, doc: &DocId) -> Option<&mut Slot> {
        self.map.get_mut(doc)
    }

    pub(super) fn docs(&self) -> impl Iterator<Item = &DocId> {
        self.map.keys()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&DocId, &mut Slot)> {
        self.map.iter_mut()
    }

    /// How many slots are synced (for descriptions; walks them all).
    pub(super) fn synced_count(&self) -> usize {
        self.map.values().filter(|s| s.synced).count()
    }

    /// How many slots were evicted mid-exchange.
    pub(super) fn evicted_under_way(&self) -> u64 {
        self.evicted_under_way
    }

    /// Whether `doc`'s exchange is under way.
    pub(super) fn is_active(&self, doc: &DocId, clock: Clock) -> bool {
        self.map.get(doc).is_some_and(|s| s.active(clock))
    }

    /// How many exchanges are under way: the set less the settled entries at its front
    /// (few, as the session prunes them whenever it acts).
    pub(super) fn active(&self, clock: Clock) -> usize {
        let settled = self
            .under_way
            .iter()
            .take_while(|(touched, _)| clock.settled(*touched))
            .count();
        self.under_way.len() - settled
    }

    /// When the oldest exchange under way was last touched.
    pub(super) fn oldest_under_way(&self, clock: Clock) -> Option<Instant> {
        self.under_way
            .iter()
            .map(|(touched, _)| *touched)
            .find(|touched| !clock.settled(*touched))
    }

    /// Drops the entries of exchanges that have settled.
    pub(super) fn prune(&mut self, clock: Clock) {
        while let Some(first) = self.under_way.first()
            && clock.settled(first.0)
        {
            self.under_way.pop_first();
        }
    }

    /// Records whether the peer holds `doc` as we do.
    pub(super) fn set_synced(&mut self, doc: &DocId, synced: bool) {
        let Some(slot) = self.map.get_mut(doc) else {
            return;
        };
        if slot.synced == synced {
            return;
        }
        slot.synced = synced;
        let key = (slot.touched, doc.clone());
        if synced {
            self.under_way.remove(&key);
        } else {
            self.under_way.insert(key);
        }
    }

    /// The slot of `doc`, touched now, with the state `load` gives if it has none in memory.
    /// When a new slot needs room, one is evicted: returned with its state if that was unsaved.
    pub(super) fn take(
        &mut self,
        doc: &DocId,
        clock: Clock,
        load: impl FnOnce() -> sync::State,
    ) -> (&mut Slot, Option<(DocId, Vec<u8>)>) {
        let now = clock.now;
        self.uses += 1;
        let used = self.uses;
        let mut evicted = None;
        if !self.map.contains_key(doc) {
            if self.map.len() >= MAX_SLOTS {
                evicted = self.evict_one(clock);
            }
            self.map.insert(
                doc.clone(),
                Slot {
                    state: load(),
                    unsaved: false,
                    used,
                    synced: false,
                    touched: now,
                    unanswered: None,
                },
            );
            self.under_way.insert((now, doc.clone()));
        }
        let slot = self.map.get_mut(doc).expect("inserted above");
        slot.used = used;
        if slot.touched != now {
            if !slot.synced {
                self.under_way.remove(&(slot.touched, doc.clone()));
                self.under_way.insert((now, doc.clone()));
            }
            slot.touched = now;
        }
        (slot, evicted)
    }

    /// Makes room: the least recently used slot whose exchange is not under way, or failing
    /// that (only if the peer has more under way than it should) the least recently used.
    /// Returns the evicted state if it was unsaved.
    fn evict_one(&mut self, clock: Clock) -> Option<(DocId, Vec<u8>)> {
        let oldest = self
            .map
            .iter()
            .min_by_key(|(_, s)| (s.active(clock), s.used))
            .map(|(d, _)| d.clone())?;
        let slot = self.map.remove(&oldest)?;
        if slot.active(clock) {
            self.evicted_under_way += 1;
        }
        self.under_way.remove(&(slot.touched, oldest.clone()));
        slot.unsaved.then(|| (oldest, slot.state.encode()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The counts kept by the ordered set are those a walk of every slot gives, whatever
    /// happens to the slots: taken, synced, unsynced, evicted, left to settle, read by the
    /// peer or not.
    #[test]
    fn exchanges_under_way_are_counted_as_a_walk_of_every_slot_counts_them() {
        let docs: Vec<DocId> = (0..MAX_SLOTS + 40).map(|_| DocId::new_thread()).collect();
        let mut slots = Slots::default();
        let start = Instant::now();
        let mut clock = Clock {
            now: start,
            read_until: start,
        };
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 0..20_000 {
            let doc = &docs[next() as usize % docs.len()];
            match next() % 5 {
                0 | 1 => {
                    slots.take(doc, clock, sync::State::new);
                }
                2 => slots.set_synced(doc, next() % 2 == 0),
                3 => clock.now += Duration::from_millis(next() % 400),
                _ => clock.read_until = clock.now,
            }
            if step % 7 == 0 {
                slots.prune(clock);
            }
            let walked = slots.map.values().filter(|s| s.active(clock)).count();
            assert_eq!(slots.active(clock), walked, "step {step}");
            let oldest = slots
                .map
                .values()
                .filter(|s| s.active(clock))
                .map(|s| s.touched)
                .min();
            assert_eq!(slots.oldest_under_way(clock), oldest, "step {step}");
            assert!(slots.len() <= MAX_SLOTS);
        }
        assert!(clock.now > start + SETTLE_AFTER, "time went by");
    }
}
