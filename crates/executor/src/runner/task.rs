//! One task in progress: its context (document, cancel token, the model's steps), the checked
//! path every action takes (policy, approval, tool), and the model's tools over that path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use errand_sync::DeviceId;
use errand_sync::schema::thread::{self, NewApproval, Task, TaskStatus};
use errand_sync::schema::{DocId, now_millis};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Flush, Issued, Shared, short};
use crate::action::{Action, ToolOutput};
use crate::agent::{self, AgentError, ToolRunner};
use crate::command;
use crate::model::ToolSpec;
use crate::notify::Event;
use crate::policy::Decision;
use crate::tools::{self, ToolError};

/// The most of a file `/read` returns.
const MAX_READ: usize = 1024 * 1024;
/// The most of a web page `/fetch` returns.
const MAX_FETCH: usize = 4 * 1024 * 1024;

/// How a task failed.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) cancelled: bool,
    /// What the task had produced when it was cancelled, if anything.
    pub(super) output: Option<String>,
}

impl Failure {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            cancelled: false,
            output: None,
        }
    }
    pub(super) fn cancelled() -> Self {
        Failure {
            message: "cancelled".into(),
            cancelled: true,
            output: None,
        }
    }
}

/// Why `task` cannot start here, when that is known before anything runs: its prompt is
/// refused, its command does not parse, or it needs a model and none is configured. Such a
/// task ends in one change, with no claim first: with nothing run there is nothing a claim
/// must keep from running twice.
pub(super) fn cannot_start(shared: &Shared, task: &Task) -> Option<String> {
    if let Err(e) = thread::check_prompt(&task.prompt) {
        return Some(e.to_string());
    }
    match command::parse(&task.prompt) {
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(e.to_string()),
        None => shared.config.model.is_none().then(|| no_model(shared)),
    }
}

fn no_model(shared: &Shared) -> String {
    format!(
        "this task needs an AI model and none is configured: {}",
        shared.config.model_hint
    )
}

/// One task in progress.
pub(super) struct TaskContext {
    pub(super) shared: Arc<Shared>,
    pub(super) doc: DocId,
    pub(super) task: String,
    pub(super) cancel: CancellationToken,
    /// The account of the model's tool calls, one line each, kept with the answer.
    pub(super) steps: Vec<String>,
}

impl TaskContext {
    pub(super) fn progress(&self, text: &str) {
        let id = self.task.clone();
        self.shared.record(
            &self.doc,
            Flush::Own,
            &format!("task {} progress", short(&id)),
            |tx| thread::add_progress(tx, &id, text, now_millis()),
        );
    }

    pub(super) async fn execute(&mut self, task: &Task) -> Result<ToolOutput, Failure> {
        let prompt = task.prompt.as_str();
        // Any member can write a task without its own software's check.
        thread::check_prompt(prompt).map_err(|e| Failure::new(e.to_string()))?;
        match command::parse(prompt) {
            Some(Ok(action)) => {
                self.progress(&format!(
                    "running {}",
                    prompt.lines().next().unwrap_or(prompt)
                ));
                self.perform(action).await
            }
            Some(Err(e)) => Err(Failure::new(e.to_string())),
            None => self.run_model(task).await,
        }
    }

    async fn run_model(&mut self, task: &Task) -> Result<ToolOutput, Failure> {
        let Some(backend) = self.shared.config.model.clone() else {
            return Err(Failure::new(no_model(&self.shared)));
        };
        let extra_tools = self.connector_tools().await?;
        let earlier = self.shared.earlier_turns(&self.doc, task);
        let (turns, omitted) =
            crate::conversation::turns(&earlier, &task.prompt, crate::conversation::HISTORY_BUDGET);
        self.progress(&match (earlier.len(), omitted) {
            (0, _) => "asking the model".to_owned(),
            (n, 0) => format!("asking the model, with the {n} earlier turn(s) of this thread"),
            (n, left_out) => format!(
                "asking the model, with {} of the {n} earlier turns of this thread (the \
                 oldest {left_out} do not fit the context budget)",
                n - left_out
            ),
        });
        let limits = self.shared.config.model_limits;
        let cancel = self.cancel.clone();
        let shared = self.shared.clone();
        let doc = self.doc.clone();
        let task = self.task.clone();
        let mut report = move |line: String| {
            let id = task.clone();
            shared.record(
                &doc,
                Flush::Own,
                &format!("task {} progress", short(&id)),
                |tx| thread::add_progress(tx, &id, &line, now_millis()),
            );
        };
        let mut runner = ModelTools {
            ctx: self,
            blobs: Vec::new(),
            extra_tools,
        };
        let result = agent::run_agent(
            backend.as_ref(),
            turns,
            &mut runner,
            limits,
            cancel,
            &mut report,
        )
        .await;
        let blobs = std::mem::take(&mut runner.blobs);
        match result {
            Ok(text) => Ok(ToolOutput { text, blobs }),
            Err(agent::AgentError::Cancelled) => Err(Failure::cancelled()),
            Err(e) => Err(Failure::new(e.to_string())),
        }
    }

