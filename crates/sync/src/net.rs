//! Replication over iroh: the `errand/sync/4` protocol handler and the dialler that keeps a
//! connection to every known peer. This is the thin driver of [`crate::replication`]: it moves
//! bytes between a QUIC stream and a [`Session`], feeds it document changes and timers, and
//! writes what it asks to be saved. What to send, when, and what counts as in sync is decided
//! there, not here.
//!
//! One QUIC connection per pair of devices, one bidirectional stream per connection, opened by
//! the device that dialled; every document travels on it. Reading never waits on writing: a
//! writer task owns the send half, and the session produces a message only when that task can
//! take one, so two devices with much to say cannot block each other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use automerge::sync;
use iroh::endpoint::{Connection, RecvStream, SendStream, Side, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use crate::ids::DeviceId;
use crate::replication::redial::{self, DIAL_TIMEOUT, Keep, Redial};
use crate::replication::session::{Event, Input};
use crate::replication::{Digest, Msg, Session, held};
use crate::repo::Repo;
use crate::schema::DocId;
use crate::store::Commit;
use crate::wire::{self, MAX_FRAME};
use in_flight::InFlight;

/// The ALPN of the document sync protocol. Version 2 carried every document on one stream
/// per connection (version 1 opened one per document and stalled at QUIC's stream limit);
/// version 4 adds `Ping`/`Pong`, with which a session finds a connection gone silent.
pub const SYNC_ALPN: &[u8] = b"errand/sync/4";

/// The sync stream quiet for this long drops its compression contexts (some 300 KB).
const IDLE_FORGET: Duration = Duration::from_secs(30);
/// Frames queued for the writer task; the session produces no more while they are pending.
const SEND_QUEUE: usize = 16;
/// Frames already received that the driver hands the session in one turn, at most, and
/// their bytes, at most (beyond the first frame's).
const READ_BATCH: usize = 64;
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// The writer joins queued frames into one write up to about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;
/// What a peer is known to hold of a document, remembered for this many documents per peer
/// (for [`Replicator::delivered`]); older entries fall back to the saved sync states.
const SHARED_CACHE: usize = 1024;

/// The QUIC transport settings every errand endpoint uses: iroh's defaults, without path MTU
/// discovery.
///
/// Discovery probes each new connection with padded packets of up to 1,452 bytes, and measured
/// on loopback that is half of what a reconnect with nothing new costs (22 KB with it, 10 KB
/// without). What it buys, fuller packets than QUIC's guaranteed 1,200 bytes, matters for bulk
/// transfers; errand's connections mostly carry changes of a few hundred bytes, and a phone
/// reconnects often, on metered links.
pub fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    iroh::endpoint::QuicTransportConfig::builder()
        .mtu_discovery_config(None)
        .build()
}

/// Application close codes.
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_NOT_MEMBER: u32 = 1;
pub const CLOSE_DUPLICATE: u32 = 2;
pub const CLOSE_PROTOCOL: u32 = 3;
pub const CLOSE_REVOKED: u32 = 4;
/// Our side could not store what it received; the peer did nothing wrong.
pub const CLOSE_LOCAL_FAILURE: u32 = 5;
/// The peer stopped answering (`replication::session::STALL_AFTER`): a fresh connection
/// replaces this one.
pub const CLOSE_SILENT: u32 = 6;

/// Decides which devices may sync with us. Checked on every connection, both directions, before
/// any document byte is read or written.
pub trait Gate: Send + Sync + fmt::Debug + 'static {
    fn allows(&self, peer: &DeviceId) -> bool;
}

/// What the replicator reports as it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    Connected(DeviceId),
    Disconnected(DeviceId),
    /// Both sides now hold the same version of `doc`.
    Synced {
        peer: DeviceId,
        doc: DocId,
    },
    /// The peer sent something we could not accept; its connection was dropped.
    Misbehaved {
        peer: DeviceId,
        reason: String,
    },
}

