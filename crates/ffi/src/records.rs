//! The records and enums apps see, converted from the node's own types.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`); ids are the full hex ids the node
//! uses (any unique prefix is accepted where a method takes an id).

use errand_node::node::{
    ApprovalInfo, ConversationEntry, DeviceInfo, HistoryLine, Joined, PeerStatus, PeerSync,
    QuestionInfo, Sent, Status,
};
use errand_sync::Role;
use errand_sync::schema::{index, thread};

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum TaskStatus {
    /// Written, not picked up by its desktop yet (it may not even have received it).
    Queued,
    Running,
    /// The desktop asks before doing something risky: see the approvals.
    WaitingApproval,
    /// The agent asked a question and waits for the answer: see the questions.
    NeedsInput,
    Done,
    Failed,
    Cancelled,
}

impl TaskStatus {
    /// Whether the task has ended and will not change status again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl From<thread::TaskStatus> for TaskStatus {
    fn from(s: thread::TaskStatus) -> Self {
        match s {
            thread::TaskStatus::Queued => TaskStatus::Queued,
            thread::TaskStatus::Running => TaskStatus::Running,
            thread::TaskStatus::WaitingApproval => TaskStatus::WaitingApproval,
            thread::TaskStatus::NeedsInput => TaskStatus::NeedsInput,
            thread::TaskStatus::Done => TaskStatus::Done,
            thread::TaskStatus::Failed => TaskStatus::Failed,
            thread::TaskStatus::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// What a device may do in its space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum DeviceRole {
    /// Runs tasks; adds devices; approves.
    Desktop,
    /// Sends tasks; adds devices; approves.
    Phone,
    /// Reads and syncs only.
    Viewer,
}

impl From<Role> for DeviceRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Desktop => DeviceRole::Desktop,
            Role::Phone => DeviceRole::Phone,
            Role::Viewer => DeviceRole::Viewer,
        }
    }
}

/// Where an approval request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum ApprovalState {
    /// Waiting for a decision.
    Pending,
    Approved,
    Denied,
    /// Nobody decided in time: it counts as denied.
    Expired,
}

impl ApprovalState {
    fn parse(state: &str) -> Self {
        match state {
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "expired" => ApprovalState::Expired,
            _ => ApprovalState::Pending,
        }
    }
}

/// A progress note the desktop wrote while running a task.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ProgressRecord {
    pub at_ms: i64,
    pub text: String,
}

/// A large output kept beside the documents; get its bytes with `Node.fetch_artifact`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ArtifactRecord {
    /// Content hash (hex): what `Node.fetch_artifact` takes.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub name: String,
}

/// A task: what was asked, of which desktop, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TaskRecord {
    pub id: String,
    pub thread_id: String,
    /// The text that was sent.
    pub prompt: String,
    /// The device that runs it.
    pub target_id: String,
    pub created_by: String,
    pub created_ms: i64,
    pub status: TaskStatus,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub progress: Vec<ProgressRecord>,
    /// The answer, once done (long results are cut; the whole text is an artifact).
    pub result: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    pub artifacts: Vec<ArtifactRecord>,
    pub cancel_requested: bool,
    /// Notifications the desktop sent about it, and how each went.
    pub notifications: Vec<NoticeRecord>,
    /// The schedule whose run this is, and the slot (the scheduled time) it runs.
    pub schedule_id: Option<String>,
    pub slot_ms: Option<i64>,
}

impl From<thread::Task> for TaskRecord {
    fn from(t: thread::Task) -> Self {
        TaskRecord {
            id: t.id,
            thread_id: t.thread,
            prompt: t.prompt,
            target_id: t.target,
            created_by: t.created_by,
            created_ms: t.created,
            status: t.status.into(),
            started_ms: t.started,
            finished_ms: t.finished,
            progress: t
                .progress
                .into_iter()
                .map(|p| ProgressRecord {
                    at_ms: p.at,
                    text: p.text,
                })
                .collect(),
            result: t.result,
            error: t.error,
            artifacts: t
                .artifacts
                .into_iter()
                .map(|a| ArtifactRecord {
                    hash: a.hash,
                    size: a.size,
                    mime: a.mime,
                    name: a.name,
                })
                .collect(),
            cancel_requested: t.cancel_requested,
            notifications: t.notifications.into_iter().map(Into::into).collect(),
            schedule_id: t.schedule,
            slot_ms: t.slot,
        }
    }
}

/// A conversation: a thread of tasks.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ThreadRecord {
    pub id: String,
    pub title: String,
    pub created_ms: i64,
    pub created_by: String,
    pub archived: bool,
}

impl From<index::ThreadEntry> for ThreadRecord {
    fn from(t: index::ThreadEntry) -> Self {
        ThreadRecord {
            id: t.id,
            title: t.title,
            created_ms: t.created,
            created_by: t.created_by,
            archived: t.archived,
        }
    }
}

