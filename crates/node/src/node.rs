//! The node: one device home opened for use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use errand_pairing::protocol::{self as pairing, PairingEvent, PairingHost};
use errand_pairing::{MembershipGate, TrustHooks, identity, trust};
use errand_sync::repo::Tidied;
use errand_sync::schema::{DocId, HistoryEntry, index};
use errand_sync::{DeviceId, NetEvent, Replicator, Repo, Role, SpaceId, Store};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, RelayMode, RelayUrl, SecretKey};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::clock::{CLOCK_ALPN, ClockServer, Clocks};
use crate::error::NodeError;
use crate::events::NodeEvent;
use crate::lan::LanSightings;

mod approvals;
mod conversation;
mod doctor;
mod members;
mod notify;
mod peers;
mod schedules;
mod tasks;

use peers::{dial_addr, measure_clock};

pub use conversation::{ConversationEntry, QuestionInfo};
pub use doctor::{Diagnosis, Finding, ago};
pub use notify::{DEFAULT_NOTIFY_EVENTS, NOTIFY_EVENTS};
pub use schedules::{ScheduleInfo, ScheduleSpec};

const KEY_FILE: &str = "device.key";
const DB_FILE: &str = "errand.redb";
/// The pinned space (written by [`MembershipGate::pin`], with its root; the repo signs changes
/// for the same one).
const META_SPACE: &str = trust::META_SPACE;
const META_NAME: &str = "name";
const META_PORT: &str = "port";

/// How a node is opened.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub home: PathBuf,
    /// Where to listen. `None`: every interface, on the port this home used last time.
    pub bind: Option<SocketAddr>,
    /// A self-hosted iroh relay; relays are off without one.
    pub relay: Option<RelayUrl>,
    /// Reach peers only through the relay: bind no UDP socket, so this device has no direct
    /// address to give away (and none to be reached at). Needs `relay`.
    pub relay_only: bool,
    /// Announce this device and find the others on the local network (mDNS).
    pub lan_discovery: bool,
}

impl NodeConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        NodeConfig {
            home: home.into(),
            bind: None,
            relay: None,
            relay_only: false,
            lan_discovery: false,
        }
    }
}

