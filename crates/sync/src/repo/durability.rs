//! Durability: commits counted as they are made, and flushes shared by everyone waiting
//! (group commit; see the module docs of [`crate::repo`]).

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{Repo, lock};
use crate::store::{Commit, StoreError};

impl Repo {
    /// Waits until whatever this caller committed since `before` is durable (see the module
    /// docs): nothing to do if it committed nothing, or if someone's flush covered it.
    pub(super) fn made_durable(&self, before: u64) -> Result<(), StoreError> {
        let written = self.written.load(Ordering::Acquire);
        if written == before {
            return Ok(());
        }
        self.flush_to(written)
    }

    /// Makes every commit up to the `upto`th durable, with one flush for everyone waiting.
    pub(super) fn flush_to(&self, upto: u64) -> Result<(), StoreError> {
        if self.flushed.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        let _flushing = lock(&self.flushing);
        if self.flushed.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        // Every commit counted by now has returned, so the flush's own commit comes after it.
        let target = self.written.load(Ordering::Acquire);
        self.store.flush()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.flushed.fetch_max(target, Ordering::AcqRel);
        self.note_durability();
        Ok(())
    }

    /// Records a commit just made (the caller holds the write lock).
    pub(super) fn committed(&self, commit: Commit) {
        let seq = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        if commit == Commit::Durable {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.flushed.fetch_max(seq, Ordering::AcqRel);
        }
        self.note_durability();
    }

    /// Sets whether everything written is durable. The counters are read under the watch's
    /// lock, so of two updates racing, the later one sees the later counts.
    pub(super) fn note_durability(&self) {
        self.durable.send_if_modified(|d| {
            let now = self.flushed.load(Ordering::Acquire) >= self.written.load(Ordering::Acquire);
            std::mem::replace(d, now) != now
        });
    }

    /// How many database commits this repo has made so far.
    pub fn commits(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// How many fsyncs this repo has asked for so far (durable commits and flushes).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Makes every lazy write durable; nothing to do if none is pending.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_to(self.written.load(Ordering::Acquire))
    }

    /// Records that the commit just made (the caller holds the write lock) must be durable
    /// before a peer hears anything more ([`Repo::flush_for_peers`]).
    pub(super) fn owe_to_peers(&self) {
        self.owed_to_peers
            .fetch_max(self.written.load(Ordering::Acquire), Ordering::AcqRel);
    }

    /// Makes durable what no peer may hear of before it is: what peers sent, written lazily
    /// when several messages are at hand ([`RepoDocs::write`]), and local changes written
    /// lazily ([`Repo::change_lazily`]). The replicator calls it before every message, so
    /// those messages share one fsync and a peer never hears that we hold what a crash could
    /// still take away (it would send it again), nor an outcome a crash could take back.
    /// It does not wait for a local change whose caller is flushing it anyway
    /// ([`Repo::change`]): that one is pushed while its write is under way.
    pub fn flush_for_peers(&self) -> Result<(), StoreError> {
        self.flush_to(self.owed_to_peers.load(Ordering::Acquire))
    }

    /// Whether everything written is durable, as it changes (for measurements that must wait
    /// for durability, not just for a change to be readable).
    pub fn durability(&self) -> watch::Receiver<bool> {
        self.durable.subscribe()
    }
}