/// A desktop asking before it does something risky.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ApprovalRecord {
    pub id: String,
    pub thread_id: String,
    pub task_id: String,
    /// What will happen, for the person deciding ("run shell command `ls`").
    pub action: String,
    /// The policy's risk class: shell, delete, network, screenshot or input.
    pub risk_class: String,
    /// The name of the device that asks.
    pub requested_by: String,
    pub requested_ms: i64,
    /// After this, by the asking desktop's clock, an undecided request counts as denied.
    pub expires_ms: i64,
    /// Milliseconds until then, as this device estimates it (its own clock corrected by the
    /// offset measured to the desktop on connection): what to show. Negative once past.
    pub expires_in_ms: i64,
    pub state: ApprovalState,
    /// The name of the device that decided.
    pub decided_by: Option<String>,
}

impl From<ApprovalInfo> for ApprovalRecord {
    fn from(a: ApprovalInfo) -> Self {
        ApprovalRecord {
            state: ApprovalState::parse(&a.state),
            id: a.id,
            thread_id: a.thread,
            task_id: a.task,
            action: a.action,
            risk_class: a.class,
            requested_by: a.requested_by,
            requested_ms: a.requested_at,
            expires_ms: a.expires_at,
            expires_in_ms: a.expires_in_ms,
            decided_by: a.decided_by,
        }
    }
}

/// Where a question is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum QuestionState {
    /// Waiting for an answer.
    Pending,
    Answered,
    /// Nobody answered in time: the task ended.
    Expired,
}

impl QuestionState {
    fn parse(state: &str) -> Self {
        match state {
            "answered" => QuestionState::Answered,
            "expired" => QuestionState::Expired,
            _ => QuestionState::Pending,
        }
    }
}

/// A question the agent asks while a task runs; answer it with `Node.answer`.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct QuestionRecord {
    pub id: String,
    pub thread_id: String,
    pub task_id: String,
    pub question: String,
    /// The name of the desktop that asks.
    pub asked_by: String,
    pub asked_ms: i64,
    /// After this, an unanswered question ends its task.
    pub expires_ms: i64,
    pub state: QuestionState,
    pub answer: Option<String>,
    /// The name of the device that answered.
    pub answered_by: Option<String>,
}

impl From<QuestionInfo> for QuestionRecord {
    fn from(q: QuestionInfo) -> Self {
        QuestionRecord {
            state: QuestionState::parse(&q.state),
            id: q.id,
            thread_id: q.thread,
            task_id: q.task,
            question: q.question,
            asked_by: q.asked_by,
            asked_ms: q.asked_at,
            expires_ms: q.expires_at,
            answer: q.answer,
            answered_by: q.answered_by,
        }
    }
}

/// What a conversation entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum MessageKind {
    /// The user's side of a turn: a task's prompt.
    Prompt,
    /// The agent's side: a task's answer (or why it failed).
    Answer,
    /// The agent asked the user something while the task ran.
    Question,
    /// The desktop asked before doing something risky.
    Approval,
    /// Runs of a schedule that did not happen in time (`state`: off, asleep or late); the
    /// catch-up run, if any, follows.
    Missed,
}

/// One entry of a thread's conversation (`Node.conversation`), in order.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MessageRecord {
    pub kind: MessageKind,
    /// The task's, answer's, question's or approval's id.
    pub id: String,
    pub task_id: String,
    pub at_ms: i64,
    /// The name of the device that wrote it.
    pub by: String,
    pub text: String,
    /// Prompt: the task's status; answer: done, failed or cancelled; question: pending,
    /// answered or expired; approval: pending, approved, denied or expired.
    pub state: String,
    /// Who answered the question or decided the approval.
    pub reply_by: Option<String>,
    /// The question's answer.
    pub reply: Option<String>,
}

impl From<ConversationEntry> for MessageRecord {
    fn from(e: ConversationEntry) -> Self {
        MessageRecord {
            kind: match e.kind.as_str() {
                "prompt" => MessageKind::Prompt,
                "question" => MessageKind::Question,
                "approval" => MessageKind::Approval,
                "missed" => MessageKind::Missed,
                _ => MessageKind::Answer,
            },
            id: e.id,
            task_id: e.task,
            at_ms: e.at,
            by: e.by,
            text: e.text,
            state: e.state,
            reply_by: e.reply_by,
            reply: e.reply,
        }
    }
}

/// A device of the space.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DeviceRecord {
    pub id: String,
    pub name: String,
    pub role: DeviceRole,
    pub added_by: String,
    pub added_ms: i64,
    /// Whether this is the device the app runs on.
    pub this_device: bool,
    /// Whether a connection to it is open right now.
    pub connected: bool,
    /// Where it was last reachable (`ip:port`).
    pub addrs: Vec<String>,
    /// Its clock minus this device's, in milliseconds, as last measured on connection.
    pub clock_offset_ms: Option<i64>,
    /// When this device last saw it (now, while connected); `None`: never.
    pub last_seen_ms: Option<i64>,
}

