//! Connectors: MCP servers whose tools the executor uses, through the official Rust SDK
//! (`rmcp`). This file is the tokio shell: it starts each server (a child process or a remote
//! URL) when first needed, lists its tools, calls them under a time limit, and starts a server
//! again when it has died. What the file says ([`config`]) and what crosses the wire
//! ([`content`]) are plain data, decided on without IO.
//!
//! A connector's failure is one tool call's failure: a server that will not start, crashes,
//! hangs or answers garbage ends that call with a one-line reason, and nothing else stops.
//! Every call goes through the runner, which applies [`ConnectorConfig::decision`] (allow, ask
//! through the signed approvals, or deny) before [`Connectors::call`] runs it.

pub mod config;
pub mod content;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::action::ToolOutput;
use crate::model::ToolSpec;
use crate::policy::Decision;
pub use config::{ConnectorConfig, ConnectorsError, Server};
use content::{ResultError, ToolInfo};

/// How much of a server's stderr is kept, to say why it died.
const STDERR_TAIL: usize = 2048;

/// Why a connector call did not produce a result. Every message is one line, naming the
/// connector, for the phone and the model alike.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("there is no connector {name:?} (configured: {known})")]
    Unknown { name: String, known: String },
    #[error("connector {connector} has no tool {tool:?} (it has: {known})")]
    UnknownTool {
        connector: String,
        tool: String,
        known: String,
    },
    #[error("the arguments of {connector} {tool} must be a JSON object, not {given}")]
    BadArguments {
        connector: String,
        tool: String,
        given: String,
    },
    #[error("connector {connector} did not start: {reason}")]
    Start { connector: String, reason: String },
    #[error(
        "connector {connector} gave no valid answer within {secs} s ({what}); it was stopped and starts again on next use"
    )]
    TimedOut {
        connector: String,
        what: &'static str,
        secs: u64,
    },
    #[error("connector {connector} stopped during the call{detail}; it starts again on next use")]
    Stopped { connector: String, detail: String },
    #[error("connector {connector} answered something that is not a tool result: {detail}")]
    Protocol { connector: String, detail: String },
    #[error("{connector} {tool} failed: {reason}")]
    ToolFailed {
        connector: String,
        tool: String,
        reason: String,
    },
    #[error("cancelled")]
    Cancelled,
}

/// A call checked against the connector's rules, ready to be asked about or run.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub decision: Decision,
    /// The approval text: connector, tool and arguments.
    pub description: String,
    pub arguments: Map<String, Value>,
}

/// The connectors of one executor.
pub struct Connectors {
    entries: Vec<Entry>,
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.config.name))
            .finish()
    }
}

struct Entry {
    config: ConnectorConfig,
    workdir: PathBuf,
    /// The environment a local server starts with, before its own `env` table.
    base_env: Arc<Vec<(OsString, OsString)>>,
    /// The running server, if any. Held across a start, so concurrent users share one start.
    live: tokio::sync::Mutex<Option<Live>>,
}

struct Live {
    service: RunningService<RoleClient, ()>,
    tools: Arc<Vec<ToolInfo>>,
    /// The process group of a local server (its leader's pid), killed as a whole so that
    /// helpers it started (a browser) go with it.
    group: Option<u32>,
    stderr: Stderr,
}

/// A server's stderr as it is read: its last bytes, and whether it has ended.
#[derive(Clone)]
struct Stderr {
    tail: Arc<StdMutex<String>>,
    ended: CancellationToken,
}

impl Stderr {
    fn new() -> Stderr {
        Stderr {
            tail: Arc::default(),
            ended: CancellationToken::new(),
        }
    }

    /// The last line it wrote, once it has been read to its end: a server that died has
    /// usually just said why, and the reader may not have caught up yet. A helper process that
    /// keeps the pipe open does not hold this up for long.
    async fn last_words(&self) -> Option<String> {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.ended.cancelled()).await;
        tail_line(&lock(&self.tail))
    }
}

impl Connectors {
    /// No connectors.
    pub fn none() -> Connectors {
        Connectors {
            entries: Vec::new(),
        }
    }

