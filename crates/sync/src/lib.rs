//! errand-sync: the document model, the redb store and replication over iroh.
//!
//! - [`schema`]: what the index and thread documents hold (plain functions, no IO).
//! - [`store`]: the redb database of one device home.
//! - [`repo`]: the loaded documents, durable changes, merges from peers, change notifications.
//! - [`wire`]: bounded length-prefixed frames.
//! - [`net`]: the `errand/sync/1` protocol handler and the dialler (the tokio shell).

pub mod blob;
pub mod ids;
pub mod net;
pub mod repo;
pub mod schema;
pub mod store;
pub mod wire;

pub use ids::{DeviceId, Role, SpaceId};
pub use net::{Gate, NetEvent, Replicator, SYNC_ALPN};
pub use repo::{DocChanged, Repo};
pub use schema::DocId;
pub use store::Store;