/// What is known of a connected peer, for the queries the node answers (`errand sync`, whether
/// a task was delivered). Bounded whatever the number of documents.
#[derive(Debug, Default)]
struct PeerView {
    /// The peer's latest digest of everything it holds.
    digest: Option<Digest>,
    /// Whether our session has nothing under way with it.
    idle: bool,
    /// What it is known to hold of recently synced documents.
    shared: HashMap<DocId, Vec<ChangeHash>>,
    order: VecDeque<DocId>,
}

impl PeerView {
    fn note_shared(&mut self, doc: DocId, heads: Vec<ChangeHash>) {
        if self.shared.insert(doc.clone(), heads).is_none() {
            self.order.push_back(doc);
            if self.order.len() > SHARED_CACHE
                && let Some(old) = self.order.pop_front()
            {
                self.shared.remove(&old);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    repo: Arc<Repo>,
    endpoint: Endpoint,
    gate: Arc<dyn Gate>,
    /// The live connection to each peer, with when it was registered.
    connections: Mutex<HashMap<DeviceId, (Connection, Instant)>>,
    addrs: Mutex<HashMap<DeviceId, EndpointAddr>>,
    dialers: Mutex<HashMap<DeviceId, Arc<Notify>>>,
    views: Mutex<HashMap<DeviceId, PeerView>>,
    /// Peers dropped for a protocol violation since they last connected: their sessions must
    /// not save sync states (they were cleared so that the next session starts over).
    distrusted: Mutex<HashSet<DeviceId>>,
    progress: watch::Sender<u64>,
    events: broadcast::Sender<NetEvent>,
    shutdown: watch::Sender<bool>,
    /// Every dialler and connection: each holds the repo, so the store stays open until they
    /// have ended ([`Replicator::stopped`]).
    tasks: tokio_util::task::TaskTracker,
}

/// Keeps this device's documents in sync with its peers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicator(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replicator {
    pub fn new(repo: Arc<Repo>, endpoint: Endpoint, gate: Arc<dyn Gate>) -> Replicator {
        Replicator(Arc::new(Inner {
            repo,
            endpoint,
            gate,
            connections: Mutex::default(),
            addrs: Mutex::default(),
            dialers: Mutex::default(),
            views: Mutex::default(),
            distrusted: Mutex::default(),
            progress: watch::channel(0).0,
            events: broadcast::channel(1024).0,
            shutdown: watch::channel(false).0,
            tasks: tokio_util::task::TaskTracker::new(),
        }))
    }

    pub fn repo(&self) -> &Arc<Repo> {
        &self.0.repo
    }

    pub fn gate(&self) -> &dyn Gate {
        self.0.gate.as_ref()
    }

    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.0.events.subscribe()
    }

    /// Ticks whenever any peer acknowledges anything; wait on it instead of polling.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.0.progress.subscribe()
    }

    /// Sets where a peer can be reached and makes sure it is being dialled.
    pub fn add_peer(&self, addr: EndpointAddr) {
        let id = addr.id;
        let changed = lock(&self.0.addrs).insert(id, addr.clone()).as_ref() != Some(&addr);
        let notify = {
            let mut dialers = lock(&self.0.dialers);
            if let Some(n) = dialers.get(&id) {
                Some(n.clone())
            } else {
                let n = Arc::new(Notify::new());
                dialers.insert(id, n.clone());
                let this = self.clone();
                self.0
                    .tasks
                    .spawn(async move { this.dial_loop(id, n).await });
                None
            }
        };
        if let (true, Some(n)) = (changed, notify) {
            n.notify_one();
        }
    }

    /// Wakes every dialler now instead of after its backoff.
    pub fn poke(&self) {
        for n in lock(&self.0.dialers).values() {
            n.notify_one();
        }
    }