/// A device of the space, as `errand devices` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub added_by: String,
    pub added_at: u64,
    pub this_device: bool,
    pub connected: bool,
    pub addrs: Vec<String>,
    /// The device's clock minus this device's, in milliseconds, as last measured.
    pub clock_offset_ms: Option<i64>,
    /// When this device last saw it (now, while connected); never, if `None`.
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: String,
    pub name: String,
    pub connected: bool,
    /// The peer's clock minus this device's, in milliseconds, as last measured.
    pub clock_offset_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub device: String,
    pub name: String,
    pub role: Option<Role>,
    pub space: Option<String>,
    pub addrs: Vec<String>,
    pub relay: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketInfo {
    pub ticket: String,
    pub id: String,
    pub expires_at: u64,
    /// The role the ticket gives the device that joins with it.
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Joined {
    pub space: String,
    pub host: String,
    pub host_name: String,
    pub code: String,
    /// The role the host gave this device.
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sent {
    pub task: String,
    pub thread: String,
    pub target: String,
    pub target_name: String,
    /// Whether the target device is known to hold the task.
    pub delivered: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryLine {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    pub device: String,
}

/// An approval request as the phone sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalInfo {
    pub id: String,
    pub thread: String,
    pub task: String,
    pub action: String,
    pub class: String,
    pub requested_by: String,
    pub requested_at: i64,
    /// By the clock of the device that asked (which decides).
    pub expires_at: i64,
    /// Milliseconds until it expires by the asking device's clock, as this device estimates it
    /// (its own clock corrected by the offset measured on connection); negative once past.
    pub expires_in_ms: i64,
    /// pending, approved, denied or expired.
    pub state: String,
    pub decided_by: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerSync {
    pub id: String,
    pub name: String,
    pub synced: bool,
}

/// The pairing handler slot: empty until the node belongs to a space.
#[derive(Clone, Debug, Default)]
struct PairingSlot(Arc<RwLock<Option<PairingHost>>>);

impl PairingSlot {
    fn get(&self) -> Option<PairingHost> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, host: PairingHost) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(host);
    }
}

impl ProtocolHandler for PairingSlot {
    async fn accept(&self, connection: iroh::endpoint::Connection) -> Result<(), AcceptError> {
        match self.get() {
            Some(host) => host.accept(connection).await,
            None => {
                connection.close(1u32.into(), b"this device is not in a space yet");
                Ok(())
            }
        }
    }
}

/// An open device home: its store, documents, endpoint and protocols.
#[derive(Debug)]
pub struct Node {
    home: PathBuf,
    secret_key: SecretKey,
    repo: Arc<Repo>,
    endpoint: Endpoint,
    router: Router,
    replicator: Replicator,
    gate: Arc<MembershipGate>,
    pairing: PairingSlot,
    relay: Option<RelayUrl>,
    events: broadcast::Sender<NodeEvent>,
    pairing_log: Arc<Mutex<std::collections::HashMap<String, Vec<PairingEvent>>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    lan: LanSightings,
    clocks: Clocks,
    presence: crate::presence::Presence,
    /// The membership last evaluated, and the index epoch it was evaluated at.
    membership_cache: Mutex<Option<(u64, MembershipNow)>>,
    /// True once the event watcher has taken in what there was at start.
    primed: tokio::sync::watch::Sender<bool>,
}

type MembershipNow = Option<Arc<errand_pairing::membership::Membership>>;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Short ids for people: the first 8 hex digits.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl Node {
    /// Opens a home, creating its identity and database on first use, and starts serving.
    pub async fn open(config: NodeConfig) -> Result<Node, NodeError> {
        let home = config.home.clone();
        create_home(&home)?;
        let secret_key = identity::load_or_create(&home.join(KEY_FILE))?;
        let me = secret_key.public();
        let store = match Store::open(&home.join(DB_FILE)) {
            Ok(store) => Arc::new(store),
            Err(errand_sync::store::OpenError::Locked(database)) => {
                return Err(NodeError::Busy {
                    database,
                    holder: crate::home::holder(&home),
                    waited: 0,
                });
            }
            Err(e) => return Err(NodeError::Open(e)),
        };
        crate::home::claim(&home);
        let gate = Arc::new(MembershipGate::new(me, store.clone()));
        let authors = Arc::new(errand_pairing::authors::MembershipAuthors::new(
            gate.clone(),
        ));
        let repo = Arc::new(Repo::new(store.clone(), secret_key.clone(), authors));
        gate.refresh(&repo);

        let endpoint = bind_endpoint(&secret_key, &config, &store, gate.clone()).await?;
        let replicator = Replicator::new(repo.clone(), endpoint.clone(), gate.clone());
        let pairing = PairingSlot::default();
        let clocks = Clocks::new(store.clone());
        let presence = crate::presence::Presence::new(store.clone());
        let router = Router::builder(endpoint.clone())
            .accept(errand_sync::SYNC_ALPN, replicator.clone())
            .accept(pairing::PAIR_ALPN, pairing.clone())
            .accept(
                errand_sync::blob::BLOB_ALPN,
                errand_sync::blob::BlobServer::new(store.clone(), gate.clone()),
            )
            .accept(CLOCK_ALPN, ClockServer::new(gate.clone()))
            .spawn();
        let node = Node {
            home,
            secret_key,
            repo,
            endpoint,
            router,
            replicator,
            gate,
            pairing,
            relay: config.relay,
            events: broadcast::channel(1024).0,
            pairing_log: Arc::default(),
            tasks: Mutex::default(),
            lan: LanSightings::default(),
            clocks,
            presence,
            membership_cache: Mutex::default(),
            primed: tokio::sync::watch::Sender::new(false),
        };
        if config.lan_discovery {
            let (repo, replicator, lan, gate) = (
                node.repo.clone(),
                node.replicator.clone(),
                node.lan.clone(),
                node.gate.clone(),
            );
            let listen = crate::lan::start(
                &node.endpoint,
                node.gate.clone(),
                node.lan.clone(),
                move |_| refresh_peers(&repo, &replicator, &gate, me, &lan),
            )?;
            node.spawn(listen);
        }
        if let Some(space) = node.space() {
            node.start_pairing_host(space);
            node.publish_addrs()?;
        }
        node.refresh_peers();
        node.spawn_background();
        Ok(node)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn id(&self) -> DeviceId {
        self.secret_key.public()
    }

    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    pub fn space(&self) -> Option<SpaceId> {
        // The repo keeps it in memory once made, joined or read at start; every send asks.
        if let Some(space) = self.repo.space() {
            return Some(space);
        }
        let bytes = self.repo.store().meta(META_SPACE).ok()??;
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    }

    fn require_space(&self) -> Result<SpaceId, NodeError> {
        self.space().ok_or(NodeError::NoSpace)
    }

    /// This device's name: the one in its certificate, else the one it was given, else the
    /// host name.
    pub fn name(&self) -> String {
        if let Some(m) = self.membership().and_then(|m| m.get(&self.id()).cloned()) {
            return m.name;
        }
        self.repo
            .store()
            .meta(META_NAME)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(default_name)
    }

    /// The verified membership: from the pinned root, over the index and the ledger of what
    /// this device has seen (see [`MembershipGate`]). Evaluating it checks every certificate's
    /// signature, so it is evaluated again only when the index changed in more than its thread
    /// list since the last time ([`errand_sync::Repo::index_epoch`]): membership is a function
    /// of the index's members and revocations and of the ledger, which only the index feeds.
    fn membership(&self) -> MembershipNow {
        let epoch = self.repo.index_epoch();
        let mut cached = self
            .membership_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, membership)) = cached.as_ref()
            && *at == epoch
        {
            return membership.clone();
        }
        // Read after the epoch: should the index move meanwhile, this is cached under the
        // older epoch and evaluated again on the next call.
        let membership = self.gate.refresh(&self.repo).map(Arc::new);
        *cached = Some((epoch, membership.clone()));
        membership
    }

    /// The addresses this node can be dialled at.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .endpoint
            .bound_sockets()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        out.extend(self.endpoint.addr().ip_addrs().copied());
        out.sort();
        out.dedup();
        out
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(fut);
    }

    /// Keeps trust, peer addresses and events current as documents change, and compacts.
    fn spawn_background(&self) {
        let mut changes = self.repo.subscribe();
        let repo = self.repo.clone();
        let gate = self.gate.clone();
        let replicator = self.replicator.clone();
        let events = self.events.clone();
        let me = self.id();
        let lan = self.lan.clone();
        let primed = self.primed.clone();
        self.spawn(async move {
            // Both primed with what there is now: only later changes are news.
            let mut membership = gate.refresh(&repo);
            let mut watcher = crate::events::TaskWatcher::default();
            watcher.prime(&repo, membership.as_ref());
            primed.send_replace(true);
            let mut members = crate::events::MemberWatcher::default();
            let _ = members.changed(membership.as_ref());
            loop {
                let changed = match changes.recv().await {
                    Ok(c) => Some(c),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Who belongs and where they are: only index changes beyond its thread list
                // can change either (a new thread is the index's most frequent change, and
                // evaluating the membership checks every certificate's signature). Sightings
                // on the LAN refresh the peers on their own.
                if changed
                    .as_ref()
                    .is_none_or(|c| c.doc.is_index() && c.touched.other)
                {
                    let before: Vec<DeviceId> = replicator.connected_peers();
                    membership = gate.refresh(&repo);
                    for ev in members.changed(membership.as_ref()) {
                        if let NodeEvent::DeviceRevoked { device, .. } = &ev
                            && let Ok(device) = device.parse::<DeviceId>()
                        {
                            replicator.forget_peer(&device);
                        }
                        let _ = events.send(ev);
                    }
                    for peer in before {
                        if !errand_sync::Gate::allows(gate.as_ref(), &peer) {
                            replicator.disconnect(
                                &peer,
                                errand_sync::net::CLOSE_REVOKED,
                                "no longer a member",
                            );
                        }
                    }
                    refresh_peers(&repo, &replicator, &gate, me, &lan);
                }
                for ev in watcher.changed(&repo, changed.as_ref(), membership.as_ref()) {
                    let _ = events.send(ev);
                }
            }
        });
        let mut net = self.replicator.events();
        let events = self.events.clone();
        let (endpoint, repo, lan, clocks, presence, replicator) = (
            self.endpoint.clone(),
            self.repo.clone(),
            self.lan.clone(),
            self.clocks.clone(),
            self.presence.clone(),
            self.replicator.clone(),
        );
        self.spawn(async move {
            let measure = |peer| measure_clock(peer, &repo, &endpoint, &lan, &clocks, &events);
            loop {
                match net.recv().await {
                    Ok(ev) => {
                        let seen = match &ev {
                            NetEvent::Connected(peer) | NetEvent::Disconnected(peer) => {
                                Some((*peer, true))
                            }
                            NetEvent::Synced { peer, .. } => Some((*peer, false)),
                            NetEvent::Misbehaved { .. } => None,
                        };
                        if let NetEvent::Connected(peer) = &ev {
                            measure(*peer);
                        }
                        let _ = events.send(NodeEvent::from_net(ev));
                        // After the event, so that keeping the time (a commit) does not delay
                        // it. Inline, not on a blocking thread: a task left behind would hold
                        // the store open after the node shut down.
                        if let Some((peer, always)) = seen {
                            presence.saw(peer, always);
                        }
                    }
                    // A burst of events (a fresh device hears one per document synced) can
                    // push a connection's news out of the channel: a peer whose clock was
                    // never asked would keep `sync_round` waiting for it until its timeout.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for peer in replicator.connected_peers() {
                            if !clocks.asked(&peer) {
                                measure(peer);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let repo = self.repo.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                let repo = repo.clone();
                let done =
                    tokio::task::spawn_blocking(move || repo.tidy(std::time::Instant::now())).await;
                match done {
                    Ok(Ok(t)) if t != Tidied::default() => {
                        debug!(
                            compacted = t.compacted,
                            dropped = t.dropped,
                            "tidied documents"
                        );
                    }
                    Ok(Err(e)) => warn!("compaction failed: {e}"),
                    _ => {}
                }
            }
        });
    }

    fn refresh_peers(&self) {
        refresh_peers(
            &self.repo,
            &self.replicator,
            &self.gate,
            self.id(),
            &self.lan,
        );
    }

    /// Writes this device's current addresses into the index, if they changed.
    fn publish_addrs(&self) -> Result<(), NodeError> {
        if !self.gate_has_me() {
            return Ok(());
        }
        let entry = index::AddrEntry {
            device: self.id().to_string(),
            addrs: self.addrs().iter().map(ToString::to_string).collect(),
            relay: self.relay.as_ref().map(ToString::to_string),
        };
        let message = format!(
            "device {} reachable at {}",
            self.name(),
            entry.addrs.join(" ")
        );
        self.repo
            .change(&DocId::index(), &message, |tx| index::set_addrs(tx, &entry))?;
        Ok(())
    }

    fn gate_has_me(&self) -> bool {
        self.membership().is_some_and(|m| m.is_member(&self.id()))
    }

    fn names(&self) -> std::collections::HashMap<String, String> {
        self.membership()
            .map(|m| {
                m.members()
                    .map(|m| (m.device.to_string(), m.name.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The clock offsets this node has measured.
    pub fn clocks(&self) -> &Clocks {
        &self.clocks
    }

    /// Waits until the node watches for news: after opening, it first takes in what its
    /// threads hold (from their stored views, or by reading the threads that changed since),
    /// and only changes after that are events.
    pub async fn primed(&self) {
        let mut primed = self.primed.subscribe();
        let _ = primed.wait_for(|p| *p).await;
    }

    /// Stops serving: closes connections and the endpoint.
    pub async fn shutdown(&self) {
        self.replicator.shutdown();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.abort_all();
        // Closing waits for peers to acknowledge; a peer that is gone would hold us for
        // seconds, and it will notice by timeout anyway.
        match tokio::time::timeout(Duration::from_millis(750), self.router.shutdown()).await {
            Ok(Err(e)) => debug!("router shutdown: {e}"),
            Err(_) => debug!("router shutdown timed out"),
            Ok(Ok(())) => {}
        }
        // Every task holds the repo: once they have ended, dropping the node closes the store,
        // and the home can be opened again, in this process too (an app restarting its node).
        while tasks.join_next().await.is_some() {}
        self.replicator.stopped(Duration::from_secs(2)).await;
        // Views are stored without a flush of their own (see `Store::set_views`).
        if let Err(e) = self.repo.store().flush() {
            warn!("could not flush the store: {e}");
        }
    }
}

/// Dials every verified member: the gate's membership (pinned root, index and ledger), never
/// the index's member entries, which any member can delete.
fn refresh_peers(
    repo: &Repo,
    replicator: &Replicator,
    gate: &MembershipGate,
    me: DeviceId,
    lan: &LanSightings,
) {
    let Some(membership) = gate.membership() else {
        return;
    };
    let addrs = repo
        .read(&DocId::index(), index::addrs)
        .ok()
        .flatten()
        .unwrap_or_default();
    for id in membership.members().map(|m| m.device) {
        if id != me && errand_sync::Gate::allows(replicator.gate(), &id) {
            replicator.add_peer(dial_addr(id, &addrs, &lan.get(&id)));
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "errand device".to_owned())
}

fn create_home(home: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !home.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| NodeError::Home(format!("cannot create {}: {e}", home.display())))?;
    } else if !home.is_dir() {
        return Err(NodeError::Home(format!(
            "{} is not a directory",
            home.display()
        )));
    } else {
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Tries of the remembered port before taking any free one, 50, 100, 200 and 400 ms apart.
const REMEMBERED_PORT_ATTEMPTS: usize = 5;

async fn bind_endpoint(
    secret_key: &SecretKey,
    config: &NodeConfig,
    store: &Store,
    gate: Arc<MembershipGate>,
) -> Result<Endpoint, NodeError> {
    let relay_mode = match &config.relay {
        Some(url) => RelayMode::Custom(iroh::RelayMap::from(url.clone())),
        None => RelayMode::Disabled,
    };
    if config.relay_only {
        if config.relay.is_none() {
            return Err(NodeError::Bind(
                "relay-only needs a relay to reach peers through".into(),
            ));
        }
        return Endpoint::builder(presets::Minimal)
            .secret_key(secret_key.clone())
            .relay_mode(relay_mode)
            .portmapper_config(PortmapperConfig::Disabled)
            .hooks(TrustHooks::new(gate))
            .transport_config(errand_sync::net::transport_config())
            .clear_ip_transports()
            .bind()
            .await
            .map_err(|e| NodeError::Bind(e.to_string()));
    }
    let last_port = store
        .meta(META_PORT)?
        .and_then(|b| <[u8; 2]>::try_from(b.as_slice()).ok())
        .map(u16::from_be_bytes);
    let wanted = config
        .bind
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    // Keep the port across restarts so peers' remembered addresses stay good. Right after a
    // restart the previous endpoint may still be letting go of it, so the remembered port is
    // tried a few times, for under a second, before settling for another.
    let mut candidates = Vec::new();
    if wanted.port() == 0
        && let Some(port) = last_port
    {
        let remembered = SocketAddr::new(wanted.ip(), port);
        candidates.extend([remembered; REMEMBERED_PORT_ATTEMPTS]);
    }
    candidates.push(wanted);
    let mut last_error = String::new();
    let mut pause = Duration::from_millis(50);
    for (attempt, addr) in candidates.into_iter().enumerate() {
        if attempt > 0 && addr.port() != 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let builder = Endpoint::builder(presets::Minimal)
            .secret_key(secret_key.clone())
            .relay_mode(relay_mode.clone())
            .portmapper_config(PortmapperConfig::Disabled)
            .hooks(TrustHooks::new(gate.clone()))
            .transport_config(errand_sync::net::transport_config())
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| NodeError::Bind(e.to_string()))?;
        match builder.bind().await {
            Ok(ep) => {
                if let Some(port) = ep.bound_sockets().first().map(SocketAddr::port) {
                    store.set_meta(META_PORT, &port.to_be_bytes())?;
                }
                return Ok(ep);
            }
            Err(e) => {
                debug!("bind {addr} failed: {e}");
                last_error = format!("{addr}: {e}");
            }
        }
    }
    Err(NodeError::Bind(last_error))
}
