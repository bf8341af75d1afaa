//! Whether the peer is there, and how far it has read: pings, pongs, and the silence that
//! ends a connection.
//!
//! A ping is answered by a pong, each by its own, in order, and the stream is ordered: so a
//! pong says that the peer has read everything we sent before the ping it answers. That is
//! what lets an exchange the peer left unanswered count as settled (see
//! [`super::slots::Clock`]): time alone says nothing when what we sent is still in a buffer
//! on its way, as after a partition, when QUIC's retransmissions back off and one direction of
//! a connection can stay stalled for seconds while the other works.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{PROBE_AFTER, STALL_AFTER};
use crate::replication::Msg;

/// Pings of ours the peer has not answered, at most: past this, no more are sent until it
/// answers (a peer that does not read gains nothing by it, and the record stays small).
pub const MAX_PINGS_OUT: usize = 8;
/// A peer's messages further apart than this are not "speaking on" ([`Liveness::deaf`]): a
/// peer busy for a while says something before and after, and reads our ping in between.
/// Longer than [`PROBE_AFTER`], the pace of a peer that only pings.
const MAX_GAP: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub(super) struct Liveness {
    /// Since when an answer is awaited: set when a message the peer answers goes out with
    /// none awaited, cleared by any message from the peer (see [`STALL_AFTER`]).
    awaiting: Option<Instant>,
    /// The last sign of the peer (a message, or [`super::Input::Alive`]) while an answer is
    /// awaited.
    heard: Instant,
    /// When the last probe was asked for, while an answer is awaited.
    probed: Option<Instant>,
    /// Whether a ping waits to be sent.
    ping_wanted: bool,
    /// When each ping of ours that the peer has not answered went out, oldest first.
    pings: VecDeque<Instant>,
    /// The peer's pings not answered yet: a count, so that a peer pinging without reading
    /// makes nothing grow but it.
    pongs_owed: u64,
    /// When the latest ping the peer answered went out: it has read all we sent before.
    read_until: Instant,
    /// When the last message from the peer arrived.
    last_message: Instant,
    /// When the peer began speaking without a pause longer than [`MAX_GAP`], after the oldest
    /// unanswered ping went.
    spoke_since: Option<Instant>,
    /// Since when sync messages (or a catalog request) of ours may be unread: the peer has not
    /// answered a ping sent after them. Asked about after [`PROBE_AFTER`], so that a peer
    /// that keeps talking but does not hear us is found out ([`Liveness::deaf`]) even though
    /// its messages keep clearing `awaiting`.
    unread_since: Option<Instant>,
    /// When the last of those went out.
    last_unread: Instant,
}

/// The peer has not answered for [`STALL_AFTER`], and nothing shows it is there; or it does
/// not hear us ([`Liveness::deaf`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Silent;

