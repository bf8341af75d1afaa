//! Tasks that end before anything of them runs: refused (their sender may not have this
//! computer act), cancelled before they started, or unable to start (see
//! [`task::cannot_start`]).
//!
//! Such an outcome needs no claim (nothing ran, so nothing can run twice) and is written
//! lazily ([`Flush::Next`]). Those that wait next to each other in a thread end in one change,
//! in the thread's order, so a desktop that comes back to a queue of tasks it cannot start
//! (or is sent a burst of them) writes, signs and sends one change, not one per task.

use errand_sync::DeviceId;
use errand_sync::schema::DocId;
use errand_sync::schema::now_millis;
use errand_sync::schema::thread::{self, Task, TaskStatus};
use tracing::{info, warn};

use super::{Flush, Shared, conversation, lock, short, task};
use crate::notify::Event;

/// The most such tasks one change ends: a bound on what one change of the executor's holds
/// (each adds about ten operations and its reason, twice).
pub(super) const UNRUN_AT_ONCE: usize = 64;
/// The most bytes of reasons one such change holds (its first task is taken whatever its
/// reason's length, at most a prompt's, `MAX_PROMPT_BYTES`). Each reason is
/// written twice (the task's error and its answer), and one can be as long as a prompt (a
/// command that does not parse is quoted back): this keeps the change far below what peers
/// take of one change (`Limits::max_change_bytes`, 4 MiB), whatever the tasks say.
pub(super) const UNRUN_REASON_BYTES: usize = 512 * 1024;

/// Why a task ends without running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Refused,
    Cancelled,
    CannotStart,
}

impl Why {
    const ALL: [Why; 3] = [Why::Refused, Why::Cancelled, Why::CannotStart];

    fn status(self) -> TaskStatus {
        match self {
            Why::Cancelled => TaskStatus::Cancelled,
            Why::Refused | Why::CannotStart => TaskStatus::Failed,
        }
    }

    /// The word in the change's message.
    fn verb(self) -> &'static str {
        match self {
            Why::Refused => "refused",
            Why::Cancelled => "cancelled",
            Why::CannotStart => "failed",
        }
    }
}

/// How a task that never ran ends.
#[derive(Debug)]
pub(super) struct Unrun {
    why: Why,
    reason: String,
}

impl Shared {
    /// How `task` ends when that is decided before anything runs; `None` when it is to run.
    pub(super) fn ends_unrun(&self, task: &Task) -> Option<Unrun> {
        // The sender is the device that signed the task's creation; only a current phone or
        // desktop may have this computer act.
        let sender = task.created_by.parse::<DeviceId>().ok();
        if !sender.is_some_and(|d| self.authority.may_send(&d)) {
            let reason = format!(
                "refused: sent by {}, which is not a phone or desktop of this space",
                short(&task.created_by)
            );
            return Some(Unrun {
                why: Why::Refused,
                reason,
            });
        }
        if task.cancel_requested {
            return Some(Unrun {
                why: Why::Cancelled,
                reason: "cancelled before it started".to_owned(),
            });
        }
        task::cannot_start(self, task).map(|reason| Unrun {
            why: Why::CannotStart,
            reason,
        })
    }

    /// Adds to `ended` the tasks that wait next in the thread's order and also end before
    /// running, up to [`UNRUN_AT_ONCE`] and [`UNRUN_REASON_BYTES`]; stops at the first that is
    /// to run (it runs next, in its turn).
    pub(super) fn gather_unrun(&self, doc: &DocId, ended: &mut Vec<(Task, Unrun)>) {
        let mut reasons: usize = ended.iter().map(|(_, e)| e.reason.len()).sum();
        while ended.len() < UNRUN_AT_ONCE {
            let Some(id) = lock(&self.queue).first(doc) else {
                return;
            };
            if ended.iter().any(|(t, _)| t.id == id) {
                // Queued again while it was being taken: a change read meanwhile still said
                // it waits. It ends here already; twice would write its answer twice.
                lock(&self.queue).take_first(doc, &id);
                continue;
            }
            let Some(task) = self
                .task(doc, &id)
                .filter(|t| t.status == TaskStatus::Queued)
            else {
                return;
            };
            let Some(end) = self.ends_unrun(&task) else {
                return;
            };
            reasons += end.reason.len();
            if reasons > UNRUN_REASON_BYTES {
                return;
            }
            // Still first: a change read meanwhile may have taken it out of the queue.
            if !lock(&self.queue).take_first(doc, &id) {
                return;
            }
            ended.push((task, end));
        }
    }

    /// Ends tasks that never ran, in one change written lazily: a crash that takes it away
    /// leaves them queued, to be decided again from the same document.
    pub(super) fn settle_unrun(&self, doc: &DocId, ended: &[(Task, Unrun)]) {
        for (task, end) in ended {
            match end.why {
                // The user's own doing.
                Why::Cancelled => info!(task = %task.id, "{}", end.reason),
                Why::Refused | Why::CannotStart => warn!(task = %task.id, "{}", end.reason),
            }
        }
        self.record(doc, Flush::Next, &message(ended), |tx| {
            for (task, end) in ended {
                let status = end.why.status();
                thread::finish(tx, &task.id, Err(&end.reason), status, now_millis())?;
                conversation::add_answer(tx, &task.id, &end.reason, status, &[])?;
            }
            Ok(())
        });
        // A refusal is not news to the user, and a cancel was theirs. Those that failed are
        // told of in one message, with their reason when they share it.
        let failed: Vec<&(Task, Unrun)> = ended
            .iter()
            .filter(|(_, e)| e.why == Why::CannotStart)
            .collect();
        let Some((_, first)) = failed.first() else {
            return;
        };
        let shared = failed
            .iter()
            .all(|(_, e)| e.reason == first.reason)
            .then_some(first.reason.as_str());
        let ids: Vec<String> = failed.iter().map(|(t, _)| t.id.clone()).collect();
        self.notifier.notify_tasks(doc, &ids, Event::Failed, shared);
    }
}

/// The change's message: "task 1a2b3c4d failed" for one; for several, each outcome with how
/// many and the first few of them ("3 tasks failed (1a2b3c4d, …)").
fn message(ended: &[(Task, Unrun)]) -> String {
    let mut parts = Vec::new();
    for why in Why::ALL {
        let ids: Vec<&str> = ended
            .iter()
            .filter(|(_, e)| e.why == why)
            .map(|(t, _)| short(&t.id))
            .collect();
        let verb = why.verb();
        match ids[..] {
            [] => {}
            [id] => parts.push(format!("task {id} {verb}")),
            _ => {
                let shown = ids.iter().take(4).copied().collect::<Vec<_>>().join(", ");
                let more = if ids.len() > 4 { ", …" } else { "" };
                parts.push(format!("{} tasks {verb} ({shown}{more})", ids.len()));
            }
        }
    }
    parts.join("; ")
}
