//! errand-sync: the document model, the redb store and replication over iroh.
//!
//! - [`authorship`]: every change signed by its author, and checked before it is applied.
//! - [`schema`]: what the index and thread documents hold (plain functions, no IO).
//! - [`store`]: the redb database of one device home.
//! - [`repo`]: the loaded documents, durable changes, merges from peers, change notifications.
//! - [`limits`]: the bounds on peer input, checked before automerge decodes it.
//! - [`wire`]: bounded length-prefixed frames.
//! - [`replication`]: the sans-IO replication core (sessions, digests, redial).
//! - [`net`]: the `errand/sync/5` protocol handler and the dialler, the tokio driver of the core.

pub mod authorship;
pub mod blob;
pub mod ids;
pub mod limits;
pub mod net;
pub mod quota;
pub mod replication;
pub mod repo;
pub mod schema;
pub mod store;
pub mod wire;

pub use authorship::{Authors, Standing};
pub use ids::{DeviceId, Role, SpaceId};
pub use net::{Gate, NetEvent, Replicator, SYNC_ALPN};
pub use repo::{DocChanged, Repo};
pub use schema::DocId;
pub use store::Store;
