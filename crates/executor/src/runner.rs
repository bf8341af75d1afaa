//! The executor's tokio shell: watches the thread documents, runs the tasks aimed at this
//! device, and writes status, progress, approvals and results back.
//!
//! - A task is claimed by durably writing `running` before anything runs, and only `queued`
//!   tasks are claimed, so a task never runs twice. A task that cannot start (its prompt is
//!   refused, its command does not parse, or it needs a model and none is configured) ends as
//!   `failed` in one change with no claim: nothing ran, so there is nothing to keep from
//!   running twice. Such tasks that wait next to each other in a thread end in the same change
//!   (up to [`unrun::UNRUN_AT_ONCE`]), so a queue of them costs one change, not one per task.
//!   A task found `running` or `waiting_approval` at start-up was interrupted by a crash or a
//!   stop: it ends as `failed` with a reason, because half a shell command cannot be safely
//!   resumed.
//! - Tasks of one thread run one at a time, in order; threads run in parallel up to a bound.
//! - A graceful stop starts nothing new and gives running tasks [`STOP_GRACE`] to finish;
//!   those still running then are interrupted and recorded as failed, with a reason that says
//!   the desktop was stopped and whatever output they had produced. A task's cancel token is
//!   its own (not a child of the stop), so only a user's cancel ever reads `cancelled`.
//! - Every action, whether a direct command or a model's tool call, goes through
//!   [`Policy::check`] and, when the policy says ask, through a signed approval. Connector
//!   calls go through their connector's rules instead ([`connectors`]), and the same approvals.
//! - A thread is a conversation ([`conversation`]): a model task is sent with the thread's
//!   earlier turns, every task's end is written as an answer in the thread's messages, and the
//!   model's questions wait in `needs_input` for a signed answer from a phone.

mod conversation;
mod queue;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use errand_sync::schema::thread::{self, Artifact, Task, TaskStatus};
use errand_sync::schema::{DocId, index, now_millis};
use errand_sync::{DeviceId, Repo};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::action::ToolOutput;
use crate::agent::Limits;
use crate::connectors::Connectors;
use crate::model::ModelBackend;
use crate::notify::Event;
use crate::policy::Policy;
use crate::tools::shell::ProcessLedger;

mod connector;
mod results;
mod task;
mod unrun;

use results::{blob_refusal, split_result};
use task::TaskContext;

/// How long a graceful stop (SIGTERM, Ctrl-C) lets running tasks go on, to finish and write
/// their results, before it interrupts them (README, "The desktop executor").
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// After the grace period, how long interrupted tasks get to record how they ended; one that
/// has not by then is settled as interrupted at the next start.
const STOP_RECORD: Duration = Duration::from_secs(3);
/// How long a stopping desktop waits for notifications under way.
const NOTIFY_FLUSH: Duration = Duration::from_secs(3);

/// What a task still running at the end of [`STOP_GRACE`] ends with.
fn stop_reason() -> String {
    format!(
        "interrupted: the desktop was stopped while this task was running and it did not finish within the {} s grace period; it was not run again (send it again to retry)",
        STOP_GRACE.as_secs()
    )
}

/// An approval request as the executor issued it: what a decision's signature must cover.
#[derive(Debug)]
struct Issued {
    task: String,
    action: String,
    class: String,
    expires_at: i64,
}

/// Who may have tasks run and decide approvals, and what they are called: the verified
/// membership, never what a document says.
pub trait Authority: Send + Sync + fmt::Debug + 'static {
    /// Whether a task `device` sent may run here.
    fn may_send(&self, device: &DeviceId) -> bool;
    fn may_approve(&self, device: &DeviceId) -> bool;
    fn name(&self, device: &DeviceId) -> Option<String>;
}

/// How the executor is set up.
#[derive(Debug)]
pub struct ExecutorConfig {
    pub device: DeviceId,
    pub policy: Policy,
    pub model: Option<Arc<dyn ModelBackend>>,
    pub model_limits: Limits,
    /// Shown when a task needs a model and none is configured.
    pub model_hint: String,
    /// Threads that may run at once.
    pub max_parallel: usize,
    /// How long one shell command may run.
    pub shell_timeout: Duration,
    /// The MCP servers whose tools tasks may use ([`Connectors::none`] for none).
    pub connectors: Arc<Connectors>,
}

