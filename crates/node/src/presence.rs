//! When this device last saw each other device: the moment a connection with it opened or
//! closed, or it was last heard from while connected. Kept in the store's metadata, so a
//! command run while a peer is away (or after a restart) still knows; a peer connected right
//! now is seen now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use errand_sync::schema::now_millis;
use errand_sync::{DeviceId, Store};

const META_PREFIX: &str = "last_seen/";
/// While connected, a peer's time is written at most this often (each write is a commit).
const WRITE_EVERY_MS: i64 = 60_000;

#[derive(Clone, Debug)]
pub struct Presence {
    store: Arc<Store>,
    /// Last seen, and last written to the store.
    known: Arc<Mutex<HashMap<DeviceId, (i64, i64)>>>,
}

impl Presence {
    pub fn new(store: Arc<Store>) -> Presence {
        Presence {
            store,
            known: Arc::default(),
        }
    }

    /// `peer` was seen just now. `always` writes it through (a connection opened or closed);
    /// otherwise at most once a minute.
    pub fn saw(&self, peer: DeviceId, always: bool) {
        let now = now_millis();
        let write = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let entry = known.entry(peer).or_insert((now, i64::MIN));
            entry.0 = now;
            let write = always || now.saturating_sub(entry.1) >= WRITE_EVERY_MS;
            if write {
                entry.1 = now;
            }
            write
        };
        if write
            && let Err(e) = self
                .store
                .set_meta(&format!("{META_PREFIX}{peer}"), now.to_string().as_bytes())
        {
            tracing::debug!("cannot keep when {peer} was last seen: {e}");
        }
    }

    /// When `peer` was last seen by this device, if ever.
    pub fn last_seen(&self, peer: &DeviceId) -> Option<i64> {
        if let Some((at, _)) = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
        {
            return Some(*at);
        }
        let bytes = self
            .store
            .meta(&format!("{META_PREFIX}{peer}"))
            .ok()
            .flatten()?;
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    }
}
