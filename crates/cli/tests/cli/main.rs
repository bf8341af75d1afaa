//! End-to-end tests of the `errand` command line: real processes, real homes in temp dirs,
//! real iroh endpoints on 127.0.0.1. Each test uses its own homes, so they run in parallel.

mod attacks;
mod connectors;
mod conversation;
mod daemon;
mod devices;
mod durability;
mod errors;
mod executor;
mod history;
mod membership;
mod notify;
mod offline;
mod pairing;
mod presence;
mod reach;
mod refusals;
mod schedules;
mod stops;
mod support;
