//! Who may write what: the one rule every node applies to every change it receives.
//!
//! A member holds a valid key and can write any operation into any document it holds. So a
//! node checks each received change, operation by operation, against the owner of what the
//! operation touches, and refuses the whole change (and the message that brought it) if one
//! operation writes what its author does not own. Nothing is ever read from a document that
//! its owner did not write, because nothing else gets in.
//!
//! The rules, by the path of the object an operation writes into:
//!
//! | document | object | who may write |
//! |---|---|---|
//! | both | the root, a thread's `tasks` | the document's first change only (no dependencies, nothing overwritten) |
//! | thread | `tasks/<bucket>`: a new task | a phone or desktop; never overwritten or deleted |
//! | thread | a task's `prompt`, `target`, `created`, `cancel_requested`, `schedule`, `slot` | its sender (the task's creator) |
//! | thread | a task's `status` | its target desktop; the sender only `queued`, when it creates the task |
//! | thread | a task's `started`, `finished`, `result`, `error`, `progress`, `artifacts` | its target desktop |
//! | thread | `approvals/<id>` and its request fields | a desktop, the target of the approval's task |
//! | thread | `approvals/<id>/decisions/<device>` | that device, if its role may approve |
//! | thread | `messages`: a new message, and its fields | a desktop (readers use only the task's target's) |
//! | thread | `messages/<n>/answers/<device>` | that device, if its role may approve |
//! | index | `members/<device>`, `revoked/<device>` | a phone or desktop (the entries are signed certificates, checked on their own) |
//! | index | `addrs/<device>` | that device; the device that paired it may create the entry first |
//! | index | `threads/<thread>` | a phone or desktop creates it; only its creator changes it |
//! | index | `notify/<device>` | that device (where it wants to be told of events) |
//! | index | `schedules/<id>`: a new schedule, and its rule and text | a phone or desktop; only its creator writes the rule |
//! | index | a schedule's `paused`, `resumed_at`, `removed` | any phone or desktop |
//! | index | a schedule's `run` (what happened to its slots) | the schedule's target desktop |
//! | thread | a task's `notified` (deliveries of notifications) | its target desktop |
//!
//! And for every object: nothing is deleted (errand never deletes), and a new entry in a map
//! may not stand beside a concurrent one by another device under the same key (automerge
//! would show only one of them, so a member could hide a task by writing its id again).
//! Everything not listed is refused.
//!
//! A revoked device's changes are checked as a former phone's would be: its earlier writes
//! stay in the history every member holds, and what it may do as a writer gives it no
//! authority (the executor runs tasks, and counts decisions and answers, only from current
//! members).

use automerge::legacy::{Key, ObjectId, Op, OpType};
use automerge::{Automerge, ObjId, Prop, ReadDoc, ScalarValue};

use crate::ids::{ACTOR_DEVICE_BYTES, DeviceId, Role, actor_device, hex};
use crate::schema::DocId;
use crate::schema::touched::Touched;

/// What a node knows of the device that wrote a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A current member with this role.
    Member(Role),
    /// A device that was a member and has been revoked.
    Former,
    /// Not a member this node knows of.
    Unknown,
}

impl Standing {
    fn may_send(self) -> bool {
        matches!(
            self,
            Standing::Member(Role::Phone | Role::Desktop) | Standing::Former
        )
    }

    fn is_desktop(self) -> bool {
        matches!(self, Standing::Member(Role::Desktop) | Standing::Former)
    }
}

/// A change writes what its author does not own.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a change by {author} {what} (at {path})")]
pub struct Violation {
    pub author: String,
    pub what: String,
    pub path: String,
}

/// The two kinds of document, whose rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Thread,
}

/// One step of the path to an object: the key it sits under and the object itself.
#[derive(Clone, Debug)]
pub struct Seg {
    key: String,
    obj: ObjId,
}

/// Checks every operation of `change` (already applied to `doc`, so the objects it writes into
/// can be found) against the owners of what it touches.
pub fn check(
    doc: &Automerge,
    id: &DocId,
    change: &automerge::ExpandedChange,
    author: &DeviceId,
    standing: Standing,
) -> Result<(), Violation> {
    Checker::new(doc, id, &mut Paths::default()).check(
        change,
        author,
        standing,
        &mut Touched::default(),
    )
}

