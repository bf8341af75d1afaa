//! The scheduler as a state machine: no IO, no clock of its own.
//!
//! The driver tells it the schedules this desktop runs ([`Scheduler::set_schedules`]) and what
//! time it is ([`Scheduler::handle`], with both the wall clock and a monotonic one), and
//! carries out the [`Action`]s it returns: create the run's task, record missed slots. It asks
//! to be woken at [`Scheduler::poll_timeout`] (and at least every [`HEARTBEAT`], so that a wake
//! from suspend is noticed soon).
//!
//! The rules, which the tests below hold it to:
//!
//! - A slot is *on time* when this process was running and awake at that moment; the latest
//!   on-time slot that is due runs. Slots that fell while the desktop was off (before the first
//!   tick) or asleep (a tick finds the wall clock moved far more than the monotonic one) are
//!   *missed*, and so are earlier slots overtaken by a later one (a desktop too busy to tick):
//!   they are never run one by one and never recorded as run. They are reported together, with
//!   the first and last slot, how many, and why; then, by the schedule's [`MissedRule`], one
//!   catch-up run follows (for the last missed slot) or none.
//! - Each slot is handed out once per process: the highest slot handed out per schedule only
//!   grows, whatever the wall clock does afterwards (a clock set back repeats nothing). Across
//!   processes the driver persists the same bound in the documents (`recorded`), and makes
//!   each run's task id a function of the schedule and the slot.
//! - A schedule counts from when it was made or last resumed (`from_ms`): a paused schedule
//!   misses nothing, and its slots from before the resume are not owed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::rule::Rule;

/// How often the driver ticks even when no slot is near: the longest a wake from suspend can
/// go unnoticed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How far the wall clock may run ahead of the monotonic clock between two ticks before the
/// scheduler takes it for a suspend (or a clock set forward). Small drift and NTP slewing stay
/// well below it.
pub const JUMP: Duration = Duration::from_secs(60);

/// At most this many due slots are counted one by one in a single tick; beyond it the count is
/// a lower bound ([`Missed::capped`]). An every-minute schedule on a desktop that was off for a
/// year stays a bounded amount of work.
pub const MAX_COUNTED: u64 = 200_000;

/// A schedule's id, as the index names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScheduleId(pub String);

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens to slots that were missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissedRule {
    /// One catch-up run, however many slots were missed.
    #[default]
    RunOnce,
    /// Nothing: the missed slots are only recorded.
    Skip,
}

impl MissedRule {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRule::RunOnce => "run-once",
            MissedRule::Skip => "skip",
        }
    }
}

impl fmt::Display for MissedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A missed-run rule that is neither `run-once` nor `skip`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown missed-run rule {0:?}: use run-once or skip")]
pub struct BadMissedRule(pub String);

impl FromStr for MissedRule {
    type Err = BadMissedRule;
    fn from_str(s: &str) -> Result<Self, BadMissedRule> {
        match s {
            "run-once" => Ok(MissedRule::RunOnce),
            "skip" => Ok(MissedRule::Skip),
            other => Err(BadMissedRule(other.chars().take(40).collect())),
        }
    }
}

/// Why slots were missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// errand was not running on the desktop.
    Off,
    /// The desktop was asleep, or its clock was set forward.
    Asleep,
    /// The desktop was running but did not get to the slot before a later one was due.
    Late,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Off => "off",
            Reason::Asleep => "asleep",
            Reason::Late => "late",
        }
    }

    /// In plain words, for the thread and `errand schedule list`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Off => "the desktop was off (errand was not running)",
            Reason::Asleep => "the desktop was asleep, or its clock was set forward",
            Reason::Late => "the desktop was too busy to start it before the next one was due",
        }
    }
}

impl FromStr for Reason {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "off" => Ok(Reason::Off),
            "asleep" => Ok(Reason::Asleep),
            "late" => Ok(Reason::Late),
            _ => Err(()),
        }
    }
}

/// Slots that passed without running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missed {
    pub first: i64,
    pub last: i64,
    pub count: u64,
    /// The count stopped at [`MAX_COUNTED`]: there were at least this many.
    pub capped: bool,
    pub reason: Reason,
}

/// A schedule as the scheduler needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub id: ScheduleId,
    pub rule: Rule,
    pub missed: MissedRule,
    /// Slots at or before this are not owed: when the schedule was made or last resumed.
    pub from_ms: i64,
    /// The last slot the documents record as handled (run or missed), if any.
    pub recorded: Option<i64>,
    /// Not paused, not removed, and made by a device that may still have tasks run.
    pub active: bool,
}

/// What time it is: the wall clock (Unix milliseconds) and a monotonic clock that stops while
/// the machine sleeps (Linux's `CLOCK_MONOTONIC`, which `std::time::Instant` reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: i64,
    pub mono: Duration,
}

/// What the driver is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the task for `slot`, and record `missed` (slots before it that did not run) with
    /// it.
    Run {
        schedule: ScheduleId,
        slot: i64,
        missed: Option<Missed>,
    },
    /// Record missed slots and run nothing (the schedule's rule is [`MissedRule::Skip`]).
    Skip {
        schedule: ScheduleId,
        missed: Missed,
    },
}

impl Action {
    pub fn schedule(&self) -> &ScheduleId {
        match self {
            Action::Run { schedule, .. } | Action::Skip { schedule, .. } => schedule,
        }
    }

