//! One connection with one peer, as a state machine: inputs are the peer's messages, local
//! document changes and the passing of time; outputs are messages to send and [`Event`]s
//! (sync states to save, documents now in sync, a peer to drop). No IO, no tokio: the driver
//! calls [`Session::handle`], [`Session::poll_transmit`] when it can send, [`Session::poll_event`],
//! and [`Session::handle_timeout`] at [`Session::poll_timeout`].
//!
//! Bounds, whatever the number of documents: one stream; at most [`MAX_SLOTS`] per-document
//! sync states in memory, and [`SAVE_EVICTED_AT`] evicted ones waiting to be saved (the rest
//! are saved and reloaded on demand); catalog pages of
//! [`msg::CATALOG_PAGE`] entries generated one at a time as the stream takes them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use automerge::sync;

use super::digest::{Digest, HeadsHash};
use super::msg::{self, Msg, PROTOCOL_VERSION};
use super::{Docs, DocsError};
use crate::ids::DeviceId;
use crate::quota::Quotas;
use crate::schema::DocId;
pub use interface::{Event, Input};
use liveness::Liveness;
use queue::Queue;
use slots::{Clock, Slots};
use states::{presumed_lacking, resumed, same_heads};

mod interface;
mod liveness;
mod queue;
mod slots;
mod states;

/// Per-document sync states kept in memory per peer; beyond this the least recently used one
/// is saved and dropped.
pub const MAX_SLOTS: usize = 256;
/// The sync states of evicted slots kept unsaved at most, in memory (with the session's, saved
/// together once this many wait or the session goes quiet): in a burst of new documents
/// nearly every document evicts one slot, and saving each alone was a database commit apiece.
pub const SAVE_EVICTED_AT: usize = 64;
/// Sync states are saved once the session has been quiet this long (or when it ends): each
/// save dirties database pages that the next durable commit must write, on the path whose
/// latency matters.
pub const SAVE_AFTER: Duration = Duration::from_millis(250);
/// Digests that still differ this long after both sides ran out of work mean that one side
/// cannot tell what the other lacks: ask for the peer's catalog.
pub const CATALOG_AFTER: Duration = Duration::from_millis(300);
/// At most this many documents are synced at once on our initiative; more wait their turn.
/// With the peer's own as many, the exchanges under way fit in [`MAX_SLOTS`], so a slot is
/// never taken from a document mid-exchange (which would restart its exchange, and with many
/// documents could do so forever).
pub const MAX_ACTIVE: usize = 100;
/// A document's exchange counts as under way until the peer is known to hold our version, or
/// until nothing about it has been heard for this long.
pub const SETTLE_AFTER: Duration = Duration::from_secs(2);

/// A message that the peer answers (a sync message, the opener's hello, a catalog request)
/// unanswered this long: ask whether the peer is there ([`Msg::Ping`]), and again every as
/// long while the answer is overdue.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);
/// An answer overdue this long with no sign of the peer at all (no message, and the driver
/// seeing no packet from it, [`Input::Alive`]): the connection has gone silent.
///
/// QUIC keeps a connection through a partition shorter than its idle timeout, but the gaps
/// between its retransmissions double while the link is down, so after the link returns the
/// next one may be many seconds away. A fresh connection is there within a dial: giving up on
/// the silent one bounds what a short partition costs to about this plus a dial.
pub const STALL_AFTER: Duration = Duration::from_millis(2500);

/// A document whose last message to the peer carried changes is not sent again until the
/// peer answers it, or for at most this long. Changes made meanwhile (a burst of sends into
/// one thread, an executor's progress) then travel together in the next message: the peer
/// verifies, merges, stores and acknowledges them once, where it did each in turn before.
/// A change made when nothing is unanswered goes at once, so a lone send waits for nothing.
/// An honest peer answers a message that brings it changes as soon as it has merged them;
/// the bound covers one that does not.
pub const HOLD_AT_MOST: Duration = Duration::from_millis(20);
/// Messages whose changes name an author not known yet, per session, before the peer counts
/// as sending changes by non-members.
pub const MAX_EARLY: u32 = 64;