/// The paths of a document's objects found so far. An object never moves, so a path once
/// found holds for the document's life in memory; kept with the loaded document, so a
/// thread's buckets are looked up once, not on every received task.
#[derive(Debug, Default)]
pub struct Paths(std::collections::HashMap<ObjKey, Vec<Seg>>);

/// An object as a change names it: the root, or the operation that made it. Kept as the
/// operation's counter and actor, not as automerge's "counter@actor" text, because every
/// operation looks its object up and formatting an actor as hex showed in profiles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ObjKey {
    Root,
    Made(u64, automerge::ActorId),
}

impl ObjKey {
    fn of(obj: &ObjectId) -> ObjKey {
        match obj {
            ObjectId::Root => ObjKey::Root,
            ObjectId::Id(id) => ObjKey::Made(id.counter(), id.actor().clone()),
        }
    }

    /// How automerge's `import` spells it.
    fn text(&self) -> String {
        match self {
            ObjKey::Root => "_root".to_owned(),
            // Our own hex: automerge's `Display` for an actor showed in profiles.
            ObjKey::Made(counter, actor) => format!("{counter}@{}", hex(actor.to_bytes())),
        }
    }
}

/// The deepest path followed. Documents errand writes are five levels deep at most; an
/// operation deeper than this is refused (a check) or only counted as "other" (what a change
/// touched).
const MAX_DEPTH: usize = 16;

/// At most this many paths are kept per document; past it the cache starts over.
const MAX_PATHS: usize = 4096;

/// Checks the changes of one merge, finding each object's path once.
#[derive(Debug)]
pub struct Checker<'a> {
    doc: &'a Automerge,
    kind: Kind,
    paths: &'a mut Paths,
    targets: Targets,
}

/// The targets of tasks looked up so far, by task object. A task's executor writes several of
/// its fields, each checked against the target; a checker reads a document that does not
/// change while it lives, so one lookup per task answers them all.
#[derive(Debug, Default)]
struct Targets(std::collections::HashMap<ObjId, Option<String>>);

impl Targets {
    /// Whether `device` is the target of the task object `task`, as its sender wrote it.
    fn is(&mut self, doc: &Automerge, task: &ObjId, device: &str) -> bool {
        self.0
            .entry(task.clone())
            .or_insert_with(|| target_of(doc, task))
            .as_deref()
            == Some(device)
    }
}

impl<'a> Checker<'a> {
    /// A checker of changes applied to `doc`, remembering paths in `paths` (which must belong
    /// to this document).
    pub fn new(doc: &'a Automerge, id: &DocId, paths: &'a mut Paths) -> Checker<'a> {
        let kind = if id.is_index() {
            Kind::Index
        } else {
            Kind::Thread
        };
        if paths.0.len() > MAX_PATHS {
            paths.0.clear();
        }
        Checker {
            doc,
            kind,
            paths,
            targets: Targets::default(),
        }
    }

    /// See [`check`]; also records in `touched` what the change wrote.
    pub fn check(
        &mut self,
        change: &automerge::ExpandedChange,
        author: &DeviceId,
        standing: Standing,
        touched: &mut Touched,
    ) -> Result<(), Violation> {
        let Checker {
            doc,
            kind,
            paths,
            targets,
        } = self;
        let (doc, kind) = (*doc, *kind);
        walk(
            doc,
            paths,
            change,
            (hex(author.as_bytes()), author.as_bytes().to_vec()),
            standing,
            |path, op, writer| {
                touched.record(kind == Kind::Index, keys(path, op));
                match kind {
                    Kind::Thread => thread_op(doc, targets, path, op, writer),
                    Kind::Index => index_op(doc, path, op, writer),
                }
            },
        )
    }

    /// What a change made on this device wrote (it is not checked: its owner rules are the
    /// writer's own code's to keep).
    pub fn touched(&mut self, change: &automerge::ExpandedChange) -> Touched {
        let mut touched = Touched::default();
        let index = self.kind == Kind::Index;
        let unchecked = (String::new(), Vec::new());
        let walked = walk(
            self.doc,
            self.paths,
            change,
            unchecked,
            Standing::Unknown,
            |path, op, _| {
                touched.record(index, keys(path, op));
                Ok(())
            },
        );
        if walked.is_err() {
            // An object it wrote into could not be found: say something changed, not what.
            touched.other = true;
        }
        touched
    }
}

