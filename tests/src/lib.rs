//! Cross-crate tests of errand, with real parts: iroh endpoints on 127.0.0.1 with relays off,
//! redb files in temporary homes, and whole nodes as the command line and the mobile bindings
//! use them. The command line's own end-to-end tests (separate processes) live in crates/cli.
//!
//! The benchmark binary, `errand-bench`, lives beside this in `src/bin`.

pub mod hostile;
pub mod members;
pub mod model_server;
pub mod ntfy;

#[cfg(test)]
mod approvals;
#[cfg(test)]
mod convergence;
#[cfg(test)]
mod durability;
#[cfg(test)]
mod executor;
#[cfg(test)]
mod hostile_member;
#[cfg(test)]
mod malformed;
#[cfg(test)]
mod scale;
#[cfg(test)]
mod schedules;
#[cfg(test)]
mod support;
#[cfg(test)]
mod trust;