    /// The highest slot this action settles.
    pub fn slot(&self) -> i64 {
        match self {
            Action::Run { slot, .. } => *slot,
            Action::Skip { missed, .. } => missed.last,
        }
    }
}

/// The scheduler of one desktop.
#[derive(Debug, Default)]
pub struct Scheduler {
    schedules: BTreeMap<ScheduleId, Schedule>,
    /// The highest slot handed out per schedule in this process.
    handed: HashMap<ScheduleId, i64>,
    /// The previous tick.
    last: Option<Now>,
    /// Since when this process has been running and awake, and why not before then.
    awake_since: i64,
    asleep_before: Option<Reason>,
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    /// Replaces the schedules this desktop runs (as read from the documents, with what they
    /// record).
    pub fn set_schedules(&mut self, schedules: impl IntoIterator<Item = Schedule>) {
        self.schedules = schedules.into_iter().map(|s| (s.id.clone(), s)).collect();
        self.handed.retain(|id, _| self.schedules.contains_key(id));
    }

    /// The driver could not carry out `action`: its slot is handed out again at the next tick.
    pub fn failed(&mut self, action: &Action) {
        let id = action.schedule();
        let recorded = self.schedules.get(id).and_then(|s| s.recorded);
        if self.handed.get(id) == Some(&action.slot()) {
            match recorded {
                Some(r) => self.handed.insert(id.clone(), r),
                None => self.handed.remove(id),
            };
        }
    }

    /// A tick at `now`: what to run and what to record as missed.
    pub fn handle(&mut self, now: Now) -> Vec<Action> {
        match self.last {
            None => {
                self.awake_since = now.wall_ms;
                self.asleep_before = Some(Reason::Off);
            }
            Some(prev) => {
                let wall = now.wall_ms.saturating_sub(prev.wall_ms);
                let mono = i64::try_from(now.mono.saturating_sub(prev.mono).as_millis())
                    .unwrap_or(i64::MAX);
                let jump = i64::try_from(JUMP.as_millis()).unwrap_or(i64::MAX);
                if wall.saturating_sub(mono) > jump {
                    self.awake_since = now.wall_ms;
                    self.asleep_before = Some(Reason::Asleep);
                }
            }
        }
        self.last = Some(now);
        let mut actions = Vec::new();
        for schedule in self.schedules.values() {
            if !schedule.active {
                continue;
            }
            let floor = self.floor(schedule);
            if let Some(action) = self.due(schedule, floor, now.wall_ms) {
                actions.push(action);
            }
        }
        for action in &actions {
            self.handed.insert(action.schedule().clone(), action.slot());
        }
        actions
    }

    /// The wall time (Unix ms) of the next slot of any active schedule.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.schedules
            .values()
            .filter(|s| s.active)
            .filter_map(|s| s.rule.next_after(self.floor(s)))
            .min()
    }

    /// Slots at or before this are settled for `schedule`.
    fn floor(&self, schedule: &Schedule) -> i64 {
        let handed = self.handed.get(&schedule.id).copied();
        [Some(schedule.from_ms), schedule.recorded, handed]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(schedule.from_ms)
    }

    fn due(&self, schedule: &Schedule, floor: i64, now: i64) -> Option<Action> {
        let first = schedule.rule.next_after(floor)?;
        if first > now {
            return None;
        }
        // Walk the due slots in order: those before `awake_since` were missed; of the rest
        // (on time), the latest runs and any earlier ones were overtaken.
        let mut missed: Option<Missed> = None;
        let mut on_time: Option<i64> = None;
        let mut counted = 0u64;
        let mut slot = first;
        loop {
            if slot >= self.awake_since {
                if let Some(overtaken) = on_time {
                    note(&mut missed, overtaken, Reason::Late);
                }
                on_time = Some(slot);
            } else {
                note(&mut missed, slot, self.asleep_before.unwrap_or(Reason::Off));
            }
            counted += 1;
            let Some(next) = schedule.rule.next_after(slot) else {
                break;
            };
            if next > now {
                break;
            }
            if counted >= MAX_COUNTED {
                // Too many to count: settle for "at least", and jump to the slots of the
                // last day before now, which decide what runs.
                if let Some(m) = missed.as_mut() {
                    m.capped = true;
                }
                let day = 24 * 3600 * 1000;
                let resume = schedule
                    .rule
                    .next_after(now.saturating_sub(day).max(next))
                    .unwrap_or(next);
                slot = if resume > now { next } else { resume };
                counted = 0;
                continue;
            }
            slot = next;
        }
        let id = schedule.id.clone();
        match (on_time, missed) {
            (Some(slot), missed) => Some(Action::Run {
                schedule: id,
                slot,
                missed,
            }),
            (None, Some(missed)) => Some(match schedule.missed {
                MissedRule::RunOnce => Action::Run {
                    schedule: id,
                    slot: missed.last,
                    missed: Some(missed),
                },
                MissedRule::Skip => Action::Skip {
                    schedule: id,
                    missed,
                },
            }),
            (None, None) => None,
        }
    }
}

/// Adds `slot` to the missed ones. The first slot's reason is the one reported: slots missed
/// while off or asleep all come before any overtaken while awake, and say more.
fn note(missed: &mut Option<Missed>, slot: i64, reason: Reason) {
    match missed {
        Some(m) => {
            m.last = slot;
            m.count += 1;
        }
        None => {
            *missed = Some(Missed {
                first: slot,
                last: slot,
                count: 1,
                capped: false,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests;