/// Where a catalog we are receiving has got to, in id order.
#[derive(Debug, Default)]
struct IncomingCatalog {
    cursor: Option<DocId>,
}

#[derive(Debug)]
pub struct Session {
    peer: DeviceId,
    opener: bool,
    hello_sent: bool,
    hello_received: bool,
    /// Ordered maps and sets throughout, not hashed ones (see [`Slots`]).
    slots: Slots,
    /// Documents with work to do.
    queue: Queue,
    control: VecDeque<Msg>,
    /// Sending our catalog: the last id sent, and whether we are done.
    catalog_out: Option<Option<DocId>>,
    catalog_in: Option<IncomingCatalog>,
    peer_digest: Option<Digest>,
    sent_digest: Option<Digest>,
    /// The (ours, theirs) digests when we last asked for a catalog: ask once per mismatch.
    catalog_asked: Option<(Digest, Digest)>,
    last_activity: Instant,
    /// Whether a slot's state, or an evicted one, is unsaved.
    unsaved: bool,
    /// States of evicted slots not saved yet (at most [`SAVE_EVICTED_AT`]); a slot taken again
    /// meanwhile starts from its state here.
    evicted: BTreeMap<DocId, Vec<u8>>,
    events: VecDeque<Event>,
    failed: bool,
    /// Messages refused as early (see [`MAX_EARLY`]).
    early: u32,
    /// Messages received and sent (for descriptions).
    received: u64,
    sent: u64,
    /// Whether messages were received, or documents changed, since the documents were last
    /// flushed (see [`Docs::flush`]): flushed before anything is sent.
    unflushed: bool,
    /// Pings and pongs: whether the peer is there, and how far it has read.
    liveness: Liveness,
    quotas: Quotas,
    /// Documents the peer named that were not held here and that it has not brought yet
    /// (at most [`Quotas::max_unknown_docs`]).
    unknown: BTreeSet<DocId>,
    /// Documents with something to send, held back until the peer answers the changes we
    /// last sent, or until the time given (see [`HOLD_AT_MOST`]). At most one entry per slot.
    held: BTreeMap<DocId, Instant>,
}

impl Session {
    /// A session with `peer`. The side that dialled (`opener`) speaks first; the other says
    /// nothing until the opener's `Hello` arrives, so a fresh device never receives a document
    /// twice.
    pub fn new(peer: DeviceId, opener: bool, now: Instant) -> Session {
        Session::with_quotas(peer, opener, now, Quotas::DEFAULT)
    }

    /// A session that applies `quotas` (tests set small ones).
    pub fn with_quotas(peer: DeviceId, opener: bool, now: Instant, quotas: Quotas) -> Session {
        Session {
            peer,
            opener,
            hello_sent: false,
            hello_received: false,
            slots: Slots::default(),
            queue: Queue::default(),
            control: VecDeque::new(),
            catalog_out: None,
            catalog_in: None,
            peer_digest: None,
            sent_digest: None,
            catalog_asked: None,
            last_activity: now,
            unsaved: false,
            evicted: BTreeMap::new(),
            events: VecDeque::new(),
            failed: false,
            early: 0,
            received: 0,
            sent: 0,
            unflushed: false,
            liveness: Liveness::new(now),
            quotas,
            unknown: BTreeSet::new(),
            held: BTreeMap::new(),
        }
    }

    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Starts the session: the opener says hello.
    pub fn start(&mut self, docs: &dyn Docs) {
        if self.opener {
            self.say_hello(docs);
        }
    }

    fn say_hello(&mut self, docs: &dyn Docs) {
        let digest = docs.digest();
        self.control.push_back(Msg::Hello {
            version: PROTOCOL_VERSION,
            digest,
            docs: u32::try_from(docs.held()).unwrap_or(u32::MAX),
        });
        self.sent_digest = Some(digest);
        self.hello_sent = true;
    }

    /// Whether the peer is known to hold exactly what we hold, and nothing is under way.
    pub fn in_sync(&self, docs: &dyn Docs) -> bool {
        self.hello_received
            && self.queue.now_is_empty()
            && self.queue.backlog_is_empty()
            && self.held.is_empty()
            && self.catalog_in.is_none()
            && self.peer_digest == Some(docs.digest())
    }

