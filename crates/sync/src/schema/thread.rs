//! A thread document: one conversation with its messages and tasks.
//!
//! ```text
//! { schema, thread, title,
//!   messages: [ { id, kind, task, text, at, ... } ],      (the desktop's; see [`Message`])
//!   tasks: { <bucket>: {                             (16 buckets "00".."0f", see TASK_BUCKETS)
//!            <task>: { prompt, target, created, cancel_requested,                 (the sender's)
//!                      status, started, finished, progress: [ {at, text} ],      (the executor's)
//!                      result, error, artifacts: [ {hash, size, mime, name} ] } } },
//!   approvals: { <approval>: { task, action, class, requested_by, requested_at, expires_at,
//!                              expired_at,
//!                              decisions: { <device>: { approve, at, signature } } } } }
//! ```
//!
//! An approval's request fields are the executor's; each deciding device writes only its own
//! entry under `decisions`, signed, so two phones answering at once cannot interleave fields.
//! The executor decides expiry by its own clock and writes `expired_at` when it gives up
//! waiting; a decision that arrives after that does not count, whatever the deciding device's
//! clock said, and only the asking device's own `expired_at` is believed.
//!
//! Each field has one writer: the device that sent a task owns its prompt and cancel request,
//! the executor owns everything about how it ran. That keeps concurrent edits from fighting.
//!
//! A thread is a conversation: each task is a turn, its prompt the user's side (owned by the
//! sender, so it is not repeated as a message), and the desktop's answers and questions are
//! entries of `messages` (see [`Message`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc, hydrate};
use serde::{Deserialize, Serialize};

use super::{Fields, SCHEMA_VERSION, get_i64, get_obj, get_str};

mod approvals;
mod messages;

pub use approvals::*;
pub use messages::*;

/// The largest prompt a task may carry, in bytes (100 KiB): far more than anyone types or
/// pastes into a task, and small enough that a thread of them stays quick to sync and read.
pub const MAX_PROMPT_BYTES: usize = 100 * 1024;

/// A prompt over [`MAX_PROMPT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the prompt is {bytes} bytes, more than the limit of {} bytes (100 KiB) a task may carry",
    MAX_PROMPT_BYTES
)]
pub struct PromptTooLarge {
    pub bytes: usize,
}

/// The rule on prompt size, for every device that writes a task and for the desktop that runs
/// one (a peer may write a task without asking its own software).
pub fn check_prompt(prompt: &str) -> Result<(), PromptTooLarge> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(PromptTooLarge {
            bytes: prompt.len(),
        });
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    WaitingApproval,
    /// The agent asked the user a question and waits for the answer.
    NeedsInput,
    Done,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::WaitingApproval => "waiting_approval",
            TaskStatus::NeedsInput => "needs_input",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended and will not change status again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "waiting_approval" => TaskStatus::WaitingApproval,
            "needs_input" => TaskStatus::NeedsInput,
            "done" => TaskStatus::Done,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            _ => return Err(()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub at: i64,
    pub text: String,
}

/// A large output kept as a content-addressed blob beside the documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub thread: String,
    pub prompt: String,
    /// The device that should run it.
    pub target: String,
    pub created_by: String,
    pub created: i64,
    pub status: TaskStatus,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub progress: Vec<Progress>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub artifacts: Vec<Artifact>,
    pub cancel_requested: bool,
    /// Notifications the target desktop sent about this task, and how each went.
    #[serde(default)]
    pub notifications: Vec<Notice>,
    /// The schedule that made this task, and the slot (the scheduled time, Unix ms) it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<i64>,
}

/// One notification about a task, as its target desktop delivered it (or failed to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The device whose endpoint it went to.
    pub device: String,
    /// `done`, `failed`, `approval`, `question`.
    pub event: String,
    pub at: i64,
    pub delivered: bool,
    /// `HTTP 200`, or why it failed.
    pub outcome: String,
}

