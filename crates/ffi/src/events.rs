//! Events for apps: the node's event stream delivered to a foreign listener.
//!
//! Each subscription has its own dispatcher task on the library's runtime. It calls the
//! listener on tokio's blocking pool, one event at a time and in order, so a slow listener
//! delays only its own events. Whatever the listener does, the boundary holds: an exception
//! thrown in foreign code comes back as a [`ListenerError`] (the method returns a `Result`),
//! and a panic in the call is caught; either is logged to stderr and the next event is
//! delivered as usual.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};

use errand_node::Node as Engine;
use errand_node::NodeEvent as EngineEvent;
use errand_sync::DeviceId;
use tokio::sync::{broadcast, watch};

use crate::error::ListenerError;
use crate::records::{DeviceRole, TaskStatus};

/// Something that happened on this node. Turn these into notifications, or refresh a screen.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum NodeEvent {
    /// A task appeared or its status changed (also when the desktop finishes it: `result` or
    /// `error` are then set).
    TaskChanged {
        task_id: String,
        thread_id: String,
        status: TaskStatus,
        prompt: String,
        result: Option<String>,
        error: Option<String>,
    },
    /// A desktop asks before doing something risky: approve or deny with `Node.decide`.
    ApprovalRequested {
        approval_id: String,
        task_id: String,
        thread_id: String,
        /// What will happen ("run shell command `echo hi`").
        action: String,
        expires_ms: i64,
    },
    /// The agent asks a question and its task waits for the answer: answer with
    /// `Node.answer`.
    InputRequested {
        question_id: String,
        task_id: String,
        thread_id: String,
        /// The question.
        text: String,
        expires_ms: i64,
    },
    /// A connection to another device of the space opened.
    PeerConnected {
        device_id: String,
        name: Option<String>,
    },
    /// The connection to another device closed.
    PeerLost {
        device_id: String,
        name: Option<String>,
    },
    /// A document is now the same here and on that device.
    SyncFinished { device_id: String, doc_id: String },
    /// A device was disconnected because it misbehaved.
    PeerDropped { device_id: String, reason: String },
    /// Another device asks to join with a ticket this device issued.
    PairingRequested {
        device_id: String,
        name: String,
        code: String,
    },
    /// A device joined the space (through any member).
    DeviceAdded {
        device_id: String,
        name: String,
        role: DeviceRole,
        added_by: String,
    },
    /// A member was revoked: this device refuses it from now on.
    DeviceRevoked { device_id: String, name: String },
    /// A device was refused.
    PairingRefused { device_id: String, reason: String },
    /// While pairing: the verification code to compare with the desktop's.
    JoinCode { code: String },
    /// Another device's clock is more than a minute from this one's (measured on connection):
    /// tell the person to fix the clock. Expiry of its requests is still decided by its clock.
    ClockSkew { device_id: String, offset_ms: i64 },
    /// The listener fell behind and `count` events were dropped: reload what is shown.
    EventsMissed { count: u64 },
}

/// Receives the node's events. Called on a background thread, one event at a time; return
/// quickly (hand the event to the UI thread). Exceptions are caught and logged.
#[uniffi::export(with_foreign)]
pub trait NodeListener: Send + Sync {
    fn on_event(&self, event: NodeEvent) -> Result<(), ListenerError>;
}

/// A running subscription; `cancel` stops it. Closing the node cancels it too. Dropping it does
/// not: events keep coming until one of those.
#[derive(Debug, uniffi::Object)]
pub struct Subscription {
    stop: watch::Sender<bool>,
}

#[uniffi::export]
impl Subscription {
    /// Stops the events. A call already under way finishes; no other follows.
    pub fn cancel(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.stop.borrow()
    }
}

