//! The local control socket: how `errand` commands reach a running node on the same home.
//!
//! Only one process may open a home's database, so while a node runs, other commands send it
//! [`Request`]s over a Unix socket in the home (mode 0600, inside a 0700 home). One JSON request
//! per line; one JSON reply per line (`{"ok": ...}` or `{"error": "..."}`), except `watch`,
//! which streams events until the client hangs up. The same [`dispatch`] serves requests made
//! in-process when no node runs, so both paths behave alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use errand_sync::Role;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::error::NodeError;
use crate::node::Node;

pub const SOCKET_FILE: &str = "errand.sock";
/// Requests longer than this are refused.
const MAX_REQUEST: usize = 1024 * 1024;

/// Everything a command can ask of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Whether the node serves: it answers with its pid.
    Ping,
    Status,
    Init {
        name: Option<String>,
    },
    Ticket {
        ttl_secs: u64,
        auto_confirm: bool,
        /// The role the joiner gets.
        #[serde(default = "phone")]
        role: Role,
    },
    /// The `n`th pairing event of a ticket (0-based), waiting up to `timeout_secs`.
    PairingEvent {
        ticket: String,
        n: usize,
        timeout_secs: u64,
    },
    ConfirmPairing {
        ticket: String,
        accept: bool,
    },
    Join {
        ticket: String,
        name: Option<String>,
        /// The role the joiner expects, if it says (the ticket decides).
        #[serde(default)]
        role: Option<Role>,
    },
    Send {
        text: String,
        thread: Option<String>,
        to: Option<String>,
        wait_secs: u64,
    },
    Threads,
    Tasks {
        thread: Option<String>,
    },
    Show {
        task: String,
    },
    Cancel {
        task: String,
        wait_secs: u64,
    },
    Devices,
    Revoke {
        device: String,
    },
    Approvals {
        all: bool,
    },
    Decide {
        approval: String,
        approve: bool,
        wait_secs: u64,
    },
    /// A thread's conversation.
    Thread {
        thread: String,
    },
    Questions {
        all: bool,
    },
    Answer {
        question: String,
        text: String,
        wait_secs: u64,
    },
    /// An artifact's bytes, hex-encoded (they may be fetched from the device that made them).
    Artifact {
        hash: String,
        from: String,
    },
    History {
        doc: Option<String>,
        limit: Option<usize>,
    },
    At {
        heads: String,
        doc: Option<String>,
    },
    Sync {
        timeout_secs: u64,
    },
    Watch,
    NotifyAdd {
        url: String,
        events: Vec<String>,
        content: bool,
    },
    NotifyList,
    NotifyRemove {
        id: String,
    },
    ScheduleAdd {
        spec: crate::node::ScheduleSpec,
    },
    Schedules,
    SchedulePause {
        id: String,
        paused: bool,
    },
    ScheduleRemove {
        id: String,
    },
    Doctor {
        timeout_secs: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

fn phone() -> Role {
    Role::Phone
}

fn json<T: Serialize>(value: T) -> Result<serde_json::Value, NodeError> {
    serde_json::to_value(value).map_err(|e| NodeError::Control(e.to_string()))
}

/// Carries out one request on a node. `watch` is not handled here (it streams).
pub async fn dispatch(node: &Node, request: Request) -> Result<serde_json::Value, NodeError> {
    match request {
        Request::Ping => json(std::process::id()),
        Request::Status => json(node.status()?),
        Request::Init { name } => json(node.init_space(name.as_deref())?.to_string()),
        Request::Ticket {
            ttl_secs,
            auto_confirm,
            role,
        } => json(node.create_ticket(Duration::from_secs(ttl_secs), auto_confirm, role)?),
        Request::PairingEvent {
            ticket,
            n,
            timeout_secs,
        } => json(
            node.pairing_event(&ticket, n, Duration::from_secs(timeout_secs))
                .await?,
        ),
        Request::ConfirmPairing { ticket, accept } => json(node.confirm_pairing(&ticket, accept)?),
        Request::Join { ticket, name, role } => {
            json(node.join(&ticket, name.as_deref(), role).await?)
        }
        Request::Send {
            text,
            thread,
            to,
            wait_secs,
        } => {
            let mut sent = node.send(&text, thread.as_deref(), to.as_deref())?;
            if !sent.delivered && wait_secs > 0 {
                sent.delivered = node
                    .wait_delivered(&sent.target, &sent.thread, Duration::from_secs(wait_secs))
                    .await;
            }
            json(sent)
        }
        Request::Threads => json(node.threads()?),
        Request::NotifyAdd {
            url,
            events,
            content,
        } => json(node.notify_add(&url, &events, content)?),
        Request::NotifyList => json(node.notify_list()?),
        Request::NotifyRemove { id } => json(node.notify_remove(&id)?),
        Request::ScheduleAdd { spec } => json(node.schedule_add(&spec)?),
        Request::Schedules => json(node.schedules()?),
        Request::SchedulePause { id, paused } => json(node.schedule_pause(&id, paused)?),
        Request::ScheduleRemove { id } => json(node.schedule_remove(&id)?),
        Request::Doctor { timeout_secs } => {
            json(node.doctor(Duration::from_secs(timeout_secs)).await?)
        }
        Request::Tasks { thread } => json(node.tasks(thread.as_deref())?),
        Request::Show { task } => json(node.task(&task)?),
        Request::Cancel { task, wait_secs } => {
            let task = node.cancel(&task)?;
            let delivered = node
                .wait_delivered(&task.target, &task.thread, Duration::from_secs(wait_secs))
                .await;
            json(serde_json::json!({ "task": task, "delivered": delivered }))
        }
        Request::Devices => json(node.devices()?),
        Request::Revoke { device } => json(node.revoke(&device)?),
        Request::Approvals { all } => json(node.approvals(!all)?),
        Request::Decide {
            approval,
            approve,
            wait_secs,
        } => {
            let (info, requested_by) = node.decide(&approval, approve)?;
            let delivered = node
                .wait_delivered(&requested_by, &info.thread, Duration::from_secs(wait_secs))
                .await;
            json(serde_json::json!({ "approval": info, "delivered": delivered }))
        }
        Request::Thread { thread } => json(node.conversation(&thread)?),
        Request::Questions { all } => json(node.questions(!all)?),
        Request::Answer {
            question,
            text,
            wait_secs,
        } => {
            let (info, asked_by) = node.answer(&question, &text)?;
            let delivered = node
                .wait_delivered(&asked_by, &info.thread, Duration::from_secs(wait_secs))
                .await;
            json(serde_json::json!({ "question": info, "delivered": delivered }))
        }
        Request::Artifact { hash, from } => {
            let bytes = node.fetch_blob(&hash, &from).await?;
            json(errand_sync::ids::hex(&bytes))
        }
        Request::History { doc, limit } => json(node.history(doc.as_deref(), limit)?),
        Request::At { heads, doc } => node.at(&heads, doc.as_deref()),
        Request::Sync { timeout_secs } => {
            json(node.sync_round(Duration::from_secs(timeout_secs)).await?)
        }
        Request::Watch => Err(NodeError::BadInput(
            "watch streams; it has no single reply".into(),
        )),
    }
}

pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// The control socket being served.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Stops taking new clients and removes the socket, so that commands from now on wait for
    /// the home instead of talking to a node that is going away. Clients already connected
    /// are served to the end of their request.
    pub fn close(self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control socket until the node is dropped. Removes a stale socket first.
pub fn serve(node: Arc<Node>) -> Result<ControlServer, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(node.home());
    if path.exists() {
        // This process holds the home's database, which a serving node never lets go of
        // while it lives: the socket file is left over from a node that died.
        std::fs::remove_file(&path).map_err(|e| {
            NodeError::Control(format!("cannot remove stale {}: {e}", path.display()))
        })?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| NodeError::Control(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| NodeError::Control(e.to_string()))?;
    let accept = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_client(node, stream).await {
                            debug!("control client: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(ControlServer { path, accept })
}

async fn serve_client(node: Arc<Node>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            break;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                write_reply(&mut write, &Reply::Error(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        if let Request::Watch = request {
            let mut events = node.subscribe();
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                        line.push(b'\n');
                        write.write_all(&line).await?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        let reply = match dispatch(&node, request).await {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e.to_string()),
        };
        write_reply(&mut write, &reply).await?;
    }
    Ok(())
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await
}

/// A connection to a running node's control socket.
#[derive(Debug)]
pub struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the node serving `home`, if one runs.
    pub async fn connect(home: &Path) -> Option<Client> {
        let stream = UnixStream::connect(socket_path(home)).await.ok()?;
        let (read, write) = stream.into_split();
        Some(Client {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Connects to the node serving `home` if it answers a ping within `timeout`; returns the
    /// client and the node's pid. A socket nobody answers on belongs to a node that is going
    /// away (or is stopped): `None`.
    pub async fn connect_serving(home: &Path, timeout: Duration) -> Option<(Client, u32)> {
        let mut client = Client::connect(home).await?;
        let pong = tokio::time::timeout(timeout, client.call(&Request::Ping))
            .await
            .ok()?
            .ok()?;
        let pid = serde_json::from_value(pong).ok()?;
        Some((client, pid))
    }

    /// Sends a request and reads its reply.
    pub async fn call(&mut self, request: &Request) -> Result<serde_json::Value, NodeError> {
        self.send(request).await?;
        let line = self
            .next_line()
            .await?
            .ok_or_else(|| NodeError::Control("the node closed the connection".into()))?;
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Ok(v)) => Ok(v),
            Ok(Reply::Error(e)) => Err(NodeError::Remote(e)),
            Err(e) => Err(NodeError::Control(format!("bad reply: {e}"))),
        }
    }

    pub async fn send(&mut self, request: &Request) -> Result<(), NodeError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| NodeError::Control(e.to_string()))?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| NodeError::Control(e.to_string()))
    }

    /// The next raw line (for `watch`).
    pub async fn next_line(&mut self) -> Result<Option<String>, NodeError> {
        self.lines
            .next_line()
            .await
            .map_err(|e| NodeError::Control(e.to_string()))
    }
}