impl Liveness {
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            awaiting: None,
            heard: now,
            probed: None,
            ping_wanted: false,
            pings: VecDeque::new(),
            pongs_owed: 0,
            read_until: now,
            last_message: now,
            spoke_since: None,
            unread_since: None,
            last_unread: now,
        }
    }

    pub(super) fn awaiting(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Everything we sent before this the peer has read.
    pub(super) fn read_until(&self) -> Instant {
        self.read_until
    }

    pub(super) fn last_message(&self) -> Instant {
        self.last_message
    }

    pub(super) fn pings_out(&self) -> usize {
        self.pings.len()
    }

    /// A message from the peer.
    pub(super) fn on_message(&mut self, now: Instant, msg: &Msg) {
        self.awaiting = None;
        self.probed = None;
        self.heard = now;
        let gap = now.saturating_duration_since(self.last_message);
        self.last_message = now;
        match msg {
            Msg::Ping => self.pongs_owed = self.pongs_owed.saturating_add(1),
            // A pong we did not ask for says nothing.
            Msg::Pong => {
                if let Some(sent) = self.pings.pop_front() {
                    self.read_until = self.read_until.max(sent);
                    self.spoke_since = None;
                    if self.unread_since.is_some_and(|since| since <= sent) {
                        self.unread_since = (self.last_unread > sent).then_some(sent);
                    }
                }
                return;
            }
            _ => {}
        }
        if !self.pings.is_empty() && (self.spoke_since.is_none() || gap > MAX_GAP) {
            self.spoke_since = Some(now);
        }
    }

    /// The driver saw packets from the peer though no message.
    pub(super) fn alive(&mut self, now: Instant) {
        self.heard = now;
    }

    /// `msg` went out; `answered`: the peer answers it.
    pub(super) fn sent(&mut self, now: Instant, msg: &Msg, answered: bool) {
        if self.awaiting.is_none() && answered {
            self.awaiting = Some(now);
            self.heard = now;
        }
        match msg {
            Msg::Ping => self.pings.push_back(now),
            Msg::Sync { .. } | Msg::CatalogRequest => {
                self.unread_since.get_or_insert(now);
                self.last_unread = now;
            }
            _ => {}
        }
    }

    /// Whether [`Liveness::poll`] has a message.
    pub(super) fn wants_transmit(&self) -> bool {
        self.pongs_owed > 0 || self.ping_wanted
    }

    /// A pong owed, or a ping wanted.
    pub(super) fn poll(&mut self) -> Option<Msg> {
        if self.pongs_owed > 0 {
            self.pongs_owed -= 1;
            return Some(Msg::Pong);
        }
        if self.ping_wanted {
            self.ping_wanted = false;
            return Some(Msg::Ping);
        }
        None
    }

    /// Asks the peer whether it has read what we sent before `since`, unless a ping will tell
    /// already.
    pub(super) fn ask_read(&mut self, since: Instant) {
        if !self.asked_read(since) {
            self.ping_wanted = true;
        }
    }

    /// Whether the next pong will say whether the peer has read what we sent before `since`:
    /// a ping sent then or since (or about to be) asks it. With [`MAX_PINGS_OUT`] unanswered,
    /// no more are sent, and the pongs to come are all there is to wait for.
    pub(super) fn asked_read(&self, since: Instant) -> bool {
        self.ping_wanted
            || self.pings.back().is_some_and(|sent| *sent >= since)
            || self.pings.len() >= MAX_PINGS_OUT
    }

    /// Whether the peer goes on speaking but does not hear us: a ping of ours unanswered for
    /// [`STALL_AFTER`], while messages from the peer kept arriving after it went, none more
    /// than [`MAX_GAP`] apart, over at least [`PROBE_AFTER`] (a session reads whenever it
    /// speaks, so the ping is stuck on its way). After a partition one direction of a
    /// connection can stay stalled for seconds while the other works, and the peer's messages
    /// keep the silence that [`Liveness::handle_timeout`] looks for from showing. Messages
    /// that arrive together say nothing: a session that was busy itself reads what piled up
    /// all at once.
    ///
    /// A peer reading far behind what we sent would look the same, but what we send ahead of
    /// its answers is bounded (`MAX_ACTIVE` exchanges, each a message at a time), so it would
    /// have to take longer than [`STALL_AFTER`] over those; if it does, the cost is a fresh
    /// connection, and nothing received is lost.
    pub(super) fn deaf(&self, now: Instant) -> bool {
        let (Some(sent), Some(spoke)) = (self.pings.front(), self.spoke_since) else {
            return false;
        };
        now >= *sent + STALL_AFTER && self.last_message >= spoke + PROBE_AFTER
    }

    /// When [`Liveness::handle_timeout`] should next run: probing or giving up on a peer
    /// slow to answer, or finding it deaf.
    pub(super) fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let deaf = self
            .pings
            .front()
            .map(|sent| *sent + STALL_AFTER)
            .filter(|at| *at > now);
        let awaited = self.awaiting.map(|since| {
            let probe = self.probed.unwrap_or(since) + PROBE_AFTER;
            let stall = self.heard.max(since) + STALL_AFTER;
            probe.min(stall)
        });
        let unread = self
            .unread_since
            .filter(|since| !self.asked_read(*since))
            .map(|since| since + PROBE_AFTER);
        deaf.into_iter().chain(awaited).chain(unread).min()
    }

    /// Probes a peer slow to answer; gives up on one silent for [`STALL_AFTER`], or deaf.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Result<(), Silent> {
        if self.deaf(now) {
            return Err(Silent);
        }
        if let Some(since) = self.unread_since
            && now >= since + PROBE_AFTER
        {
            self.ask_read(since);
        }
        let Some(since) = self.awaiting else {
            return Ok(());
        };
        if now >= self.heard.max(since) + STALL_AFTER {
            return Err(Silent);
        }
        if now >= self.probed.unwrap_or(since) + PROBE_AFTER {
            self.probed = Some(now);
            self.ping_wanted |= self.pings.len() < MAX_PINGS_OUT;
        }
        Ok(())
    }
}