    /// Checks an action against the policy, asks when it must, and runs it.
    async fn perform(&mut self, action: Action) -> Result<ToolOutput, Failure> {
        if let Action::Mcp {
            connector,
            name: tool,
            arguments,
        } = action
        {
            return self.perform_connector(connector, tool, arguments).await;
        }
        let checked = self
            .shared
            .config
            .policy
            .check(&action)
            .map_err(|denied| Failure::new(format!("denied by policy: {denied}")))?;
        if let Some(class) = checked.class {
            match self.shared.config.policy.decision(class) {
                Decision::Allow => {}
                Decision::Deny => {
                    return Err(Failure::new(format!(
                        "denied by policy: {class} is not allowed"
                    )));
                }
                Decision::Ask => self.ask(class.as_str(), &checked.description).await?,
            }
        }
        if self.cancel.is_cancelled() {
            return Err(Failure::cancelled());
        }
        self.run_tool(checked.action).await.map_err(|e| match e {
            ToolError::Cancelled => Failure::cancelled(),
            ToolError::CancelledWithOutput(output) => Failure {
                output: Some(output),
                ..Failure::cancelled()
            },
            other => Failure::new(other.to_string()),
        })
    }

    pub(super) async fn run_tool(&self, action: Action) -> Result<ToolOutput, ToolError> {
        let config = &self.shared.config;
        let path = std::path::Path::new;
        match action {
            Action::Sh { command } => {
                let ledger = &self.shared.processes;
                let out = tools::shell::sh(
                    &command,
                    config.policy.workspace(),
                    &config.policy.child_env(),
                    self.cancel.clone(),
                    config.shell_timeout,
                    |pgid| ledger.started(&self.task, pgid),
                )
                .await;
                ledger.ended(&self.task);
                out
            }
            Action::Ls { path: p } => tools::fs::ls(path(&p)),
            Action::Read { path: p } => tools::fs::read(path(&p), MAX_READ),
            Action::Write { path: p, text } => tools::fs::write(path(&p), &text),
            Action::Rm { path: p } => tools::fs::rm(path(&p)),
            Action::Fetch { url } => {
                tokio::select! {
                    r = tools::fetch::fetch(&url, Duration::from_secs(60), MAX_FETCH, config.policy.allows_private_network()) => r,
                    _ = self.cancel.cancelled() => Err(ToolError::Cancelled),
                }
            }
            Action::Screenshot => tools::screen::screenshot().await,
            Action::Type { text } => tools::input::type_text(&text).await,
            Action::Key { combo } => tools::input::key(&combo).await,
            Action::Click { x, y } => tools::input::click(x, y).await,
            Action::Mcp {
                connector,
                name: tool,
                arguments,
            } => {
                let connectors = &config.connectors;
                connectors
                    .call(&connector, &tool, arguments, &self.cancel)
                    .await
                    .map_err(ToolError::from)
            }
        }
    }

    /// Writes an approval request and waits for a valid signed decision, expiry or cancel.
    pub(super) async fn ask(&mut self, class: &str, description: &str) -> Result<(), Failure> {
        let shared = self.shared.clone();
        let id = shared_id();
        let now = now_millis();
        let timeout = shared.config.policy.approval_timeout();
        let expires = now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let me = shared.me();
        let task = self.task.clone();
        let mut changes = shared.repo.subscribe();
        shared.record(
            &self.doc,
            Flush::Own,
            &format!(
                "approval {} requested for task {}",
                short(&id),
                short(&task)
            ),
            |tx| {
                thread::request_approval(
                    tx,
                    &NewApproval {
                        id: &id,
                        task: &task,
                        action: description,
                        class,
                        requested_by: &me,
                        requested_at: now,
                        expires_at: expires,
                    },
                )?;
                thread::add_progress(
                    tx,
                    &task,
                    &format!("waiting for approval to {description}"),
                    now,
                )?;
                thread::set_status(tx, &task, TaskStatus::WaitingApproval, now)
            },
        );
        shared
            .notifier
            .notify(&self.doc, &task, Event::Approval, Some(description));
        let deadline = tokio::time::Instant::now() + timeout;
        let issued = Issued {
            task: task.clone(),
            action: description.to_owned(),
            class: class.to_owned(),
            expires_at: expires,
        };
        let verdict = loop {
            if let Some(v) = self.verdict(&id, &issued) {
                break v;
            }
            tokio::select! {
                _ = changes.recv() => {}
                _ = tokio::time::sleep_until(deadline) => break Verdict::Expired,
                _ = self.cancel.cancelled() => return Err(Failure::cancelled()),
            }
        };
        let expired = matches!(verdict, Verdict::Expired);
        let (text, outcome) = match verdict {
            Verdict::Approved(by) => (format!("approved by {by}"), Ok(())),
            Verdict::Denied(by) => (
                format!("denied by {by}"),
                Err(Failure::new(format!("denied by {by}"))),
            ),
            Verdict::Expired => (
                "approval request expired (counts as denied)".to_owned(),
                Err(Failure::new(format!(
                    "no one approved it within {} s, so it counts as denied",
                    timeout.as_secs()
                ))),
            ),
        };
        shared.record(
            &self.doc,
            Flush::Own,
            &format!("approval {} {}", short(&id), text),
            |tx| {
                // Expiry is decided here, by this desktop's clock: every device then shows the
                // request as expired, and a decision that arrives later does not count.
                if expired {
                    thread::expire_approval(tx, &id, now_millis())?;
                }
                thread::add_progress(tx, &task, &text, now_millis())?;
                thread::set_status(tx, &task, TaskStatus::Running, now_millis())
            },
        );
        outcome
    }

