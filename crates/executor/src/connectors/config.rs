//! `connectors.toml`: which MCP servers the executor may use, and the rule for each of their
//! tools. Pure: parsing and decisions, no IO but reading the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Decision;

/// A commented example, parsed in a test so it stays valid. The README shows a ready-made one
/// for the filesystem server and the browser.
pub const EXAMPLE: &str = r#"# errand connectors: MCP servers the desktop may use. Each table is one connector; its
# tools are offered to the model as NAME__TOOL and can be called directly with
# `/mcp NAME TOOL {"arg": ...}`.

# A local server, started as a child process (and started again if it dies).
[files]
command = "node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/home/me/Documents"]
env = { NODE_OPTIONS = "--max-old-space-size=256" }
# How long starting the server, or one call, may take. Default 60.
timeout_secs = 60

# Optional: allow, ask or deny per tool. Without an entry, a tool the server marks read-only is
# allowed and any other asks on the phone first; deny hides the tool from the model.
[files.tools]
write_file = "ask"
move_file = "deny"

# A remote server, over streamable HTTP.
[tracker]
url = "http://127.0.0.1:8931/mcp"
"#;

/// The default for `timeout_secs`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Tools that run arbitrary code in the browser (Playwright's MCP server): denied unless the
/// connector's `[NAME.tools]` table says otherwise, whatever the server claims about them.
pub const ARBITRARY_CODE_TOOLS: &[&str] = &["browser_run_code_unsafe", "browser_evaluate"];

/// The separator between connector and tool in the names the model sees. Connector names
/// cannot contain it, so the first occurrence splits the name unambiguously.
pub const SEPARATOR: &str = "__";

/// The longest connector name: `NAME__TOOL` must stay within the 64 characters model APIs
/// accept for a tool name.
const MAX_NAME: usize = 24;

/// Where a connector's server runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// A child process speaking MCP on its stdin and stdout.
    Local {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A server reached over streamable HTTP.
    Remote { url: String },
}

/// One connector as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorConfig {
    pub name: String,
    pub server: Server,
    pub timeout: Duration,
    /// Explicit rules per tool name.
    pub tools: BTreeMap<String, Decision>,
}

impl ConnectorConfig {
    /// The rule for one of this connector's tools. An explicit entry wins; otherwise tools that
    /// run arbitrary code are denied, tools the server marks read-only are allowed, and any
    /// other asks. The read-only mark is the server's own claim: a server the user does not
    /// trust should get explicit entries.
    pub fn decision(&self, tool: &str, read_only: bool) -> Decision {
        if let Some(decision) = self.tools.get(tool) {
            *decision
        } else if ARBITRARY_CODE_TOOLS.contains(&tool) {
            Decision::Deny
        } else if read_only {
            Decision::Allow
        } else {
            Decision::Ask
        }
    }
}

/// The table of one connector as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    tools: BTreeMap<String, Decision>,
}

/// Why `connectors.toml` cannot be used. Like the policy, it is never guessed around: the
/// executor does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorsError {
    #[error("cannot read connectors file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connectors file {}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// Reads the connectors file; a missing file means no connectors.
pub fn load(path: &Path) -> Result<Vec<ConnectorConfig>, ConnectorsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ConnectorsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses connectors text; `origin` names the file in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<ConnectorConfig>, ConnectorsError> {
    let invalid = |line: Option<usize>, message: String| ConnectorsError::Invalid {
        path: origin.to_owned(),
        line,
        // toml messages can span lines; the error is one line.
        message: message.trim().replace('\n', "; "),
    };
    let tables: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            invalid(
                e.span().map(|s| line_of(text, s.start)),
                e.message().to_owned(),
            )
        })?;
    let mut connectors = Vec::new();
    for (name, value) in tables {
        let line = Some(line_of(text, value.span().start));
        let bad = |message: String| invalid(line, format!("[{name}]: {message}"));
        check_name(&name).map_err(|m| invalid(line, m))?;
        let entry: Entry = value
            .into_inner()
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_owned()))?;
        let server = match (entry.command, entry.url) {
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err(bad("`command` must not be empty".into()));
                }
                Server::Local {
                    command,
                    args: entry.args,
                    env: entry.env,
                }
            }
            (None, Some(url)) => {
                if !entry.args.is_empty() || !entry.env.is_empty() {
                    return Err(bad(
                        "`args` and `env` are for local servers (`command`), not `url`".into(),
                    ));
                }
                if !crate::command::is_http_url(&url) {
                    return Err(bad(format!("`url` must be an http(s) URL, not {url:?}")));
                }
                Server::Remote { url }
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give either `command` (a local server) or `url` (a remote one), not both"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "needs `command` (a local server) or `url` (a remote one)".into(),
                ));
            }
        };
        let timeout = match entry.timeout_secs {
            Some(0) => return Err(bad("`timeout_secs` must be at least 1".into())),
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_TIMEOUT,
        };
        connectors.push(ConnectorConfig {
            name,
            server,
            timeout,
            tools: entry.tools,
        });
    }
    Ok(connectors)
}