/// Records a notification's outcome on its task. Executor only.
pub fn add_notice(
    tx: &mut impl Transactable,
    task: &str,
    n: &Notice,
) -> Result<(), AutomergeError> {
    append_to_task(
        tx,
        task,
        "notified",
        HashMap::from([
            ("device", hydrate::Value::scalar(n.device.as_str())),
            ("event", hydrate::Value::scalar(n.event.as_str())),
            ("at", hydrate::Value::scalar(n.at)),
            ("delivered", hydrate::Value::scalar(n.delivered)),
            ("outcome", hydrate::Value::scalar(n.outcome.as_str())),
        ]),
    )
}

/// What the sender of a task writes.
#[derive(Clone, Debug)]
pub struct NewTask<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub target: &'a str,
    pub created: i64,
}

/// How many maps the tasks of a thread are spread over (`tasks/<bucket>/<task id>`).
///
/// Why not one map: automerge 0.12 merges a change received from a peer by walking every entry
/// of each map the change touches, so with one flat map a received task cost time in
/// proportion to the thread's length (2.5 ms at 10,000 tasks, against 0.1 ms for the same
/// change made locally). A bucket holds about 1/16 of the tasks. More buckets make merges
/// cheaper still but every full scan of the tasks dearer (each map read has a fixed cost):
/// 16 measured best for the executor's round trip and propagation together.
pub const TASK_BUCKETS: u32 = 16;

/// The bucket a task id belongs to: FNV-1a of the id, so every device agrees on it, whatever
/// the id looks like.
pub fn task_bucket(task: &str) -> String {
    let hash = task.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{:02x}", hash % TASK_BUCKETS)
}

/// Writes the skeleton of a new thread document (by its creator only).
///
/// The task buckets are created here, once, by the thread's creator: two devices creating the
/// same bucket concurrently would conflict, and the losing bucket's tasks would be hidden.
pub fn create(tx: &mut impl Transactable, thread: &str, title: &str) -> Result<(), AutomergeError> {
    tx.init_root_from_hydrate(&skeleton(thread, title, None))
}

/// [`create`], with the thread's first task in the same change (what a send into a new thread
/// writes).
pub fn create_with_task(
    tx: &mut impl Transactable,
    thread: &str,
    title: &str,
    task: &NewTask<'_>,
) -> Result<(), AutomergeError> {
    tx.init_root_from_hydrate(&skeleton(thread, title, Some(task)))
}

/// A new thread's whole content, written as one batch: automerge places a batch's operations
/// in its columns together, where operations made one by one are placed one at a time (the
/// 32 operations of a new thread and its task cost about three times as much that way).
/// Only for an empty document: a batch at the root goes after everything already there.
fn skeleton(thread: &str, title: &str, first: Option<&NewTask<'_>>) -> hydrate::Map {
    let first = first.map(|task| (task_bucket(task.id), task));
    let buckets: HashMap<String, hydrate::Value> = (0..TASK_BUCKETS)
        .map(|b| {
            let bucket = format!("{b:02x}");
            let tasks: HashMap<String, hydrate::Value> = match &first {
                Some((of, task)) if *of == bucket => {
                    HashMap::from([(task.id.to_owned(), task_fields(task))])
                }
                _ => HashMap::new(),
            };
            (bucket, hydrate::Map::from(tasks).into())
        })
        .collect();
    HashMap::from([
        ("schema", hydrate::Value::scalar(SCHEMA_VERSION)),
        ("thread", hydrate::Value::scalar(thread)),
        ("title", hydrate::Value::scalar(title)),
        ("messages", hydrate::Value::list()),
        ("tasks", hydrate::Value::from(hydrate::Map::from(buckets))),
        ("approvals", hydrate::Value::map()),
    ])
    .into()
}

/// A task's own fields, as its sender writes them.
fn task_fields(task: &NewTask<'_>) -> hydrate::Value {
    HashMap::from([
        ("prompt", hydrate::Value::scalar(task.prompt)),
        ("target", hydrate::Value::scalar(task.target)),
        ("created", hydrate::Value::scalar(task.created)),
        (
            "status",
            hydrate::Value::scalar(TaskStatus::Queued.as_str()),
        ),
    ])
    .into()
}