/// Calls `visit` with each operation of `change` and the path of the object it writes into,
/// finding each path once (and remembering it in `paths`).
fn walk(
    doc: &Automerge,
    paths: &mut Paths,
    change: &automerge::ExpandedChange,
    (device, key): (String, Vec<u8>),
    standing: Standing,
    mut visit: impl FnMut(&[Seg], &Op, &Writer) -> Verdict,
) -> Result<(), Violation> {
    let writer = Writer {
        device,
        key,
        standing,
        first_change: change.deps.is_empty(),
        actor: change.actor_id.clone(),
        start_op: change.start_op.get(),
    };
    for (n, op) in change.operations.iter().enumerate() {
        let obj_key = ObjKey::of(&op.obj);
        if !paths.0.contains_key(&obj_key) {
            let path = path_of(doc, &obj_key.text()).ok_or_else(|| Violation {
                author: writer.device.clone(),
                what: "writes into an object the document does not hold".into(),
                path: obj_key.text(),
            })?;
            paths.0.insert(obj_key.clone(), path);
        }
        let path = &paths.0[&obj_key];
        visit(path, op, &writer).map_err(|what| Violation {
            author: writer.device.clone(),
            what,
            path: describe(path, op),
        })?;
        // An object this change makes sits where the change put it: its path is known
        // without asking the document for its parents (the costly part of a check). Not
        // past errand's depth: a change nesting objects thousands deep would otherwise
        // have its paths cost memory in the square of its length.
        if matches!(op.action, OpType::Make(_)) && path.len() < MAX_DEPTH {
            let id = ObjKey::Made(writer.start_op + n as u64, writer.actor.clone());
            if let Ok((obj, _)) = doc.import(&id.text()) {
                let mut made: Vec<Seg> = path.clone();
                made.push(Seg {
                    key: op_key(op).unwrap_or("#").to_owned(),
                    obj,
                });
                paths.0.insert(id, made);
            }
        }
    }
    Ok(())
}

/// The keys from the root to where `op` writes.
fn keys<'a>(path: &'a [Seg], op: &'a Op) -> impl Iterator<Item = &'a str> {
    path.iter()
        .map(|s| s.key.as_str())
        .chain(std::iter::once(op_key(op).unwrap_or("#")))
}

struct Writer {
    /// The author's device id as hex, as keys and targets spell it.
    device: String,
    /// The same as bytes, as actors carry it: values' authors are compared with it.
    key: Vec<u8>,
    standing: Standing,
    first_change: bool,
    actor: automerge::ActorId,
    start_op: u64,
}

impl Writer {
    /// Whether the author made the value or object `id` (its id's actor names the author).
    fn wrote(&self, id: &ObjId) -> bool {
        creator_bytes(id) == self.key.as_slice()
    }

    /// Whether `obj` was made by the change being checked.
    fn created_here(&self, obj: &ObjId) -> bool {
        matches!(obj, ObjId::Id(counter, actor, _) if *actor == self.actor && *counter >= self.start_op)
    }
}

/// The path from the root to the object `id` ("counter@actor", or "_root").
fn path_of(doc: &Automerge, id: &str) -> Option<Vec<Seg>> {
    let (obj, _) = doc.import(id).ok()?;
    if obj == automerge::ROOT {
        return Some(Vec::new());
    }
    let mut segs = Vec::new();
    let mut child = obj.clone();
    for parent in doc.parents(&obj).ok()? {
        let key = match &parent.prop {
            Prop::Map(k) => k.clone(),
            Prop::Seq(_) => "#".to_owned(),
        };
        segs.push(Seg { key, obj: child });
        child = parent.obj.clone();
        if segs.len() > MAX_DEPTH {
            return None;
        }
    }
    segs.reverse();
    Some(segs)
}

fn describe(path: &[Seg], op: &Op) -> String {
    let mut out: Vec<&str> = path.iter().map(|s| s.key.as_str()).collect();
    let key = op_key(op);
    out.push(key.unwrap_or("#"));
    out.join("/")
}