impl From<DeviceInfo> for DeviceRecord {
    fn from(d: DeviceInfo) -> Self {
        DeviceRecord {
            id: d.id,
            name: d.name,
            role: d.role.into(),
            added_by: d.added_by,
            added_ms: secs_to_ms(d.added_at),
            this_device: d.this_device,
            connected: d.connected,
            addrs: d.addrs,
            clock_offset_ms: d.clock_offset_ms,
            last_seen_ms: d.last_seen_ms,
        }
    }
}

/// One commit of a document: who changed what, when.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    /// The change hash (hex): what `Node.document_at` takes.
    pub hash: String,
    /// The id of the device that wrote it.
    pub device_id: String,
    /// Its name (or a short id when it is not a member).
    pub device: String,
    pub seq: u64,
    /// As the writing device's clock saw it.
    pub time_ms: i64,
    pub message: String,
}

impl From<HistoryLine> for HistoryEntry {
    fn from(h: HistoryLine) -> Self {
        HistoryEntry {
            hash: h.entry.hash,
            device_id: h.entry.device_id,
            device: h.device,
            seq: h.entry.seq,
            time_ms: h.entry.time,
            message: h.entry.message,
        }
    }
}

/// Another device of the space as this one sees it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PeerRecord {
    pub id: String,
    pub name: String,
    pub connected: bool,
}

impl From<PeerStatus> for PeerRecord {
    fn from(p: PeerStatus) -> Self {
        PeerRecord {
            id: p.id,
            name: p.name,
            connected: p.connected,
        }
    }
}

/// This device, its space and its peers.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct StatusRecord {
    pub device_id: String,
    pub name: String,
    /// Whether this device belongs to a space (pair it otherwise).
    pub paired: bool,
    pub role: Option<DeviceRole>,
    pub space_id: Option<String>,
    /// Where this device listens (`ip:port`).
    pub addrs: Vec<String>,
    pub relay: Option<String>,
    pub peers: Vec<PeerRecord>,
    pub threads: u64,
}

impl From<Status> for StatusRecord {
    fn from(s: Status) -> Self {
        StatusRecord {
            device_id: s.device,
            name: s.name,
            paired: s.space.is_some(),
            role: s.role.map(Into::into),
            space_id: s.space,
            addrs: s.addrs,
            relay: s.relay,
            peers: s.peers.into_iter().map(Into::into).collect(),
            threads: u64::try_from(s.threads).unwrap_or(u64::MAX),
        }
    }
}

/// The outcome of pairing with a ticket.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PairedRecord {
    pub space_id: String,
    /// The device that issued the ticket.
    pub host_id: String,
    pub host_name: String,
    /// The verification code; the desktop shows the same one.
    pub code: String,
}

impl From<Joined> for PairedRecord {
    fn from(j: Joined) -> Self {
        PairedRecord {
            space_id: j.space,
            host_id: j.host,
            host_name: j.host_name,
            code: j.code,
        }
    }
}

/// A task just sent. It is stored on this device; `delivered` says whether its desktop holds
/// it yet (it gets it whenever the two can reach each other; offline is not an error).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SentRecord {
    pub task_id: String,
    pub thread_id: String,
    pub target_id: String,
    pub target_name: String,
    pub delivered: bool,
}

impl From<Sent> for SentRecord {
    fn from(s: Sent) -> Self {
        SentRecord {
            task_id: s.task,
            thread_id: s.thread,
            target_id: s.target,
            target_name: s.target_name,
            delivered: s.delivered,
        }
    }
}

/// How a sync round went with one peer.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PeerSyncRecord {
    pub id: String,
    pub name: String,
    /// Whether every document is the same on both sides.
    pub synced: bool,
}

impl From<PeerSync> for PeerSyncRecord {
    fn from(p: PeerSync) -> Self {
        PeerSyncRecord {
            id: p.id,
            name: p.name,
            synced: p.synced,
        }
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// Where a device wants to be told of events (`Node.notify_add`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct NotifyEndpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Whether messages may carry the task's text.
    pub content: bool,
}

impl From<errand_sync::schema::index::NotifyEntry> for NotifyEndpoint {
    fn from(e: errand_sync::schema::index::NotifyEntry) -> Self {
        NotifyEndpoint {
            id: e.id,
            url: e.url,
            events: e.events,
            content: e.content,
        }
    }
}

/// A notification the desktop sent about a task, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct NoticeRecord {
    pub device_id: String,
    pub event: String,
    pub at_ms: i64,
    pub delivered: bool,
    /// `HTTP 200`, or why it failed.
    pub outcome: String,
}

