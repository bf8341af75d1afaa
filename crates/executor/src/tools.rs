//! The tools the executor runs. Every function here trusts its caller to have checked the
//! action against the policy (paths resolved and allowed, approval granted): the checks live
//! in [`crate::policy`] and the runner, in one place, so no tool can be reached around them.

pub mod fetch;
pub mod fs;
pub mod input;
pub mod screen;
pub mod shell;

/// Why a tool failed. The message is what the task's error shows.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// No graphical display to capture or type into.
    #[error("no display: {0}")]
    NoDisplay(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    /// Cancelled after printing something; the output so far is kept with the task.
    #[error("cancelled")]
    CancelledWithOutput(String),
    #[error("timed out after {0} s")]
    TimedOut(u64),
}
