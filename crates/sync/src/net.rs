//! Replication over iroh: the `errand/sync/5` protocol handler and the dialler that keeps a
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
use iroh::endpoint::{Connection, ConnectionError, Side, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{Notify, broadcast, watch};
use tracing::{debug, info, warn};

use crate::ids::DeviceId;
use crate::replication::redial::{self, DIAL_TIMEOUT, Keep, Redial};
use crate::replication::{Digest, held};
use crate::repo::Repo;
use crate::schema::DocId;

mod stream;

/// The ALPN of the document sync protocol. Version 2 carried every document on one stream
/// per connection (version 1 opened one per document and stalled at QUIC's stream limit);
/// version 4 adds `Ping`/`Pong`, with which a session finds a connection gone silent; in
/// version 5 every ping gets its own pong, which says the peer has read all that came before
/// the ping (a version 4 peer merged pongs, and a version 5 session would wait on the rest).
pub const SYNC_ALPN: &[u8] = b"errand/sync/5";

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
    /// Connections closed here because a newer one to the same peer was kept (by
    /// `Connection::stable_id`), until their sessions end.
    superseded: Mutex<HashSet<usize>>,
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
            superseded: Mutex::default(),
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

    /// Whether `conn` lost to a duplicate, closed by either side (forgotten once asked).
    fn lost_to_duplicate(&self, conn: &Connection) -> bool {
        let here = lock(&self.0.superseded).remove(&conn.stable_id());
        let there = matches!(
            conn.close_reason(),
            Some(ConnectionError::ApplicationClosed(ref c))
                if c.error_code == VarInt::from_u32(CLOSE_DUPLICATE)
        );
        here || there
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
            lock(&self.0.superseded).insert(old.stable_id());
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