fn op_key(op: &Op) -> Option<&str> {
    match &op.key {
        Key::Map(k) => Some(k.as_str()),
        Key::Seq(_) => None,
    }
}

/// The device that created an object (its id's actor).
fn creator(obj: &ObjId) -> String {
    match obj {
        ObjId::Id(_, actor, _) => actor_device(actor),
        ObjId::Root => String::new(),
    }
}

/// The device an object or value id names, as bytes: compared, not shown, so no hex is made
/// (this runs for every operation a node receives).
fn creator_bytes(obj: &ObjId) -> &[u8] {
    match obj {
        ObjId::Id(_, actor, _) => device_bytes(actor),
        ObjId::Root => &[],
    }
}

/// The device bytes an actor names (see [`actor_device`]).
fn device_bytes(actor: &automerge::ActorId) -> &[u8] {
    let bytes = actor.to_bytes();
    &bytes[..bytes.len().min(ACTOR_DEVICE_BYTES)]
}

/// Whether this operation replaces a value another device wrote.
fn replaces_others(op: &Op, w: &Writer) -> bool {
    op.pred
        .iter()
        .any(|p| device_bytes(p.actor()) != w.key.as_slice())
}

type Verdict = Result<(), String>;

fn refuse(what: impl Into<String>) -> Verdict {
    Err(what.into())
}

/// Every operation: no deletes, no counters or marks (errand writes neither).
fn plain(op: &Op) -> Verdict {
    match op.action {
        OpType::Make(_) | OpType::Put(_) => Ok(()),
        OpType::Delete => refuse("deletes"),
        _ => refuse("writes an operation errand never makes"),
    }
}

/// The skeleton of a document: written by its first change, once.
fn structural(doc: &Automerge, container: &ObjId, op: &Op, w: &Writer) -> Verdict {
    if !w.first_change || !op.pred.is_empty() {
        return refuse("rewrites the document's skeleton");
    }
    match op_key(op) {
        Some(key) => alone(doc, container, key, w),
        None => refuse("rewrites the document's skeleton"),
    }
}

/// A new entry under `key` of a map: it replaces nothing but its author's own values, and no
/// other device's entry stands beside it.
fn new_entry(doc: &Automerge, container: &ObjId, op: &Op, w: &Writer) -> Verdict {
    if replaces_others(op, w) {
        return refuse("replaces another device's entry");
    }
    match op_key(op) {
        Some(key) => alone(doc, container, key, w),
        None => Ok(()),
    }
}

fn alone(doc: &Automerge, container: &ObjId, key: &str, w: &Writer) -> Verdict {
    let values = doc.get_all(container, key).unwrap_or_default();
    if values.iter().any(|(_, id)| !w.wrote(id)) {
        return refuse("writes an entry another device already holds");
    }
    Ok(())
}

/// The value of `key` in `obj` as written by the device `by` (among concurrent values too).
fn written_by(doc: &Automerge, obj: &ObjId, key: &str, by: &[u8]) -> Option<String> {
    doc.get_all(obj, key)
        .unwrap_or_default()
        .into_iter()
        .find(|(_, id)| creator_bytes(id) == by)
        .and_then(|(v, _)| match v {
            automerge::Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        })
}

/// The target desktop of the task object `task`, as its sender wrote it.
fn target_of(doc: &Automerge, task: &ObjId) -> Option<String> {
    written_by(doc, task, "target", creator_bytes(task))
}

/// The target of the task with id `task` in this thread, as its sender wrote it.
fn target_of_id(doc: &Automerge, task: &str) -> Option<String> {
    let tasks = crate::schema::get_obj(doc, &automerge::ROOT, "tasks")?;
    let bucket = crate::schema::get_obj(doc, &tasks, &super::thread::task_bucket(task))?;
    let obj = crate::schema::get_obj(doc, &bucket, task)?;
    target_of(doc, &obj)
}

const SENDER_FIELDS: [&str; 6] = [
    "prompt",
    "target",
    "created",
    "cancel_requested",
    "schedule",
    "slot",
];
const EXECUTOR_FIELDS: [&str; 7] = [
    "started",
    "finished",
    "result",
    "error",
    "progress",
    "artifacts",
    "notified",
];