/// The bucket map that holds (or will hold) `task`.
fn bucket_of(doc: &impl ReadDoc, task: &str) -> Option<ObjId> {
    let tasks = get_obj(doc, &ROOT, "tasks")?;
    get_obj(doc, &tasks, &task_bucket(task))
}

fn section(doc: &impl ReadDoc, key: &str) -> Result<ObjId, AutomergeError> {
    get_obj(doc, &ROOT, key).ok_or(AutomergeError::InvalidOp(ObjType::Map))
}

/// Adds a task, queued. Kept to the fields the sender owns, since every byte here crosses the
/// network on each send; the executor creates its own fields (progress, artifacts) when it
/// first writes them, and an absent `cancel_requested` reads as false.
pub fn add_task(tx: &mut impl Transactable, task: &NewTask<'_>) -> Result<(), AutomergeError> {
    let bucket = bucket_of(tx, task.id).ok_or(AutomergeError::InvalidOp(ObjType::Map))?;
    tx.batch_create_object(&bucket, task.id, &task_fields(task), false)?;
    Ok(())
}

/// Adds a run of a schedule: a task like any other, which also names its schedule and slot.
/// Written by the desktop that runs the schedule, which is both sender and target.
pub fn add_scheduled_task(
    tx: &mut impl Transactable,
    task: &NewTask<'_>,
    schedule: &str,
    slot: i64,
) -> Result<(), AutomergeError> {
    add_task(tx, task)?;
    let obj = task_obj(tx, task.id)?;
    tx.put(&obj, "schedule", schedule)?;
    tx.put(&obj, "slot", slot)?;
    Ok(())
}

fn task_obj(doc: &impl ReadDoc, task: &str) -> Result<ObjId, AutomergeError> {
    bucket_of(doc, task)
        .and_then(|bucket| get_obj(doc, &bucket, task))
        .ok_or(AutomergeError::InvalidOp(ObjType::Map))
}

/// Appends an entry with `fields` to the list under `key` of `task`, in one batch (see the
/// module docs of `schema`).
fn append_to_task(
    tx: &mut impl Transactable,
    task: &str,
    key: &str,
    fields: HashMap<&str, hydrate::Value>,
) -> Result<(), AutomergeError> {
    let obj = task_obj(tx, task)?;
    let list = list_in(tx, &obj, key)?;
    let len = tx.length(&list);
    tx.batch_create_object(&list, len, &fields.into(), true)?;
    Ok(())
}

/// The list under `key`, created on first use (by its single writer, the executor).
fn list_in(tx: &mut impl Transactable, obj: &ObjId, key: &str) -> Result<ObjId, AutomergeError> {
    match get_obj(tx, obj, key) {
        Some(list) => Ok(list),
        None => tx.put_object(obj, key, ObjType::List),
    }
}

/// Sets a task's status; `started` and `finished` follow from it. Executor only.
pub fn set_status(
    tx: &mut impl Transactable,
    task: &str,
    status: TaskStatus,
    at: i64,
) -> Result<(), AutomergeError> {
    let obj = task_obj(tx, task)?;
    set_status_of(tx, &obj, status, at)
}

/// [`set_status`] on the task's object, already found (a look-up is three map reads).
fn set_status_of(
    tx: &mut impl Transactable,
    obj: &ObjId,
    status: TaskStatus,
    at: i64,
) -> Result<(), AutomergeError> {
    tx.put(obj, "status", status.as_str())?;
    if status == TaskStatus::Running && get_i64(tx, obj, "started").is_none() {
        tx.put(obj, "started", at)?;
    }
    if status.is_final() {
        tx.put(obj, "finished", at)?;
    }
    Ok(())
}

pub fn add_progress(
    tx: &mut impl Transactable,
    task: &str,
    text: &str,
    at: i64,
) -> Result<(), AutomergeError> {
    append_to_task(
        tx,
        task,
        "progress",
        HashMap::from([
            ("at", hydrate::Value::scalar(at)),
            ("text", hydrate::Value::scalar(text)),
        ]),
    )
}

