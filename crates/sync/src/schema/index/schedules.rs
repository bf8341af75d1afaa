//! Schedules, in the index: `schedules/<id>`.
//!
//! ```text
//! schedules: { <id>: { text, cron | every, tz, thread, target, missed, created,   its creator's
//!                      paused, resumed_at, removed,                    any phone or desktop
//!                      run: { last_slot, last_run, last_task, last_thread, pending_slot,
//!                             missed_total, missed_first, missed_last, missed_count,
//!                             missed_reason, missed_at } } }           the target desktop's
//! ```
//!
//! The rule and what a run does are fixed by the schedule's creator (to change them, remove
//! the schedule and add another). Pausing, resuming and removing are open to every phone and
//! desktop, offline too; edits made at once on two devices merge to one value on every
//! device. What happened to the runs is written only by the desktop that runs them, which is
//! why it is a map of its own (`run`) and not fields beside the creator's.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::schema::{Fields, get_obj};

/// The fields only a schedule's creator writes.
pub const CREATOR_FIELDS: [&str; 8] = [
    "text", "cron", "every", "tz", "thread", "target", "missed", "created",
];
/// The fields any phone or desktop may write.
pub const SHARED_FIELDS: [&str; 3] = ["paused", "resumed_at", "removed"];
/// The map its target desktop writes.
pub const RUN: &str = "run";

/// What a new schedule says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchedule<'a> {
    pub id: &'a str,
    pub text: &'a str,
    /// A five-field cron expression, or `None` for a fixed period.
    pub cron: Option<&'a str>,
    /// The period in milliseconds, for a schedule without a cron expression.
    pub every_ms: Option<i64>,
    /// The IANA time zone the cron expression is read in.
    pub tz: &'a str,
    /// The thread every run goes to; `None` for a new thread per run.
    pub thread: Option<&'a str>,
    /// The desktop that runs it.
    pub target: &'a str,
    /// `run-once` or `skip`.
    pub missed: &'a str,
    pub created: i64,
}

/// A schedule as the index holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    pub id: String,
    /// The device that made it (the actor of the change that created its map).
    pub created_by: String,
    pub text: String,
    pub cron: Option<String>,
    pub every_ms: Option<i64>,
    pub tz: String,
    pub thread: Option<String>,
    pub target: String,
    pub missed: String,
    pub created: i64,
    pub paused: bool,
    pub resumed_at: Option<i64>,
    pub removed: bool,
    pub run: RunState,
}

/// What the target desktop records of a schedule's runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The last slot handled, run or missed: slots up to it are settled.
    pub last_slot: Option<i64>,
    /// The slot, task and thread of the last run.
    pub last_run: Option<i64>,
    pub last_task: Option<String>,
    pub last_thread: Option<String>,
    /// A slot whose run was being created: written before its task, so that a desktop that
    /// crashed in between can tell, at its next start, whether the run exists.
    pub pending_slot: Option<i64>,
    /// How many slots were missed in all.
    pub missed_total: i64,
    /// The latest batch of missed slots.
    pub missed_first: Option<i64>,
    pub missed_last: Option<i64>,
    pub missed_count: Option<i64>,
    pub missed_reason: Option<String>,
    pub missed_at: Option<i64>,
}

fn section(doc: &impl ReadDoc) -> Result<ObjId, AutomergeError> {
    get_obj(doc, &ROOT, "schedules").ok_or(AutomergeError::InvalidOp(ObjType::Map))
}

fn schedule_obj(doc: &impl ReadDoc, id: &str) -> Result<ObjId, AutomergeError> {
    get_obj(doc, &section(doc)?, id).ok_or(AutomergeError::InvalidOp(ObjType::Map))
}

/// Adds a schedule (by its creator).
pub fn add(tx: &mut impl Transactable, s: &NewSchedule<'_>) -> Result<(), AutomergeError> {
    let section = section(tx)?;
    let obj = tx.put_object(&section, s.id, ObjType::Map)?;
    tx.put(&obj, "text", s.text)?;
    if let Some(cron) = s.cron {
        tx.put(&obj, "cron", cron)?;
    }
    if let Some(every) = s.every_ms {
        tx.put(&obj, "every", every)?;
    }
    tx.put(&obj, "tz", s.tz)?;
    if let Some(thread) = s.thread {
        tx.put(&obj, "thread", thread)?;
    }
    tx.put(&obj, "target", s.target)?;
    tx.put(&obj, "missed", s.missed)?;
    tx.put(&obj, "created", s.created)?;
    Ok(())
}

