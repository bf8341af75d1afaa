//! Replication over iroh: the `errand/sync/1` protocol handler and the dialer that keeps a
//! connection to every known peer.
//!
//! One QUIC connection per pair of devices, one bidirectional stream per document. The device
//! that dialled opens the streams: the index first, then every thread it knows of, then any
//! thread that later appears in the index. The accepting side waits for the opener's first
//! sync message before it says anything, so a fresh device does not receive a document twice.
//! A local change (or a change merged from another peer) wakes every stream of that document
//! and is pushed at once.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::sync;
use automerge::{ChangeHash, ReadDoc};
use iroh::endpoint::{Connection, RecvStream, SendStream, Side, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{Notify, broadcast, watch};
use tracing::{debug, info, warn};

use crate::ids::DeviceId;
use crate::repo::{ReceiveError, Repo};
use crate::schema::{DocId, index};
use crate::wire::{self, MAX_FRAME};

/// The ALPN of the document sync protocol.
pub const SYNC_ALPN: &[u8] = b"errand/sync/1";

/// How long one dial attempt may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A document stream quiet for this long drops its compression context (some 150 KB).
const IDLE_FORGET: Duration = Duration::from_secs(30);
/// A document stream quiet for this long saves its sync state (see [`StreamSyncState`]).
const SAVE_SYNC_STATE_AFTER: Duration = Duration::from_millis(250);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Two connections between the same devices registered closer together than this were dialled
/// at the same time by both; further apart, the older one is presumed dead.
const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(2);

/// Application close codes.
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_NOT_MEMBER: u32 = 1;
pub const CLOSE_DUPLICATE: u32 = 2;
pub const CLOSE_PROTOCOL: u32 = 3;
pub const CLOSE_REVOKED: u32 = 4;

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

#[derive(Clone, Debug, Default)]
struct PeerDocState {
    shared: Vec<ChangeHash>,
    theirs: Vec<ChangeHash>,
}

#[derive(Debug)]
struct Inner {
    repo: Arc<Repo>,
    endpoint: Endpoint,
    gate: Arc<dyn Gate>,
    /// The live connection to each peer, with when it was registered.
    connections: Mutex<HashMap<DeviceId, (Connection, std::time::Instant)>>,
    addrs: Mutex<HashMap<DeviceId, EndpointAddr>>,
    dialers: Mutex<HashMap<DeviceId, Arc<Notify>>>,
    peer_docs: Mutex<HashMap<(DeviceId, DocId), PeerDocState>>,
    /// Peers dropped for a protocol violation since they last connected: their streams must
    /// not save sync states (they were cleared so that the next session starts over).
    distrusted: Mutex<HashSet<DeviceId>>,
    progress: watch::Sender<u64>,
    events: broadcast::Sender<NetEvent>,
    shutdown: watch::Sender<bool>,
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
            peer_docs: Mutex::default(),
            distrusted: Mutex::default(),
            progress: watch::channel(0).0,
            events: broadcast::channel(1024).0,
            shutdown: watch::channel(false).0,
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
                tokio::spawn(async move { this.dial_loop(id, n).await });
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

    pub fn connected_peers(&self) -> Vec<DeviceId> {
        lock(&self.0.connections)
            .iter()
            .filter(|(_, (c, _))| c.close_reason().is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn is_connected(&self, peer: &DeviceId) -> bool {
        lock(&self.0.connections)
            .get(peer)
            .is_some_and(|(c, _)| c.close_reason().is_none())
    }

    /// Whether `peer` is known to hold every change up to `heads` of `doc`.
    pub fn delivered(&self, peer: &DeviceId, doc: &DocId, heads: &[ChangeHash]) -> bool {
        let shared = match lock(&self.0.peer_docs).get(&(*peer, doc.clone())) {
            Some(s) => s.shared.clone(),
            None => return heads.is_empty(),
        };
        if heads.iter().all(|h| shared.contains(h)) {
            return true;
        }
        // The peer may have moved past `heads`: they are delivered if none of them is among the
        // changes the peer does not have yet.
        self.0
            .repo
            .read(doc, |d| {
                let missing: HashSet<ChangeHash> =
                    d.get_changes(&shared).iter().map(|c| c.hash()).collect();
                heads.iter().all(|h| !missing.contains(h)) && d.get_missing_deps(&shared).is_empty()
            })
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// Whether we and `peer` hold the same version of `doc`.
    pub fn in_sync(&self, peer: &DeviceId, doc: &DocId) -> bool {
        let Some(state) = lock(&self.0.peer_docs).get(&(*peer, doc.clone())).cloned() else {
            return false;
        };
        let ours = self.0.repo.heads(doc).unwrap_or_default();
        let mut a = state.theirs.clone();
        let mut b = ours;
        a.sort();
        b.sort();
        a == b && state.shared == a
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
        let mut backoff = BACKOFF_START;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let existing = lock(&self.0.connections).get(&peer).map(|(c, _)| c.clone());
            if let Some(conn) = existing.filter(|c| c.close_reason().is_none()) {
                tokio::select! {
                    _ = conn.closed() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if !self.0.gate.allows(&peer) {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let addr = lock(&self.0.addrs)
                .get(&peer)
                .cloned()
                .unwrap_or_else(|| EndpointAddr::new(peer));
            let attempt =
                tokio::time::timeout(DIAL_TIMEOUT, self.0.endpoint.connect(addr, SYNC_ALPN));
            let failed = match attempt.await {
                Ok(Ok(conn)) => {
                    backoff = BACKOFF_START;
                    self.clone().run_connection(conn).await;
                    false
                }
                Ok(Err(e)) => {
                    debug!(%peer, "dial failed: {e}");
                    true
                }
                Err(_) => {
                    debug!(%peer, "dial timed out");
                    true
                }
            };
            // Also pause briefly after a connection ends, so that two devices resolving a
            // duplicate connection do not redial each other in a tight loop.
            let pause = if failed { backoff } else { BACKOFF_START };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            if failed {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Registers a connection, keeping one per peer: of two, the one dialled by the device with
    /// the smaller id wins, on both ends alike. But a peer dials only when it has no connection
    /// to us, so a new connection arriving well after the one we hold means ours is dead on the
    /// other side (the peer restarted, say): the new one wins then, rather than waiting out the
    /// idle timeout. Returns false if this one lost.
    fn register(&self, conn: &Connection) -> bool {
        let peer = conn.remote_id();
        let me = self.0.endpoint.id();
        let dialer_of = |c: &Connection| if c.side() == Side::Client { me } else { peer };
        let preferred_dialer = me.min(peer);
        lock(&self.0.distrusted).remove(&peer);
        let mut conns = lock(&self.0.connections);
        if let Some((old, since)) = conns.get(&peer).filter(|(c, _)| c.close_reason().is_none()) {
            let old_preferred = dialer_of(old) == preferred_dialer;
            let new_preferred = dialer_of(conn) == preferred_dialer;
            let simultaneous = since.elapsed() < SIMULTANEOUS_DIAL;
            if old_preferred && !new_preferred && simultaneous {
                conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
                return false;
            }
            old.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
        }
        conns.insert(peer, (conn.clone(), std::time::Instant::now()));
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
        let mut streams = tokio::task::JoinSet::new();
        if conn.side() == Side::Client {
            self.open_streams(&conn, &mut streams).await;
        } else {
            loop {
                tokio::select! {
                    accepted = conn.accept_bi() => match accepted {
                        Ok((send, recv)) => {
                            let this = self.clone();
                            let conn = conn.clone();
                            streams.spawn(async move { this.accept_stream(conn, send, recv).await });
                        }
                        Err(_) => break,
                    },
                    _ = conn.closed() => break,
                }
            }
        }
        streams.abort_all();
        {
            let mut conns = lock(&self.0.connections);
            if conns
                .get(&peer)
                .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
            {
                conns.remove(&peer);
            }
        }
        info!(%peer, "disconnected");
        let _ = self.0.events.send(NetEvent::Disconnected(peer));
    }

    /// The documents to sync: the index, every thread it lists, every document stored here.
    fn wanted_docs(&self) -> Vec<DocId> {
        let repo = &self.0.repo;
        let mut docs = vec![DocId::index()];
        let listed = repo
            .read(&DocId::index(), index::threads)
            .ok()
            .flatten()
            .unwrap_or_default();
        docs.extend(listed.iter().filter_map(|t| DocId::parse(&t.id)));
        docs.extend(repo.doc_ids().unwrap_or_default());
        let mut seen = HashSet::new();
        docs.retain(|d| seen.insert(d.clone()));
        docs
    }

    async fn open_streams(&self, conn: &Connection, streams: &mut tokio::task::JoinSet<()>) {
        let mut opened = HashSet::new();
        let mut changes = self.0.repo.subscribe();
        loop {
            for doc in self.wanted_docs() {
                if !opened.insert(doc.clone()) {
                    continue;
                }
                match conn.open_bi().await {
                    Ok((send, recv)) => {
                        let this = self.clone();
                        let conn = conn.clone();
                        streams.spawn(
                            async move { this.doc_stream(conn, doc, send, recv, true).await },
                        );
                    }
                    Err(_) => return,
                }
            }
            // Rescan only when the index changed (a thread may have been listed), a document
            // not yet streamed appeared, or we lost track.
            loop {
                tokio::select! {
                    changed = changes.recv() => match changed {
                        Ok(c) if !c.doc.is_index() && opened.contains(&c.doc) => {}
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = conn.closed() => return,
                }
            }
        }
    }

    async fn accept_stream(self, conn: Connection, send: SendStream, mut recv: RecvStream) {
        let peer = conn.remote_id();
        let header = match wire::read_frame(&mut recv, 256).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e @ wire::FrameError::TooLarge(_)) => {
                return self.misbehaved(&conn, format!("bad stream header: {e}"));
            }
            // The connection went away; nothing wrong with the peer.
            Err(_) => return,
        };
        let Some(doc) = wire::parse_doc_stream_header(&header) else {
            return self.misbehaved(&conn, "stream header names no valid document".into());
        };
        debug!(%peer, %doc, "stream accepted");
        self.doc_stream(conn, doc, send, recv, false).await;
    }

    fn misbehaved(&self, conn: &Connection, reason: String) {
        let peer = conn.remote_id();
        warn!(%peer, "dropping peer: {reason}");
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"protocol violation");
        // Its sync states may describe a document it never really had: start over next time.
        lock(&self.0.distrusted).insert(peer);
        let _ = self.0.repo.store().clear_sync_states(&peer.to_string());
        lock(&self.0.peer_docs).retain(|(p, _), _| *p != peer);
        let _ = self.0.events.send(NetEvent::Misbehaved { peer, reason });
    }

    async fn doc_stream(
        self,
        conn: Connection,
        doc: DocId,
        mut send: SendStream,
        mut recv: RecvStream,
        opener: bool,
    ) {
        let peer = conn.remote_id();
        let mut synced = StreamSyncState::load(self.clone(), peer, doc.clone());

        let mut frames = wire::FrameReader::new(MAX_FRAME);
        let mut changes = self.0.repo.subscribe();
        let mut encoder = wire::MessageEncoder::default();
        let mut decoder = wire::MessageDecoder::default();

        if opener
            && wire::write_frame(&mut send, &wire::doc_stream_header(doc.as_str()))
                .await
                .is_err()
        {
            return;
        }
        let mut may_speak = opener;
        if opener
            && self
                .flush(&peer, &doc, &mut synced.state, &mut send, &mut encoder)
                .await
                .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                frame = frames.next(&mut recv) => {
                    let bytes = match frame {
                        Ok(Some(bytes)) => bytes,
                        Ok(None) => return,
                        Err(e @ wire::FrameError::TooLarge(_)) => {
                            return self.misbehaved(&conn, format!("bad frame on {doc}: {e}"));
                        }
                        Err(e) => {
                            debug!(%peer, %doc, "stream ended: {e}");
                            return;
                        }
                    };
                    let bytes = match decoder.decode(&bytes, MAX_FRAME) {
                        Ok(message) => message,
                        Err(e) => return self.misbehaved(&conn, format!("bad frame on {doc}: {e}")),
                    };
                    match self.0.repo.receive_sync_message(&doc, &mut synced.state, &bytes) {
                        Ok(_) => {}
                        Err(e @ ReceiveError::Malformed { .. }) => return self.misbehaved(&conn, e.to_string()),
                        Err(e) => {
                            warn!(%peer, %doc, "cannot apply sync message: {e}");
                            // The state counts changes we could not store as had: the next
                            // session starts this document over instead.
                            synced.state = sync::State::new();
                            synced.unsaved = true;
                            return;
                        }
                    }
                    may_speak = true;
                    synced.unsaved = true;
                    if self.flush(&peer, &doc, &mut synced.state, &mut send, &mut encoder).await.is_err() {
                        return;
                    }
                }
                changed = changes.recv(), if may_speak => {
                    let relevant = match changed {
                        Ok(c) => c.doc == doc,
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if relevant && self.flush(&peer, &doc, &mut synced.state, &mut send, &mut encoder).await.is_err() {
                        return;
                    }
                }
                // An idle stream gives its compression context back; the next message starts
                // a fresh one.
                () = tokio::time::sleep(IDLE_FORGET), if encoder.holds_context() => encoder.forget(),
                () = tokio::time::sleep(SAVE_SYNC_STATE_AFTER), if synced.unsaved => synced.save(),
            }
        }
    }

    /// Sends every sync message there is to send, then records what the peer is known to have.
    async fn flush(
        &self,
        peer: &DeviceId,
        doc: &DocId,
        state: &mut sync::State,
        send: &mut SendStream,
        encoder: &mut wire::MessageEncoder,
    ) -> Result<(), ()> {
        loop {
            let message = match self.0.repo.generate_sync_message(doc, state) {
                Ok(m) => m,
                Err(e) => {
                    warn!(%doc, "cannot generate sync message: {e}");
                    return Err(());
                }
            };
            let Some(message) = message else { break };
            wire::write_frame(send, &encoder.encode(&message))
                .await
                .map_err(|_| ())?;
        }
        let snapshot = PeerDocState {
            shared: state.shared_heads.clone(),
            theirs: state.their_heads.clone().unwrap_or_default(),
        };
        let mut ours = self.0.repo.heads(doc).unwrap_or_default();
        let mut theirs = snapshot.theirs.clone();
        ours.sort();
        theirs.sort();
        let synced = state.their_heads.is_some() && ours == theirs;
        let previous = lock(&self.0.peer_docs).insert((*peer, doc.clone()), snapshot);
        let was_synced = previous.is_some_and(|p| {
            let mut t = p.theirs;
            t.sort();
            t == ours
        });
        self.0.progress.send_modify(|n| *n += 1);
        if synced && !was_synced {
            let _ = self.0.events.send(NetEvent::Synced {
                peer: *peer,
                doc: doc.clone(),
            });
        }
        Ok(())
    }
}

/// A document stream's automerge sync state with one peer. It is saved when the stream has
/// been quiet for [`SAVE_SYNC_STATE_AFTER`] and when the stream ends, rather than after every
/// message: each save dirties database pages that the next durable commit (a peer's change
/// arriving) would then have to write out too, on the path whose latency matters. Losing the
/// latest state in a crash costs a longer first exchange next time, nothing more.
struct StreamSyncState {
    state: sync::State,
    unsaved: bool,
    replicator: Replicator,
    peer: DeviceId,
    doc: DocId,
}

impl StreamSyncState {
    fn load(replicator: Replicator, peer: DeviceId, doc: DocId) -> StreamSyncState {
        let state = replicator
            .0
            .repo
            .store()
            .sync_state(&peer.to_string(), doc.as_str())
            .ok()
            .flatten()
            .and_then(|b| sync::State::decode(&b).ok())
            .unwrap_or_default();
        StreamSyncState {
            state,
            unsaved: false,
            replicator,
            peer,
            doc,
        }
    }

    fn save(&mut self) {
        if !self.unsaved || lock(&self.replicator.0.distrusted).contains(&self.peer) {
            return;
        }
        let store = self.replicator.0.repo.store();
        let _ = store.set_sync_state(
            &self.peer.to_string(),
            self.doc.as_str(),
            &self.state.encode(),
        );
        self.unsaved = false;
    }
}

/// A stream ends by returning or by being aborted with its connection; either way it saves.
impl Drop for StreamSyncState {
    fn drop(&mut self) {
        self.save();
    }
}

impl ProtocolHandler for Replicator {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        self.clone().run_connection(connection).await;
        Ok(())
    }

    async fn shutdown(&self) {
        Replicator::shutdown(self);
    }
}