fn thread_op(doc: &Automerge, targets: &mut Targets, path: &[Seg], op: &Op, w: &Writer) -> Verdict {
    plain(op)?;
    let keys: Vec<&str> = path.iter().map(|s| s.key.as_str()).collect();
    let container = path.last().map_or(automerge::ROOT, |s| s.obj.clone());
    let key = op_key(op);
    match keys.as_slice() {
        [] | ["tasks"] => structural(doc, &container, op, w),
        ["tasks", _] => {
            if !w.standing.may_send() {
                return refuse("sends a task, which its role may not");
            }
            if !matches!(op.action, OpType::Make(_)) {
                return refuse("writes a task that is not a map");
            }
            new_entry(doc, &container, op, w)
        }
        ["tasks", _, _] => {
            let by_sender = w.wrote(&container);
            // Read only where a rule needs it: a new task's own fields (most of what is
            // received) are decided by its sender alone.
            let mut is_target = || targets.is(doc, &container, &w.device);
            match key {
                Some(k) if SENDER_FIELDS.contains(&k) => {
                    if !by_sender {
                        return refuse(format!("writes the sender's {k}"));
                    }
                    Ok(())
                }
                Some("status") => {
                    let queued =
                        matches!(&op.action, OpType::Put(ScalarValue::Str(s)) if s == "queued");
                    // The sender writes `queued` once, in the change that creates the task.
                    let creating = w.created_here(&container) && op.pred.is_empty();
                    if (by_sender && queued && creating) || is_target() {
                        Ok(())
                    } else {
                        refuse("writes the status of a task it does not run")
                    }
                }
                Some(k) if EXECUTOR_FIELDS.contains(&k) => {
                    if !is_target() {
                        return refuse(format!("writes the {k} of a task it does not run"));
                    }
                    Ok(())
                }
                _ => refuse("writes a task field errand does not have"),
            }
        }
        ["tasks", _, _, field, ..] if EXECUTOR_FIELDS.contains(field) => {
            if !targets.is(doc, &path[2].obj, &w.device) {
                return refuse(format!("writes the {field} of a task it does not run"));
            }
            Ok(())
        }
        ["approvals"] => {
            if !w.standing.is_desktop() {
                return refuse("asks for an approval, which only a desktop does");
            }
            new_entry(doc, &container, op, w)
        }
        ["approvals", _, rest @ ..] => {
            let asker = creator(&path[1].obj);
            match rest {
                [] => {
                    if w.device != asker {
                        return refuse("writes another desktop's approval request");
                    }
                    if key == Some("task") {
                        let OpType::Put(ScalarValue::Str(task)) = &op.action else {
                            return refuse("names no task");
                        };
                        if target_of_id(doc, task).as_deref() != Some(asker.as_str()) {
                            return refuse("asks for approval of a task it does not run");
                        }
                    }
                    Ok(())
                }
                ["decisions"] => own_entry(doc, &container, op, w),
                ["decisions", device, ..] => {
                    if *device != w.device {
                        return refuse("writes another device's decision");
                    }
                    Ok(())
                }
                _ => refuse("writes inside an approval where errand writes nothing"),
            }
        }
        ["messages"] => {
            if !w.standing.is_desktop() {
                return refuse("writes a message, which only a desktop does");
            }
            if replaces_others(op, w) {
                return refuse("replaces another device's message");
            }
            Ok(())
        }
        ["messages", _, rest @ ..] => match rest {
            [] => {
                if !w.wrote(&path[1].obj) {
                    return refuse("writes another device's message");
                }
                Ok(())
            }
            ["answers"] => own_entry(doc, &container, op, w),
            ["answers", device, ..] => {
                if *device != w.device {
                    return refuse("writes another device's answer");
                }
                Ok(())
            }
            _ => refuse("writes inside a message where errand writes nothing"),
        },
        _ => refuse("writes where errand writes nothing"),
    }
}

/// A decision or an answer: an entry keyed by its author's own device id, by a role that
/// may approve.
fn own_entry(doc: &Automerge, container: &ObjId, op: &Op, w: &Writer) -> Verdict {
    if op_key(op) != Some(w.device.as_str()) {
        return refuse("writes an entry under another device's id");
    }
    if !w.standing.may_send() {
        return refuse("decides or answers, which its role may not");
    }
    new_entry(doc, container, op, w)
}