/// Records how a task ended: a result, or an error.
pub fn finish(
    tx: &mut impl Transactable,
    task: &str,
    outcome: Result<&str, &str>,
    status: TaskStatus,
    at: i64,
) -> Result<(), AutomergeError> {
    let obj = task_obj(tx, task)?;
    match outcome {
        Ok(result) => tx.put(&obj, "result", result)?,
        Err(error) => tx.put(&obj, "error", error)?,
    }
    set_status_of(tx, &obj, status, at)
}

pub fn add_artifact(
    tx: &mut impl Transactable,
    task: &str,
    artifact: &Artifact,
) -> Result<(), AutomergeError> {
    append_to_task(
        tx,
        task,
        "artifacts",
        HashMap::from([
            ("hash", hydrate::Value::scalar(artifact.hash.as_str())),
            ("size", hydrate::Value::scalar(artifact.size)),
            ("mime", hydrate::Value::scalar(artifact.mime.as_str())),
            ("name", hydrate::Value::scalar(artifact.name.as_str())),
        ]),
    )
}

/// Asks the executor to stop a task. Sender only.
pub fn request_cancel(tx: &mut impl Transactable, task: &str) -> Result<(), AutomergeError> {
    let obj = task_obj(tx, task)?;
    tx.put(&obj, "cancel_requested", true)?;
    Ok(())
}

pub fn title(doc: &impl ReadDoc) -> Option<String> {
    get_str(doc, &ROOT, "title")
}

/// The name under which [`task_ids`] is kept as a stored view (`Repo::read_views`).
pub const TASK_IDS_VIEW: &str = "thread-task-ids/1";

