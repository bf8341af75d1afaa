//! errand-node: one device home opened for use.
//!
//! A [`Node`] owns the home's store and documents, its iroh endpoint, and the protocols served
//! on it (`errand/sync/5`, `errand/pair/1`). It offers the operations every front end needs
//! (send, list, pair, history, ...). The command line drives it either in-process or, while a
//! node already runs on the home, through the [`control`] socket; the mobile bindings embed it.

pub mod clock;
pub mod control;
pub mod error;
pub mod events;
pub mod home;
mod lan;
pub mod node;
pub mod presence;

pub use error::NodeError;
pub use events::NodeEvent;
pub use node::{Node, NodeConfig};