impl Subscription {
    pub(crate) fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Starts delivering `node`'s events to `listener`. The dispatcher holds the node only weakly,
/// so it never keeps a closed node's database open.
pub(crate) fn start(
    node: &Arc<Engine>,
    listener: Arc<dyn NodeListener>,
) -> (Arc<Subscription>, tokio::task::JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let mut events = node.subscribe();
    let weak = Arc::downgrade(node);
    let task = crate::runtime::get().spawn(async move {
        loop {
            let received = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return,
                r = events.recv() => r,
            };
            let event = match received {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    deliver(&listener, &weak, None, n, &stopped).await;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            deliver(&listener, &weak, Some(event), 0, &stopped).await;
        }
    });
    (Arc::new(Subscription { stop }), task)
}

/// Converts and delivers one event (or, with `None`, the news that `missed` were dropped).
async fn deliver(
    listener: &Arc<dyn NodeListener>,
    node: &Weak<Engine>,
    event: Option<EngineEvent>,
    missed: u64,
    stopped: &watch::Receiver<bool>,
) {
    if *stopped.borrow() {
        return;
    }
    let listener = listener.clone();
    let node = node.clone();
    let call = tokio::task::spawn_blocking(move || {
        let event = match event {
            Some(ev) => {
                let node = node.upgrade();
                convert(ev, node.as_deref())
            }
            None => Some(NodeEvent::EventsMissed { count: missed }),
        };
        let Some(event) = event else {
            return Ok(());
        };
        match catch_unwind(AssertUnwindSafe(|| listener.on_event(event))) {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(panic) => Err(panic_text(panic.as_ref())),
        }
    });
    match call.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("errand: a listener failed (events go on): {e}"),
        Err(e) => eprintln!("errand: a listener call did not finish: {e}"),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("listener panicked: {text}")
}

fn name_of(node: Option<&Engine>, device: &str) -> Option<String> {
    let id: DeviceId = device.parse().ok()?;
    node?.device_name(&id)
}

/// The app's view of a node event. Enriches task changes with the result (read from this
/// device's documents) and peers with their names.
pub(crate) fn convert(ev: EngineEvent, node: Option<&Engine>) -> Option<NodeEvent> {
    Some(match ev {
        EngineEvent::TaskChanged {
            task,
            thread,
            status,
            prompt,
            ..
        } => {
            let found = node.and_then(|n| n.task(&task).ok());
            NodeEvent::TaskChanged {
                result: found.as_ref().and_then(|t| t.result.clone()),
                error: found.as_ref().and_then(|t| t.error.clone()),
                task_id: task,
                thread_id: thread,
                status: status.into(),
                prompt,
            }
        }
        EngineEvent::ApprovalRequested {
            approval,
            task,
            thread,
            action,
            expires_at,
        } => NodeEvent::ApprovalRequested {
            approval_id: approval,
            task_id: task,
            thread_id: thread,
            action,
            expires_ms: expires_at,
        },
        EngineEvent::InputRequested {
            question,
            task,
            thread,
            text,
            expires_at,
        } => NodeEvent::InputRequested {
            question_id: question,
            task_id: task,
            thread_id: thread,
            text,
            expires_ms: expires_at,
        },
        EngineEvent::PeerConnected { peer } => NodeEvent::PeerConnected {
            name: name_of(node, &peer),
            device_id: peer,
        },
        EngineEvent::PeerLost { peer } => NodeEvent::PeerLost {
            name: name_of(node, &peer),
            device_id: peer,
        },
        EngineEvent::SyncFinished { peer, doc } => NodeEvent::SyncFinished {
            device_id: peer,
            doc_id: doc,
        },
        EngineEvent::PeerDropped { peer, reason } => NodeEvent::PeerDropped {
            device_id: peer,
            reason,
        },
        EngineEvent::PairingRequested {
            device, name, code, ..
        } => NodeEvent::PairingRequested {
            device_id: device,
            name,
            code,
        },
        EngineEvent::DeviceAdded {
            device,
            name,
            role,
            added_by,
        } => NodeEvent::DeviceAdded {
            device_id: device,
            name,
            role: role.into(),
            added_by,
        },
        EngineEvent::DeviceRevoked { device, name } => NodeEvent::DeviceRevoked {
            device_id: device,
            name,
        },
        EngineEvent::PairingRefused { device, reason } => NodeEvent::PairingRefused {
            device_id: device,
            reason,
        },
        EngineEvent::JoinCode { code } => NodeEvent::JoinCode { code },
        EngineEvent::ClockSkew { peer, offset_ms } => NodeEvent::ClockSkew {
            device_id: peer,
            offset_ms,
        },
        // Events the node may grow later are not part of this surface until converted here.
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}