/// The ids of every task of the thread, in no particular order: what finding a task by its
/// id, or a prefix of it, reads of each thread.
pub fn task_ids(doc: &impl ReadDoc) -> Vec<String> {
    let Some(tasks) = get_obj(doc, &ROOT, "tasks") else {
        return Vec::new();
    };
    doc.keys(&tasks)
        .filter_map(|b| get_obj(doc, &tasks, &b))
        .flat_map(|bucket| {
            doc.map_range(&bucket, ..)
                .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                .map(|item| item.key.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn task(doc: &impl ReadDoc, thread: &str, id: &str) -> Option<Task> {
    let obj = task_obj(doc, id).ok()?;
    Some(task_at(doc, thread, id, &obj))
}

fn task_at(doc: &impl ReadDoc, thread: &str, id: &str, obj: &ObjId) -> Task {
    let fields = Fields::read(doc, obj);
    // Each list entry is a small map: read it whole, in one pass.
    let entries = |key: &str| -> Vec<Fields> {
        fields
            .obj(key)
            .map(|list| {
                doc.list_range(list, ..)
                    .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                    .map(|item| Fields::read(doc, &item.id()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let progress = entries("progress")
        .iter()
        .filter_map(|e| {
            Some(Progress {
                at: e.i64("at")?,
                text: e.str("text")?,
            })
        })
        .collect();
    let artifacts = entries("artifacts")
        .iter()
        .filter_map(|e| {
            Some(Artifact {
                hash: e.str("hash")?,
                size: u64::try_from(e.i64("size")?).ok()?,
                mime: e.str("mime").unwrap_or_default(),
                name: e.str("name").unwrap_or_default(),
            })
        })
        .collect();
    Task {
        id: id.to_owned(),
        thread: thread.to_owned(),
        prompt: fields.str("prompt").unwrap_or_default(),
        target: fields.str("target").unwrap_or_default(),
        created_by: creator(obj),
        created: fields.i64("created").unwrap_or(0),
        status: fields
            .str("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(TaskStatus::Queued),
        started: fields.i64("started"),
        finished: fields.i64("finished"),
        progress,
        result: fields.str("result"),
        error: fields.str("error"),
        artifacts,
        cancel_requested: fields.bool("cancel_requested").unwrap_or(false),
        schedule: fields.str("schedule"),
        slot: fields.i64("slot"),
        notifications: entries("notified")
            .iter()
            .filter_map(|e| {
                Some(Notice {
                    device: e.str("device")?,
                    event: e.str("event")?,
                    at: e.i64("at")?,
                    delivered: e.bool("delivered").unwrap_or(false),
                    outcome: e.str("outcome").unwrap_or_default(),
                })
            })
            .collect(),
    }
}

/// Where a task stands in its thread, the same on every device and whatever the senders'
/// clocks say: the counter of the operation that created it is a Lamport clock (automerge
/// numbers each operation above every one its author had seen), so a task sent after another
/// had arrived sorts after it. Tasks sent concurrently, neither sender having seen the other's,
/// are ordered by counter, then by sending actor.
fn causal_key(obj: &ObjId) -> (u64, Vec<u8>) {
    match obj {
        ObjId::Id(counter, actor, _) => (*counter, actor.to_bytes().to_vec()),
        ObjId::Root => (0, Vec::new()),
    }
}

/// Every task's id and object, in causal order (see [`causal_key`]).
fn task_objects(doc: &impl ReadDoc) -> Vec<(String, ObjId)> {
    let Some(tasks) = get_obj(doc, &ROOT, "tasks") else {
        return Vec::new();
    };
    let mut out: Vec<(String, ObjId)> = doc
        .keys(&tasks)
        .filter_map(|b| get_obj(doc, &tasks, &b))
        .flat_map(|bucket| {
            doc.map_range(&bucket, ..)
                .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                .map(|item| (item.key.to_string(), item.id()))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by_cached_key(|(id, obj)| (causal_key(obj), id.clone()));
    out
}

/// The device that created an object: named by the actor of the operation that made it
/// (actors begin with the device id), so a task records its sender without spending 64 bytes of
/// every send on it.
pub(crate) fn creator(obj: &ObjId) -> String {
    match obj {
        ObjId::Id(_, actor, _) => crate::ids::actor_device(actor),
        ObjId::Root => String::new(),
    }
}

/// How many tasks the thread holds (counts keys; reads no task).
pub fn task_count(doc: &impl ReadDoc) -> usize {
    let Some(tasks) = get_obj(doc, &ROOT, "tasks") else {
        return 0;
    };
    doc.keys(&tasks)
        .filter_map(|b| get_obj(doc, &tasks, &b))
        .map(|bucket| doc.keys(&bucket).count())
        .sum()
}

/// A task's status alone (a few map look-ups).
pub fn task_status(doc: &impl ReadDoc, task: &str) -> Option<TaskStatus> {
    let obj = task_obj(doc, task).ok()?;
    get_str(doc, &obj, "status")?.parse().ok()
}

/// The few fields of a task that decide what happens next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub id: String,
    pub status: TaskStatus,
    pub target: String,
    pub cancel_requested: bool,
    pub created: i64,
    /// Its place in the thread's order.
    pub order: TaskOrder,
}

/// Where a task stands in its thread's order (see [`causal_key`]): sorts as the thread does,
/// so a reader that keeps some of a thread's tasks keeps them in order without reading the
/// others.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskOrder {
    key: (u64, Vec<u8>),
    id: String,
}

impl TaskOrder {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The state of every task not in `skip`, in the thread's order (causal, see [`causal_key`]).
/// Much cheaper than [`tasks`] on a long thread: it reads four fields per task, and none for
/// the tasks the caller already knows to have ended.
pub fn task_states(doc: &impl ReadDoc, skip: &std::collections::HashSet<String>) -> Vec<TaskState> {
    task_objects(doc)
        .into_iter()
        .filter(|(id, _)| !skip.contains(id))
        .map(|(id, obj)| state_of(doc, id, &obj))
        .collect()
}

/// The name under which [`open_task_states`] is kept as a stored view. Bump it whenever
/// [`TaskState`], its encoding or what the function returns changes.
pub const OPEN_TASKS_VIEW: &str = "thread-open-tasks/1";

/// The state of every task that has not ended ([`TaskStatus::is_final`]), in the thread's
/// order: what a desktop starting up needs of a thread (what waits to run, what was running
/// when it stopped).
pub fn open_task_states(doc: &impl ReadDoc) -> Vec<TaskState> {
    task_states(doc, &std::collections::HashSet::new())
        .into_iter()
        .filter(|s| !s.status.is_final())
        .collect()
}

/// One task's state, by its id: a few map look-ups, whatever the length of the thread.
pub fn task_state(doc: &impl ReadDoc, id: &str) -> Option<TaskState> {
    let obj = task_obj(doc, id).ok()?;
    Some(state_of(doc, id.to_owned(), &obj))
}

fn state_of(doc: &impl ReadDoc, id: String, obj: &ObjId) -> TaskState {
    state_from(&Fields::read(doc, obj), id, obj)
}

fn state_from(fields: &Fields, id: String, obj: &ObjId) -> TaskState {
    TaskState {
        status: fields
            .str("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(TaskStatus::Queued),
        target: fields.str("target").unwrap_or_default(),
        cancel_requested: fields.bool("cancel_requested").unwrap_or(false),
        created: fields.i64("created").unwrap_or(0),
        order: TaskOrder {
            key: causal_key(obj),
            id: id.clone(),
        },
        id,
    }
}

/// A task's state with what an event about it shows: what was asked and, once it failed,
/// why. Read in the one pass over the task's fields that its state costs anyway, where the
/// whole task ([`task`]) would also read its progress, artifacts and notices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskHeadline {
    pub state: TaskState,
    pub prompt: String,
    pub error: Option<String>,
}

fn headline_of(doc: &impl ReadDoc, id: String, obj: &ObjId) -> TaskHeadline {
    let fields = Fields::read(doc, obj);
    TaskHeadline {
        prompt: fields.str("prompt").unwrap_or_default(),
        error: fields.str("error"),
        state: state_from(&fields, id, obj),
    }
}

/// One task's headline, by its id.
pub fn task_headline(doc: &impl ReadDoc, id: &str) -> Option<TaskHeadline> {
    let obj = task_obj(doc, id).ok()?;
    Some(headline_of(doc, id.to_owned(), &obj))
}

/// The headlines of the tasks `ids` (those the document holds), in the order given.
///
/// The event watcher reads what each merge touched through this. A merge that brought a
/// whole thread (a fresh device's first sync) touches every task in it, and finding each one
/// by its id costs three seeks (the tasks map, its bucket, the task); here the tasks map and
/// each bucket are found once, so a task costs one.
pub fn task_headlines_of<'a>(
    doc: &impl ReadDoc,
    ids: impl ExactSizeIterator<Item = &'a str>,
) -> Vec<TaskHeadline> {
    let Some(tasks) = get_obj(doc, &ROOT, "tasks") else {
        return Vec::new();
    };
    let wanted = ids.len();
    let mut buckets: std::collections::HashMap<String, Option<ObjId>> = Default::default();
    let mut found: Vec<(String, ObjId)> = Vec::with_capacity(wanted);
    for id in ids {
        let bucket = buckets
            .entry(task_bucket(id))
            .or_insert_with_key(|b| get_obj(doc, &tasks, b));
        if let Some(obj) = bucket.as_ref().and_then(|b| get_obj(doc, b, id)) {
            found.push((id.to_owned(), obj));
        }
    }
    found
        .into_iter()
        .map(|(id, obj)| headline_of(doc, id, &obj))
        .collect()
}

/// Every task's headline, in the thread's order.
pub fn task_headlines(doc: &impl ReadDoc) -> Vec<TaskHeadline> {
    task_objects(doc)
        .into_iter()
        .map(|(id, obj)| headline_of(doc, id, &obj))
        .collect()
}

/// The name under which [`tasks`] is kept as a stored view (`Repo::read_views`). Bump it
/// whenever [`Task`], its encoding or what [`tasks`] returns changes.
pub const TASKS_VIEW: &str = "thread-tasks/1";

/// Every task of the thread, in the thread's order (causal, see [`causal_key`]).
pub fn tasks(doc: &impl ReadDoc, thread: &str) -> Vec<Task> {
    task_objects(doc)
        .into_iter()
        .map(|(id, obj)| task_at(doc, thread, &id, &obj))
        .collect()
}

#[cfg(test)]
mod tests;