    /// Drops the connection to a peer (after a revocation, say).
    pub fn disconnect(&self, peer: &DeviceId, code: u32, reason: &str) {
        if let Some((conn, _)) = lock(&self.0.connections).remove(peer) {
            conn.close(VarInt::from_u32(code), reason.as_bytes());
        }
    }

    /// Forgets everything kept for a peer that is no longer a member: its sync states and
    /// what it was known to hold.
    pub fn forget_peer(&self, peer: &DeviceId) {
        lock(&self.0.views).remove(peer);
        if let Err(e) = self.0.repo.store().clear_sync_states(&peer.to_string()) {
            warn!(%peer, "cannot remove the sync states of a revoked device: {e}");
        }
    }

    pub fn connected_peers(&self) -> Vec<DeviceId> {
        lock(&self.0.connections)
            .iter()
            .filter(|(_, (c, _))| c.close_reason().is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The UDP payload bytes sent and received on the open connection with `peer`: QUIC's
    /// headers, encryption and acknowledgements included. What a reconnect or a sync cost.
    pub fn traffic(&self, peer: &DeviceId) -> Option<u64> {
        lock(&self.0.connections).get(peer).map(|(c, _)| {
            let s = c.stats();
            s.udp_tx.bytes + s.udp_rx.bytes
        })
    }

    /// Whether `conn` is the connection kept for its peer.
    fn is_current(&self, conn: &Connection) -> bool {
        lock(&self.0.connections)
            .get(&conn.remote_id())
            .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
    }

    pub fn is_connected(&self, peer: &DeviceId) -> bool {
        lock(&self.0.connections)
            .get(peer)
            .is_some_and(|(c, _)| c.close_reason().is_none())
    }

    /// Whether `peer` is known to hold every change up to `heads` of `doc`.
    pub fn delivered(&self, peer: &DeviceId, doc: &DocId, heads: &[ChangeHash]) -> bool {
        if heads.is_empty() || self.in_sync(peer) {
            return true;
        }
        let cached = lock(&self.0.views)
            .get(peer)
            .and_then(|v| v.shared.get(doc).cloned());
        let shared = match cached {
            Some(s) => s,
            None => match self
                .0
                .repo
                .store()
                .sync_state(&peer.to_string(), doc.as_str())
                .ok()
                .flatten()
                .and_then(|b| sync::State::decode(&b).ok())
            {
                Some(state) => state.shared_heads,
                None => return false,
            },
        };
        if heads.iter().all(|h| shared.contains(h)) {
            return true;
        }
        self.0
            .repo
            .read(doc, |d| held::holds(d, &shared, heads))
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// Whether `peer` is connected and holds exactly what we hold, every document at the same
    /// version, with nothing under way.
    pub fn in_sync(&self, peer: &DeviceId) -> bool {
        if !self.is_connected(peer) {
            return false;
        }
        let ours = self.0.repo.digest();
        lock(&self.0.views)
            .get(peer)
            .is_some_and(|v| v.idle && v.digest == Some(ours))
    }

    /// Waits, after [`Replicator::shutdown`], until every dialler and connection has ended, or
    /// `timeout` has passed: after it the repo is no longer held by any of them (an app that
    /// stops its node and opens it again in the same process finds its home free).
    pub async fn stopped(&self, timeout: Duration) {
        self.0.tasks.close();
        let _ = tokio::time::timeout(timeout, self.0.tasks.wait()).await;
    }

    /// Closes every connection and stops dialling.
    pub fn shutdown(&self) {
        self.0.shutdown.send_replace(true);
        for (_, (conn, _)) in lock(&self.0.connections).drain() {
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        }
    }

    async fn dial_loop(self, peer: DeviceId, wake: Arc<Notify>) {
        let mut shutdown = self.0.shutdown.subscribe();
        let mut schedule = Redial::new(Instant::now());
        loop {
            if *shutdown.borrow() {
                return;
            }
            let existing = lock(&self.0.connections).get(&peer).map(|(c, _)| c.clone());
            if let Some(conn) = existing.filter(|c| c.close_reason().is_none()) {
                schedule.connected();
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = shutdown.changed() => return,
                }
                schedule.disconnected(Instant::now());
                continue;
            }
            if !self.0.gate.allows(&peer) {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if let Some(at) = schedule.poll_timeout()
                && !schedule.due(Instant::now())
            {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => schedule.poke(Instant::now()),
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            schedule.dialling();
            let addr = lock(&self.0.addrs)
                .get(&peer)
                .cloned()
                .unwrap_or_else(|| EndpointAddr::new(peer));
            let attempt =
                tokio::time::timeout(DIAL_TIMEOUT, self.0.endpoint.connect(addr, SYNC_ALPN));
            match attempt.await {
                Ok(Ok(conn)) => {
                    schedule.connected();
                    self.clone().run_connection(conn).await;
                    schedule.disconnected(Instant::now());
                }
                Ok(Err(e)) => {
                    debug!(%peer, "dial failed: {e}");
                    schedule.failed(Instant::now(), rand::random());
                }
                Err(_) => {
                    debug!(%peer, "dial timed out");
                    schedule.failed(Instant::now(), rand::random());
                }
            }
        }
    }

    /// Registers a connection, keeping one per peer ([`redial::resolve_duplicate`]). Returns
    /// false if this one lost.
    fn register(&self, conn: &Connection) -> bool {
        let peer = conn.remote_id();
        let me = self.0.endpoint.id();
        lock(&self.0.distrusted).remove(&peer);
        let mut conns = lock(&self.0.connections);
        if let Some((old, since)) = conns.get(&peer).filter(|(c, _)| c.close_reason().is_none()) {
            let keep = redial::resolve_duplicate(
                me,
                peer,
                old.side() == Side::Client,
                since.elapsed(),
                conn.side() == Side::Client,
            );
            if keep == Keep::Old {
                conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                return false;
            }
            old.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
        }
        conns.insert(peer, (conn.clone(), Instant::now()));
        true
    }

    async fn run_connection(self, conn: Connection) {
        let peer = conn.remote_id();
        if !self.0.gate.allows(&peer) {
            conn.close(
                VarInt::from_u32(CLOSE_NOT_MEMBER),
                b"not a member of this space",
            );
            return;
        }
        if !self.register(&conn) {
            return;
        }
        info!(%peer, "connected");
        let _ = self.0.events.send(NetEvent::Connected(peer));
        let opener = conn.side() == Side::Client;
        let stream = if opener {
            conn.open_bi().await
        } else {
            conn.accept_bi().await
        };
        match stream {
            Ok((send, recv)) => self.drive(&conn, opener, send, recv).await,
            Err(e) => debug!(%peer, "no sync stream: {e}"),
        }
        {
            let mut conns = lock(&self.0.connections);
            if conns
                .get(&peer)
                .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
            {
                conns.remove(&peer);
                lock(&self.0.views).remove(&peer);
            }
        }
        info!(%peer, "disconnected");
        let _ = self.0.events.send(NetEvent::Disconnected(peer));
        self.0.progress.send_modify(|n| *n += 1);
    }

    fn misbehaved(&self, conn: &Connection, reason: String) {
        let peer = conn.remote_id();
        warn!(%peer, "dropping peer: {reason}");
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
        // Its sync states may describe a document it never really had: start over next time.
        lock(&self.0.distrusted).insert(peer);
        let _ = self.0.repo.store().clear_sync_states(&peer.to_string());
        lock(&self.0.views).remove(&peer);
        let _ = self.0.events.send(NetEvent::Misbehaved { peer, reason });
    }

    /// Runs one session over the connection's stream until either side ends it.
    async fn drive(&self, conn: &Connection, opener: bool, send: SendStream, mut recv: RecvStream) {
        let peer = conn.remote_id();
        let repo = self.0.repo.clone();
        let mut docs = repo.docs();
        let mut session = Session::with_quotas(peer, opener, Instant::now(), repo.quotas());
        session.start(&docs);

        let (tx, rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let (in_flight, mut queued) = InFlight::new();
        let max_in_flight = repo.quotas().max_in_flight_bytes;
        let writer = tokio::spawn(write_frames(send, rx, in_flight.clone()));
        let mut frames = wire::FrameReader::new(MAX_FRAME);
        let mut encoder = wire::MessageEncoder::default();
        let mut decoder = wire::MessageDecoder::default();
        let mut changes = repo.subscribe();
        let mut last_traffic = Instant::now();
        // Packets received from the peer when last looked: growth while the session awaits an
        // answer tells it the link works (QUIC acknowledges what we send even while the
        // peer's session is busy).
        let mut rx_seen = conn.stats().udp_rx.datagrams;

        'session: loop {
            if !self.apply_events(conn, &mut session) {
                writer.abort();
                return;
            }
            // Only the session of the connection kept for this peer speaks for it: one that
            // lost to a duplicate runs on until it sees its connection closed, and what it
            // wrote last would otherwise stand (a stale "not in sync", or a stale "in sync")
            // while the kept session, quiet, writes nothing.
            if self.is_current(conn) {
                let mut views = lock(&self.0.views);
                let view = views.entry(peer).or_default();
                view.digest = session.peer_digest();
                view.idle = session.in_sync(&docs);
            }
            self.0.progress.send_modify(|n| *n += 1);
            let now = Instant::now();
            let timer = session.poll_timeout(now, &docs);
            let wants = session.wants_transmit(now, &docs);
            let room = in_flight::room(*queued.borrow_and_update(), max_in_flight);
            let forget_at = last_traffic + IDLE_FORGET;
            tokio::select! {
                permit = tx.reserve(), if wants && room => {
                    let Ok(mut permit) = permit else { break };
                    let was_awaiting = session.awaiting();
                    // Everything the session has to say now goes to the writer together (a
                    // sync message and the digest after it, say), so that it leaves in one
                    // packet rather than one each.
                    while let Some(msg) = session.poll_transmit(Instant::now(), &mut docs) {
                        let frame = encoder.encode(&msg.encode());
                        in_flight.add(frame.len());
                        permit.send(frame);
                        last_traffic = Instant::now();
                        let room = in_flight::room(*queued.borrow_and_update(), max_in_flight);
                        match tx.try_reserve() {
                            Ok(next) if room => permit = next,
                            _ => break,
                        }
                    }
                    // Packets from before an answer was awaited say nothing about it.
                    if !was_awaiting && session.awaiting() {
                        rx_seen = conn.stats().udp_rx.datagrams;
                    }
                }
                // The peer reads again: the writer has taken bytes off the queue.
                changed = queued.changed(), if wants && !room => {
                    if changed.is_err() {
                        break;
                    }
                }
                frame = frames.next(&mut recv) => {
                    // Frames already here are taken in the same turn. With several sync
                    // messages among them, what they bring is written lazily and made durable
                    // once, before the session next speaks (`Docs::flush`), so they share one
                    // fsync; with one, it is written durably at once, which is quicker than a
                    // lazy write and a flush.
                    let mut batch = vec![frame];
                    let mut bytes_read = batch_bytes(&batch[0]);
                    while batch.len() < READ_BATCH && bytes_read < READ_BATCH_BYTES {
                        let Some(next) = ready_now(frames.next(&mut recv)) else {
                            break;
                        };
                        bytes_read += batch_bytes(&next);
                        batch.push(next);
                    }
                    let mut msgs = Vec::with_capacity(batch.len());
                    let mut ended = false;
                    for frame in batch {
                        let bytes = match frame {
                            Ok(Some(bytes)) => bytes,
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(e @ wire::FrameError::TooLarge(_)) => {
                                writer.abort();
                                return self.misbehaved(conn, format!("bad frame: {e}"));
                            }
                            Err(e) => {
                                debug!(%peer, "stream ended: {e}");
                                ended = true;
                                break;
                            }
                        };
                        last_traffic = Instant::now();
                        let msg = decoder
                            .decode(&bytes, MAX_FRAME)
                            .map_err(|e| e.to_string())
                            .and_then(|b| Msg::decode_owned(b).map_err(|e| e.to_string()));
                        match msg {
                            Ok(msg) => msgs.push(msg),
                            Err(e) => {
                                writer.abort();
                                return self.misbehaved(conn, format!("bad frame: {e}"));
                            }
                        }
                    }
                    rx_seen = conn.stats().udp_rx.datagrams;
                    let syncs = msgs.iter().filter(|m| matches!(m, Msg::Sync { .. })).count();
                    docs.write(if syncs > 1 { Commit::Lazy } else { Commit::Durable });
                    // Whole documents not held here are merged and checked ahead, in
                    // parallel (`Repo::prepare`); the session still takes them in turn.
                    if syncs > 1 {
                        let syncs: Vec<(&DocId, &[u8])> = msgs
                            .iter()
                            .filter_map(|m| match m {
                                Msg::Sync { doc, message } => Some((doc, message.as_slice())),
                                _ => None,
                            })
                            .collect();
                        docs.prepare(&syncs);
                    }
                    for msg in msgs {
                        session.handle(Instant::now(), Input::Message(msg), &mut docs);
                        if session.failed() {
                            break;
                        }
                    }
                    if syncs > 1 {
                        docs.forget_prepared();
                    }
                    if ended {
                        break 'session;
                    }
                }
                changed = changes.recv() => match changed {
                    Ok(c) => session.handle(Instant::now(), Input::Changed(c.doc), &mut docs),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        session.handle(Instant::now(), Input::LostTrack, &mut docs);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = sleep_until(timer) => {
                    let rx = conn.stats().udp_rx.datagrams;
                    // Bytes the writer still holds wait on the peer's flow control, which a
                    // peer slow to read withholds: that is not silence.
                    let writing = *queued.borrow() > 0;
                    if session.awaiting() && (rx != rx_seen || writing) {
                        session.handle(Instant::now(), Input::Alive, &mut docs);
                    }
                    rx_seen = rx;
                    session.handle_timeout(Instant::now(), &docs);
                }
                // An idle stream gives its compression contexts back; the next message starts
                // fresh ones.
                () = tokio::time::sleep_until(forget_at.into()), if encoder.holds_context() => {
                    encoder.forget();
                }
                _ = conn.closed() => break,
            }
        }
        session.close();
        self.apply_events(conn, &mut session);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }

    /// Acts on what the session asked for. Returns false if the peer was dropped.
    fn apply_events(&self, conn: &Connection, session: &mut Session) -> bool {
        let peer = session.peer();
        while let Some(event) = session.poll_event() {
            match event {
                Event::SaveStates(states) => {
                    if lock(&self.0.distrusted).contains(&peer) {
                        continue;
                    }
                    let states: Vec<(String, Vec<u8>)> = states
                        .into_iter()
                        .map(|(d, s)| (d.as_str().to_owned(), s))
                        .collect();
                    if let Err(e) = self
                        .0
                        .repo
                        .store()
                        .set_sync_states(&peer.to_string(), &states)
                    {
                        warn!(%peer, "cannot save sync states: {e}");
                    }
                }
                Event::Synced(doc) => {
                    let _ = self.0.events.send(NetEvent::Synced { peer, doc });
                }
                Event::Shared { doc, heads } => {
                    lock(&self.0.views)
                        .entry(peer)
                        .or_default()
                        .note_shared(doc, heads);
                }
                Event::Misbehaved(reason) => {
                    self.misbehaved(conn, reason);
                    return false;
                }
                Event::Failed(reason) => {
                    warn!(%peer, "ending the connection: {reason}");
                    conn.close(VarInt::from_u32(CLOSE_LOCAL_FAILURE), b"local failure");
                    return false;
                }
                Event::Silent => {
                    info!(%peer, "no answer: dialling a fresh connection");
                    conn.close(VarInt::from_u32(CLOSE_SILENT), b"no answer");
                    return false;
                }
            }
        }
        true
    }
}

/// The payload bytes of a frame read, for bounding a batch.
fn batch_bytes(frame: &Result<Option<Vec<u8>>, wire::FrameError>) -> usize {
    match frame {
        Ok(Some(bytes)) => bytes.len(),
        _ => 0,
    }
}

/// `f`'s output if it is ready without waiting. For cancel-safe futures only: one that is not
/// ready is dropped.
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Owns the send half of the stream: writes frames as the session produces them, and counts
/// each off `in_flight` once written.
async fn write_frames(
    mut send: SendStream,
    mut frames: mpsc::Receiver<Vec<u8>>,
    in_flight: InFlight,
) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        // Frames queued meanwhile are written with this one, in one write: QUIC then packs
        // them into as few packets as their size allows.
        batch.clear();
        let mut taken = 0;
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if frame.len() > MAX_FRAME {
                // The peer would refuse it and drop us: end here instead.
                warn!("a frame of {} bytes is over the limit", frame.len());
                in_flight.clear();
                return;
            }
            taken += frame.len();
            wire::put_frame(&mut batch, &frame);
            if batch.len() < WRITE_BATCH {
                next = frames.try_recv().ok();
            }
        }
        if send.write_all(&batch).await.is_err() {
            // Room again, so that the driver tries to queue, finds the writer gone and ends.
            in_flight.clear();
            return;
        }
        in_flight.written(taken);
    }
    let _ = send.finish();
}

/// The bytes queued for one connection's writer ([`crate::quota::Quotas::max_in_flight_bytes`]).
mod in_flight {
    use std::sync::Arc;

    use tokio::sync::watch;

    /// Bytes of frames handed to the writer task and not yet written to the stream: the
    /// driver adds, the writer takes away, and the driver watches.
    #[derive(Clone)]
    pub(super) struct InFlight(Arc<watch::Sender<usize>>);

    impl InFlight {
        pub(super) fn new() -> (InFlight, watch::Receiver<usize>) {
            let (tx, rx) = watch::channel(0);
            (InFlight(Arc::new(tx)), rx)
        }

        pub(super) fn add(&self, bytes: usize) {
            self.0.send_modify(|queued| *queued += bytes);
        }

        pub(super) fn written(&self, bytes: usize) {
            self.0
                .send_modify(|queued| *queued = queued.saturating_sub(bytes));
        }

        /// The writer is gone: nothing waits any more.
        pub(super) fn clear(&self) {
            self.0.send_replace(0);
        }
    }

    /// Whether another frame may be queued with `queued` bytes waiting: only while fewer than
    /// `max` wait, so at most `max` plus one frame are ever queued.
    pub(super) fn room(queued: usize, max: usize) -> bool {
        queued < max
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn frames_queue_while_fewer_than_the_quota_wait_and_a_write_makes_room() {
            let max = 100;
            let (in_flight, mut queued) = InFlight::new();
            assert!(room(*queued.borrow_and_update(), max));
            in_flight.add(60);
            assert!(room(*queued.borrow_and_update(), max));
            in_flight.add(60);
            assert!(!room(*queued.borrow_and_update(), max), "120 bytes wait");
            let writer = in_flight.clone();
            tokio::spawn(async move { writer.written(60) });
            queued.changed().await.expect("the writer wrote");
            assert_eq!(*queued.borrow_and_update(), 60);
            assert!(room(*queued.borrow(), max));
        }
    }
}

impl ProtocolHandler for Replicator {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        self.0
            .tasks
            .track_future(self.clone().run_connection(connection))
            .await;
        Ok(())
    }

    async fn shutdown(&self) {
        Replicator::shutdown(self);
    }
}
