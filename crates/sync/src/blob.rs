//! `errand/blob/1`: fetching large outputs (screenshots, files) on demand.
//!
//! Documents hold only a blob's hash, size and type; the bytes stay on the device that made
//! them until someone asks. A request is one frame holding the hex SHA-256; the answer is one
//! frame: `0` then the bytes, or `1` then a reason. The fetcher checks the hash, so a peer can
//! serve nothing but the exact bytes asked for.

use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};

use crate::net::Gate;
use crate::store::{Store, blob_hash};
use crate::wire;

/// The ALPN of the blob protocol.
pub const BLOB_ALPN: &[u8] = b"errand/blob/1";
const FOUND: u8 = 0;
const MISSING: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not a blob hash (64 hex digits)")]
    BadHash(String),
    #[error("cannot reach the device: {0}")]
    Unreachable(String),
    #[error("the device does not have blob {0}")]
    Missing(String),
    #[error("the device sent bytes that do not match the hash")]
    Corrupt,
    #[error("blob transfer failed: {0}")]
    Transfer(String),
}

/// Serves this device's blobs to members.
#[derive(Debug, Clone)]
pub struct BlobServer {
    store: Arc<Store>,
    gate: Arc<dyn Gate>,
}

impl BlobServer {
    pub fn new(store: Arc<Store>, gate: Arc<dyn Gate>) -> Self {
        BlobServer { store, gate }
    }

    async fn serve(&self, conn: &Connection) -> Result<(), String> {
        loop {
            let (mut send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let request = wire::read_frame(&mut recv, 128)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no request")?;
            let hash = String::from_utf8(request).map_err(|_| "bad request")?;
            let answer = match valid_hash(&hash).then(|| self.store.blob(&hash)) {
                Some(Ok(Some(bytes))) => [&[FOUND][..], &bytes].concat(),
                Some(Ok(None)) => [&[MISSING][..], b"not found"].concat(),
                Some(Err(e)) => [&[MISSING][..], e.to_string().as_bytes()].concat(),
                None => [&[MISSING][..], b"not a hash"].concat(),
            };
            wire::write_frame(&mut send, &answer)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
        }
    }
}

impl ProtocolHandler for BlobServer {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if !self.gate.allows(&connection.remote_id()) {
            connection.close(VarInt::from_u32(1), b"not a member of this space");
            return Ok(());
        }
        if let Err(e) = self.serve(&connection).await {
            tracing::debug!("blob request failed: {e}");
        }
        Ok(())
    }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches a blob from a peer and checks it against its hash.
pub async fn fetch(
    endpoint: &Endpoint,
    peer: EndpointAddr,
    hash: &str,
) -> Result<Vec<u8>, FetchError> {
    if !valid_hash(hash) {
        return Err(FetchError::BadHash(hash.to_owned()));
    }
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(peer, BLOB_ALPN))
        .await
        .map_err(|_| FetchError::Unreachable("timed out".into()))?
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
    let transfer = |e: wire::FrameError| FetchError::Transfer(e.to_string());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
    wire::write_frame(&mut send, hash.as_bytes())
        .await
        .map_err(transfer)?;
    let answer = wire::read_frame(&mut recv, wire::MAX_FRAME)
        .await
        .map_err(transfer)?
        .ok_or_else(|| FetchError::Transfer("no answer".into()))?;
    conn.close(VarInt::from_u32(0), b"done");
    match answer.split_first() {
        Some((&FOUND, bytes)) if blob_hash(bytes) == hash => Ok(bytes.to_vec()),
        Some((&FOUND, _)) => Err(FetchError::Corrupt),
        _ => Err(FetchError::Missing(hash.to_owned())),
    }
}
