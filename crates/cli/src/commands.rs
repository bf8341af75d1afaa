//! What each command does.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use errand_node::control::{self, ControlServer, Request};
use errand_node::home::{self, HOME_WAIT, Reached};
use errand_node::node::{ApprovalInfo, ConversationEntry, QuestionInfo};
use errand_node::node::{DeviceInfo, HistoryLine, Joined, PeerSync, Sent, Status, short};
use errand_node::{Node, NodeConfig, NodeEvent};
use errand_sync::schema::index::{NotifyEntry, ThreadEntry};
use errand_sync::schema::thread::Task;
use serde::Serialize;

use crate::session::Session;
use crate::{Cli, Command, output};

mod pairing;

use pairing::{confirm, no_terminal, pair, show_ticket};

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn show<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        out!("{}", human(value));
        Ok(())
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config()?;
    let json = cli.json;
    match cli.command {
        Command::Up {
            name,
            yes,
            qr_png,
            ticket_file,
            ttl,
            role,
            run,
        } => {
            let stop = Stop::install()?;
            let (node, control) = serve_here(&config).await?;
            node.init_space(name.as_deref())?;
            let executor = start_executor(&node, &config, &run)?;
            let info = node.create_ticket(Duration::from_secs(ttl), yes, role)?;
            show_ticket(&info, qr_png.as_deref(), ticket_file.as_deref(), json)?;
            if !json {
                let status = node.status()?;
                out!(
                    "serving as {} on {}; Ctrl-C to stop",
                    status.name,
                    status.addrs.join(" ")
                );
            }
            // Confirm joins on this terminal only for the ticket shown here; tickets from
            // `errand pair` are confirmed by that command.
            let own_ticket = (!yes).then_some(info.id);
            let code = run_until_stopped(&node, own_ticket, json, stop).await;
            stop_serving(node, control, executor).await;
            code
        }
        Command::Serve { run } => {
            let stop = Stop::install()?;
            let (node, control) = serve_here(&config).await?;
            let executor = start_executor(&node, &config, &run)?;
            if !json {
                let status = node.status()?;
                out!(
                    "serving as {} on {}; Ctrl-C to stop",
                    status.name,
                    status.addrs.join(" ")
                );
            }
            let code = run_until_stopped(&node, None, json, stop).await;
            stop_serving(node, control, executor).await;
            code
        }
        command => {
            let mut session = Session::open(&config).await?;
            let result = one_shot(&mut session, &config.home, command, json).await;
            session.close().await;
            result
        }
    }
}

fn start_executor(
    node: &Arc<Node>,
    config: &NodeConfig,
    run: &crate::RunOptions,
) -> Result<Option<errand_executor::runner::ExecutorHandle>> {
    if run.no_executor {
        return Ok(None);
    }
    let paths = crate::executor::Paths::new(
        &config.home,
        run.policy.clone(),
        run.model_config.clone(),
        run.connectors.clone(),
    );
    crate::executor::start(node, &paths)
}

/// Opens the home in this process and serves its control socket. A node that is still
/// letting go of the home (stopping, or killed a moment ago) or a command using it for a
/// moment is waited for, up to [`HOME_WAIT`].
async fn serve_here(config: &NodeConfig) -> Result<(Arc<Node>, ControlServer)> {
    let node = match home::reach(config, HOME_WAIT).await? {
        Reached::Running { pid, .. } => bail!(
            "a node (pid {pid}) is already running on {}",
            config.home.display()
        ),
        Reached::Here(node) => node,
    };
    let control = control::serve(node.clone())?;
    Ok((node, control))
}

/// The end of `up` and `serve`: the executor stops first (running tasks get their grace
/// period, and the node still syncs and answers commands meanwhile), then what it wrote goes
/// out to connected peers, then the node lets go of the home.
async fn stop_serving(
    node: Arc<Node>,
    control: ControlServer,
    executor: Option<errand_executor::runner::ExecutorHandle>,
) {
    if let Some(executor) = executor {
        executor.stop().await;
    }
    node.flush(FLUSH_ON_STOP).await;
    control.close();
    node.shutdown().await;
}

/// How long a stopping node waits for connected peers to receive its last changes.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);

