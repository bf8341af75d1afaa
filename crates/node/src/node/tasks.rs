//! Threads and their tasks: listing, resolving, sending, cancelling, and the history of a
//! document.

use std::time::Duration;

use errand_sync::schema::{self, DocId, index, thread};
use errand_sync::{DeviceId, Role};

use super::{HistoryLine, Node, Sent, short};
use crate::error::NodeError;

/// How many tasks whose ids begin with a needle are looked at: with an exact id first, enough
/// for a member that wrote one id into several threads.
const MATCHES_LOOKED_AT: usize = 16;

impl Node {
    pub fn threads(&self) -> Result<Vec<index::ThreadEntry>, NodeError> {
        self.require_space()?;
        Ok(self
            .repo
            .read(&DocId::index(), index::threads)?
            .unwrap_or_default())
    }

    /// Finds a thread by id prefix. Reads the listed ids, not the threads' entries; only
    /// when none is listed, the threads held here whose listing has not arrived yet (a thread
    /// and its listing travel separately, in either order, so one can be shown by `tasks` a
    /// moment before it is listed).
    pub fn resolve_thread(&self, needle: &str) -> Result<DocId, NodeError> {
        self.require_space()?;
        let needle = needle.trim();
        if needle.is_empty() {
            return Err(NodeError::BadInput("name a thread".into()));
        }
        let mut matches = self
            .repo
            .read(&DocId::index(), |d| index::thread_ids_like(d, needle))?
            .unwrap_or_default();
        if matches.is_empty() {
            matches = self
                .repo
                .doc_ids_like(needle, 2)
                .into_iter()
                .filter(|id| !id.is_index())
                .map(|id| id.to_string())
                .collect();
        }
        match matches.as_slice() {
            [one] => DocId::parse(one).ok_or_else(|| NodeError::NotFound(one.clone())),
            [] => Err(NodeError::NotFound(format!("no thread {needle:?}"))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one thread"
            ))),
        }
    }

    /// Sends a task: commits it locally (durably) and returns. Delivery happens in the
    /// background; see [`Node::wait_delivered`].
    pub fn send(
        &self,
        text: &str,
        thread: Option<&str>,
        to: Option<&str>,
    ) -> Result<Sent, NodeError> {
        self.require_space()?;
        if self.role() == Some(Role::Viewer) {
            return Err(NodeError::NotAllowed(
                "this device is a viewer: it can read and sync, not send tasks".into(),
            ));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(NodeError::BadInput("a task needs some text".into()));
        }
        thread::check_prompt(text).map_err(|e| NodeError::BadInput(e.to_string()))?;
        let target = match to {
            Some(t) => self.resolve_target(t)?,
            None => self.default_target()?,
        };
        if target.role != Role::Desktop {
            return Err(NodeError::BadInput(format!(
                "{} is a {}; only desktops run tasks",
                target.name, target.role
            )));
        }
        let me = self.id().to_string();
        let task_id = errand_sync::ids::hex(&rand::random::<[u8; 8]>());
        let new = thread::NewTask {
            id: &task_id,
            prompt: text,
            target: &target.id,
            created: schema::now_millis(),
        };
        let thread_id = match thread {
            Some(t) => {
                let thread_id = self.resolve_thread(t)?;
                self.repo.change(
                    &thread_id,
                    &format!("task {} queued", short(&task_id)),
                    |tx| thread::add_task(tx, &new),
                )?;
                thread_id
            }
            None => {
                // A new thread and its first task are one change (one signature, one thing for
                // the desktop to check), written with the thread's listing in one durable write.
                let id = DocId::new_thread();
                let title: String = text.chars().take(60).collect();
                let entry = index::ThreadEntry {
                    id: id.to_string(),
                    title: title.clone(),
                    created: new.created,
                    created_by: me,
                    archived: false,
                };
                self.repo.create_and_change(
                    &id,
                    &format!(
                        "thread {} created, task {} queued",
                        short(id.as_str()),
                        short(&task_id)
                    ),
                    |tx| thread::create_with_task(tx, id.as_str(), &title, &new),
                    (
                        &DocId::index(),
                        &format!("thread {} listed", short(id.as_str())),
                    ),
                    |tx| index::add_thread(tx, &entry),
                )?;
                id
            }
        };
        let target_id = target.device;
        let delivered = target.this_device
            || [thread_id.clone(), DocId::index()].iter().all(|d| {
                self.repo
                    .heads(d)
                    .is_ok_and(|h| self.replicator.delivered(&target_id, d, &h))
            });
        Ok(Sent {
            task: task_id,
            thread: thread_id.to_string(),
            target: target.id.clone(),
            target_name: target.name,
            delivered,
        })
    }

    /// Waits until `peer` holds the current version of `doc` and of the index (which lists the
    /// threads), up to `timeout`.
    pub async fn wait_delivered(&self, peer: &str, doc: &str, timeout: Duration) -> bool {
        let (Ok(peer), Some(doc)) = (peer.parse::<DeviceId>(), DocId::parse(doc)) else {
            return false;
        };
        if peer == self.id() {
            return true;
        }
        let wanted: Vec<(DocId, Vec<automerge::ChangeHash>)> = [doc, DocId::index()]
            .into_iter()
            .map(|d| {
                let heads = self.repo.heads(&d).unwrap_or_default();
                (d, heads)
            })
            .collect();
        self.wait_held(&wanted, || vec![peer], timeout).await
    }

    /// Every task, in every thread or in one. Threads not in memory are read from their stored
    /// task lists where those are current (see `errand_sync::repo` views), so a listing across
    /// a space loads only the threads that changed since they were last listed.
    pub fn tasks(&self, thread: Option<&str>) -> Result<Vec<thread::Task>, NodeError> {
        let threads = match thread {
            Some(t) => vec![self.resolve_thread(t)?],
            None => self.all_threads()?,
        };
        let each = self.repo.read_views(thread::TASKS_VIEW, &threads, |d, t| {
            thread::tasks(d, t.as_str())
        })?;
        Ok(interleave(each.into_iter().flatten().collect()))
    }

    /// Listed threads, and any held whose listing has not arrived yet (a thread's document
    /// and the index entry that lists it travel separately, in either order).
    pub(super) fn all_threads(&self) -> Result<Vec<DocId>, NodeError> {
        let mut ids: Vec<DocId> = self
            .threads()?
            .iter()
            .filter_map(|t| DocId::parse(&t.id))
            .collect();
        let listed: std::collections::HashSet<DocId> = ids.iter().cloned().collect();
        for id in self.repo.doc_ids()? {
            if !id.is_index() && !listed.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Finds a task by id prefix: from the store's list of which thread holds each task, so
    /// it costs the same in a space of ten threads or ten thousand; then the one task found,
    /// from its thread.
    pub fn task(&self, needle: &str) -> Result<thread::Task, NodeError> {
        self.require_space()?;
        let needle = needle.trim();
        if needle.is_empty() {
            return Err(NodeError::BadInput("name a task".into()));
        }
        let store = self.repo.store();
        if !store.tasks_indexed()? {
            self.index_tasks()?;
        }
        // A whole id sorts before the ids it begins, and names its task whatever they are;
        // past two others, the needle is ambiguous however many more there are.
        let mut matches = store.tasks_like(needle, MATCHES_LOOKED_AT)?;
        if matches.iter().any(|(id, _)| id == needle) {
            matches.retain(|(id, _)| id == needle);
        }
        match matches.as_slice() {
            [(id, t)] => {
                let t = DocId::parse(t).ok_or_else(|| NodeError::NotFound(t.clone()))?;
                self.repo
                    .read(&t, |d| thread::task(d, t.as_str(), id))?
                    .flatten()
                    .ok_or_else(|| NodeError::NotFound(format!("no task {needle:?}")))
            }
            [] => Err(NodeError::NotFound(format!("no task {needle:?}"))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one task"
            ))),
        }
    }

    /// Lists every task of a store from before tasks were listed as they were written: once,
    /// from each thread's stored view (no thread is loaded for it), or the thread itself.
    fn index_tasks(&self) -> Result<(), NodeError> {
        let threads = self.all_threads()?;
        let ids = self
            .repo
            .read_views(thread::TASK_IDS_VIEW, &threads, |d, _| thread::task_ids(d))?;
        let pairs: Vec<(&str, &str)> = threads
            .iter()
            .zip(&ids)
            .flat_map(|(t, ids)| {
                ids.iter()
                    .flatten()
                    .map(move |id| (id.as_str(), t.as_str()))
            })
            .collect();
        self.repo.store().index_tasks(&pairs)?;
        Ok(())
    }

    /// Asks the executor to stop a task.
    pub fn cancel(&self, needle: &str) -> Result<thread::Task, NodeError> {
        let task = self.task(needle)?;
        if task.status.is_final() {
            return Err(NodeError::BadInput(format!(
                "task {} already ended ({})",
                short(&task.id),
                task.status
            )));
        }
        let doc =
            DocId::parse(&task.thread).ok_or_else(|| NodeError::NotFound(task.thread.clone()))?;
        self.repo.change(
            &doc,
            &format!("task {} cancel requested", short(&task.id)),
            |tx| thread::request_cancel(tx, &task.id),
        )?;
        self.task(&task.id)
    }

    fn doc_arg(&self, doc: Option<&str>) -> Result<DocId, NodeError> {
        match doc {
            None | Some("index") => Ok(DocId::index()),
            Some(d) => self.resolve_thread(d),
        }
    }

    /// A document's commits, oldest first, with the writing device's name. With `limit`, the
    /// newest `limit` commits.
    pub fn history(
        &self,
        doc: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryLine>, NodeError> {
        self.require_space()?;
        let doc = self.doc_arg(doc)?;
        let entries = self
            .repo
            .read(&doc, |d| match limit {
                Some(n) => schema::history_tail(d, n),
                None => schema::history(d),
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no document {doc}")))?;
        let names: std::collections::HashMap<String, String> = self
            .membership()
            .map(|m| {
                m.members()
                    .map(|m| (m.device.to_string(), m.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(entries
            .into_iter()
            .map(|entry| HistoryLine {
                device: names
                    .get(&entry.device_id)
                    .cloned()
                    .unwrap_or_else(|| short(&entry.device_id).to_owned()),
                entry,
            })
            .collect())
    }

    /// A document as it was at `heads`.
    pub fn at(&self, heads: &str, doc: Option<&str>) -> Result<serde_json::Value, NodeError> {
        self.require_space()?;
        let doc = self.doc_arg(doc)?;
        let heads = schema::parse_heads(heads).map_err(NodeError::BadInput)?;
        if heads.is_empty() {
            return Err(NodeError::BadInput(
                "name at least one change hash (see errand history)".into(),
            ));
        }
        self.repo
            .read(&doc, |d| {
                use automerge::ReadDoc;
                if let Some(h) = heads.iter().find(|h| d.get_change_by_hash(h).is_none()) {
                    return Err(NodeError::NotFound(format!(
                        "change {h} is not in document {doc}"
                    )));
                }
                Ok(schema::to_json(d, &automerge::ROOT, Some(&heads)))
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no document {doc}")))?
    }
}

/// Tasks of several threads in one list: each thread's tasks stay in the thread's own order
/// (causal, whatever the senders' clocks say); between threads, the task sent earliest (by its
/// sender's clock) comes first.
fn interleave(threads: Vec<Vec<thread::Task>>) -> Vec<thread::Task> {
    use std::cmp::{Ordering, Reverse};
    /// The next task of one thread, ordered by when it was sent (then id, then thread).
    struct Front(thread::Task, usize);
    impl Front {
        fn key(&self) -> (i64, &str, usize) {
            (self.0.created, &self.0.id, self.1)
        }
    }
    impl PartialEq for Front {
        fn eq(&self, other: &Self) -> bool {
            self.key() == other.key()
        }
    }
    impl Eq for Front {}
    impl PartialOrd for Front {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Front {
        fn cmp(&self, other: &Self) -> Ordering {
            self.key().cmp(&other.key())
        }
    }

    let mut out = Vec::with_capacity(threads.iter().map(Vec::len).sum());
    let mut queues: Vec<std::vec::IntoIter<thread::Task>> =
        threads.into_iter().map(Vec::into_iter).collect();
    let mut fronts: std::collections::BinaryHeap<Reverse<Front>> = queues
        .iter_mut()
        .enumerate()
        .filter_map(|(i, q)| Some(Reverse(Front(q.next()?, i))))
        .collect();
    while let Some(Reverse(Front(task, i))) = fronts.pop() {
        out.push(task);
        match queues[i].next() {
            Some(next) => fronts.push(Reverse(Front(next, i))),
            // A thread's buffer goes as soon as it is emptied, not after the whole listing.
            None => queues[i] = Vec::new().into_iter(),
        }
    }
    out
}
