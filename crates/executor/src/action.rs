//! The vocabulary shared by direct commands, the policy, the tools and the model loop.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing the executor can do. Direct commands (`/sh echo hi`) parse into these, and so do
/// the model's tool calls, so both go through the same policy checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
pub enum Action {
    /// Run a shell command (`sh -c`) in the workspace.
    Sh { command: String },
    /// List a directory.
    Ls { path: String },
    /// Read a text file.
    Read { path: String },
    /// Write a text file (creating it, or overwriting it).
    Write { path: String, text: String },
    /// Delete a file (or an empty directory).
    Rm { path: String },
    /// HTTP GET a URL.
    Fetch { url: String },
    /// Capture the screen as a PNG.
    Screenshot,
    /// Type text with the keyboard.
    Type { text: String },
    /// Press a key combination such as `ctrl+c` or `Return`.
    Key { combo: String },
    /// Click the left mouse button at screen coordinates.
    Click { x: i32, y: i32 },
    /// Call a tool of a connector (an MCP server); ruled on by `connectors.toml`, not by the
    /// risk classes (see [`crate::connectors`]).
    Mcp {
        connector: String,
        /// The tool's name on its server (`tool` is this enum's serde tag).
        name: String,
        arguments: serde_json::Value,
    },
}

/// The classes of risky actions that the policy rules on with allow, ask or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    Shell,
    /// Deleting a file, or overwriting one that exists.
    Delete,
    Network,
    Screenshot,
    Input,
}

impl ActionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::Shell => "shell",
            ActionClass::Delete => "delete",
            ActionClass::Network => "network",
            ActionClass::Screenshot => "screenshot",
            ActionClass::Input => "input",
        }
    }
}

impl fmt::Display for ActionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Action {
    /// How the action is described to the person asked to approve it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Sh { command } => write!(f, "run shell command `{command}`"),
            Action::Ls { path } => write!(f, "list {path}"),
            Action::Read { path } => write!(f, "read {path}"),
            Action::Write { path, text } => write!(f, "write {} bytes to {path}", text.len()),
            Action::Rm { path } => write!(f, "delete {path}"),
            Action::Fetch { url } => write!(f, "fetch {url}"),
            Action::Screenshot => write!(f, "take a screenshot"),
            Action::Type { text } => write!(f, "type {text:?}"),
            Action::Key { combo } => write!(f, "press {combo}"),
            Action::Click { x, y } => write!(f, "click at {x},{y}"),
            Action::Mcp {
                connector,
                name,
                arguments,
            } => f.write_str(&crate::connectors::content::describe_call(
                connector, name, arguments,
            )),
        }
    }
}

/// A large output that goes into the blob store rather than the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobOutput {
    pub name: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

/// What a tool produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolOutput {
    /// Text for the task's result (and for the model).
    pub text: String,
    pub blobs: Vec<BlobOutput>,
}

impl ToolOutput {
    pub fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            blobs: Vec::new(),
        }
    }
}
