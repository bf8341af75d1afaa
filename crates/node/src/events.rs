//! What a node reports as it happens: task status changes, peers coming and going, pairing.
//! `errand watch` prints these, and the mobile bindings turn them into listener calls.

use std::collections::HashMap;

use errand_pairing::membership::Membership;
use errand_pairing::protocol::PairingEvent;
use errand_sync::ids::{DeviceId, Role};
use errand_sync::schema::{DocId, index, thread};
use errand_sync::{NetEvent, Repo};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A task appeared or its status changed.
    TaskChanged {
        task: String,
        thread: String,
        status: thread::TaskStatus,
        prompt: String,
        /// Why it failed or was cancelled (the task's error), when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The executor asks before doing something risky.
    ApprovalRequested {
        approval: String,
        task: String,
        thread: String,
        action: String,
        expires_at: i64,
    },
    /// The agent asks the user a question; the task waits in `needs_input` for the answer.
    InputRequested {
        question: String,
        task: String,
        thread: String,
        text: String,
        expires_at: i64,
    },
    PeerConnected {
        peer: String,
    },
    PeerLost {
        peer: String,
    },
    /// A document is now the same on both sides.
    SyncFinished {
        peer: String,
        doc: String,
    },
    PeerDropped {
        peer: String,
        reason: String,
    },
    PairingRequested {
        ticket: String,
        device: String,
        name: String,
        /// The role the ticket gives it.
        role: Role,
        code: String,
    },
    /// A device became a member of the space (through any member), as this device learned
    /// from the index.
    DeviceAdded {
        device: String,
        name: String,
        role: Role,
        added_by: String,
    },
    /// A member was revoked; this device refuses it from now on.
    DeviceRevoked {
        device: String,
        name: String,
    },
    PairingRefused {
        device: String,
        reason: String,
    },
    /// Shown on a joining device: compare it with the desktop's.
    JoinCode {
        code: String,
    },
    /// A peer's clock is more than a minute from this device's (measured on connection).
    /// Expiry of its approval requests is still decided by its clock, and shown by it.
    ClockSkew {
        peer: String,
        /// The peer's clock minus this device's.
        offset_ms: i64,
    },
}

impl NodeEvent {
    pub(crate) fn from_net(ev: NetEvent) -> NodeEvent {
        match ev {
            NetEvent::Connected(p) => NodeEvent::PeerConnected {
                peer: p.to_string(),
            },
            NetEvent::Disconnected(p) => NodeEvent::PeerLost {
                peer: p.to_string(),
            },
            NetEvent::Synced { peer, doc } => NodeEvent::SyncFinished {
                peer: peer.to_string(),
                doc: doc.to_string(),
            },
            NetEvent::Misbehaved { peer, reason } => NodeEvent::PeerDropped {
                peer: peer.to_string(),
                reason,
            },
        }
    }

    pub(crate) fn from_pairing(ev: PairingEvent) -> Option<NodeEvent> {
        Some(match ev {
            PairingEvent::Requested {
                ticket,
                device,
                name,
                role,
                code,
            } => NodeEvent::PairingRequested {
                ticket,
                device,
                name,
                role,
                code,
            },
            // Every member reports the new device once its certificate is in the index, the
            // host included: see `MemberWatcher`.
            PairingEvent::Paired { .. } => return None,
            PairingEvent::Refused { device, reason, .. } => {
                NodeEvent::PairingRefused { device, reason }
            }
        })
    }
}

/// Turns membership changes into device events by remembering who was a member.
#[derive(Debug, Default)]
pub(crate) struct MemberWatcher {
    /// `None` until the first membership is seen: what a device finds when it starts (or
    /// joins) is not news.
    members: Option<HashMap<DeviceId, String>>,
}

impl MemberWatcher {
    pub(crate) fn changed(&mut self, membership: Option<&Membership>) -> Vec<NodeEvent> {
        let Some(membership) = membership else {
            return Vec::new();
        };
        let now: HashMap<DeviceId, String> = membership
            .members()
            .map(|m| (m.device, m.name.clone()))
            .collect();
        let Some(before) = self.members.replace(now) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in membership.members() {
            if !before.contains_key(&m.device) {
                out.push(NodeEvent::DeviceAdded {
                    device: m.device.to_string(),
                    name: m.name.clone(),
                    role: m.role,
                    added_by: m.added_by.to_string(),
                });
            }
        }
        let mut gone: Vec<(&DeviceId, &String)> = before
            .iter()
            .filter(|(d, _)| membership.is_revoked(d))
            .filter(|(d, _)| !membership.is_member(d))
            .collect();
        gone.sort();
        for (device, name) in gone {
            out.push(NodeEvent::DeviceRevoked {
                device: device.to_string(),
                name: name.clone(),
            });
        }
        out
    }
}

/// The decision that counts on an approval under `membership`: validly signed by a member
/// whose role may approve (the executor's rule). None without a membership.
pub(crate) fn counted_decision<'a>(
    membership: Option<&Membership>,
    approval: &'a thread::Approval,
) -> Option<&'a thread::Decision> {
    let membership = membership?;
    thread::first_valid_decision(&membership.space().to_string(), approval, |device| {
        membership.may_approve(device)
    })
}

