//! Local-network discovery: devices of the space find each other's current addresses by mDNS.
//!
//! Addresses in the index go stale when a laptop moves to another network or gets a new DHCP
//! lease, and the device cannot publish its new address to a peer it cannot reach. On the same
//! LAN, mDNS closes that gap: every node announces itself under the `errand` service, and what
//! a node hears about a member of its space is added to where it dials that member.
//!
//! Architecture invariant: what mDNS reports is only a hint about where to dial. Who may
//! connect is decided by the membership gate during the handshake, exactly as for addresses
//! from the index, so a forged announcement can at most make a node dial a wrong address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use errand_sync::{DeviceId, Gate};
use iroh::Endpoint;
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use n0_future::StreamExt;
use tracing::debug;

use crate::error::NodeError;

/// The mDNS service errand announces under (kept apart from other iroh applications).
const SERVICE: &str = "errand";

/// Addresses heard on the local network, per device.
#[derive(Clone, Debug, Default)]
pub(crate) struct LanSightings(Arc<Mutex<HashMap<DeviceId, Vec<SocketAddr>>>>);

impl LanSightings {
    pub(crate) fn get(&self, device: &DeviceId) -> Vec<SocketAddr> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
            .unwrap_or_default()
    }

    /// Records what was heard; returns whether it is news.
    fn record(&self, device: DeviceId, addrs: Vec<SocketAddr>) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(device, addrs.clone()) != Some(addrs)
    }
}

/// Starts announcing this endpoint on the LAN; the returned future listens for the others
/// until dropped. `on_member_seen` runs when a device the gate admits is heard at new
/// addresses.
pub(crate) fn start(
    endpoint: &Endpoint,
    gate: Arc<dyn Gate>,
    sightings: LanSightings,
    on_member_seen: impl Fn(DeviceId) + Send + 'static,
) -> Result<impl Future<Output = ()> + Send + 'static, NodeError> {
    let mdns = MdnsAddressLookup::builder()
        .service_name(SERVICE)
        .build(endpoint.id())
        .map_err(|e| NodeError::Bind(format!("local network discovery: {e}")))?;
    endpoint
        .address_lookup()
        .map_err(|e| NodeError::Bind(e.to_string()))?
        .add(mdns.clone());
    Ok(async move {
        let mut events = mdns.subscribe().await;
        while let Some(event) = events.next().await {
            let DiscoveryEvent::Discovered { endpoint_info, .. } = event else {
                continue;
            };
            let device = endpoint_info.endpoint_id;
            if !gate.allows(&device) {
                continue;
            }
            let addrs: Vec<SocketAddr> = endpoint_info.ip_addrs().copied().collect();
            debug!("heard {device} on the LAN at {addrs:?}");
            if !addrs.is_empty() && sightings.record(device, addrs) {
                on_member_seen(device);
            }
        }
    })
}
