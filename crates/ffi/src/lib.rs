//! errand-ffi: the uniffi surface through which mobile apps embed errand.
//!
//! This is the only crate that depends on uniffi. It is a boundary: it converts the node's
//! types into its own records and enums ([`records`]), the node's errors into one small flat
//! enum ([`ErrandError`]), and the node's event stream into calls on a foreign listener
//! ([`events`]). The bindings in `mobile-bindings/` are generated from the built library by
//! `scripts/bindings` (uniffi library mode, proc-macros only, no UDL).
//!
//! Every method runs its work on one runtime owned by this library (`runtime`), so the
//! node's background tasks (sync, pairing, events) keep running between calls whatever the
//! foreign language's own event loop does.

uniffi::setup_scaffolding!();

pub mod error;
pub mod events;
pub mod node;
pub mod records;
mod runtime;

pub use error::{ErrandError, ListenerError};
pub use events::{NodeEvent, NodeListener, Subscription};
pub use node::Node;
pub use records::*;
