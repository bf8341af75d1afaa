//! `errand/clock/1`: how far each peer's clock is from this device's.
//!
//! Time that decides something is the deciding device's: an approval expires by the desktop's
//! clock. A phone that shows "expires in 4 min" must therefore know how far the desktop's clock
//! is from its own, and a person whose device is more than [`SKEW_LIMIT_MS`] off is told so.
//! When a peer connects, each side asks the other once, NTP style: it sends its time, the peer
//! answers with its own, and the offset is the peer's time minus the midpoint of the round
//! trip. The protocol is one fixed-size request and one fixed-size answer on one stream, both
//! bounded in time; only members get past the handshake (the membership gate applies to every
//! ALPN but pairing) and the handler checks again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use errand_sync::schema::now_millis;
use errand_sync::{DeviceId, Gate, Store};
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use serde::{Deserialize, Serialize};

use crate::events::NodeEvent;

/// The ALPN of the clock protocol.
pub const CLOCK_ALPN: &[u8] = b"errand/clock/1";
/// A peer whose clock is further than this from this device's is reported.
pub const SKEW_LIMIT_MS: i64 = 60_000;
/// The most one exchange may take, connecting included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request and answer: a version byte and a time in milliseconds since the epoch.
const MESSAGE_LEN: usize = 9;
const VERSION: u8 = 1;
const META_PREFIX: &str = "clock_offset/";

/// A peer's clock as measured from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offset {
    /// The peer's clock minus this device's, in milliseconds.
    pub offset_ms: i64,
    /// The round trip of the measurement (its uncertainty is half of it).
    pub rtt_ms: i64,
}

impl Offset {
    /// The offset from one exchange: `sent` and `received` by this device's clock, `peer` by
    /// the peer's, read somewhere between the two.
    pub fn measure(sent: i64, peer: i64, received: i64) -> Offset {
        let rtt = received.saturating_sub(sent).max(0);
        Offset {
            offset_ms: peer.saturating_sub(sent.saturating_add(rtt / 2)),
            rtt_ms: rtt,
        }
    }

    /// Whether a person should be told about it.
    pub fn is_skewed(self) -> bool {
        self.offset_ms.abs() > SKEW_LIMIT_MS
    }
}

fn encode(time: i64) -> [u8; MESSAGE_LEN] {
    let mut out = [0u8; MESSAGE_LEN];
    out[0] = VERSION;
    out[1..].copy_from_slice(&time.to_be_bytes());
    out
}

fn decode(bytes: &[u8; MESSAGE_LEN]) -> Option<i64> {
    if bytes[0] != VERSION {
        return None;
    }
    let mut time = [0u8; 8];
    time.copy_from_slice(&bytes[1..]);
    Some(i64::from_be_bytes(time))
}

/// The offsets learned, kept in the store so that a command run while the peer is away
/// still knows them.
#[derive(Clone, Debug)]
pub struct Clocks {
    store: Arc<Store>,
    known: Arc<Mutex<HashMap<DeviceId, Offset>>>,
    /// Peers asked since this node started (whether they answered or not), and a counter
    /// that moves on each, to wait on.
    asked: Arc<Mutex<HashSet<DeviceId>>>,
    progress: tokio::sync::watch::Sender<u64>,
}