    /// Connectors as configured; local servers run in `workdir` (the workspace) with `env`
    /// (the policy's [`crate::policy::Policy::child_env`], what a shell command gets) and then
    /// their own `env` table, nothing else of the executor's environment. Nothing starts until
    /// [`Connectors::warm_up`] or the first use.
    pub fn new(
        configs: Vec<ConnectorConfig>,
        workdir: PathBuf,
        env: Vec<(OsString, OsString)>,
    ) -> Connectors {
        let base_env = Arc::new(env);
        Connectors {
            entries: configs
                .into_iter()
                .map(|config| Entry {
                    config,
                    workdir: workdir.clone(),
                    base_env: base_env.clone(),
                    live: tokio::sync::Mutex::new(None),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts every server in the background, so that the first task does not wait for it.
    /// A server that fails here is tried again when a task needs it.
    pub fn warm_up(self: &Arc<Self>) {
        for index in 0..self.entries.len() {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.entries[index].running().await {
                    warn!("{e}");
                }
            });
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry, ConnectorError> {
        self.entries
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| ConnectorError::Unknown {
                name: name.to_owned(),
                known: names(self.entries.iter().map(|e| e.config.name.as_str())),
            })
    }

    /// The tools offered to the model: every connector's tools that its rules do not deny. A
    /// connector that cannot be reached is left out, with a line saying why.
    pub async fn model_tools(&self) -> (Vec<ToolSpec>, Vec<String>) {
        let mut specs = Vec::new();
        let mut problems = Vec::new();
        for entry in &self.entries {
            match entry.running().await {
                Ok((_, tools)) => specs.extend(
                    tools
                        .iter()
                        .filter(|t| entry.config.decision(&t.name, t.read_only) != Decision::Deny)
                        .filter_map(|t| t.spec(&entry.config.name)),
                ),
                Err(e) => problems.push(e.to_string()),
            }
        }
        (specs, problems)
    }

    /// Checks a call against the connector's rules: the connector and tool exist (starting the
    /// server if needed, to know its tools) and the arguments are an object.
    pub async fn prepare(
        &self,
        connector: &str,
        tool: &str,
        arguments: &Value,
    ) -> Result<Prepared, ConnectorError> {
        let entry = self.entry(connector)?;
        let arguments = object(connector, tool, arguments)?;
        let (_, tools) = entry.running().await?;
        let info =
            tools
                .iter()
                .find(|t| t.name == tool)
                .ok_or_else(|| ConnectorError::UnknownTool {
                    connector: connector.to_owned(),
                    tool: tool.to_owned(),
                    known: names(tools.iter().map(|t| t.name.as_str())),
                })?;
        Ok(Prepared {
            decision: entry.config.decision(tool, info.read_only),
            description: content::describe_call(connector, tool, &Value::Object(arguments.clone())),
            arguments,
        })
    }

    /// Calls a tool (already prepared and, if needed, approved) under the connector's time
    /// limit. A server that does not answer in time is stopped.
    pub async fn call(
        &self,
        connector: &str,
        tool: &str,
        arguments: Value,
        cancel: &CancellationToken,
    ) -> Result<ToolOutput, ConnectorError> {
        let entry = self.entry(connector)?;
        let arguments = object(connector, tool, &arguments)?;
        let (peer, _) = entry.running().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments);
        let limit = entry.config.timeout;
        let answer = tokio::select! {
            a = tokio::time::timeout(limit, peer.call_tool(params)) => a,
            _ = cancel.cancelled() => return Err(ConnectorError::Cancelled),
        };
        let name = || connector.to_owned();
        let result = match answer {
            Err(_) => {
                entry.stop().await;
                return Err(ConnectorError::TimedOut {
                    connector: name(),
                    what: "the tool call",
                    secs: limit.as_secs(),
                });
            }
            Ok(Err(ServiceError::McpError(e))) => {
                return Err(ConnectorError::ToolFailed {
                    connector: name(),
                    tool: tool.to_owned(),
                    reason: one_line(&e.message),
                });
            }
            Ok(Err(ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                return Err(ConnectorError::Stopped {
                    connector: name(),
                    detail: entry.died().await,
                });
            }
            Ok(Err(other)) => {
                return Err(ConnectorError::Protocol {
                    connector: name(),
                    detail: one_line(&other.to_string()),
                });
            }
            Ok(Ok(result)) => result,
        };
        let json = serde_json::to_value(&result).map_err(|e| ConnectorError::Protocol {
            connector: name(),
            detail: e.to_string(),
        })?;
        content::output_from_result(connector, tool, &json).map_err(
            |ResultError::ToolFailed(reason)| ConnectorError::ToolFailed {
                connector: name(),
                tool: tool.to_owned(),
                reason,
            },
        )
    }

    /// Stops every server (with its process group).
    pub async fn shutdown(&self) {
        for entry in &self.entries {
            entry.stop().await;
        }
    }
}

impl Entry {
    /// The running server, started (again) if it is not running.
    async fn running(&self) -> Result<(Peer<RoleClient>, Arc<Vec<ToolInfo>>), ConnectorError> {
        let mut live = self.live.lock().await;
        if let Some(running) = live.as_ref() {
            if !running.service.is_closed() {
                return Ok((running.service.peer().clone(), running.tools.clone()));
            }
            info!(connector = %self.config.name, "the server has stopped; starting it again");
            // The leader has exited, so its group id may belong to someone else by now: the
            // SDK's own clean-up reaps it; nothing here is killed.
            *live = None;
        }
        let group = Arc::new(StdMutex::new(None));
        let stderr = Stderr::new();
        let limit = self.config.timeout;
        let started = tokio::time::timeout(limit, self.start(&group, &stderr)).await;
        let started = match started {
            Ok(started) => started,
            Err(_) => {
                let pgid = *lock(&group);
                if let Some(pgid) = pgid {
                    crate::tools::shell::kill_process_group(pgid).await;
                }
                return Err(ConnectorError::TimedOut {
                    connector: self.config.name.clone(),
                    what: "starting",
                    secs: limit.as_secs(),
                });
            }
        };
        let (service, tools) = match started {
            Ok(started) => started,
            Err(reason) => {
                return Err(ConnectorError::Start {
                    connector: self.config.name.clone(),
                    reason: match stderr.last_words().await {
                        Some(words) => format!("{reason} (it said: {words})"),
                        None => reason,
                    },
                });
            }
        };
        let peer = service.peer().clone();
        let tools = Arc::new(tools);
        info!(connector = %self.config.name, tools = tools.len(), "connector ready");
        *live = Some(Live {
            service,
            tools: tools.clone(),
            group: *lock(&group),
            stderr,
        });
        Ok((peer, tools))
    }

    async fn start(
        &self,
        group: &StdMutex<Option<u32>>,
        stderr_tail: &Stderr,
    ) -> Result<(RunningService<RoleClient, ()>, Vec<ToolInfo>), String> {
        let service = match &self.config.server {
            Server::Local { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .current_dir(&self.workdir)
                    .process_group(0)
                    .kill_on_drop(true);
                // The cleaned environment, then what the connector's table sets (which wins).
                cmd.env_clear()
                    .envs(self.base_env.iter().map(|(k, v)| (k, v)))
                    .envs(env);
                let (process, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot run {command:?}: {e}"))?;
                *lock(group) = process.id();
                match stderr {
                    Some(stderr) => {
                        tokio::spawn(keep_tail(
                            self.config.name.clone(),
                            stderr,
                            stderr_tail.clone(),
                        ));
                    }
                    None => stderr_tail.ended.cancel(),
                }
                ().serve(process).await.map_err(|e| {
                    format!("the MCP handshake failed: {}", one_line(&e.to_string()))
                })?
            }
            Server::Remote { url } => {
                stderr_tail.ended.cancel();
                // Any installed provider will do; only the first install wins.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .connect_timeout(self.config.timeout)
                    .build()
                    .map_err(|e| format!("cannot set up HTTP: {e}"))?;
                let transport = StreamableHttpClientTransport::with_client(
                    client,
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()),
                );
                ().serve(transport)
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {}", one_line(&e.to_string())))?
            }
        };
        let listed = service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("cannot list its tools: {}", one_line(&e.to_string())))?;
        let tools = listed
            .iter()
            .filter_map(|tool| serde_json::to_value(tool).ok())
            .filter_map(|tool| ToolInfo::from_json(&tool))
            .collect();
        Ok((service, tools))
    }

    /// Stops the server, if it runs: its whole process group is killed while the leader is
    /// known to be alive (not yet reaped), so the group id is still its own.
    async fn stop(&self) {
        let Some(live) = self.live.lock().await.take() else {
            return;
        };
        if let Some(pgid) = live.group
            && !live.service.is_closed()
        {
            crate::tools::shell::kill_process_group(pgid).await;
        }
        live.service.cancellation_token().cancel();
    }

    /// Forgets a server that died (the next use starts it again) and returns what it last
    /// wrote on stderr, as a suffix for an error message. Its leader has exited, so nothing is
    /// killed: the group id may be someone else's by now.
    async fn died(&self) -> String {
        let live = self.live.lock().await.take();
        let Some(live) = live else {
            return String::new();
        };
        live.service.cancellation_token().cancel();
        let words = live.stderr.last_words().await;
        match words {
            Some(words) => format!(" (it said: {words})"),
            None => String::new(),
        }
    }
}

/// Reads a server's stderr to its end (so the server never blocks on a full pipe), logging it
/// and keeping its last bytes.
async fn keep_tail(connector: String, mut stderr: tokio::process::ChildStderr, sink: Stderr) {
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = String::from_utf8_lossy(&buf[..n]);
                debug!(%connector, "stderr: {}", chunk.trim_end());
                let mut tail = lock(&sink.tail);
                tail.push_str(&chunk);
                if tail.len() > STDERR_TAIL {
                    let mut cut = tail.len() - STDERR_TAIL;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
        }
    }
    sink.ended.cancel();
}

/// A call's arguments as the object MCP wants (none is an empty object).
fn object(
    connector: &str,
    tool: &str,
    arguments: &Value,
) -> Result<Map<String, Value>, ConnectorError> {
    match arguments {
        Value::Object(map) => Ok(map.clone()),
        Value::Null => Ok(Map::new()),
        other => Err(ConnectorError::BadArguments {
            connector: connector.to_owned(),
            tool: tool.to_owned(),
            given: model_truncate(&other.to_string()),
        }),
    }
}

/// The last non-empty line of some stderr, shortened.
fn tail_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(model_truncate(line.trim()))
}

fn model_truncate(text: &str) -> String {
    crate::model::truncate(text, 300)
}

fn one_line(text: &str) -> String {
    model_truncate(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