/// Pauses or resumes a schedule; a resume counts its slots from `at`, so the paused time is
/// neither run nor missed. Returns `false` (writing nothing) when it already stands so.
pub fn set_paused(
    tx: &mut impl Transactable,
    id: &str,
    paused: bool,
    at: i64,
) -> Result<bool, AutomergeError> {
    let obj = schedule_obj(tx, id)?;
    if Fields::read(tx, &obj).bool("paused").unwrap_or(false) == paused {
        return Ok(false);
    }
    tx.put(&obj, "paused", paused)?;
    if !paused {
        tx.put(&obj, "resumed_at", at)?;
    }
    Ok(true)
}

/// Removes a schedule (marked: nothing is ever deleted).
pub fn remove(tx: &mut impl Transactable, id: &str) -> Result<(), AutomergeError> {
    let obj = schedule_obj(tx, id)?;
    tx.put(&obj, "removed", true)
}

/// What the target desktop writes after handling slots of a schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRecord<'a> {
    /// Slots up to this are settled.
    pub last_slot: Option<i64>,
    /// The run that was created, if any: its task and thread.
    pub ran: Option<(&'a str, &'a str)>,
    /// A run about to be created.
    pub pending_slot: Option<i64>,
    /// Slots missed: first, last, how many, why, when this was noticed.
    pub missed: Option<(i64, i64, i64, &'a str, i64)>,
}

/// Records what happened to a schedule's slots (by its target desktop).
pub fn record(
    tx: &mut impl Transactable,
    id: &str,
    r: &RunRecord<'_>,
) -> Result<(), AutomergeError> {
    let obj = schedule_obj(tx, id)?;
    let run = match get_obj(tx, &obj, RUN) {
        Some(run) => run,
        None => tx.put_object(&obj, RUN, ObjType::Map)?,
    };
    if let Some(slot) = r.last_slot {
        tx.put(&run, "last_slot", slot)?;
    }
    if let Some((task, thread)) = r.ran {
        if let Some(slot) = r.last_slot {
            tx.put(&run, "last_run", slot)?;
        }
        tx.put(&run, "last_task", task)?;
        tx.put(&run, "last_thread", thread)?;
    }
    if let Some(pending) = r.pending_slot {
        tx.put(&run, "pending_slot", pending)?;
    }
    if let Some((first, last, count, reason, at)) = r.missed {
        let total = Fields::read(tx, &run).i64("missed_total").unwrap_or(0);
        tx.put(&run, "missed_total", total.saturating_add(count))?;
        tx.put(&run, "missed_first", first)?;
        tx.put(&run, "missed_last", last)?;
        tx.put(&run, "missed_count", count)?;
        tx.put(&run, "missed_reason", reason)?;
        tx.put(&run, "missed_at", at)?;
    }
    Ok(())
}

/// Every schedule in the index, removed ones included, oldest first.
pub fn list(doc: &impl ReadDoc) -> Vec<ScheduleEntry> {
    let Some(section) = get_obj(doc, &ROOT, "schedules") else {
        return Vec::new();
    };
    let mut out: Vec<ScheduleEntry> = doc
        .map_range(&section, ..)
        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
        .map(|item| {
            let obj = item.id();
            let f = Fields::read(doc, &obj);
            let run = f
                .obj(RUN)
                .map(|run| {
                    let r = Fields::read(doc, run);
                    RunState {
                        last_slot: r.i64("last_slot"),
                        last_run: r.i64("last_run"),
                        last_task: r.str("last_task"),
                        last_thread: r.str("last_thread"),
                        pending_slot: r.i64("pending_slot"),
                        missed_total: r.i64("missed_total").unwrap_or(0),
                        missed_first: r.i64("missed_first"),
                        missed_last: r.i64("missed_last"),
                        missed_count: r.i64("missed_count"),
                        missed_reason: r.str("missed_reason"),
                        missed_at: r.i64("missed_at"),
                    }
                })
                .unwrap_or_default();
            ScheduleEntry {
                id: item.key.to_string(),
                created_by: crate::schema::thread::creator(&obj),
                text: f.str("text").unwrap_or_default(),
                cron: f.str("cron"),
                every_ms: f.i64("every"),
                tz: f.str("tz").unwrap_or_else(|| "UTC".into()),
                thread: f.str("thread"),
                target: f.str("target").unwrap_or_default(),
                missed: f.str("missed").unwrap_or_else(|| "run-once".into()),
                created: f.i64("created").unwrap_or(0),
                paused: f.bool("paused").unwrap_or(false),
                resumed_at: f.i64("resumed_at"),
                removed: f.bool("removed").unwrap_or(false),
                run,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    out
}