/// SIGINT and SIGTERM, caught from before the node says it is serving.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn run_until_stopped(
    node: &Arc<Node>,
    confirm_ticket: Option<String>,
    json: bool,
    mut stop: Stop,
) -> Result<ExitCode> {
    let mut events = node.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            ev = events.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if json {
                    out!("{}", serde_json::to_string(&ev)?);
                } else if !matches!(ev, NodeEvent::SyncFinished { .. }) {
                    out!("{}", output::event(&ev));
                }
                if let NodeEvent::PairingRequested { ticket, name, code, role, .. } = ev
                    && confirm_ticket.as_ref() == Some(&ticket)
                {
                    let accept = confirm(&name, role, &code).await;
                    if accept.is_none() {
                        eprintln!("errand: {}", no_terminal(&name));
                    }
                    node.confirm_pairing(&ticket, accept.unwrap_or(false))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn one_shot(
    session: &mut Session,
    home: &Path,
    command: Command,
    json: bool,
) -> Result<ExitCode> {
    match command {
        Command::Up { .. } | Command::Serve { .. } => unreachable_command(),
        Command::Pair {
            qr_png,
            ticket_file,
            ttl,
            yes,
            role,
        } => {
            pair(
                session,
                qr_png.as_deref(),
                ticket_file.as_deref(),
                ttl,
                yes,
                role,
                json,
            )
            .await
        }
        Command::Join { ticket, name, role } => {
            let parsed: errand_pairing::Ticket = ticket
                .parse()
                .map_err(|e| anyhow::anyhow!("bad ticket: {e}"))?;
            let status: Status = session.call(Request::Status).await?;
            let me = status.device.parse().context("bad device id")?;
            let code = errand_pairing::protocol::code_for(&parsed, &me);
            if let Some(asked) = role
                && asked != parsed.role
            {
                bail!(
                    "this ticket admits a {}, not a {asked}: the desktop chooses the role \
                     (`errand pair --role {asked}`)",
                    parsed.role
                );
            }
            if !json {
                out!(
                    "joining as {}; verification code {code}: check that the other device shows the same",
                    parsed.role
                );
            }
            let joined: Joined = session.call(Request::Join { ticket, name, role }).await?;
            // Bring the space's threads over while we are connected.
            session.refresh(Duration::from_secs(3)).await;
            show(json, &joined, |j| {
                format!(
                    "paired with {} ({}) in space {} as {}",
                    j.host_name,
                    short(&j.host),
                    j.space,
                    j.role
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            text,
            thread,
            to,
            wait,
            timeout,
        } => {
            // Checked here too: a prompt too large for the control socket never reaches the
            // node's own check.
            errand_sync::schema::thread::check_prompt(text.trim())?;
            let sent: Sent = session
                .call(Request::Send {
                    text,
                    thread,
                    to,
                    wait_secs: timeout,
                })
                .await?;
            if wait {
                if !json {
                    out!("{}", output::sent(&sent));
                }
                let task =
                    wait_task(session, home, &sent.task, Duration::from_secs(timeout)).await?;
                return finish_wait(&task, json);
            }
            show(json, &sent, output::sent)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tasks { thread } => {
            session.refresh(Duration::from_millis(1500)).await;
            let tasks: Vec<Task> = session.call(Request::Tasks { thread }).await?;
            show(json, &tasks, |t| output::tasks(t))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            task,
            save,
            artifact,
        } => {
            session.refresh(Duration::from_millis(1500)).await;
            let task: Task = session.call(Request::Show { task }).await?;
            if let Some(path) = save {
                let Some(a) = artifact.checked_sub(1).and_then(|i| task.artifacts.get(i)) else {
                    bail!(
                        "task {} has {} artifact(s); there is no number {artifact}",
                        short(&task.id),
                        task.artifacts.len()
                    );
                };
                let hex: String = session
                    .call(Request::Artifact {
                        hash: a.hash.clone(),
                        from: task.target.clone(),
                    })
                    .await?;
                let bytes = decode_hex(&hex).context("bad artifact bytes from the node")?;
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                if !json {
                    out!(
                        "saved {} ({} bytes, {}) to {}",
                        a.name,
                        bytes.len(),
                        a.mime,
                        path.display()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            show(json, &task, output::task)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approvals { all } => {
            session.refresh(Duration::from_millis(1500)).await;
            let approvals: Vec<ApprovalInfo> = session.call(Request::Approvals { all }).await?;
            show(json, &approvals, |a| output::approvals(a))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Thread { id } => {
            session.refresh(Duration::from_millis(1500)).await;
            let entries: Vec<ConversationEntry> =
                session.call(Request::Thread { thread: id }).await?;
            show(json, &entries, |e| output::conversation(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Questions { all } => {
            session.refresh(Duration::from_millis(1500)).await;
            let questions: Vec<QuestionInfo> = session.call(Request::Questions { all }).await?;
            show(json, &questions, |q| output::questions(q))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Answer { id, text } => {
            session.refresh(Duration::from_millis(1500)).await;
            let reply: serde_json::Value = session
                .call(Request::Answer {
                    question: id,
                    text,
                    wait_secs: 3,
                })
                .await?;
            if json {
                print_json(&reply)?;
            } else {
                let delivered = reply["delivered"].as_bool().unwrap_or(false);
                let q = &reply["question"];
                out!(
                    "answered {}: {}{}",
                    short(q["id"].as_str().unwrap_or_default()),
                    q["question"].as_str().unwrap_or_default(),
                    if delivered {
                        ""
                    } else {
                        " (not delivered to the desktop yet)"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { id } => decide(session, id, true, json).await,
        Command::Deny { id } => decide(session, id, false, json).await,
        Command::Wait { task, timeout } => {
            let task = wait_task(session, home, &task, Duration::from_secs(timeout)).await?;
            finish_wait(&task, json)
        }
        Command::Cancel { task } => {
            let reply: serde_json::Value =
                session.call(Request::Cancel { task, wait_secs: 3 }).await?;
            if json {
                print_json(&reply)?;
            } else {
                let delivered = reply["delivered"].as_bool().unwrap_or(false);
                let id = reply["task"]["id"].as_str().unwrap_or_default();
                out!(
                    "cancel of task {} requested{}",
                    short(id),
                    if delivered {
                        "; the desktop has it"
                    } else {
                        "; not delivered yet"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Threads => {
            session.refresh(Duration::from_millis(1500)).await;
            let threads: Vec<ThreadEntry> = session.call(Request::Threads).await?;
            show(json, &threads, |t| output::threads(t))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch => {
            let mut events = session.events(home).await?;
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                tokio::select! {
                    ev = events.next() => {
                        let Some(ev) = ev else { break };
                        if json {
                            out!("{}", serde_json::to_string(&ev)?);
                        } else {
                            out!("{}", output::event(&ev));
                        }
                    }
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History { doc, limit } => {
            let lines: Vec<HistoryLine> = session.call(Request::History { doc, limit }).await?;
            show(json, &lines, |l| output::history(l))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::At { heads, doc } => {
            let value: serde_json::Value = session.call(Request::At { heads, doc }).await?;
            print_json(&value)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices {
            action: Some(crate::DevicesAction::Revoke { id }),
        } => {
            let device: DeviceInfo = session.call(Request::Revoke { device: id }).await?;
            session.refresh(Duration::from_secs(2)).await;
            show(json, &device, |d| {
                format!(
                    "revoked {} ({}); it gets nothing new from this space",
                    d.name,
                    short(&d.id)
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Notify { action } => {
            match action {
                crate::NotifyAction::Add {
                    url,
                    events,
                    content,
                } => {
                    let entry: NotifyEntry = session
                        .call(Request::NotifyAdd {
                            url,
                            events,
                            content,
                        })
                        .await?;
                    session.refresh(Duration::from_millis(1500)).await;
                    show(json, &entry, |e| {
                        format!(
                            "notification endpoint {} added: {} ({})",
                            e.id,
                            e.url,
                            e.events.join(",")
                        )
                    })?;
                }
                crate::NotifyAction::List => {
                    let entries: Vec<NotifyEntry> = session.call(Request::NotifyList).await?;
                    show(json, &entries, |es| output::notify_entries(es))?;
                }
                crate::NotifyAction::Test => {
                    let entries: Vec<NotifyEntry> = session.call(Request::NotifyList).await?;
                    if entries.is_empty() {
                        anyhow::bail!(
                            "no notification endpoints: add one with `errand notify add URL`"
                        );
                    }
                    let mut results = Vec::new();
                    for e in &entries {
                        // The person's own endpoint, tried from their own device: a LAN
                        // address is what a self-hosted server usually has.
                        let (delivered, outcome) = errand_executor::notify::post(
                            &e.url,
                            true,
                            "test",
                            "",
                            "errand test notification",
                        )
                        .await;
                        results.push(serde_json::json!({
                            "id": e.id, "url": e.url, "delivered": delivered, "outcome": outcome,
                        }));
                    }
                    let all = results.iter().all(|r| r["delivered"] == true);
                    show(json, &results, |rs| {
                        rs.iter()
                            .map(|r| {
                                format!(
                                    "{} {}: {}",
                                    r["id"].as_str().unwrap_or_default(),
                                    r["url"].as_str().unwrap_or_default(),
                                    if r["delivered"] == true {
                                        format!(
                                            "delivered ({})",
                                            r["outcome"].as_str().unwrap_or_default()
                                        )
                                    } else {
                                        format!(
                                            "failed: {}",
                                            r["outcome"].as_str().unwrap_or_default()
                                        )
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })?;
                    if !all {
                        let failed = results.iter().filter(|r| r["delivered"] != true).count();
                        anyhow::bail!(
                            "{failed} of {} endpoints did not take the test message",
                            results.len()
                        );
                    }
                }
                crate::NotifyAction::Remove { id } => {
                    let entry: NotifyEntry = session.call(Request::NotifyRemove { id }).await?;
                    session.refresh(Duration::from_millis(1500)).await;
                    show(json, &entry, |e| {
                        format!("notification endpoint {} removed ({})", e.id, e.url)
                    })?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { timeout } => {
            let found: Vec<errand_node::node::Diagnosis> = session
                .call(Request::Doctor {
                    timeout_secs: timeout.clamp(1, 60),
                })
                .await?;
            show(json, &found, |f| output::doctor(f))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule { action } => {
            crate::schedule::run(session, action, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { action: None } => {
            let devices: Vec<DeviceInfo> = session.call(Request::Devices).await?;
            show(json, &devices, |d| output::devices(d))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let status: Status = session.call(Request::Status).await?;
            show(json, &status, output::status)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { timeout } => {
            let peers: Vec<PeerSync> = session
                .call(Request::Sync {
                    timeout_secs: timeout,
                })
                .await?;
            show(json, &peers, |peers| {
                if peers.is_empty() {
                    return "no other devices in this space".into();
                }
                peers
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}: {}",
                            short(&p.id),
                            p.name,
                            if p.synced { "in sync" } else { "not reachable" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn decide(session: &mut Session, id: String, approve: bool, json: bool) -> Result<ExitCode> {
    session.refresh(Duration::from_millis(1500)).await;
    let reply: serde_json::Value = session
        .call(Request::Decide {
            approval: id,
            approve,
            wait_secs: 3,
        })
        .await?;
    if json {
        print_json(&reply)?;
    } else {
        let delivered = reply["delivered"].as_bool().unwrap_or(false);
        let a = &reply["approval"];
        out!(
            "{} {}: {}{}",
            if approve { "approved" } else { "denied" },
            short(a["id"].as_str().unwrap_or_default()),
            a["action"].as_str().unwrap_or_default(),
            if delivered {
                ""
            } else {
                " (not delivered to the desktop yet)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unreachable_command() -> Result<ExitCode> {
    bail!("this command runs a node; it is handled before a session opens")
}

/// Waits until a task ends, syncing meanwhile when running locally.
async fn wait_task(
    session: &mut Session,
    home: &Path,
    task: &str,
    timeout: Duration,
) -> Result<Task> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = session.events(home).await?;
    loop {
        let current: Task = session
            .call(Request::Show {
                task: task.to_owned(),
            })
            .await?;
        if current.status.is_final() {
            return Ok(current);
        }
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => bail!("the node stopped while waiting for task {}", short(task)),
            Err(_) => bail!(
                "task {} is still {} after {} s",
                short(task),
                current.status,
                timeout.as_secs()
            ),
        }
    }
}

fn finish_wait(task: &Task, json: bool) -> Result<ExitCode> {
    show(json, task, output::task)?;
    Ok(match task.status {
        errand_sync::schema::thread::TaskStatus::Done => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