    /// The first valid decision on an approval, if any. Decisions with a bad signature, or by a
    /// device that may not approve, are ignored. Signatures are checked against the request
    /// as this executor issued it (kept in memory), never as the document now says it.
    fn verdict(&self, approval: &str, issued: &Issued) -> Option<Verdict> {
        let shared = &self.shared;
        let approvals = shared
            .repo
            .read(&self.doc, |d| thread::approvals(d, self.doc.as_str()))
            .ok()
            .flatten()?;
        let mut approval = approvals.into_iter().find(|a| a.id == approval)?;
        approval.task.clone_from(&issued.task);
        approval.action.clone_from(&issued.action);
        approval.class.clone_from(&issued.class);
        approval.expires_at = issued.expires_at;
        let decision = thread::first_valid_decision(&shared.space, &approval, |device| {
            shared.authority.may_approve(device)
        });
        // The counted decision is the earliest valid one, so every decision before it (or every
        // one, when none counts) was invalid.
        let ignored = approval.decisions.iter().filter(|d| {
            decision.is_none_or(|chosen| (d.at, &d.device) < (chosen.at, &chosen.device))
        });
        for d in ignored {
            warn!(device = %d.device, "ignoring an approval decision with a bad signature or by a device that may not approve");
        }
        let decision = decision?;
        let name = decision
            .device
            .parse::<DeviceId>()
            .ok()
            .and_then(|device| shared.authority.name(&device))
            .unwrap_or_else(|| short(&decision.device).to_owned());
        Some(if decision.approve {
            Verdict::Approved(name)
        } else {
            Verdict::Denied(name)
        })
    }
}

enum Verdict {
    Approved(String),
    Denied(String),
    Expired,
}

pub(super) fn shared_id() -> String {
    errand_sync::ids::hex(&rand::random::<[u8; 8]>())
}

/// The model's tools: the same checked path as direct commands.
struct ModelTools<'a> {
    ctx: &'a mut TaskContext,
    blobs: Vec<crate::action::BlobOutput>,
    extra_tools: Vec<ToolSpec>,
}

impl ToolRunner for ModelTools<'_> {
    fn run<'b>(
        &'b mut self,
        action: Action,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'b>> {
        Box::pin(async move {
            let what = action.to_string();
            let outcome = match self.ctx.perform(action).await {
                Ok(output) => {
                    self.blobs.extend(output.blobs);
                    Ok(output.text)
                }
                Err(f) => Err(f.message),
            };
            let step =
                crate::conversation::step_line(&what, outcome.as_deref().map_err(String::as_str));
            self.ctx.steps.push(step);
            outcome
        })
    }

    fn ask_user<'b>(
        &'b mut self,
        question: String,
    ) -> Pin<Box<dyn Future<Output = Result<String, AgentError>> + Send + 'b>> {
        Box::pin(async move {
            let what = format!("asked the user {question:?}");
            let answer = self.ctx.ask_user(&question).await;
            let step = match &answer {
                Ok(text) => crate::conversation::step_line(
                    &format!("{what}, who answered {text:?}"),
                    Ok(""),
                ),
                Err(e) => crate::conversation::step_line(&what, Err(&e.to_string())),
            };
            self.ctx.steps.push(step);
            answer
        })
    }

    fn extra_tools(&self) -> Vec<ToolSpec> {
        self.extra_tools.clone()
    }
}
