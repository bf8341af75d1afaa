//! What a node reports as it happens: task status changes, peers coming and going, pairing.
//! `errand watch` prints these, and the mobile bindings turn them into listener calls.

use std::collections::{HashMap, HashSet};

use errand_pairing::membership::Membership;
use errand_pairing::protocol::PairingEvent;
use errand_sync::ids::{DeviceId, Role};
use errand_sync::schema::touched::Touched;
use errand_sync::schema::{DocId, index, thread};
use errand_sync::{DocChanged, NetEvent, Repo};
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
///
/// A change is read through what it wrote (`DocChanged::touched`): the tasks and approval
/// requests it touched, and the thread's messages only while one of its tasks waits for an
/// answer. So a change costs in proportion to itself, not to its thread or the space; only a
/// subscriber that fell behind reads everything again.
#[derive(Debug, Default)]
pub(crate) struct TaskWatcher {
    seen: HashMap<String, thread::TaskStatus>,
    approvals: HashSet<String>,
    questions: HashSet<String>,
    /// The tasks of each thread that wait for an answer, with their target desktop (the one
    /// device whose question counts).
    asking: HashMap<DocId, HashMap<String, String>>,
}

/// What [`TaskWatcher::prime`] needs of a thread, kept as a stored view so that a node
/// starting on a big space does not load every thread: each task's id, status and target, and
/// the ids of the approval requests.
#[derive(Debug, Serialize, Deserialize)]
struct Known {
    tasks: Vec<(String, thread::TaskStatus, String)>,
    approvals: Vec<String>,
}

/// Bump whenever [`Known`] or how it is derived changes.
const KNOWN_VIEW: &str = "node-known/1";

impl Known {
    fn of(doc: &automerge::Automerge, d: &DocId) -> Known {
        Known {
            tasks: thread::task_states(doc, &HashSet::new())
                .into_iter()
                .map(|t| (t.id, t.status, t.target))
                .collect(),
            approvals: thread::approvals(doc, d.as_str())
                .into_iter()
                .map(|a| a.id)
                .collect(),
        }
    }
}

impl TaskWatcher {
    /// Takes in what there is now, as not news.
    pub(crate) fn prime(&mut self, repo: &Repo, membership: Option<&Membership>) {
        let mut ignored = Vec::new();
        let threads = listed_threads(repo);
        let known = match repo.read_views(KNOWN_VIEW, &threads, Known::of) {
            Ok(known) => known,
            Err(e) => {
                // One damaged thread must not hide the others.
                tracing::warn!("reading the threads one by one: {e}");
                for d in &threads {
                    self.whole(repo, d, membership, true, &mut ignored);
                }
                return;
            }
        };
        for (d, known) in threads.iter().zip(known) {
            let Some(known) = known else {
                continue;
            };
            self.approvals.extend(known.approvals);
            let asking = self.asking.entry(d.clone()).or_default();
            for (id, status, target) in known.tasks {
                if status == thread::TaskStatus::NeedsInput {
                    asking.insert(id.clone(), target);
                }
                self.seen.insert(id, status);
            }
            self.on_questions(repo, d, membership, true, &mut ignored);
        }
    }

    /// Events for a change; `None` (the subscriber fell behind) reads every thread again.
    /// `membership` decides which approval decisions count (a request with only forged or
    /// unauthorised decisions is still waiting, and still news).
    pub(crate) fn changed(
        &mut self,
        repo: &Repo,
        change: Option<&DocChanged>,
        membership: Option<&Membership>,
    ) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        match change {
            None => {
                for d in listed_threads(repo) {
                    self.whole(repo, &d, membership, false, &mut out);
                }
            }
            Some(c) if c.doc.is_index() => {}
            Some(c) => self.touched(repo, &c.doc, &c.touched, membership, &mut out),
        }
        out
    }

    /// Reads a whole thread.
    fn whole(
        &mut self,
        repo: &Repo,
        d: &DocId,
        membership: Option<&Membership>,
        priming: bool,
        out: &mut Vec<NodeEvent>,
    ) {
        let read = repo
            .read(d, |doc| {
                (
                    thread::task_headlines(doc),
                    thread::approvals(doc, d.as_str()),
                )
            })
            .ok()
            .flatten();
        let Some((states, approvals)) = read else {
            return;
        };
        self.on_approvals(approvals, membership, priming, out);
        self.on_states(d, states, priming, out);
        self.on_questions(repo, d, membership, priming, out);
    }

    /// Reads what a change wrote into a thread.
    fn touched(
        &mut self,
        repo: &Repo,
        d: &DocId,
        touched: &Touched,
        membership: Option<&Membership>,
        out: &mut Vec<NodeEvent>,
    ) {
        let read = repo
            .read(d, |doc| {
                let states =
                    thread::task_headlines_of(doc, touched.tasks.iter().map(String::as_str));
                let approvals: Vec<thread::Approval> = touched
                    .approvals
                    .iter()
                    .filter_map(|id| thread::approval(doc, d.as_str(), id))
                    .collect();
                (states, approvals)
            })
            .ok()
            .flatten();
        let Some((states, approvals)) = read else {
            return;
        };
        // A question may be written before or after its task's status says so.
        let newly_asking = states
            .iter()
            .any(|t| t.state.status == thread::TaskStatus::NeedsInput);
        self.on_approvals(approvals, membership, false, out);
        self.on_states(d, states, false, out);
        if touched.messages || newly_asking {
            self.on_questions(repo, d, membership, false, out);
        }
    }

    fn on_approvals(
        &mut self,
        approvals: Vec<thread::Approval>,
        membership: Option<&Membership>,
        priming: bool,
        out: &mut Vec<NodeEvent>,
    ) {
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
    }

    fn on_states(
        &mut self,
        d: &DocId,
        states: Vec<thread::TaskHeadline>,
        priming: bool,
        out: &mut Vec<NodeEvent>,
    ) {
        for thread::TaskHeadline {
            state: t,
            prompt,
            error,
        } in states
        {
            let asking = self.asking.entry(d.clone()).or_default();
            if t.status == thread::TaskStatus::NeedsInput {
                asking.insert(t.id.clone(), t.target.clone());
            } else {
                asking.remove(&t.id);
            }
            if self.seen.insert(t.id.clone(), t.status) != Some(t.status) && !priming {
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

    /// The questions asked about this thread's waiting tasks. A thread's messages are read
    /// only while one of its tasks waits for an answer: that is rare, and the list grows with
    /// every task.
    fn on_questions(
        &mut self,
        repo: &Repo,
        d: &DocId,
        membership: Option<&Membership>,
        priming: bool,
        out: &mut Vec<NodeEvent>,
    ) {
        let Some(asking) = self.asking.get(d).filter(|a| !a.is_empty()) else {
            return;
        };
        let messages = repo.read(d, thread::messages).ok().flatten();
        for q in messages.unwrap_or_default() {
            let Some(target) = asking.get(&q.task) else {
                continue;
            };
            // Only the desktop that runs the task asks about it.
            if q.kind != thread::KIND_QUESTION
                || &q.author != target
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
}

/// The threads the index lists.
fn listed_threads(repo: &Repo) -> Vec<DocId> {
    repo.read(&DocId::index(), index::threads)
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| DocId::parse(&t.id))
        .collect()
}
