//! errand-executor: runs tasks on the desktop with local tools, under a policy, asking the phone
//! before risky actions.
//!
//! - [`action`]: what can be done, and the risk classes the policy rules on.
//! - [`connectors`]: MCP servers (connectors.toml, their tools' rules, the client shell).
//! - [`command`]: direct commands (`/sh`, `/read`, ...) parsed into actions.
//! - [`policy`]: the policy file, path resolution, and allow/ask/deny decisions (no IO but
//!   path resolution).
//! - [`tools`]: the tools themselves (shell, files, fetch, screen, input).
//! - [`model`], [`agent`]: model backends and the bounded tool-calling loop.
//! - [`conversation`]: what the model is told of a thread's earlier turns (pure).
//! - [`runner`]: the tokio shell that watches documents and runs tasks.
//!
//! This is the only crate that touches the OS: processes, the screen, input, user files.

pub mod action;
pub mod agent;
pub mod command;
pub mod connectors;
pub mod conversation;
pub mod model;
pub mod notify;
pub mod policy;
pub mod runner;
pub mod scheduler;
pub mod tools;