/// Whether a change the executor records is durable when recording returns.
#[derive(Clone, Copy, Debug)]
enum Flush {
    /// It is: a claim, a result, anything that follows from something having run.
    Own,
    /// It becomes durable with the next flush, whoever asks for it. For an outcome decided
    /// before anything ran (refused, cancelled, cannot start): a crash that takes it away
    /// leaves the task queued, to be decided again from the same document, and nobody hears
    /// of it before a flush (a session flushes before it sends a peer anything, the notifier
    /// before it posts). In a burst, those flushes cover many outcomes at once.
    Next,
}

/// A running executor; dropping it stops starting new tasks.
#[derive(Debug)]
pub struct ExecutorHandle {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl ExecutorHandle {
    /// Stops the executor gracefully: nothing new starts, running tasks get [`STOP_GRACE`] to
    /// finish, and those still running then end as failed with the stop as the reason.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ExecutorHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    repo: Arc<Repo>,
    config: ExecutorConfig,
    authority: Arc<dyn Authority>,
    space: String,
    /// Threads with a task in progress.
    busy: Mutex<HashSet<String>>,
    /// Cancellation of each running task.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Running tasks that a stop (not a user) cancelled.
    stopped: Mutex<HashSet<String>>,
    /// The tasks that wait to run here, kept from what each change touched.
    queue: Mutex<queue::Queue>,
    slots: Semaphore,
    stop: CancellationToken,
    processes: ProcessLedger,
    notifier: crate::notify::Notifier,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first 8 characters of an id, for log lines and commit messages.
pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Starts the executor on a repo. Interrupted tasks are settled before anything new runs.
pub fn start(
    repo: Arc<Repo>,
    config: ExecutorConfig,
    authority: Arc<dyn Authority>,
) -> ExecutorHandle {
    let stop = CancellationToken::new();
    let space = repo
        .read(&DocId::index(), index::space)
        .ok()
        .flatten()
        .flatten()
        .unwrap_or_default();
    let notifier = crate::notify::Notifier::new(
        repo.clone(),
        authority.clone(),
        config.policy.allows_private_network(),
    );
    // Schedules create tasks; the executor runs them like any other. Both stop together.
    let scheduler = crate::scheduler::spawn(
        repo.clone(),
        config.device,
        authority.clone(),
        notifier.clone(),
        stop.clone(),
    );
    let shared = Arc::new(Shared {
        notifier,
        slots: Semaphore::new(config.max_parallel.max(1)),
        processes: ProcessLedger::new(repo.store().clone()),
        repo,
        config,
        authority,
        space,
        busy: Mutex::default(),
        running: Mutex::default(),
        stopped: Mutex::default(),
        queue: Mutex::default(),
        stop: stop.clone(),
    });
    shared.config.connectors.warm_up();
    let task = tokio::spawn(async move { shared.run().await });
    ExecutorHandle {
        stop,
        task: Some(task),
        scheduler: Some(scheduler),
    }
}

impl Shared {
    fn me(&self) -> String {
        self.config.device.to_string()
    }