/// Connector names end up in tool names the model APIs restrict to `[A-Za-z0-9_-]`, with the
/// separator reserved.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.contains(SEPARATOR)
        && !name.ends_with('_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "connector name {name:?} must be 1 to {MAX_NAME} letters, digits, `-` or `_` \
             (no `{SEPARATOR}`, not ending in `_`)"
        ))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The name the model sees for a connector's tool, if it fits the model APIs' rules.
pub fn model_tool_name(connector: &str, tool: &str) -> Option<String> {
    let name = format!("{connector}{SEPARATOR}{tool}");
    let fits = name.len() <= 64
        && !tool.is_empty()
        && tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    fits.then_some(name)
}

/// Splits a model tool name into connector and tool, if it names a connector tool.
pub fn split_model_tool_name(name: &str) -> Option<(&str, &str)> {
    let (connector, tool) = name.split_once(SEPARATOR)?;
    (!connector.is_empty() && !tool.is_empty()).then_some((connector, tool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<ConnectorConfig>, String> {
        parse(text, Path::new("/h/connectors.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn example_parses() {
        let connectors = parse_text(EXAMPLE).expect("example");
        assert_eq!(connectors.len(), 2);
        let files = &connectors[0];
        assert_eq!(files.name, "files");
        assert!(matches!(&files.server, Server::Local { command, args, env }
            if command == "node" && args.len() == 2 && env.len() == 1));
        assert_eq!(files.timeout, Duration::from_secs(60));
        assert_eq!(files.tools.get("move_file"), Some(&Decision::Deny));
        assert_eq!(
            connectors[1].server,
            Server::Remote {
                url: "http://127.0.0.1:8931/mcp".into()
            }
        );
    }

    #[test]
    fn decisions_follow_entries_then_marks() {
        let c = &parse_text(
            "[b]\ncommand = \"x\"\n[b.tools]\nbrowser_evaluate = \"allow\"\nsnap = \"deny\"\n",
        )
        .expect("parses")[0];
        assert_eq!(c.decision("snap", true), Decision::Deny);
        assert_eq!(c.decision("browser_evaluate", false), Decision::Allow);
        assert_eq!(c.decision("browser_run_code_unsafe", true), Decision::Deny);
        assert_eq!(c.decision("read_file", true), Decision::Allow);
        assert_eq!(c.decision("write_file", false), Decision::Ask);
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let cases = [
            (
                "[a]\ncommand = \"x\"\nurl = \"http://h\"\n",
                "line 1",
                "not both",
            ),
            ("[a]\nargs = []\n", "line 1", "needs `command`"),
            (
                "\n[a]\ncommand = \"x\"\ncomand = 1\n",
                "line 2",
                "unknown field",
            ),
            ("[a__b]\ncommand = \"x\"\n", "line 1", "connector name"),
            ("[a]\nurl = \"file:///x\"\n", "line 1", "http(s)"),
            (
                "[a]\ncommand = \"x\"\ntimeout_secs = 0\n",
                "line 1",
                "at least 1",
            ),
            (
                "[a]\ncommand = \"x\"\n[a.tools]\nw = \"maybe\"\n",
                "line 1",
                "unknown variant",
            ),
            ("[a\ncommand = \"x\"\n", "line 1", ""),
        ];
        for (text, line, message) in cases {
            let error = parse_text(text).expect_err(text);
            assert!(
                error.starts_with("connectors file /h/connectors.toml, ")
                    && error.contains(line)
                    && error.contains(message)
                    && !error.contains('\n'),
                "{text:?}: {error}"
            );
        }
        assert!(parse_text("").expect("empty").is_empty());
    }

    #[test]
    fn model_names_round_trip_and_stay_within_limits() {
        assert_eq!(
            model_tool_name("files", "read_file").as_deref(),
            Some("files__read_file")
        );
        assert_eq!(
            split_model_tool_name("files__read__x"),
            Some(("files", "read__x"))
        );
        assert_eq!(split_model_tool_name("read"), None);
        assert_eq!(split_model_tool_name("__x"), None);
        assert_eq!(model_tool_name("files", "has space"), None);
        assert_eq!(model_tool_name("files", &"x".repeat(60)), None);
    }
}
