//! The `Node` object apps hold: one device home (a data directory) opened for use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use errand_node::{Node as Engine, NodeConfig};
use tokio::sync::watch;

use crate::error::ErrandError;
use crate::events::{self, NodeListener, Subscription};
use crate::records::{
    ApprovalRecord, DeviceRecord, DiagnosisRecord, HistoryEntry, MessageRecord, NotifyEndpoint,
    PairedRecord, PeerSyncRecord, QuestionRecord, ScheduleRecord, ScheduleSpec, SentRecord,
    StatusRecord, TaskRecord, ThreadRecord,
};
use crate::runtime;

/// How long `close` waits for listener calls under way to finish.
const CLOSE_LISTENERS_WAIT: Duration = Duration::from_secs(2);
/// How long `close` waits for the node's last tasks to release its database.
const CLOSE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// An errand device home opened for use: its keys, its database, and the connections to the
/// other devices of its space. Open one at app start and keep it until the app ends (or goes
/// to the background for long); close it with `close`.
///
/// Only one `Node` may have a data directory open at a time.
#[derive(uniffi::Object)]
pub struct Node {
    engine: RwLock<Option<Arc<Engine>>>,
    subscriptions: Mutex<Vec<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self
            .engine
            .read()
            .map(|e| e.as_ref().map(|e| e.id().to_string()))
            .unwrap_or_default();
        f.debug_struct("Node").field("open", &open).finish()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Node {
    /// Opens the home in `data_dir` (created on first use, with this device's key), and starts
    /// listening for the other devices of its space.
    ///
    /// `bind_addr` is where to listen (`"0.0.0.0:0"`, `"127.0.0.1:0"`, ...); by default every
    /// interface, on the port this home used last time. `relay_url` names a self-hosted iroh
    /// relay, for devices that cannot reach each other directly; relays are off without one.
    /// `lan_discovery` announces this device and finds the others on the local network by mDNS
    /// (off by default: iOS apps need the multicast networking entitlement for it).
    #[uniffi::constructor(default(bind_addr = None, relay_url = None, lan_discovery = false))]
    pub async fn open(
        data_dir: String,
        bind_addr: Option<String>,
        relay_url: Option<String>,
        lan_discovery: bool,
    ) -> Result<Arc<Self>, ErrandError> {
        if data_dir.trim().is_empty() {
            return Err(ErrandError::InvalidInput("name a data directory".into()));
        }
        let mut config = NodeConfig::new(data_dir);
        config.lan_discovery = lan_discovery;
        if let Some(addr) = bind_addr
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            config.bind = Some(addr.parse::<SocketAddr>().map_err(|_| {
                ErrandError::InvalidInput(format!(
                    "{addr:?} is not an address to listen on (like 0.0.0.0:0)"
                ))
            })?);
        }
        if let Some(url) = relay_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            config.relay = Some(url.parse().map_err(|e| {
                ErrandError::InvalidInput(format!("{url:?} is not a relay URL: {e}"))
            })?);
        }
        let engine = runtime::spawn(async move { Ok(Engine::open(config).await?) }).await?;
        Ok(Arc::new(Node {
            engine: RwLock::new(Some(Arc::new(engine))),
            subscriptions: Mutex::default(),
        }))
    }

    /// This device's id (its public key, hex).
    pub fn device_id(&self) -> Result<String, ErrandError> {
        Ok(self.engine()?.id().to_string())
    }

    /// Pairs this device with the one that showed `ticket` (the text of its QR code), in the
    /// role the ticket gives (the desktop chose it: phone unless it said otherwise).
    /// `device_name` is how the others will see this device.
    #[uniffi::method(default(device_name = None))]
    pub async fn pair(
        &self,
        ticket: String,
        device_name: Option<String>,
    ) -> Result<PairedRecord, ErrandError> {
        let engine = self.engine()?;
        runtime::spawn(async move {
            let joined = engine
                .join(ticket.trim(), device_name.as_deref(), None)
                .await?;
            Ok(joined.into())
        })
        .await
    }

    /// Sends a task to a desktop: `thread_id` adds it to a thread (else a new thread starts),
    /// `to_device` names the desktop (name or id prefix; else the space's first desktop).
    /// Returns once the task is stored here; it reaches the desktop whenever the two can reach
    /// each other (see `SentRecord.delivered` and `wait_delivered`).
    #[uniffi::method(default(thread_id = None, to_device = None))]
    pub async fn send(
        &self,
        text: String,
        thread_id: Option<String>,
        to_device: Option<String>,
    ) -> Result<SentRecord, ErrandError> {
        self.blocking(move |e| {
            Ok(e.send(&text, thread_id.as_deref(), to_device.as_deref())?
                .into())
        })
        .await
    }

    /// Waits up to `timeout_ms` until the desktop that runs `task_id` holds its current
    /// version. Returns whether it does.
    pub async fn wait_delivered(
        &self,
        task_id: String,
        timeout_ms: u64,
    ) -> Result<bool, ErrandError> {
        let engine = self.engine()?;
        runtime::spawn(async move {
            let task = engine.task(&task_id)?;
            Ok(engine
                .wait_delivered(
                    &task.target,
                    &task.thread,
                    Duration::from_millis(timeout_ms),
                )
                .await)
        })
        .await
    }

    /// Every thread, as listed in the space's index.
    pub async fn threads(&self) -> Result<Vec<ThreadRecord>, ErrandError> {
        self.blocking(|e| Ok(e.threads()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Every task, oldest first; with `thread_id`, only that thread's.
    #[uniffi::method(default(thread_id = None))]
    pub async fn tasks(&self, thread_id: Option<String>) -> Result<Vec<TaskRecord>, ErrandError> {
        self.blocking(move |e| {
            Ok(e.tasks(thread_id.as_deref())?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// One task, by id (or a unique prefix).
    pub async fn task(&self, task_id: String) -> Result<TaskRecord, ErrandError> {
        self.blocking(move |e| Ok(e.task(&task_id)?.into())).await
    }

    /// Asks the desktop to stop a task. Returns the task as it is now.
    pub async fn cancel(&self, task_id: String) -> Result<TaskRecord, ErrandError> {
        self.blocking(move |e| Ok(e.cancel(&task_id)?.into())).await
    }

    /// Approval requests, oldest first; with `pending_only`, those still waiting.
    #[uniffi::method(default(pending_only = true))]
    pub async fn approvals(&self, pending_only: bool) -> Result<Vec<ApprovalRecord>, ErrandError> {
        self.blocking(move |e| {
            Ok(e.approvals(pending_only)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// Approves (or denies) an approval request, signed with this device's key. The decision
    /// reaches the desktop like any change.
    pub async fn decide(
        &self,
        approval_id: String,
        approve: bool,
    ) -> Result<ApprovalRecord, ErrandError> {
        self.blocking(move |e| Ok(e.decide(&approval_id, approve)?.0.into()))
            .await
    }

    /// A thread's conversation (`thread_id`: a thread id or prefix), in order: each task's
    /// prompt, the approvals and questions asked while it ran, and its answer.
    pub async fn conversation(&self, thread_id: String) -> Result<Vec<MessageRecord>, ErrandError> {
        self.blocking(move |e| {
            Ok(e.conversation(&thread_id)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// The questions the agent asks, oldest first; with `pending_only`, those still waiting.
    #[uniffi::method(default(pending_only = true))]
    pub async fn questions(&self, pending_only: bool) -> Result<Vec<QuestionRecord>, ErrandError> {
        self.blocking(move |e| {
            Ok(e.questions(pending_only)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// Answers a question the agent asks, signed with this device's key; the task goes on
    /// with the answer once it reaches the desktop.
    pub async fn answer(
        &self,
        question_id: String,
        text: String,
    ) -> Result<QuestionRecord, ErrandError> {
        self.blocking(move |e| Ok(e.answer(&question_id, &text)?.0.into()))
            .await
    }

    /// A document's commits, oldest first: the space's index by default, or a thread
    /// (`doc_id`: a thread id or prefix, or `"index"`). With `limit`, the newest `limit`.
    #[uniffi::method(default(doc_id = None, limit = None))]
    pub async fn history(
        &self,
        doc_id: Option<String>,
        limit: Option<u32>,
    ) -> Result<Vec<HistoryEntry>, ErrandError> {
        self.blocking(move |e| {
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            Ok(e.history(doc_id.as_deref(), limit)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// A document as it was at `heads` (change hashes from `history`), as JSON text.
    #[uniffi::method(default(doc_id = None))]
    pub async fn document_at(
        &self,
        heads: Vec<String>,
        doc_id: Option<String>,
    ) -> Result<String, ErrandError> {
        self.blocking(move |e| Ok(e.at(&heads.join(","), doc_id.as_deref())?.to_string()))
            .await
    }

    /// The space's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, ErrandError> {
        self.blocking(|e| Ok(e.devices()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Revokes a device (name or id prefix): this device refuses it at once, the others once
    /// they have synced. Returns the device as it was.
    pub async fn revoke(&self, device: String) -> Result<DeviceRecord, ErrandError> {
        self.blocking(move |e| Ok(e.revoke(&device)?.into())).await
    }

    /// Registers where this device wants to be told of events while the app is not running:
    /// an `http(s)` endpoint that takes a POSTed message (a self-hosted ntfy topic, a
    /// UnifiedPush endpoint). `events`: done, failed, approval, question (all of those when
    /// empty); `content`: let messages carry the task's text.
    pub async fn notify_add(
        &self,
        url: String,
        events: Vec<String>,
        content: bool,
    ) -> Result<NotifyEndpoint, ErrandError> {
        self.blocking(move |e| Ok(e.notify_add(&url, &events, content)?.into()))
            .await
    }

    /// This device's notification endpoints.
    pub async fn notify_list(&self) -> Result<Vec<NotifyEndpoint>, ErrandError> {
        self.blocking(|e| Ok(e.notify_list()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Stops using one of this device's endpoints (id or id prefix).
    pub async fn notify_remove(&self, id: String) -> Result<NotifyEndpoint, ErrandError> {
        self.blocking(move |e| Ok(e.notify_remove(&id)?.into()))
            .await
    }

    /// Adds a schedule: a task the target desktop runs by itself at set times. A bad cron
    /// expression, period or time zone is refused with a one-line reason.
    pub async fn schedule_add(&self, spec: ScheduleSpec) -> Result<ScheduleRecord, ErrandError> {
        self.blocking(move |e| Ok(e.schedule_add(&spec.into())?.into()))
            .await
    }

    /// Every schedule not removed: rule, target, next run, last run, missed runs.
    pub async fn schedule_list(&self) -> Result<Vec<ScheduleRecord>, ErrandError> {
        self.blocking(|e| Ok(e.schedules()?.into_iter().map(Into::into).collect()))
            .await
    }

    /// Pauses a schedule (id or prefix): no runs, and none owed, until it is resumed.
    pub async fn schedule_pause(&self, id: String) -> Result<ScheduleRecord, ErrandError> {
        self.blocking(move |e| Ok(e.schedule_pause(&id, true)?.into()))
            .await
    }

    /// Resumes a paused schedule from its next slot.
    pub async fn schedule_resume(&self, id: String) -> Result<ScheduleRecord, ErrandError> {
        self.blocking(move |e| Ok(e.schedule_pause(&id, false)?.into()))
            .await
    }

    pub async fn schedule_remove(&self, id: String) -> Result<ScheduleRecord, ErrandError> {
        self.blocking(move |e| Ok(e.schedule_remove(&id)?.into()))
            .await
    }

    /// Tries every device of the space (up to `timeout_ms` each, all at once) and says, for
    /// each, whether it can be reached right now and if not why.
    pub async fn doctor(&self, timeout_ms: u64) -> Result<Vec<DiagnosisRecord>, ErrandError> {
        let engine = self.engine()?;
        runtime::spawn(async move {
            let found = engine
                .doctor(Duration::from_millis(timeout_ms.clamp(100, 60_000)))
                .await?;
            Ok(found.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// This device, its space and its peers.
    pub async fn status(&self) -> Result<StatusRecord, ErrandError> {
        self.blocking(|e| Ok(e.status()?.into())).await
    }

    /// Connects to every device it can and syncs every document, until all reachable ones are
    /// in sync or `timeout_ms` passes. For a short background wake-up.
    pub async fn sync_now(&self, timeout_ms: u64) -> Result<Vec<PeerSyncRecord>, ErrandError> {
        let engine = self.engine()?;
        runtime::spawn(async move {
            let peers = engine.sync_round(Duration::from_millis(timeout_ms)).await?;
            Ok(peers.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// An artifact's bytes (`TaskRecord.artifacts`): from this device, else fetched from the
    /// desktop that ran the task (and kept here).
    pub async fn fetch_artifact(
        &self,
        task_id: String,
        hash: String,
    ) -> Result<Vec<u8>, ErrandError> {
        let engine = self.engine()?;
        runtime::spawn(async move {
            let task = engine.task(&task_id)?;
            if !task.artifacts.iter().any(|a| a.hash == hash) {
                return Err(ErrandError::NotFound(format!(
                    "task {} has no artifact {hash:?}",
                    errand_node::node::short(&task.id)
                )));
            }
            Ok(engine.fetch_blob(&hash, &task.target).await?)
        })
        .await
    }

    /// Delivers this node's events to `listener` until the subscription is cancelled or the
    /// node closed.
    pub fn subscribe(
        &self,
        listener: Arc<dyn NodeListener>,
    ) -> Result<Arc<Subscription>, ErrandError> {
        let engine = self.engine()?;
        let (subscription, task) = events::start(&engine, listener);
        let mut subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|(_, t)| !t.is_finished());
        subs.push((subscription.stopper(), task));
        Ok(subscription)
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.engine.read().map_or(true, |e| e.is_none())
    }

    /// Stops the listeners, closes the connections and releases the data directory. Every
    /// later call fails with `Closed`. Closing twice is harmless.
    pub async fn close(&self) {
        let engine = self
            .engine
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let subs: Vec<_> = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let _ = runtime::spawn(async move {
            for (stop, _) in &subs {
                stop.send_replace(true);
            }
            let closed = engine.as_ref().map(|e| e.repo().store().closed());
            if let Some(engine) = engine {
                engine.shutdown().await;
            }
            let _ = tokio::time::timeout(CLOSE_LISTENERS_WAIT, async {
                for (_, task) in subs {
                    let _ = task.await;
                }
            })
            .await;
            // The node's tasks end shortly after they are aborted; the database stays open
            // until the last of them lets go of it and redb has closed the file. Wait for
            // that, so that the directory can be opened again as soon as this returns.
            if let Some(closed) = closed
                && tokio::time::timeout(CLOSE_RELEASE_WAIT, closed.wait())
                    .await
                    .is_err()
            {
                eprintln!(
                    "errand: the database was still in use {CLOSE_RELEASE_WAIT:?} after close"
                );
            }
            Ok(())
        })
        .await;
    }
}

impl Node {
    fn engine(&self) -> Result<Arc<Engine>, ErrandError> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ErrandError::Closed("this node was closed; open it again".into()))
    }

    /// Runs a blocking node operation (database work) off the caller's thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ErrandError>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T, ErrandError> + Send + 'static,
    {
        let engine = self.engine()?;
        runtime::blocking(move || f(&engine)).await
    }
}

impl Drop for Node {
    /// A node the app forgot to close is shut down in the background.
    fn drop(&mut self) {
        let engine = self
            .engine
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let subs: Vec<_> = self
            .subscriptions
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (stop, _) in &subs {
            stop.send_replace(true);
        }
        if let Some(engine) = engine {
            runtime::get().spawn(async move { engine.shutdown().await });
        }
    }
}