impl From<errand_sync::schema::thread::Notice> for NoticeRecord {
    fn from(n: errand_sync::schema::thread::Notice) -> Self {
        NoticeRecord {
            device_id: n.device,
            event: n.event,
            at_ms: n.at,
            delivered: n.delivered,
            outcome: n.outcome,
        }
    }
}

/// A new schedule (`Node.schedule_add`): `cron` (five fields, or `@daily` and the like) or
/// `every` (`15m`, `1h30m`), not both.
#[derive(Clone, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct ScheduleSpec {
    pub cron: Option<String>,
    pub every: Option<String>,
    /// IANA time zone (`Europe/Paris`); this device's when absent.
    pub time_zone: Option<String>,
    /// The thread every run goes to; a new thread per run when absent.
    pub thread_id: Option<String>,
    /// The desktop that runs it (name or id prefix); the space's first desktop when absent.
    pub target: Option<String>,
    /// `run-once` (one catch-up run for runs missed while the desktop was off; the default)
    /// or `skip`.
    pub missed: Option<String>,
    pub text: String,
}

impl From<ScheduleSpec> for errand_node::node::ScheduleSpec {
    fn from(s: ScheduleSpec) -> Self {
        errand_node::node::ScheduleSpec {
            cron: s.cron,
            every: s.every,
            tz: s.time_zone,
            thread: s.thread_id,
            to: s.target,
            missed: s.missed,
            text: s.text,
        }
    }
}

/// A schedule as the phone shows it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ScheduleRecord {
    pub id: String,
    pub text: String,
    /// The rule in one line: `cron 0 9 * * 1-5 (Europe/Paris)`, `every 15m`.
    pub rule: String,
    pub time_zone: String,
    pub thread_id: Option<String>,
    pub target_id: String,
    pub target_name: String,
    pub missed_rule: String,
    pub paused: bool,
    pub removed: bool,
    pub next_run_ms: Option<i64>,
    /// The last run: its slot, task, thread and status.
    pub last_run_ms: Option<i64>,
    pub last_task_id: Option<String>,
    pub last_thread_id: Option<String>,
    pub last_status: Option<String>,
    /// Missed runs in all, and the latest batch (first and last slot, how many, why:
    /// `off`, `asleep` or `late`).
    pub missed_total: i64,
    pub missed_first_ms: Option<i64>,
    pub missed_last_ms: Option<i64>,
    pub missed_count: Option<i64>,
    pub missed_reason: Option<String>,
}

impl From<errand_node::node::ScheduleInfo> for ScheduleRecord {
    fn from(s: errand_node::node::ScheduleInfo) -> Self {
        ScheduleRecord {
            id: s.id,
            text: s.text,
            rule: s.rule,
            time_zone: s.tz,
            thread_id: s.thread,
            target_id: s.target,
            target_name: s.target_name,
            missed_rule: s.missed,
            paused: s.paused,
            removed: s.removed,
            next_run_ms: s.next_run,
            last_run_ms: s.last_run,
            last_task_id: s.last_task,
            last_thread_id: s.last_thread,
            last_status: s.last_status,
            missed_total: s.missed_total,
            missed_first_ms: s.missed_first,
            missed_last_ms: s.missed_last,
            missed_count: s.missed_count,
            missed_reason: s.missed_reason,
        }
    }
}

/// Whether a device can be reached right now, and why not (`Node.doctor`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct DiagnosisRecord {
    pub device_id: String,
    pub name: String,
    pub role: DeviceRole,
    pub this_device: bool,
    pub revoked: bool,
    pub connected: bool,
    /// Whether it answered just now (`None`: not tried, for this device and revoked ones).
    pub reachable: Option<bool>,
    pub round_trip_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub clock_offset_ms: Option<i64>,
    /// What was found, in plain words, in order (`codes` holds the same, for programs:
    /// connected, reachable, unreachable, no_address, no_relay, never_connected, last_seen,
    /// clock_skew, revoked, this_device).
    pub findings: Vec<String>,
    pub codes: Vec<String>,
}

impl From<errand_node::node::Diagnosis> for DiagnosisRecord {
    fn from(d: errand_node::node::Diagnosis) -> Self {
        DiagnosisRecord {
            device_id: d.device,
            name: d.name,
            role: d.role.into(),
            this_device: d.this_device,
            revoked: d.revoked,
            connected: d.connected,
            reachable: d.reachable,
            round_trip_ms: d.round_trip_ms,
            last_seen_ms: d.last_seen_ms,
            clock_offset_ms: d.clock_offset_ms,
            codes: d.findings.iter().map(|f| f.code.clone()).collect(),
            findings: d.findings.into_iter().map(|f| f.text).collect(),
        }
    }
}