    fn threads(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = self
            .repo
            .read(&DocId::index(), index::threads)
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| DocId::parse(&t.id))
            .collect();
        let listed: HashSet<DocId> = ids.iter().cloned().collect();
        for id in self.repo.doc_ids().unwrap_or_default() {
            if !id.is_index() && !listed.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Reads every task of a thread: what waits to run here joins the queue, and a running
    /// task whose cancel was asked for is cancelled. Returns what it read.
    fn scan(&self, doc: &DocId) -> Vec<thread::TaskState> {
        let states = self
            .repo
            .read(doc, |d| thread::task_states(d, &HashSet::new()))
            .ok()
            .flatten()
            .unwrap_or_default();
        lock(&self.queue).scanned(doc, &self.me(), &states);
        self.cancel_asked(&states);
        states
    }

    /// Takes in what a change wrote into a thread: the tasks it touched are read again, and
    /// only those (a thread seen for the first time is read whole).
    fn take_in(&self, doc: &DocId, tasks: &BTreeSet<String>) {
        if !lock(&self.queue).knows(doc) {
            self.scan(doc);
            return;
        }
        if tasks.is_empty() {
            return;
        }
        let states: Vec<thread::TaskState> = self
            .repo
            .read(doc, |d| {
                tasks
                    .iter()
                    .filter_map(|id| thread::task_state(d, id))
                    .collect()
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        let me = self.me();
        {
            let mut queue = lock(&self.queue);
            for state in &states {
                queue.update(doc, &me, state);
            }
        }
        self.cancel_asked(&states);
    }

    /// Cancels the running tasks among `states` whose cancel was asked for.
    fn cancel_asked(&self, states: &[thread::TaskState]) {
        let running = lock(&self.running);
        for state in states.iter().filter(|s| s.cancel_requested) {
            if let Some(token) = running.get(&state.id) {
                token.cancel();
            }
        }
    }

    fn task(&self, doc: &DocId, id: &str) -> Option<Task> {
        self.repo
            .read(doc, |d| thread::task(d, doc.as_str(), id))
            .ok()
            .flatten()
            .flatten()
    }

    /// Records a change of the executor's, logging (not returning) a failure: the task's
    /// state is then as before, and what the executor does next does not depend on it.
    fn record(
        &self,
        doc: &DocId,
        flush: Flush,
        message: &str,
        f: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
        ) -> Result<(), automerge::AutomergeError>,
    ) {
        let recorded = match flush {
            Flush::Own => self.repo.change(doc, message, f),
            Flush::Next => self.repo.change_lazily(doc, message, f),
        };
        if let Err(e) = recorded {
            warn!(%doc, "cannot record {message:?}: {e}");
        }
    }

    async fn run(self: Arc<Self>) {
        let mut changes = self.repo.subscribe();
        // Commands a crashed run left behind go first: their tasks are settled as failed next,
        // and a command of a failed task must not go on changing files.
        self.processes.kill_leftovers().await;
        // Only the tasks that have not ended matter here; their stored views spare loading
        // every thread of a big space at start.
        let threads = self.threads();
        let open = self
            .repo
            .read_views(thread::OPEN_TASKS_VIEW, &threads, |d, _| {
                thread::open_task_states(d)
            })
            .inspect_err(|e| warn!("reading the threads one by one: {e}"));
        for (i, doc) in threads.iter().enumerate() {
            let states = match &open {
                Ok(open) => {
                    let states = open[i].clone().unwrap_or_default();
                    lock(&self.queue).scanned(doc, &self.me(), &states);
                    states
                }
                // One damaged thread must not keep the others from running.
                Err(_) => self.scan(doc),
            };
            self.settle_interrupted(doc, &states);
            self.clone().schedule(doc);
        }
        loop {
            let changed = tokio::select! {
                c = changes.recv() => c,
                _ = self.stop.cancelled() => break,
            };
            match changed {
                // A thread is read whole when its document first arrives; listing it in the
                // index may come first or after.
                Ok(c) if c.doc.is_index() => {
                    for doc in c.touched.threads.iter().filter_map(|t| DocId::parse(t)) {
                        if !lock(&self.queue).knows(&doc) && self.repo.holds(&doc) {
                            self.scan(&doc);
                            self.clone().schedule(&doc);
                        }
                    }
                }
                Ok(c) => {
                    self.take_in(&c.doc, &c.touched.tasks);
                    self.clone().schedule(&c.doc);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for doc in self.threads() {
                        self.scan(&doc);
                        self.clone().schedule(&doc);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        self.wind_down(changes).await;
    }

    /// The graceful stop: running tasks get [`STOP_GRACE`] to finish (a user's cancel still
    /// works meanwhile); then those left are interrupted and get [`STOP_RECORD`] to write how
    /// they ended.
    async fn wind_down(&self, mut changes: broadcast::Receiver<errand_sync::DocChanged>) {
        let all = u32::try_from(self.config.max_parallel.max(1)).unwrap_or(u32::MAX);
        let idle = self.slots.acquire_many(all);
        tokio::pin!(idle);
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut idle => return,
                () = &mut grace => break,
                changed = changes.recv() => match changed {
                    Ok(c) if !c.doc.is_index() => self.take_in(&c.doc, &c.touched.tasks),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for doc in self.threads() {
                            self.scan(&doc);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let running = lock(&self.running).clone();
        lock(&self.stopped).extend(running.keys().cloned());
        for (task, token) in &running {
            info!(%task, "interrupting: the desktop is stopping");
            token.cancel();
        }
        let _ = tokio::time::timeout(STOP_RECORD, idle).await;
        self.notifier.flush(NOTIFY_FLUSH).await;
        self.config.connectors.shutdown().await;
    }

    /// Tasks of a thread that a previous run left running or waiting cannot be resumed
    /// safely: end them with a reason.
    fn settle_interrupted(&self, doc: &DocId, states: &[thread::TaskState]) {
        let me = self.me();
        for task in states {
            if task.target == me
                && matches!(
                    task.status,
                    TaskStatus::Running | TaskStatus::WaitingApproval | TaskStatus::NeedsInput
                )
            {
                let reason = "interrupted: the desktop stopped while this task was running; it was not run again (send it again to retry)";
                self.record(
                    doc,
                    Flush::Own,
                    &format!("task {} interrupted", short(&task.id)),
                    |tx| {
                        thread::add_progress(tx, &task.id, reason, now_millis())?;
                        thread::finish(
                            tx,
                            &task.id,
                            Err(reason),
                            TaskStatus::Failed,
                            now_millis(),
                        )?;
                        conversation::add_answer(tx, &task.id, reason, TaskStatus::Failed, &[])
                    },
                );
                info!(task = %task.id, "settled an interrupted task");
                self.notifier
                    .notify(doc, &task.id, Event::Failed, Some(reason));
            }
        }
    }

    /// Starts the next queued task of a thread, if the thread is idle.
    fn schedule(self: Arc<Self>, doc: &DocId) {
        if doc.is_index() || self.stop.is_cancelled() {
            return;
        }
        // A busy thread starts nothing; its own commits land here too. The busy set is held
        // while a task is taken, so that two calls cannot both take one.
        let task = {
            let mut busy = lock(&self.busy);
            if busy.contains(doc.as_str()) {
                return;
            }
            let Some(task) = lock(&self.queue).next(doc) else {
                return;
            };
            busy.insert(doc.to_string());
            task
        };
        let doc = doc.clone();
        tokio::spawn(async move {
            let permit = tokio::select! {
                p = self.slots.acquire() => p.ok(),
                _ = self.stop.cancelled() => None,
            };
            if permit.is_some() {
                self.run_task(&doc, &task).await;
            }
            drop(permit);
            lock(&self.busy).remove(doc.as_str());
            // The next task of this thread, if any.
            self.clone().schedule(&doc);
        });
    }

    async fn run_task(self: &Arc<Self>, doc: &DocId, id: &str) {
        // Re-read: it may have changed while we waited for a slot.
        let Some(task) = self.task(doc, id) else {
            return;
        };
        if task.status != TaskStatus::Queued {
            return;
        }
        if let Some(end) = self.ends_unrun(&task) {
            let mut ended = vec![(task, end)];
            self.gather_unrun(doc, &mut ended);
            self.settle_unrun(doc, &ended);
            return;
        }
        // The claim: durable before anything runs.
        if let Err(e) = self
            .repo
            .change(doc, &format!("task {} running", short(&task.id)), |tx| {
                thread::set_status(tx, &task.id, TaskStatus::Running, now_millis())
            })
        {
            warn!(task = %task.id, "cannot claim task: {e}");
            return;
        }
        info!(task = %task.id, "running");
        // Not a child of `stop`: a stop first lets the task finish (see `wind_down`).
        let cancel = CancellationToken::new();
        lock(&self.running).insert(task.id.clone(), cancel.clone());
        let mut ctx = TaskContext {
            shared: self.clone(),
            doc: doc.clone(),
            task: task.id.clone(),
            cancel: cancel.clone(),
            steps: Vec::new(),
        };
        let outcome = ctx.execute(&task).await;
        let steps = ctx.steps;
        lock(&self.running).remove(&task.id);
        let id = task.id.clone();
        match outcome {
            Ok(output) => {
                let (artifacts, left_out) = self.store_blobs(&output);
                let whole = match left_out.is_empty() {
                    true => output.text,
                    false => format!("{}\n{}", left_out.join("\n"), output.text),
                };
                let (text, overflow) = split_result(&whole, &self.repo.quotas());
                let overflow_artifact =
                    overflow.and_then(|bytes| self.store_blob("result.txt", "text/plain", &bytes));
                self.record(
                    doc,
                    Flush::Own,
                    &format!("task {} done", short(&id)),
                    |tx| {
                        for a in artifacts.iter().chain(overflow_artifact.iter()) {
                            thread::add_artifact(tx, &id, a)?;
                        }
                        thread::finish(tx, &id, Ok(&text), TaskStatus::Done, now_millis())?;
                        conversation::add_answer(tx, &id, &text, TaskStatus::Done, &steps)
                    },
                );
                self.notifier.notify(doc, &id, Event::Done, Some(&text));
            }
            Err(mut failure) => {
                let stopped = lock(&self.stopped).remove(&id) && failure.cancelled;
                let (status, verb) = if stopped {
                    failure.message = stop_reason();
                    (TaskStatus::Failed, "interrupted by a stop")
                } else if failure.cancelled {
                    (TaskStatus::Cancelled, "cancelled")
                } else {
                    (TaskStatus::Failed, "failed")
                };
                let quotas = self.repo.quotas();
                let output = failure
                    .output
                    .as_deref()
                    .map(|text| split_result(text, &quotas));
                self.record(
                    doc,
                    Flush::Own,
                    &format!("task {} {verb}", short(&id)),
                    |tx| {
                        if stopped {
                            thread::add_progress(tx, &id, "the desktop was stopped", now_millis())?;
                        }
                        // What it printed before it was stopped is kept (the start of it, if long).
                        if let Some((text, _)) = &output {
                            thread::finish(tx, &id, Ok(text.as_str()), status, now_millis())?;
                        }
                        thread::finish(tx, &id, Err(&failure.message), status, now_millis())?;
                        conversation::add_answer(tx, &id, &failure.message, status, &steps)
                    },
                );
                if status == TaskStatus::Failed {
                    self.notifier
                        .notify(doc, &id, Event::Failed, Some(&failure.message));
                }
            }
        }
    }

    fn store_blob(&self, name: &str, mime: &str, bytes: &[u8]) -> Option<Artifact> {
        if let Some(refusal) = blob_refusal(name, bytes.len(), &self.repo.quotas()) {
            warn!("{refusal}");
            return None;
        }
        match self.repo.store().put_blob(bytes) {
            Ok(hash) => Some(Artifact {
                hash,
                size: bytes.len() as u64,
                mime: mime.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) => {
                warn!("cannot store {name}: {e}");
                None
            }
        }
    }

    /// The artifacts stored, and a line for each one left out (too large).
    fn store_blobs(&self, output: &ToolOutput) -> (Vec<Artifact>, Vec<String>) {
        let quotas = self.repo.quotas();
        let mut stored = Vec::new();
        let mut left_out = Vec::new();
        for b in &output.blobs {
            match blob_refusal(&b.name, b.bytes.len(), &quotas) {
                Some(refusal) => left_out.push(refusal),
                None => stored.extend(self.store_blob(&b.name, &b.mime, &b.bytes)),
            }
        }
        (stored, left_out)
    }
}