    /// The peer's latest digest, if it has sent one.
    pub fn peer_digest(&self) -> Option<Digest> {
        self.peer_digest
    }

    /// A one-line account of the session's state, for logs and failed simulations.
    pub fn describe(&self, now: Instant) -> String {
        let (queued, backlog) = self.queue.lens();
        format!(
            "messages in {} out {} last in {:?} ago, hello sent {} received {}, queue {queued} ({} answers) and backlog {backlog}, slots {} ({} synced, {} under way, {} evicted under way), held {}, unknown {}, control {}, catalog out {:?} in {}, peer digest {:?}, sent digest {:?}, asked {:?}, awaiting {}, pings out {}",
            self.received,
            self.sent,
            now.saturating_duration_since(self.liveness.last_message()),
            self.hello_sent,
            self.hello_received,
            self.queue.answer_count(),
            self.slots.len(),
            self.slots.synced_count(),
            self.active(now),
            self.slots.evicted_under_way(),
            self.held.len(),
            self.unknown.len(),
            self.control.len(),
            self.catalog_out,
            self.catalog_in.is_some(),
            self.peer_digest,
            self.sent_digest,
            self.catalog_asked,
            self.liveness.awaiting(),
            self.liveness.pings_out(),
        )
    }

    /// How many per-document sync states are held in memory.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether the session failed (the peer misbehaved, or went silent); the driver drops
    /// the connection.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether an answer from the peer is awaited (the driver then watches for its packets,
    /// [`Input::Alive`]).
    pub fn awaiting(&self) -> bool {
        self.liveness.awaiting()
    }

