//! The node: one device home opened for use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use errand_pairing::membership::Certificate;
use errand_pairing::protocol::{self as pairing, PairingEvent, PairingHost};
use errand_pairing::{MembershipGate, Ticket, TrustHooks, identity, trust};
use errand_sync::repo::Tidied;
use errand_sync::schema::{self, DocId, HistoryEntry, index, thread};
use errand_sync::{DeviceId, NetEvent, Replicator, Repo, Role, SpaceId, Store};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, RelayMode, RelayUrl, SecretKey};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::clock::{CLOCK_ALPN, ClockServer, Clocks};
use crate::error::NodeError;
use crate::events::NodeEvent;
use crate::lan::LanSightings;

mod conversation;
mod doctor;
mod notify;
mod schedules;

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
    /// The membership last evaluated, and the index heads it was evaluated at.
    membership_cache: Mutex<Option<(Vec<automerge::ChangeHash>, MembershipNow)>>,
    /// True once the event watcher has taken in what there was at start.
    primed: tokio::sync::watch::Sender<bool>,
}

type MembershipNow = Option<errand_pairing::membership::Membership>;

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
    /// signature, so it is evaluated again only when the index changed since the last time
    /// (membership is a function of the index and of the ledger, which only the index feeds).
    fn membership(&self) -> Option<errand_pairing::membership::Membership> {
        let heads = self.repo.heads(&DocId::index()).unwrap_or_default();
        let mut cached = self
            .membership_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, membership)) = cached.as_ref()
            && *at == heads
        {
            return membership.clone();
        }
        let membership = self.gate.refresh(&self.repo);
        *cached = Some((heads, membership.clone()));
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

    fn start_pairing_host(&self, space: SpaceId) {
        let host = PairingHost::new(
            self.repo.clone(),
            self.gate.clone(),
            self.secret_key.clone(),
            space,
            self.name(),
        );
        let mut rx = host.subscribe();
        let events = self.events.clone();
        let log = self.pairing_log.clone();
        self.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let ticket = match &ev {
                            PairingEvent::Requested { ticket, .. }
                            | PairingEvent::Paired { ticket, .. }
                            | PairingEvent::Refused { ticket, .. } => ticket.clone(),
                        };
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(ticket)
                            .or_default()
                            .push(ev.clone());
                        if let Some(ev) = NodeEvent::from_pairing(ev) {
                            let _ = events.send(ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        self.pairing.set(host);
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
                // Who belongs: only index changes beyond its thread list can change that (a
                // new thread is the index's most frequent change, and evaluating the
                // membership checks every certificate's signature).
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
                }
                // Where they are: cheap, and every index change may be worth a dial.
                if changed.as_ref().is_none_or(|c| c.doc.is_index()) {
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

    /// Creates the space with this device as its first desktop, if this home has none.
    /// Returns the space id.
    pub fn init_space(&self, name: Option<&str>) -> Result<SpaceId, NodeError> {
        if let Some(space) = self.space() {
            return Ok(space);
        }
        let name = name.map_or_else(default_name, str::to_owned);
        let me = self.id();
        // The space id names its root: every joiner checks it against the root it is told.
        let space = errand_pairing::membership::space_id(&me);
        let cert = Certificate::sign(
            &self.secret_key,
            space,
            me,
            name.clone(),
            Role::Desktop,
            now_unix(),
        );
        let entry = trust::member_entry(&cert);
        // Before the first change: every change is signed for its space, and checked against
        // the membership rooted here.
        self.gate
            .pin(space, me)
            .map_err(|e| NodeError::Home(e.to_string()))?;
        self.repo.set_space(space)?;
        self.repo
            .create(&DocId::index(), &format!("space created by {name}"), |tx| {
                index::create(tx, &space.to_string(), &me.to_string())?;
                index::put_member(tx, &entry)
            })?;
        self.repo.store().set_meta(META_NAME, name.as_bytes())?;
        self.gate.refresh(&self.repo);
        self.start_pairing_host(space);
        self.publish_addrs()?;
        Ok(space)
    }

    /// Issues a one-time pairing ticket that admits a device as `role`.
    pub fn create_ticket(
        &self,
        ttl: Duration,
        auto_confirm: bool,
        role: Role,
    ) -> Result<TicketInfo, NodeError> {
        self.require_space()?;
        let may_add = self
            .membership()
            .and_then(|m| m.get(&self.id()).map(|m| m.role.may_add_devices()))
            .unwrap_or(false);
        if !may_add {
            return Err(NodeError::NotAllowed(
                "this device may not add devices".into(),
            ));
        }
        let host = self.pairing.get().ok_or(NodeError::NoSpace)?;
        let ticket = host.create_ticket(
            self.addrs(),
            self.relay.as_ref().map(ToString::to_string),
            ttl,
            auto_confirm,
            role,
        )?;
        Ok(TicketInfo {
            ticket: ticket.to_text(),
            id: errand_sync::ids::hex(&ticket.id),
            expires_at: ticket.expires_at,
            role,
        })
    }

    /// The `n`th pairing event of a ticket, waiting up to `timeout` for it.
    pub async fn pairing_event(
        &self,
        ticket: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Option<PairingEvent>, NodeError> {
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self
                .pairing_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(ticket)
                .and_then(|evs| evs.get(n).cloned())
            {
                return Ok(Some(ev));
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    pub fn confirm_pairing(&self, ticket: &str, accept: bool) -> Result<bool, NodeError> {
        let host = self.pairing.get().ok_or(NodeError::NoSpace)?;
        Ok(host.confirm(ticket, accept))
    }

    /// Pairs this home with the device that issued the ticket, in the role the ticket gives.
    /// With `role`, the join is refused (before dialling) unless the ticket gives that role.
    pub async fn join(
        &self,
        ticket: &str,
        name: Option<&str>,
        role: Option<Role>,
    ) -> Result<Joined, NodeError> {
        if let Some(space) = self.space() {
            return Err(NodeError::AlreadyPaired(space.to_string()));
        }
        let ticket: Ticket = ticket.parse()?;
        if let Some(asked) = role
            && asked != ticket.role
        {
            return Err(NodeError::BadInput(format!(
                "this ticket admits a {}, not a {asked}: the desktop chooses the role \
                 (`errand pair --role {asked}`)",
                ticket.role
            )));
        }
        let name = name.map_or_else(default_name, str::to_owned);
        let code = pairing::code_for(&ticket, &self.id());
        let _ = self.events.send(NodeEvent::JoinCode { code: code.clone() });
        let my_addrs = self.addrs().iter().map(ToString::to_string).collect();
        let welcome = pairing::join(&self.endpoint, &ticket, &name, role, my_addrs).await?;
        // The pin first: the index's changes are checked against the membership it roots.
        self.gate
            .pin(welcome.space, welcome.root)
            .map_err(|e| NodeError::Pairing(e.to_string()))?;
        self.repo.set_space(welcome.space)?;
        self.repo
            .import(&DocId::index(), &welcome.index, &welcome.index_sigs)
            .map_err(|e| NodeError::Pairing(e.to_string()))?;
        self.repo.store().set_meta(META_NAME, name.as_bytes())?;
        self.gate.refresh(&self.repo);
        if !self.gate_has_me() {
            return Err(NodeError::Pairing(
                "the host's index does not list this device".into(),
            ));
        }
        // The ticket's addresses are the freshest we know for the host.
        let mut host_addr = EndpointAddr::new(ticket.host);
        for a in &ticket.addrs {
            host_addr = host_addr.with_ip_addr(*a);
        }
        self.replicator.add_peer(host_addr);
        self.start_pairing_host(welcome.space);
        self.refresh_peers();
        Ok(Joined {
            space: welcome.space.to_string(),
            host: welcome.host.to_string(),
            host_name: welcome.host_name,
            code,
            role: ticket.role,
        })
    }

    /// The space's devices, verified.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, NodeError> {
        self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let addrs = self
            .repo
            .read(&DocId::index(), index::addrs)?
            .unwrap_or_default();
        let connected = self.replicator.connected_peers();
        Ok(membership
            .members()
            .map(|m| DeviceInfo {
                id: m.device.to_string(),
                name: m.name.clone(),
                role: m.role,
                added_by: m.added_by.to_string(),
                added_at: m.added_at,
                this_device: m.device == self.id(),
                connected: connected.contains(&m.device),
                addrs: addrs
                    .iter()
                    .find(|a| a.device == m.device.to_string())
                    .map(|a| a.addrs.clone())
                    .unwrap_or_default(),
                clock_offset_ms: (m.device != self.id())
                    .then(|| self.clocks.get(&m.device).map(|o| o.offset_ms))
                    .flatten(),
                last_seen_ms: if m.device == self.id() {
                    None
                } else if connected.contains(&m.device) {
                    Some(schema::now_millis())
                } else {
                    self.presence.last_seen(&m.device)
                },
            })
            .collect())
    }

    /// Finds a device by id prefix or name.
    pub fn resolve_device(&self, needle: &str) -> Result<DeviceInfo, NodeError> {
        let devices = self.devices()?;
        let matches: Vec<&DeviceInfo> = devices
            .iter()
            .filter(|d| d.id.starts_with(needle) || d.name == needle)
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(NodeError::NotFound(format!(
                "no device {needle:?} in this space as this device knows it \
                 (`errand sync` fetches what the others know)"
            ))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one device"
            ))),
        }
    }

    /// The device that runs tasks by default: the space's first desktop (its creator), else
    /// any desktop.
    fn default_target(&self) -> Result<DeviceInfo, NodeError> {
        let devices = self.devices()?;
        let root = self.membership().map(|m| m.root());
        devices
            .iter()
            .find(|d| Some(d.id.clone()) == root.map(|r| r.to_string()) && d.role == Role::Desktop)
            .or_else(|| devices.iter().find(|d| d.role == Role::Desktop))
            .cloned()
            .ok_or_else(|| NodeError::NotFound("no desktop in this space to run tasks".into()))
    }

    pub fn threads(&self) -> Result<Vec<index::ThreadEntry>, NodeError> {
        self.require_space()?;
        Ok(self
            .repo
            .read(&DocId::index(), index::threads)?
            .unwrap_or_default())
    }

    /// Finds a thread by id prefix. Reads the listed ids, not the threads' entries.
    pub fn resolve_thread(&self, needle: &str) -> Result<DocId, NodeError> {
        self.require_space()?;
        let matches = self
            .repo
            .read(&DocId::index(), |d| index::thread_ids_like(d, needle))?
            .unwrap_or_default();
        match matches.as_slice() {
            [one] => DocId::parse(one).ok_or_else(|| NodeError::NotFound(one.clone())),
            [] => Err(NodeError::NotFound(format!("no thread {needle:?}"))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one thread"
            ))),
        }
    }

    /// Sends a task: commits it locally (durably) and returns. Delivery happens in the
    /// background; see [`Node::wait_delivered`].
    pub fn send(
        &self,
        text: &str,
        thread: Option<&str>,
        to: Option<&str>,
    ) -> Result<Sent, NodeError> {
        self.require_space()?;
        if self.role() == Some(Role::Viewer) {
            return Err(NodeError::NotAllowed(
                "this device is a viewer: it can read and sync, not send tasks".into(),
            ));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(NodeError::BadInput("a task needs some text".into()));
        }
        thread::check_prompt(text).map_err(|e| NodeError::BadInput(e.to_string()))?;
        let target = match to {
            Some(t) => self.resolve_device(t)?,
            None => self.default_target()?,
        };
        if target.role != Role::Desktop {
            return Err(NodeError::BadInput(format!(
                "{} is a {}; only desktops run tasks",
                target.name, target.role
            )));
        }
        let me = self.id().to_string();
        let thread_id = match thread {
            Some(t) => self.resolve_thread(t)?,
            None => {
                let id = DocId::new_thread();
                let title: String = text.chars().take(60).collect();
                // The thread and its listing become durable with the task below: one flush
                // for the three commits of a send into a new thread.
                self.repo.create_lazily(
                    &id,
                    &format!("thread {} created", short(id.as_str())),
                    |tx| thread::create(tx, id.as_str(), &title),
                )?;
                let entry = index::ThreadEntry {
                    id: id.to_string(),
                    title,
                    created: schema::now_millis(),
                    created_by: me.clone(),
                    archived: false,
                };
                self.repo.change_lazily(
                    &DocId::index(),
                    &format!("thread {} listed", short(id.as_str())),
                    |tx| index::add_thread(tx, &entry),
                )?;
                id
            }
        };
        let task_id = errand_sync::ids::hex(&rand::random::<[u8; 8]>());
        let new = thread::NewTask {
            id: &task_id,
            prompt: text,
            target: &target.id,
            created: schema::now_millis(),
        };
        self.repo.change(
            &thread_id,
            &format!("task {} queued", short(&task_id)),
            |tx| thread::add_task(tx, &new),
        )?;
        let target_id: DeviceId = target
            .id
            .parse()
            .map_err(|_| NodeError::NotFound(target.id.clone()))?;
        let delivered = target.this_device
            || [thread_id.clone(), DocId::index()].iter().all(|d| {
                self.repo
                    .heads(d)
                    .is_ok_and(|h| self.replicator.delivered(&target_id, d, &h))
            });
        Ok(Sent {
            task: task_id,
            thread: thread_id.to_string(),
            target: target.id.clone(),
            target_name: target.name,
            delivered,
        })
    }

    /// Waits until `peer` holds the current version of `doc` and of the index (which lists the
    /// threads), up to `timeout`.
    pub async fn wait_delivered(&self, peer: &str, doc: &str, timeout: Duration) -> bool {
        let (Ok(peer), Some(doc)) = (peer.parse::<DeviceId>(), DocId::parse(doc)) else {
            return false;
        };
        if peer == self.id() {
            return true;
        }
        let wanted: Vec<(DocId, Vec<automerge::ChangeHash>)> = [doc, DocId::index()]
            .into_iter()
            .map(|d| {
                let heads = self.repo.heads(&d).unwrap_or_default();
                (d, heads)
            })
            .collect();
        let mut progress = self.replicator.progress();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if wanted
                .iter()
                .all(|(d, heads)| self.replicator.delivered(&peer, d, heads))
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, progress.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Every task, in every thread or in one. Threads not in memory are read from their stored
    /// task lists where those are current (see `errand_sync::repo` views), so a listing across
    /// a space loads only the threads that changed since they were last listed.
    pub fn tasks(&self, thread: Option<&str>) -> Result<Vec<thread::Task>, NodeError> {
        let threads = match thread {
            Some(t) => vec![self.resolve_thread(t)?],
            None => self.all_threads()?,
        };
        let each = self.repo.read_views(thread::TASKS_VIEW, &threads, |d, t| {
            thread::tasks(d, t.as_str())
        })?;
        Ok(interleave(each.into_iter().flatten().collect()))
    }

    /// Listed threads, and any held whose listing has not arrived yet.
    fn all_threads(&self) -> Result<Vec<DocId>, NodeError> {
        let mut ids: Vec<DocId> = self
            .threads()?
            .iter()
            .filter_map(|t| DocId::parse(&t.id))
            .collect();
        let listed: std::collections::HashSet<DocId> = ids.iter().cloned().collect();
        for id in self.repo.doc_ids()? {
            if !id.is_index() && !listed.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Finds a task by id prefix.
    pub fn task(&self, needle: &str) -> Result<thread::Task, NodeError> {
        let needle = needle.trim();
        if needle.is_empty() {
            return Err(NodeError::BadInput("name a task".into()));
        }
        // Ids first, from each thread's stored view (no thread is loaded for them), then the
        // one task found, from its thread.
        let threads = self.all_threads()?;
        let ids = self
            .repo
            .read_views(thread::TASK_IDS_VIEW, &threads, |d, _| thread::task_ids(d))?;
        let mut matches: Vec<(DocId, String)> = threads
            .into_iter()
            .zip(ids)
            .flat_map(|(t, ids)| {
                ids.unwrap_or_default()
                    .into_iter()
                    .filter(|id| id.starts_with(needle))
                    .map(move |id| (t.clone(), id))
            })
            .collect();
        // A whole id names its task, whatever other ids it begins.
        if matches.iter().any(|(_, id)| id == needle) {
            matches.retain(|(_, id)| id == needle);
        }
        match matches.as_slice() {
            [(t, id)] => self
                .repo
                .read(t, |d| thread::task(d, t.as_str(), id))?
                .flatten()
                .ok_or_else(|| NodeError::NotFound(format!("no task {needle:?}"))),
            [] => Err(NodeError::NotFound(format!("no task {needle:?}"))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one task"
            ))),
        }
    }

    /// Asks the executor to stop a task.
    pub fn cancel(&self, needle: &str) -> Result<thread::Task, NodeError> {
        let task = self.task(needle)?;
        if task.status.is_final() {
            return Err(NodeError::BadInput(format!(
                "task {} already ended ({})",
                short(&task.id),
                task.status
            )));
        }
        let doc =
            DocId::parse(&task.thread).ok_or_else(|| NodeError::NotFound(task.thread.clone()))?;
        self.repo.change(
            &doc,
            &format!("task {} cancel requested", short(&task.id)),
            |tx| thread::request_cancel(tx, &task.id),
        )?;
        self.task(&task.id)
    }

    fn doc_arg(&self, doc: Option<&str>) -> Result<DocId, NodeError> {
        match doc {
            None | Some("index") => Ok(DocId::index()),
            Some(d) => self.resolve_thread(d),
        }
    }

    /// A document's commits, oldest first, with the writing device's name. With `limit`, the
    /// newest `limit` commits.
    pub fn history(
        &self,
        doc: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryLine>, NodeError> {
        self.require_space()?;
        let doc = self.doc_arg(doc)?;
        let entries = self
            .repo
            .read(&doc, |d| match limit {
                Some(n) => schema::history_tail(d, n),
                None => schema::history(d),
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no document {doc}")))?;
        let names: std::collections::HashMap<String, String> = self
            .membership()
            .map(|m| {
                m.members()
                    .map(|m| (m.device.to_string(), m.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(entries
            .into_iter()
            .map(|entry| HistoryLine {
                device: names
                    .get(&entry.device_id)
                    .cloned()
                    .unwrap_or_else(|| short(&entry.device_id).to_owned()),
                entry,
            })
            .collect())
    }

    /// A document as it was at `heads`.
    pub fn at(&self, heads: &str, doc: Option<&str>) -> Result<serde_json::Value, NodeError> {
        self.require_space()?;
        let doc = self.doc_arg(doc)?;
        let heads = schema::parse_heads(heads).map_err(NodeError::BadInput)?;
        if heads.is_empty() {
            return Err(NodeError::BadInput(
                "name at least one change hash (see errand history)".into(),
            ));
        }
        self.repo
            .read(&doc, |d| {
                use automerge::ReadDoc;
                if let Some(h) = heads.iter().find(|h| d.get_change_by_hash(h).is_none()) {
                    return Err(NodeError::NotFound(format!(
                        "change {h} is not in document {doc}"
                    )));
                }
                Ok(schema::to_json(d, &automerge::ROOT, Some(&heads)))
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no document {doc}")))?
    }

    pub fn status(&self) -> Result<Status, NodeError> {
        let membership = self.membership();
        let me = self.id();
        let connected = self.replicator.connected_peers();
        let peers = membership
            .as_ref()
            .map(|m| {
                m.members()
                    .filter(|m| m.device != me)
                    .map(|m| PeerStatus {
                        id: m.device.to_string(),
                        name: m.name.clone(),
                        connected: connected.contains(&m.device),
                        clock_offset_ms: self.clocks.get(&m.device).map(|o| o.offset_ms),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Status {
            device: me.to_string(),
            name: self.name(),
            role: membership.as_ref().and_then(|m| m.get(&me).map(|m| m.role)),
            space: self.space().map(|s| s.to_string()),
            addrs: self.addrs().iter().map(ToString::to_string).collect(),
            relay: self.relay.as_ref().map(ToString::to_string),
            peers,
            threads: self.threads().map(|t| t.len()).unwrap_or(0),
        })
    }

    /// Connects to every peer it can and syncs every document, until all reachable peers are
    /// in sync or `timeout` passes. Reports each peer.
    pub async fn sync_round(&self, timeout: Duration) -> Result<Vec<PeerSync>, NodeError> {
        self.require_space()?;
        self.replicator.poke();
        let peers: Vec<(DeviceId, String)> = self
            .membership()
            .map(|m| {
                m.members()
                    .filter(|m| m.device != self.id())
                    .map(|m| (m.device, m.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut progress = self.replicator.progress();
        let mut clocks = self.clocks.progress();
        let deadline = tokio::time::Instant::now() + timeout;
        // In sync with a peer: it holds exactly what we hold (equal digests, nothing under
        // way), and we hold every document the index lists. This runs at every step of every
        // session, so the digests (constant time) are compared first and the index is read
        // (its thread ids only) only once some peer is in sync: reading it at every step made
        // a fresh phone's sync of 1,000 threads take some 18 ms per thread.
        let all_synced = |node: &Node| -> Vec<bool> {
            let synced: Vec<bool> = peers
                .iter()
                .map(|(p, _)| node.replicator.in_sync(p))
                .collect();
            if !synced.contains(&true) {
                return synced;
            }
            let held = node
                .repo
                .read(&DocId::index(), |d| index::thread_ids_like(d, ""))
                .ok()
                .flatten()
                .unwrap_or_default()
                .iter()
                .all(|id| DocId::parse(id).is_some_and(|d| node.repo.holds(&d)));
            synced.into_iter().map(|s| s && held).collect()
        };
        // Synced, and each connected peer's clock asked for (what this device shows of
        // approval expiry depends on it). The answer is the state that ended the wait: a
        // change made here just after (this device's own address or presence, say) would
        // otherwise turn an "in sync" that held into a "not in sync".
        // A peer connected before this node listened for connections (right at start) was
        // never asked: ask it here, once per round.
        let mut asking = std::collections::HashSet::new();
        let mut clocks_asked = |node: &Node| {
            let mut all = true;
            for peer in node.replicator.connected_peers() {
                if !node.clocks.asked(&peer) {
                    all = false;
                    if asking.insert(peer) {
                        node.measure_clock(peer);
                    }
                }
            }
            all
        };
        let mut state = all_synced(self);
        while !(state.iter().all(|s| *s) && clocks_asked(self)) {
            let more = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = progress.changed() => {}
                    _ = clocks.changed() => {}
                }
            });
            if more.await.is_err() {
                break;
            }
            state = all_synced(self);
        }
        Ok(peers
            .into_iter()
            .zip(state)
            .map(|((id, name), synced)| PeerSync {
                id: id.to_string(),
                name,
                synced,
            })
            .collect())
    }

    /// Measures a peer's clock in the background (see [`crate::clock`]).
    fn measure_clock(&self, peer: DeviceId) {
        measure_clock(
            peer,
            &self.repo,
            &self.endpoint,
            &self.lan,
            &self.clocks,
            &self.events,
        );
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

    /// Approval requests in every thread, oldest first; with `pending_only`, only those still
    /// waiting for a decision.
    ///
    /// A decision counts only when validly signed by a member whose role may approve, as
    /// the executor judges it: anything else in the document is shown as if absent.
    pub fn approvals(&self, pending_only: bool) -> Result<Vec<ApprovalInfo>, NodeError> {
        let names = self.names();
        self.require_space()?;
        let membership = self.membership();
        let mut out = Vec::new();
        for t in self.threads()? {
            let Some(doc) = DocId::parse(&t.id) else {
                continue;
            };
            let approvals = self
                .repo
                .read(&doc, |d| thread::approvals(d, doc.as_str()))?
                .unwrap_or_default();
            for a in approvals {
                // Expiry is the asking desktop's to decide, by its clock.
                let now = a
                    .requested_by
                    .parse::<DeviceId>()
                    .map_or_else(|_| schema::now_millis(), |d| self.clocks.now_at(&d));
                let first = crate::events::counted_decision(membership.as_ref(), &a).cloned();
                let first = first.as_ref();
                let state = crate::events::approval_state(&a, first, now);
                if pending_only && state != "pending" {
                    continue;
                }
                let decided = matches!(state, "approved" | "denied");
                out.push(ApprovalInfo {
                    decided_by: first.filter(|_| decided).map(|d| {
                        names
                            .get(&d.device)
                            .cloned()
                            .unwrap_or_else(|| short(&d.device).to_owned())
                    }),
                    state: state.to_owned(),
                    id: a.id,
                    thread: a.thread,
                    task: a.task,
                    action: a.action,
                    class: a.class,
                    requested_by: names
                        .get(&a.requested_by)
                        .cloned()
                        .unwrap_or(a.requested_by),
                    requested_at: a.requested_at,
                    expires_at: a.expires_at,
                    expires_in_ms: a.expires_at.saturating_sub(now),
                });
            }
        }
        out.sort_by_key(|a| a.requested_at);
        Ok(out)
    }

    /// Approves or denies a request, signed with this device's key. Returns the approval and
    /// the device that asked (to wait for delivery to it).
    pub fn decide(&self, needle: &str, approve: bool) -> Result<(ApprovalInfo, String), NodeError> {
        let space = self.require_space()?;
        let may = self.membership().is_some_and(|m| m.may_approve(&self.id()));
        if !may {
            return Err(NodeError::NotAllowed(
                "this device's role may not decide approvals".into(),
            ));
        }
        let needle = needle.trim();
        let all = self.approvals(false)?;
        let matches: Vec<&ApprovalInfo> = all
            .iter()
            .filter(|a| !needle.is_empty() && a.id.starts_with(needle))
            .collect();
        let info = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(NodeError::NotFound(format!(
                    "no approval request {needle:?}"
                )));
            }
            _ => {
                return Err(NodeError::Ambiguous(format!(
                    "{needle:?} names more than one approval request"
                )));
            }
        };
        if info.state != "pending" {
            return Err(NodeError::BadInput(format!(
                "approval {} is already {}",
                short(&info.id),
                info.state
            )));
        }
        let doc =
            DocId::parse(&info.thread).ok_or_else(|| NodeError::NotFound(info.thread.clone()))?;
        let approval = self
            .repo
            .read(&doc, |d| thread::approvals(d, doc.as_str()))?
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.id == info.id)
            .ok_or_else(|| NodeError::NotFound(info.id.clone()))?;
        let at = schema::now_millis();
        let message = thread::approval_signed_bytes(&space.to_string(), &approval, approve, at);
        let signature = self.secret_key.sign(&message);
        let decision = thread::Decision {
            device: self.id().to_string(),
            approve,
            at,
            signature: errand_sync::ids::hex(&signature.to_bytes()),
        };
        let verb = if approve { "approved" } else { "denied" };
        self.repo.change(
            &doc,
            &format!("approval {} {verb} by {}", short(&info.id), self.name()),
            |tx| thread::decide(tx, &info.id, &decision),
        )?;
        let requested_by = approval.requested_by.clone();
        let mut updated = info;
        updated.state = verb.to_owned();
        updated.decided_by = Some(self.name());
        Ok((updated, requested_by))
    }

    /// An artifact's bytes: from this device's store, else fetched from the device that ran
    /// the task (and kept here).
    pub async fn fetch_blob(&self, hash: &str, from: &str) -> Result<Vec<u8>, NodeError> {
        if let Some(bytes) = self.repo.store().blob(hash)? {
            return Ok(bytes);
        }
        let peer: DeviceId = from
            .parse()
            .map_err(|_| NodeError::NotFound(from.to_owned()))?;
        let addr = self.peer_addr(&peer)?;
        let bytes = errand_sync::blob::fetch(&self.endpoint, addr, hash)
            .await
            .map_err(|e| NodeError::Blob(e.to_string()))?;
        self.repo.store().put_blob(&bytes)?;
        Ok(bytes)
    }

    fn peer_addr(&self, peer: &DeviceId) -> Result<EndpointAddr, NodeError> {
        let addrs = self
            .repo
            .read(&DocId::index(), index::addrs)?
            .unwrap_or_default();
        Ok(dial_addr(*peer, &addrs, &self.lan.get(peer)))
    }

    /// Revokes a device: signs a revocation into the index, so that this device refuses it at
    /// once and every other member as soon as it has synced. What the revoked device already
    /// holds stays with it; it gets nothing new.
    ///
    /// Refused up front, as every member would ignore it: by a device whose role may not add
    /// devices, of the space's creator (the root), and of a desktop by anyone but the root.
    pub fn revoke(&self, needle: &str) -> Result<DeviceInfo, NodeError> {
        let space = self.require_space()?;
        let membership = self.membership().ok_or(NodeError::NoSpace)?;
        let may = membership
            .get(&self.id())
            .is_some_and(|m| m.role.may_add_devices());
        if !may {
            return Err(NodeError::NotAllowed(
                "this device's role may not revoke devices".into(),
            ));
        }
        let device = self.resolve_device(needle)?;
        if device.this_device {
            return Err(NodeError::BadInput("a device cannot revoke itself".into()));
        }
        let id: DeviceId = device
            .id
            .parse()
            .map_err(|_| NodeError::NotFound(device.id.clone()))?;
        if let Err(reason) = membership.may_revoke(&self.id(), &id) {
            return Err(NodeError::NotAllowed(format!(
                "cannot revoke {}: {reason}",
                device.name
            )));
        }
        let revocation =
            errand_pairing::membership::Revocation::sign(&self.secret_key, space, id, now_unix());
        let entry = trust::revocation_entry(&revocation);
        self.repo.change(
            &DocId::index(),
            &format!("device {} revoked by {}", device.name, self.name()),
            |tx| index::put_revocation(tx, &entry),
        )?;
        self.gate.refresh(&self.repo);
        self.replicator
            .disconnect(&id, errand_sync::net::CLOSE_REVOKED, "revoked");
        Ok(device)
    }

    /// Whether `device` may decide approvals in this space.
    pub fn may_approve(&self, device: &DeviceId) -> bool {
        self.membership().is_some_and(|m| m.may_approve(device))
    }

    /// Whether a task `device` sent may run: it is a current member whose role sends tasks
    /// (a phone or a desktop; never a viewer, nor a revoked device).
    pub fn may_send(&self, device: &DeviceId) -> bool {
        self.membership()
            .and_then(|m| m.get(device).map(|m| m.role))
            .is_some_and(|r| matches!(r, Role::Phone | Role::Desktop))
    }

    /// A member's name.
    pub fn device_name(&self, device: &DeviceId) -> Option<String> {
        self.membership()
            .and_then(|m| m.get(device).map(|m| m.name.clone()))
    }

    /// This device's role in its space.
    pub fn role(&self) -> Option<Role> {
        self.membership()
            .and_then(|m| m.get(&self.id()).map(|m| m.role))
    }

    /// Waits until every connected peer holds this device's current version of every
    /// document, or `timeout` passes: what a stopping node wrote last reaches its peers.
    pub async fn flush(&self, timeout: Duration) {
        let docs: Vec<(DocId, Vec<automerge::ChangeHash>)> = self
            .repo
            .doc_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                let heads = self.repo.heads(&d).unwrap_or_default();
                (d, heads)
            })
            .collect();
        let mut progress = self.replicator.progress();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let delivered = self.replicator.connected_peers().iter().all(|p| {
                docs.iter()
                    .all(|(d, heads)| self.replicator.delivered(p, d, heads))
            });
            if delivered
                || tokio::time::timeout_at(deadline, progress.changed())
                    .await
                    .is_err()
            {
                return;
            }
        }
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

/// Tasks of several threads in one list: each thread's tasks stay in the thread's own order
/// (causal, whatever the senders' clocks say); between threads, the task sent earliest (by its
/// sender's clock) comes first.
fn interleave(threads: Vec<Vec<thread::Task>>) -> Vec<thread::Task> {
    use std::cmp::{Ordering, Reverse};
    /// The next task of one thread, ordered by when it was sent (then id, then thread).
    struct Front(thread::Task, usize);
    impl Front {
        fn key(&self) -> (i64, &str, usize) {
            (self.0.created, &self.0.id, self.1)
        }
    }
    impl PartialEq for Front {
        fn eq(&self, other: &Self) -> bool {
            self.key() == other.key()
        }
    }
    impl Eq for Front {}
    impl PartialOrd for Front {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Front {
        fn cmp(&self, other: &Self) -> Ordering {
            self.key().cmp(&other.key())
        }
    }

    let mut out = Vec::with_capacity(threads.iter().map(Vec::len).sum());
    let mut queues: Vec<std::vec::IntoIter<thread::Task>> =
        threads.into_iter().map(Vec::into_iter).collect();
    let mut fronts: std::collections::BinaryHeap<Reverse<Front>> = queues
        .iter_mut()
        .enumerate()
        .filter_map(|(i, q)| Some(Reverse(Front(q.next()?, i))))
        .collect();
    while let Some(Reverse(Front(task, i))) = fronts.pop() {
        out.push(task);
        match queues[i].next() {
            Some(next) => fronts.push(Reverse(Front(next, i))),
            // A thread's buffer goes as soon as it is emptied, not after the whole listing.
            None => queues[i] = Vec::new().into_iter(),
        }
    }
    out
}

/// Measures `peer`'s clock in the background, dialling it where the index or the local
/// network last saw it (see [`crate::clock`]).
fn measure_clock(
    peer: DeviceId,
    repo: &Repo,
    endpoint: &Endpoint,
    lan: &LanSightings,
    clocks: &Clocks,
    events: &broadcast::Sender<NodeEvent>,
) {
    let addrs = repo
        .read(&DocId::index(), index::addrs)
        .ok()
        .flatten()
        .unwrap_or_default();
    crate::clock::measure_in_background(
        endpoint.clone(),
        dial_addr(peer, &addrs, &lan.get(&peer)),
        clocks.clone(),
        events.clone(),
    );
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

/// Where to dial a device: the addresses and relay it last wrote into the index, and where it
/// was last heard on the local network.
fn dial_addr(device: DeviceId, addrs: &[index::AddrEntry], heard: &[SocketAddr]) -> EndpointAddr {
    let mut addr = EndpointAddr::new(device);
    for a in heard {
        addr = addr.with_ip_addr(*a);
    }
    let key = device.to_string();
    if let Some(entry) = addrs.iter().find(|a| a.device == key) {
        for a in entry
            .addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
        {
            addr = addr.with_ip_addr(a);
        }
        if let Some(relay) = entry
            .relay
            .as_ref()
            .and_then(|r| r.parse::<RelayUrl>().ok())
        {
            addr = addr.with_relay_url(relay);
        }
    }
    addr
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