/// The answer that counts on a question under `membership` (the executor's rule). None
/// without a membership.
pub(crate) fn counted_answer<'a>(
    membership: Option<&Membership>,
    thread: &str,
    question: &'a thread::Message,
) -> Option<&'a thread::Answer> {
    let membership = membership?;
    thread::first_valid_answer(
        &membership.space().to_string(),
        thread,
        question,
        |device| membership.may_approve(device),
    )
}

/// An approval's state as a person should see it: `expired` once the asking desktop has said
/// so (a decision arriving after that does not count), else the counted decision, else
/// `expired` or `pending` by `now` on the asking desktop's clock.
pub(crate) fn approval_state(
    approval: &thread::Approval,
    counted: Option<&thread::Decision>,
    now: i64,
) -> &'static str {
    if approval.expired {
        return "expired";
    }
    match counted {
        Some(d) if d.approve => "approved",
        Some(_) => "denied",
        None if approval.expires_at <= now => "expired",
        None => "pending",
    }
}

/// Turns document changes into task events by remembering each task's last seen status.
#[derive(Debug, Default)]
pub(crate) struct TaskWatcher {
    seen: HashMap<String, thread::TaskStatus>,
    approvals: std::collections::HashSet<String>,
    questions: std::collections::HashSet<String>,
}

impl TaskWatcher {
    pub(crate) fn prime(&mut self, repo: &Repo, membership: Option<&Membership>) {
        let _ = self.scan(repo, None, membership, true);
    }

    /// Events for what changed; `doc: None` rescans everything. `membership` decides which
    /// approval decisions count (a request with only forged or unauthorised decisions is
    /// still waiting, and still news).
    pub(crate) fn changed(
        &mut self,
        repo: &Repo,
        doc: Option<&DocId>,
        membership: Option<&Membership>,
    ) -> Vec<NodeEvent> {
        self.scan(repo, doc, membership, false)
    }

    fn scan(
        &mut self,
        repo: &Repo,
        doc: Option<&DocId>,
        membership: Option<&Membership>,
        priming: bool,
    ) -> Vec<NodeEvent> {
        let docs: Vec<DocId> = match doc {
            Some(d) if d.is_index() => return Vec::new(),
            Some(d) => vec![d.clone()],
            None => repo
                .read(&DocId::index(), index::threads)
                .ok()
                .flatten()
                .unwrap_or_default()
                .iter()
                .filter_map(|t| DocId::parse(&t.id))
                .collect(),
        };
        let mut out = Vec::new();
        for d in docs {
            // Only the tasks that have not ended are read (an ended task never changes again),
            // and only a few fields of each: this runs on every change.
            let skip: std::collections::HashSet<String> = self
                .seen
                .iter()
                .filter(|(_, s)| s.is_final())
                .map(|(id, _)| id.clone())
                .collect();
            let states = repo
                .read(&d, |doc| thread::task_states(doc, &skip))
                .ok()
                .flatten()
                .unwrap_or_default();
            let approvals = repo
                .read(&d, |doc| thread::approvals(doc, d.as_str()))
                .ok()
                .flatten()
                .unwrap_or_default();
            for a in approvals {
                if self.approvals.insert(a.id.clone())
                    && counted_decision(membership, &a).is_none()
                    && !a.expired
                    && !priming
                {
                    out.push(NodeEvent::ApprovalRequested {
                        approval: a.id,
                        task: a.task,
                        thread: a.thread,
                        action: a.action,
                        expires_at: a.expires_at,
                    });
                }
            }
            // A thread's messages are read only while one of its tasks waits for an answer:
            // that is rare, and the list grows with every task.
            let asking: Vec<&thread::TaskState> = states
                .iter()
                .filter(|t| t.status == thread::TaskStatus::NeedsInput)
                .collect();
            if !asking.is_empty() {
                let messages = repo.read(&d, thread::messages).ok().flatten();
                for q in messages.unwrap_or_default() {
                    let Some(task) = asking.iter().find(|t| t.id == q.task) else {
                        continue;
                    };
                    // Only the desktop that runs the task asks about it.
                    if q.kind != thread::KIND_QUESTION
                        || q.author != task.target
                        || !self.questions.insert(q.id.clone())
                        || priming
                        || counted_answer(membership, d.as_str(), &q).is_some()
                    {
                        continue;
                    }
                    out.push(NodeEvent::InputRequested {
                        question: q.id,
                        task: q.task,
                        thread: d.to_string(),
                        text: q.text,
                        expires_at: q.expires_at.unwrap_or(0),
                    });
                }
            }
            for t in states {
                if self.seen.insert(t.id.clone(), t.status) != Some(t.status) && !priming {
                    let task = repo
                        .read(&d, |doc| thread::task(doc, d.as_str(), &t.id))
                        .ok()
                        .flatten()
                        .flatten();
                    let (prompt, error) = task.map(|t| (t.prompt, t.error)).unwrap_or_default();
                    out.push(NodeEvent::TaskChanged {
                        task: t.id,
                        thread: d.to_string(),
                        status: t.status,
                        prompt,
                        reason: error.filter(|_| t.status.is_final()),
                    });
                }
            }
        }
        out
    }
}
