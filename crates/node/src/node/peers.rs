//! Reaching the other devices: a sync round and what it says, the node's status, flushing
//! before a stop, fetching an artifact, and measuring a peer's clock.

use std::net::SocketAddr;
use std::time::Duration;

use errand_sync::schema::{DocId, index};
use errand_sync::{DeviceId, Repo};
use iroh::{Endpoint, EndpointAddr, RelayUrl};
use tokio::sync::broadcast;

use super::{Node, PeerStatus, PeerSync, Status};
use crate::clock::Clocks;
use crate::error::NodeError;
use crate::events::NodeEvent;
use crate::lan::LanSightings;

impl Node {
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
        self.wait_held(&docs, || self.replicator.connected_peers(), timeout)
            .await;
    }

    /// Waits until every peer that `peers` names (asked again at each step) is known to hold
    /// each document in `docs` at least at the heads given with it, or until `timeout` has
    /// passed: whether they all do.
    pub(super) async fn wait_held(
        &self,
        docs: &[(DocId, Vec<automerge::ChangeHash>)],
        peers: impl Fn() -> Vec<DeviceId>,
        timeout: Duration,
    ) -> bool {
        let mut progress = self.replicator.progress();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let held = peers().iter().all(|p| {
                docs.iter()
                    .all(|(d, heads)| self.replicator.delivered(p, d, heads))
            });
            if held {
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
}

/// Measures `peer`'s clock in the background, dialling it where the index or the local
/// network last saw it (see [`crate::clock`]).
pub(super) fn measure_clock(
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

/// Where to dial a device: the addresses and relay it last wrote into the index, and where it
/// was last heard on the local network.
pub(super) fn dial_addr(
    device: DeviceId,
    addrs: &[index::AddrEntry],
    heard: &[SocketAddr],
) -> EndpointAddr {
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