    pub fn handle(&mut self, now: Instant, input: Input, docs: &mut dyn Docs) {
        if self.failed {
            return;
        }
        self.slots.prune(self.clock(now));
        match input {
            Input::Message(m) => {
                self.last_activity = now;
                self.liveness.on_message(now, &m);
                self.received += 1;
                if self.liveness.deaf(now) {
                    return self.give_up_silent();
                }
                self.on_message(now, m, docs);
            }
            Input::Alive => self.liveness.alive(now),
            Input::Changed(doc) => {
                // Written lazily, perhaps (an executor's outcome, a change from another peer):
                // made durable before we say anything more (see `Docs::flush`).
                self.unflushed = true;
                if self.hello_received {
                    self.enqueue(doc);
                }
            }
            Input::LostTrack => {
                if self.hello_received {
                    for doc in docs.unsynced(&self.peer) {
                        self.enqueue(doc);
                    }
                    let held: Vec<DocId> = self.slots.docs().cloned().collect();
                    for doc in held {
                        self.enqueue(doc);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, now: Instant, m: Msg, docs: &mut dyn Docs) {
        if !self.hello_received {
            let Msg::Hello {
                version, digest, ..
            } = m
            else {
                return self.fail("first message was not a hello".into());
            };
            if version != PROTOCOL_VERSION {
                return self.fail(format!("speaks sync protocol version {version}"));
            }
            self.hello_received = true;
            self.peer_digest = Some(digest);
            if !self.hello_sent {
                self.say_hello(docs);
            }
            if digest != docs.digest() {
                for doc in docs.unsynced(&self.peer) {
                    self.enqueue(doc);
                }
            }
            return;
        }
        match m {
            Msg::Hello { .. } => self.fail("said hello twice".into()),
            Msg::Sync { doc, message } => self.on_sync(now, doc, &message, docs),
            Msg::Digest(d) => self.peer_digest = Some(d),
            Msg::CatalogRequest => {
                if self.catalog_out.is_none() {
                    self.catalog_out = Some(None);
                }
            }
            Msg::Catalog { entries, last } => self.on_catalog(entries, last, docs),
            // Answered, and taken note of, by `liveness`.
            Msg::Ping | Msg::Pong => {}
        }
    }

    fn on_sync(&mut self, now: Instant, doc: DocId, message: &[u8], docs: &mut dyn Docs) {
        let peer = self.peer;
        if let Err(reason) = self.admit_unknown(&doc, docs) {
            return self.fail(reason);
        }
        self.unflushed = true;
        // The peer answered: what was held for this document goes with our reply.
        self.held.remove(&doc);
        let slot = self.slot(&doc, docs, now);
        slot.unanswered = None;
        let outcome = docs.receive(&doc, &mut slot.state, message);
        match outcome {
            Ok(()) => {}
            Err(DocsError::Malformed(reason)) => {
                return self.fail(format!("bad sync message for {doc}: {reason}"));
            }
            Err(DocsError::Local(reason)) => {
                // The state may count changes we could not store as had: start this document
                // over with the peer rather than trust it.
                tracing::warn!(%peer, %doc, "cannot apply sync message: {reason}");
                slot.state = sync::State::new();
            }
            Err(DocsError::Early(reason)) => {
                // An honest peer holds a change only once it knows its author, so the
                // author's certificate is in its index: sync the index, then this again. A
                // peer whose index we already hold in full has no such excuse.
                slot.state = sync::State::new();
                self.early += 1;
                let index = DocId::index();
                let index_synced = self.slots.get(&index).is_some_and(|s| s.synced())
                    && !self.queue.contains(&index);
                if index_synced || self.early > MAX_EARLY {
                    return self.fail(format!("a change by a non-member in {doc}: {reason}"));
                }
                tracing::debug!(%peer, %doc, "waiting for the index: {reason}");
                self.enqueue(index);
            }
        }
        if docs.fingerprint(&doc).is_some() {
            self.unknown.remove(&doc);
        }
        let Some(slot) = self.slots.get_mut(&doc) else {
            return;
        };
        slot.unsaved = true;
        self.unsaved = true;
        self.note_progress(&doc, docs);
        self.answer(doc);
    }

    /// The quotas on documents a peer names that are not held here: none may be created past
    /// [`Quotas::max_documents`], and at most [`Quotas::max_unknown_docs`] may wait for the
    /// peer to bring them. Checked before the message touches anything.
    fn admit_unknown(&mut self, doc: &DocId, docs: &dyn Docs) -> Result<(), String> {
        if docs.fingerprint(doc).is_some() || self.unknown.contains(doc) {
            return Ok(());
        }
        if let Err(full) = self.quotas.check_new_document(docs.held()) {
            return Err(format!("sent {doc}, a new document: {full}"));
        }
        let max = self.quotas.max_unknown_docs;
        if self.unknown.len() >= max {
            // Some may have arrived since through another peer.
            self.unknown.retain(|d| docs.fingerprint(d).is_none());
            if self.unknown.len() >= max {
                return Err(format!(
                    "named more than {max} documents not held here without bringing them (max_unknown_docs)"
                ));
            }
        }
        self.unknown.insert(doc.clone());
        Ok(())
    }

    fn on_catalog(&mut self, entries: Vec<(DocId, HeadsHash)>, last: bool, docs: &dyn Docs) {
        let incoming = self.catalog_in.get_or_insert_with(IncomingCatalog::default);
        let mut wanted = Vec::new();
        for (doc, hash) in entries {
            if incoming.cursor.as_ref().is_some_and(|c| *c >= doc) {
                return self.fail("catalog out of order".into());
            }
            // Ours between the previous entry and this one: the peer lacks them.
            let missing = docs.catalog_range(incoming.cursor.as_ref(), Some(&doc), usize::MAX);
            wanted.extend(missing.into_iter().map(|(d, _)| d));
            if docs.fingerprint(&doc) != Some(hash) {
                wanted.push(doc.clone());
            }
            incoming.cursor = Some(doc);
        }
        if last {
            let rest = docs.catalog_range(incoming.cursor.as_ref(), None, usize::MAX);
            wanted.extend(rest.into_iter().map(|(d, _)| d));
            self.catalog_in = None;
        }
        for doc in wanted {
            // A fresh start for these: whatever state we saved describes a peer that since
            // lost what it had.
            if let Some(slot) = self.slots.get_mut(&doc) {
                slot.state = sync::State::new();
            }
            self.enqueue(doc);
        }
    }

    fn fail(&mut self, reason: String) {
        self.stop();
        self.events.push_back(Event::Misbehaved(reason));
    }

    /// Ends the session: nothing more is sent or taken in.
    fn stop(&mut self) {
        self.failed = true;
        self.queue.clear();
        self.held.clear();
        self.control.clear();
    }

    fn enqueue(&mut self, doc: DocId) {
        let held = self.slots.contains(&doc);
        self.queue.enqueue(doc, held, false);
    }

    /// Queues `doc` to answer the peer, who has just spoken of it.
    fn answer(&mut self, doc: DocId) {
        let held = self.slots.contains(&doc);
        self.queue.enqueue(doc, held, true);
    }

    fn clock(&self, now: Instant) -> Clock {
        Clock {
            now,
            read_until: self.liveness.read_until(),
        }
    }

    fn active(&self, now: Instant) -> usize {
        self.slots.active(self.clock(now))
    }

    /// The oldest exchange under way, last touched then, if the backlog waits on it.
    fn backlog_waits_on(&self, now: Instant) -> Option<Instant> {
        if self.queue.backlog_is_empty() || self.active(now) < MAX_ACTIVE {
            return None;
        }
        self.slots.oldest_under_way(self.clock(now))
    }

    /// When the backlog may open: when the oldest exchange under way settles, or, if the peer
    /// has not been asked whether it read our messages about it, when it is time to ask. The
    /// answer, a message, wakes the session anyway.
    fn backlog_opens(&self, now: Instant) -> Option<Instant> {
        let touched = self.backlog_waits_on(now)?;
        let asked = self.liveness.asked_read(touched);
        (touched <= self.liveness.read_until() || !asked).then_some(touched + SETTLE_AFTER)
    }

    /// The slot of `doc`, loading its saved state, and making room if needed.
    fn slot(&mut self, doc: &DocId, docs: &dyn Docs, now: Instant) -> &mut slots::Slot {
        let peer = self.peer;
        let unsaved = match self.slots.contains(doc) {
            true => None,
            false => self.evicted.remove(doc),
        };
        let clock = self.clock(now);
        let (_, evicted) = self.slots.take(doc, clock, || {
            let saved = match unsaved {
                Some(bytes) => sync::State::decode(&bytes).ok(),
                None => docs.saved_state(&peer, doc),
            };
            match saved {
                None if docs.just_created(doc) => presumed_lacking(),
                saved => resumed(saved, docs.heads(doc)),
            }
        });
        if let Some((evicted, state)) = evicted {
            self.evicted.insert(evicted, state);
            self.unsaved = true;
            if self.evicted.len() >= SAVE_EVICTED_AT {
                let states = std::mem::take(&mut self.evicted).into_iter().collect();
                self.events.push_back(Event::SaveStates(states));
            }
        }
        self.slots.get_mut(doc).expect("just taken")
    }

    fn note_progress(&mut self, doc: &DocId, docs: &dyn Docs) {
        let Some(slot) = self.slots.get_mut(doc) else {
            return;
        };
        let mut ours = docs.heads(doc);
        ours.sort();
        let mut theirs = slot.state.their_heads.clone().unwrap_or_default();
        theirs.sort();
        let synced = slot.state.their_heads.is_some() && ours == theirs;
        let newly = synced && !slot.synced();
        self.events.push_back(Event::Shared {
            doc: doc.clone(),
            heads: slot.state.shared_heads.clone(),
        });
        self.slots.set_synced(doc, synced);
        if newly {
            self.events.push_back(Event::Synced(doc.clone()));
        }
    }

    /// Whether [`Session::poll_transmit`] may have something to send.
    pub fn wants_transmit(&self, now: Instant, docs: &dyn Docs) -> bool {
        if self.failed {
            return false;
        }
        if !self.control.is_empty() || self.liveness.wants_transmit() {
            return true;
        }
        if !self.hello_sent {
            return false;
        }
        self.catalog_out.is_some()
            || !self.queue.now_is_empty()
            || (!self.queue.backlog_is_empty() && self.active(now) < MAX_ACTIVE)
            // As `next_message` decides whether to announce the digest: a `true` it would
            // answer with nothing makes the driver ask again and again.
            || (self.hello_received
                && self.catalog_in.is_none()
                && self.queue.backlog_is_empty()
                && self.held.is_empty()
                && self.sent_digest != Some(docs.digest()))
    }

    /// The next message to send, if any. Call it whenever the stream can take a message.
    pub fn poll_transmit(&mut self, now: Instant, docs: &mut dyn Docs) -> Option<Msg> {
        self.slots.prune(self.clock(now));
        let msg = self.next_message(now, docs)?;
        self.sent += 1;
        self.liveness.sent(now, &msg, self.answered(&msg));
        Some(msg)
    }

    /// Whether the peer answers `msg` (so that silence after it means something). A sync
    /// message may go unanswered when the peer has nothing to say; then a ping asks.
    fn answered(&self, msg: &Msg) -> bool {
        match msg {
            Msg::Hello { .. } => self.opener,
            Msg::Sync { .. } | Msg::CatalogRequest | Msg::Ping => true,
            Msg::Digest(_) | Msg::Catalog { .. } | Msg::Pong => false,
        }
    }

    fn next_message(&mut self, now: Instant, docs: &mut dyn Docs) -> Option<Msg> {
        if self.failed {
            return None;
        }
        // Whatever we say next may tell the peer what we now hold (heads, a digest): it must
        // survive a crash first, or the peer would never send it again.
        if self.unflushed {
            if let Err(e) = docs.flush() {
                self.stop();
                self.events.push_back(Event::Failed(format!(
                    "cannot store what was received: {e}"
                )));
                return None;
            }
            self.unflushed = false;
        }
        // Control first: the hello is there, and nothing may go before it.
        if let Some(m) = self.control.pop_front() {
            return Some(m);
        }
        if let Some(m) = self.liveness.poll() {
            return Some(m);
        }
        // The accepting side speaks only after the opener's hello.
        if !self.hello_sent {
            return None;
        }
        if let Some(after) = self.catalog_out.take() {
            let entries = docs.catalog_range(after.as_ref(), None, msg::CATALOG_PAGE);
            let last = entries.len() < msg::CATALOG_PAGE;
            if !last {
                self.catalog_out = Some(entries.last().map(|(d, _)| d.clone()));
            }
            return Some(Msg::Catalog { entries, last });
        }
        loop {
            let doc = match self.queue.pop_now() {
                // A document that holds a slot but whose exchange is over starts a new one:
                // on our initiative, so it waits its turn like any other (else a few hundred
                // such documents at once would take more slots on the peer than it keeps,
                // each eviction restarting an exchange there; seed 5336 did, forever).
                // An answer to the peer is not one: the peer's exchange holds a slot there.
                Some(doc)
                    if !self.queue.answers(&doc)
                        && !self.slots.is_active(&doc, self.clock(now))
                        && self.active(now) >= MAX_ACTIVE =>
                {
                    self.queue.push_backlog(doc);
                    continue;
                }
                Some(doc) => doc,
                None if self.active(now) < MAX_ACTIVE => match self.queue.pop_backlog() {
                    Some(doc) => doc,
                    None => break,
                },
                None => break,
            };
            self.queue.taken(&doc);
            if let Some(slot) = self.slots.get(&doc)
                && let Some(since) = slot.unanswered
                && now < since + HOLD_AT_MOST
            {
                // Held only when there is something new to hold: asked again right after our
                // message, with nothing made since, there is nothing to say until the peer
                // answers (which brings the document back), and holding it would keep back
                // the digest that goes out with the message.
                if !same_heads(&docs.heads(&doc), &slot.state.last_sent_heads) {
                    self.held.insert(doc, since + HOLD_AT_MOST);
                }
                continue;
            }
            let peer = self.peer;
            let slot = self.slot(&doc, docs, now);
            let sent_before = slot.state.sent_hashes.len();
            match docs.generate(&doc, &mut slot.state) {
                Ok(Some(message)) => {
                    if slot.state.sent_hashes.len() > sent_before {
                        slot.unanswered = Some(now);
                    }
                    slot.unsaved = true;
                    self.unsaved = true;
                    self.last_activity = now;
                    self.note_progress(&doc, docs);
                    // Ask again at once: automerge says when it has nothing more (usually
                    // right away, while its message is in flight).
                    self.queue.enqueue_first(&doc);
                    return Some(Msg::Sync { doc, message });
                }
                Ok(None) => self.note_progress(&doc, docs),
                Err(e) => tracing::warn!(%peer, %doc, "cannot generate sync message: {e}"),
            }
        }
        if self.hello_received
            && self.catalog_in.is_none()
            && self.queue.backlog_is_empty()
            && self.held.is_empty()
        {
            let digest = docs.digest();
            if self.sent_digest != Some(digest) {
                self.sent_digest = Some(digest);
                return Some(Msg::Digest(digest));
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self, now: Instant, docs: &dyn Docs) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let save = self.unsaved.then(|| self.last_activity + SAVE_AFTER);
        let catalog = self
            .catalog_due(docs)
            .then(|| self.last_activity + CATALOG_AFTER);
        let liveness = self.liveness.poll_timeout(now);
        let held = self.held.values().min().copied();
        [save, catalog, self.backlog_opens(now), liveness, held]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the digests differ with nothing under way, and we have not asked about this
    /// mismatch yet.
    fn catalog_due(&self, docs: &dyn Docs) -> bool {
        let (Some(theirs), true) = (self.peer_digest, self.hello_received) else {
            return false;
        };
        let ours = docs.digest();
        theirs != ours
            && self.queue.now_is_empty()
            && self.queue.backlog_is_empty()
            && self.held.is_empty()
            && self.control.is_empty()
            && self.catalog_in.is_none()
            && self.catalog_out.is_none()
            && self.catalog_asked != Some((ours, theirs))
    }

    pub fn handle_timeout(&mut self, now: Instant, docs: &dyn Docs) {
        if self.failed {
            return;
        }
        self.slots.prune(self.clock(now));
        let released: Vec<DocId> = self
            .held
            .iter()
            .filter(|&(_, until)| now >= *until)
            .map(|(doc, _)| doc.clone())
            .collect();
        for doc in released {
            self.held.remove(&doc);
            if let Some(slot) = self.slots.get_mut(&doc) {
                slot.unanswered = None;
            }
            self.enqueue(doc);
        }
        if self.liveness.handle_timeout(now).is_err() {
            return self.give_up_silent();
        }
        if let Some(touched) = self.backlog_waits_on(now)
            && now >= touched + SETTLE_AFTER
        {
            self.liveness.ask_read(touched);
        }
        if self.unsaved && now >= self.last_activity + SAVE_AFTER {
            self.save_all();
        }
        if self.catalog_due(docs)
            && now >= self.last_activity + CATALOG_AFTER
            && let Some(theirs) = self.peer_digest
        {
            self.catalog_asked = Some((docs.digest(), theirs));
            self.control.push_back(Msg::CatalogRequest);
        }
    }

    /// The connection has gone silent, or the peer does not hear us: end it (see
    /// [`Event::Silent`]).
    fn give_up_silent(&mut self) {
        self.stop();
        self.save_all();
        self.events.push_back(Event::Silent);
    }

    fn save_all(&mut self) {
        let mut states: Vec<(DocId, Vec<u8>)> =
            std::mem::take(&mut self.evicted).into_iter().collect();
        for (doc, slot) in self.slots.iter_mut() {
            if slot.unsaved {
                states.push((doc.clone(), slot.state.encode()));
                slot.unsaved = false;
            }
        }
        self.unsaved = false;
        if !states.is_empty() {
            self.events.push_back(Event::SaveStates(states));
        }
    }

    /// The connection ended: save what there is to save (nothing, if the peer misbehaved;
    /// a silent session saved its states when it gave up).
    pub fn close(&mut self) {
        if !self.failed {
            self.save_all();
        }
    }
}
