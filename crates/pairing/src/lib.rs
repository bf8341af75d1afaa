//! errand-pairing: device identity, pairing tickets and signed space membership.

pub mod authors;
pub mod identity;
pub mod membership;
pub mod proof;
pub mod protocol;
pub mod qr;
pub mod ticket;
pub mod trust;

pub use protocol::{PAIR_ALPN, PairingEvent, PairingHost};
pub use ticket::Ticket;
pub use trust::{MembershipGate, TrustHooks};