fn index_op(doc: &Automerge, path: &[Seg], op: &Op, w: &Writer) -> Verdict {
    plain(op)?;
    let keys: Vec<&str> = path.iter().map(|s| s.key.as_str()).collect();
    let container = path.last().map_or(automerge::ROOT, |s| s.obj.clone());
    match keys.as_slice() {
        [] => structural(doc, &container, op, w),
        ["members" | "revoked"] => {
            // Certificates and revocations carry their own signatures, and every node keeps
            // those it has seen; an entry here is only a way to pass one on.
            if !w.standing.may_send() {
                return refuse("adds a certificate or revocation, which its role may not");
            }
            Ok(())
        }
        ["members" | "revoked", _, ..] => {
            if !w.wrote(&path[1].obj) {
                return refuse("writes inside another device's entry");
            }
            Ok(())
        }
        ["addrs"] => {
            if op_key(op) == Some(w.device.as_str()) {
                // Its own entry: it may replace whatever was there (what a host seeded).
                return Ok(());
            }
            // The device that pairs a new one records where the new one can be reached,
            // once, before the new device writes its own.
            if !w.standing.may_send() || !op.pred.is_empty() {
                return refuse("writes another device's addresses");
            }
            new_entry(doc, &container, op, w)
        }
        ["addrs", device, ..] => {
            if *device != w.device && !w.wrote(&path[1].obj) {
                return refuse("writes another device's addresses");
            }
            Ok(())
        }
        ["notify"] => {
            // A device's notification endpoints: its own entry, whatever its role.
            if op_key(op) != Some(w.device.as_str()) {
                return refuse("writes another device's notification endpoints");
            }
            new_entry(doc, &container, op, w)
        }
        ["notify", device, ..] => {
            if *device != w.device {
                return refuse("writes another device's notification endpoints");
            }
            Ok(())
        }
        ["schedules"] => {
            if !w.standing.may_send() {
                return refuse("adds a schedule, which its role may not");
            }
            if !matches!(op.action, OpType::Make(_)) {
                return refuse("writes a schedule that is not a map");
            }
            new_entry(doc, &container, op, w)
        }
        ["schedules", _, rest @ ..] => schedule_op(doc, &path[1].obj, rest, op, w),
        ["threads"] => {
            if !w.standing.may_send() {
                return refuse("adds a thread, which its role may not");
            }
            new_entry(doc, &container, op, w)
        }
        ["threads", _, ..] => {
            if !w.wrote(&path[1].obj) {
                return refuse("writes another device's thread entry");
            }
            Ok(())
        }
        _ => refuse("writes where errand writes nothing"),
    }
}

/// An operation inside the schedule `schedule` (`rest` is the path below it).
fn schedule_op(doc: &Automerge, schedule: &ObjId, rest: &[&str], op: &Op, w: &Writer) -> Verdict {
    use crate::schema::index::schedules::{CREATOR_FIELDS, RUN, SHARED_FIELDS};
    let target = written_by(doc, schedule, "target", creator_bytes(schedule));
    let is_target = target.as_deref() == Some(w.device.as_str());
    match (rest, op_key(op)) {
        ([], Some(k)) if CREATOR_FIELDS.contains(&k) => {
            if !w.wrote(schedule) {
                return refuse(format!("writes the {k} of a schedule it did not make"));
            }
            Ok(())
        }
        ([], Some(k)) if SHARED_FIELDS.contains(&k) => {
            if !w.standing.may_send() {
                return refuse("pauses, resumes or removes a schedule, which its role may not");
            }
            Ok(())
        }
        ([], Some(RUN)) => {
            if !is_target {
                return refuse("records the runs of a schedule it does not run");
            }
            new_entry(doc, schedule, op, w)
        }
        ([RUN, ..], _) => {
            if !is_target {
                return refuse("records the runs of a schedule it does not run");
            }
            Ok(())
        }
        _ => refuse("writes a schedule field errand does not have"),
    }
}

#[cfg(test)]
mod tests;