impl Clocks {
    pub fn new(store: Arc<Store>) -> Clocks {
        Clocks {
            store,
            known: Arc::default(),
            asked: Arc::default(),
            progress: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether the peer's clock was asked for since this node started.
    pub fn asked(&self, peer: &DeviceId) -> bool {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    /// Changes whenever a peer has been asked.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn mark_asked(&self, peer: DeviceId) {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);
        self.progress.send_modify(|n| *n += 1);
    }

    /// The last measured offset of a peer's clock, if any.
    pub fn get(&self, peer: &DeviceId) -> Option<Offset> {
        if let Some(o) = self.lock().get(peer) {
            return Some(*o);
        }
        let bytes = self
            .store
            .meta(&format!("{META_PREFIX}{peer}"))
            .ok()
            .flatten()?;
        let offset: Offset = serde_json::from_slice(&bytes).ok()?;
        self.lock().insert(*peer, offset);
        Some(offset)
    }

    pub(crate) fn set(&self, peer: DeviceId, offset: Offset) {
        self.lock().insert(peer, offset);
        if let Ok(bytes) = serde_json::to_vec(&offset)
            && let Err(e) = self.store.set_meta(&format!("{META_PREFIX}{peer}"), &bytes)
        {
            tracing::debug!("cannot keep the clock offset of {peer}: {e}");
        }
    }

    /// The time now by a peer's clock, as well as this device can tell.
    pub fn now_at(&self, peer: &DeviceId) -> i64 {
        now_millis().saturating_add(self.get(peer).map_or(0, |o| o.offset_ms))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Offset>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot reach the peer: {0}")]
    Unreachable(String),
    #[error("the clock exchange failed: {0}")]
    Failed(String),
    #[error("the peer answered with something else than its time")]
    BadAnswer,
    #[error("the peer did not answer in time")]
    TimedOut,
}

/// Asks a peer for its time once and measures the offset.
pub async fn exchange(endpoint: &Endpoint, peer: EndpointAddr) -> Result<Offset, ExchangeError> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let conn = endpoint
            .connect(peer, CLOCK_ALPN)
            .await
            .map_err(|e| ExchangeError::Unreachable(e.to_string()))?;
        let failed = |e: &dyn std::fmt::Display| ExchangeError::Failed(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
        let sent = now_millis();
        send.write_all(&encode(sent))
            .await
            .map_err(|e| failed(&e))?;
        let _ = send.finish();
        let mut answer = [0u8; MESSAGE_LEN];
        recv.read_exact(&mut answer).await.map_err(|e| failed(&e))?;
        let received = now_millis();
        conn.close(VarInt::from_u32(0), b"done");
        let peer_time = decode(&answer).ok_or(ExchangeError::BadAnswer)?;
        Ok(Offset::measure(sent, peer_time, received))
    })
    .await
    .map_err(|_| ExchangeError::TimedOut)?
}

/// Measures a peer's clock once (it just connected), keeps the offset, and reports a skew.
pub(crate) fn measure_in_background(
    endpoint: Endpoint,
    peer: EndpointAddr,
    clocks: Clocks,
    events: tokio::sync::broadcast::Sender<NodeEvent>,
) {
    tokio::spawn(async move {
        let id = peer.id;
        match exchange(&endpoint, peer).await {
            Ok(offset) => {
                clocks.set(id, offset);
                if offset.is_skewed() {
                    let _ = events.send(NodeEvent::ClockSkew {
                        peer: id.to_string(),
                        offset_ms: offset.offset_ms,
                    });
                }
            }
            Err(e) => tracing::debug!(peer = %id, "cannot measure the clock: {e}"),
        }
        clocks.mark_asked(id);
    });
}

/// Answers members' clock requests.
#[derive(Clone, Debug)]
pub struct ClockServer {
    gate: Arc<dyn Gate>,
}

impl ClockServer {
    pub fn new(gate: Arc<dyn Gate>) -> Self {
        ClockServer { gate }
    }
}

impl ProtocolHandler for ClockServer {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if !self.gate.allows(&connection.remote_id()) {
            connection.close(VarInt::from_u32(1), b"not a member of this space");
            return Ok(());
        }
        let answered = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let (mut send, mut recv) = connection.accept_bi().await.ok()?;
            let mut request = [0u8; MESSAGE_LEN];
            recv.read_exact(&mut request).await.ok()?;
            decode(&request)?;
            send.write_all(&encode(now_millis())).await.ok()?;
            send.finish().ok()?;
            // The asker closes once it has read the answer.
            connection.closed().await;
            Some(())
        })
        .await;
        if !matches!(answered, Ok(Some(()))) {
            connection.close(VarInt::from_u32(2), b"bad clock request");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_midpoint_of_the_round_trip() {
        // The peer is two hours ahead; the answer took 40 ms there and back.
        let o = Offset::measure(1_000, 7_200_000 + 1_020, 1_040);
        assert_eq!(
            o,
            Offset {
                offset_ms: 7_200_000,
                rtt_ms: 40
            }
        );
        assert!(o.is_skewed());
        // An hour behind.
        let o = Offset::measure(10_000, 10_000 - 3_600_000, 10_002);
        assert_eq!(o.offset_ms, -3_600_001);
        assert!(o.is_skewed());
        // Within a minute is not worth a word.
        assert!(!Offset::measure(0, 59_000, 10).is_skewed());
        // A clock that went backwards during the exchange gives no negative round trip.
        assert_eq!(Offset::measure(100, 50, 90).rtt_ms, 0);
        // Extreme values from a peer do not overflow.
        let _ = Offset::measure(i64::MIN, i64::MAX, i64::MAX);
    }

    #[test]
    fn only_a_versioned_time_is_read() {
        assert_eq!(decode(&encode(-5)), Some(-5));
        let mut other = encode(5);
        other[0] = 2;
        assert_eq!(decode(&other), None);
    }
}
