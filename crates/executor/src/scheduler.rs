//! The scheduler's tokio shell on a desktop: reads the schedules aimed at this desktop from the
//! index, feeds them and the time to [`errand_schedule::Scheduler`], and writes what it decides
//! into the documents. The tasks it creates are then run by the executor like any other.
//!
//! Exactly once, across crashes and restarts, rests on three things:
//! - a run's task id (and, for a schedule without a thread, its thread id) is a function of the
//!   schedule and the slot ([`run_ids`]), so creating it twice finds it the second time;
//! - before creating a run, the slot is written as `pending_slot` in the schedule's `run`
//!   record; after, as `last_slot`. A desktop that starts and finds a pending slot above the
//!   last one looks for that slot's task: there means it ran, absent means it never did (and
//!   it is then owed like any slot that passed while the desktop was off);
//! - only the schedule's target desktop runs it (the rule in `schema::ownership` keeps anyone
//!   else from writing its record), so two desktops never both run a slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use errand_schedule::core::{HEARTBEAT, Missed};
use errand_schedule::{Action, MissedRule, Now, Schedule, ScheduleId, Scheduler};
use errand_sync::schema::index::schedules::{self, RunRecord, ScheduleEntry};
use errand_sync::schema::thread::{self, MissedSlots, NewTask};
use errand_sync::schema::{DocId, index, now_millis};
use errand_sync::{DeviceId, Repo};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::notify::{Event, Notifier};
use crate::runner::{Authority, short};

/// How many ids are tried for one run when another device already holds the first (a hostile
/// member can compute the ids too, and take them first).
const ID_ATTEMPTS: u32 = 4;

/// Starts the scheduler of the desktop `me`; it stops when `stop` is cancelled.
pub fn spawn(
    repo: Arc<Repo>,
    me: DeviceId,
    authority: Arc<dyn Authority>,
    notifier: Notifier,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let driver = Driver {
        repo,
        me: me.to_string(),
        authority,
        notifier,
        started: Instant::now(),
        bad_rules: Default::default(),
    };
    tokio::spawn(async move { driver.run(stop).await })
}

#[derive(Debug)]
struct Driver {
    repo: Arc<Repo>,
    me: String,
    authority: Arc<dyn Authority>,
    notifier: Notifier,
    /// The origin of the monotonic clock handed to the core.
    started: Instant,
    /// Schedules whose rule does not parse here, already warned about.
    bad_rules: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Driver {
    fn now(&self) -> Now {
        Now {
            wall_ms: now_millis(),
            mono: self.started.elapsed(),
        }
    }

    /// The schedules aimed at this desktop, as the index holds them.
    fn mine(&self) -> Vec<ScheduleEntry> {
        self.repo
            .read(&DocId::index(), schedules::list)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.target == self.me)
            .collect()
    }

    /// The core's view of a schedule.
    fn view(&self, s: &ScheduleEntry) -> Option<Schedule> {
        let rule =
            match errand_schedule::rule_from_parts(s.cron.as_deref(), s.every_ms, &s.tz, s.created)
            {
                Ok(rule) => rule,
                Err(e) => {
                    let mut warned = self.bad_rules.lock().unwrap_or_else(|e| e.into_inner());
                    if warned.insert(s.id.clone()) {
                        warn!(schedule = %s.id, "not running a schedule whose rule is bad: {e}");
                    }
                    return None;
                }
            };
        let creator_may_send = s
            .created_by
            .parse::<DeviceId>()
            .is_ok_and(|d| self.authority.may_send(&d));
        Some(Schedule {
            id: ScheduleId(s.id.clone()),
            rule,
            missed: s.missed.parse().unwrap_or(MissedRule::RunOnce),
            from_ms: s.created.max(s.resumed_at.unwrap_or(i64::MIN)),
            recorded: s.run.last_slot,
            active: !s.paused && !s.removed && creator_may_send,
        })
    }

    async fn run(self, stop: CancellationToken) {
        let mut changes = self.repo.subscribe();
        self.reconcile();
        let mut core = Scheduler::new();
        let mut dirty = true;
        loop {
            if dirty {
                core.set_schedules(self.mine().iter().filter_map(|s| self.view(s)));
                dirty = false;
            }
            let actions = core.handle(self.now());
            for action in actions {
                if let Err(e) = self.carry_out(&action) {
                    warn!(schedule = %action.schedule(), "cannot record a scheduled run: {e}");
                    core.failed(&action);
                }
                dirty = true;
            }
            // A slot already due here is one whose run could not be recorded: it is tried
            // again at the next heartbeat, not in a busy loop.
            let wait = core
                .poll_timeout()
                .and_then(|at| u64::try_from(at - now_millis()).ok())
                .filter(|ms| *ms > 0)
                .map_or(HEARTBEAT, Duration::from_millis)
                .min(HEARTBEAT);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                changed = changes.recv() => match changed {
                    Ok(c) if c.doc.is_index() => dirty = true,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Settles runs a crash interrupted: a pending slot whose task exists ran.
    fn reconcile(&self) {
        for s in self.mine() {
            let Some(pending) = s.run.pending_slot else {
                continue;
            };
            if s.run.last_slot.is_some_and(|last| last >= pending) {
                continue;
            }
            if let Some((task, thread)) = self.existing_run(&s, pending) {
                info!(schedule = %s.id, slot = pending, "a run interrupted by a stop was created: recording it");
                let record = RunRecord {
                    last_slot: Some(pending),
                    ran: Some((&task, thread.as_str())),
                    ..RunRecord::default()
                };
                if let Err(e) = self.repo.change(
                    &DocId::index(),
                    &format!("schedule {} ran {pending}", short(&s.id)),
                    |tx| schedules::record(tx, &s.id, &record),
                ) {
                    warn!(schedule = %s.id, "cannot record a scheduled run: {e}");
                }
            }
        }
    }

    fn entry(&self, id: &ScheduleId) -> Option<ScheduleEntry> {
        self.mine().into_iter().find(|s| s.id == id.0)
    }

    fn carry_out(&self, action: &Action) -> Result<(), String> {
        let s = self
            .entry(action.schedule())
            .ok_or_else(|| "the schedule is gone".to_owned())?;
        match action {
            Action::Run { slot, missed, .. } => self.run_slot(&s, *slot, missed.as_ref()),
            Action::Skip { missed, .. } => self.skip(&s, missed),
        }
    }

    /// Where the run of `slot` goes, and whether it already exists: the thread, and the task
    /// id (found, or free to take).
    fn place(&self, s: &ScheduleEntry, slot: i64) -> Result<(DocId, String, bool), String> {
        for attempt in 0..ID_ATTEMPTS {
            let (task, own_thread) = run_ids(&s.id, slot, attempt);
            let thread = match &s.thread {
                Some(t) => DocId::parse(t).ok_or_else(|| format!("bad thread id {t:?}"))?,
                None => own_thread,
            };
            if s.thread.is_none() && !self.thread_is_mine_or_free(&thread) {
                continue;
            }
            if s.thread.is_some() && !self.repo_has(&thread) {
                return Err(format!(
                    "thread {} is not on this desktop yet",
                    short(thread.as_str())
                ));
            }
            match self.task_in(&thread, &task) {
                None => return Ok((thread, task, false)),
                Some(t) if t.created_by == self.me && t.slot == Some(slot) => {
                    return Ok((thread, task, true));
                }
                Some(_) => continue,
            }
        }
        Err("every id for this run is taken by another device".into())
    }

    fn repo_has(&self, doc: &DocId) -> bool {
        self.repo.contains(doc).unwrap_or(false)
    }

    /// Whether the thread `doc` is free, or one this desktop made.
    fn thread_is_mine_or_free(&self, doc: &DocId) -> bool {
        let listed = self
            .repo
            .read(&DocId::index(), index::threads)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.id == doc.as_str());
        match listed {
            Some(t) => t.created_by == self.me,
            None => !self.repo_has(doc),
        }
    }

    fn task_in(&self, doc: &DocId, task: &str) -> Option<thread::Task> {
        self.repo
            .read(doc, |d| thread::task(d, doc.as_str(), task))
            .ok()
            .flatten()
            .flatten()
    }

    /// The run of `slot`, if it was created: its task and thread.
    fn existing_run(&self, s: &ScheduleEntry, slot: i64) -> Option<(String, DocId)> {
        match self.place(s, slot) {
            Ok((thread, task, true)) => Some((task, thread)),
            _ => None,
        }
    }

    /// Makes the thread of a schedule without one, for the run of `slot`.
    fn make_thread(&self, s: &ScheduleEntry, doc: &DocId, title: &str) -> Result<(), String> {
        if self.repo_has(doc) {
            return Ok(());
        }
        self.repo
            .create(
                doc,
                &format!(
                    "thread {} created by schedule {}",
                    short(doc.as_str()),
                    short(&s.id)
                ),
                |tx| thread::create(tx, doc.as_str(), title),
            )
            .map_err(|e| e.to_string())?;
        let entry = index::ThreadEntry {
            id: doc.to_string(),
            title: title.to_owned(),
            created: now_millis(),
            created_by: self.me.clone(),
            archived: false,
        };
        self.repo
            .change(
                &DocId::index(),
                &format!("thread {} listed", short(doc.as_str())),
                |tx| index::add_thread(tx, &entry),
            )
            .map_err(|e| e.to_string())
    }

    fn run_slot(
        &self,
        s: &ScheduleEntry,
        slot: i64,
        missed: Option<&Missed>,
    ) -> Result<(), String> {
        let (thread_id, task_id, exists) = self.place(s, slot)?;
        if !exists {
            self.record(
                s,
                &format!("schedule {} runs {slot}", short(&s.id)),
                &RunRecord {
                    pending_slot: Some(slot),
                    ..RunRecord::default()
                },
            )?;
            if s.thread.is_none() {
                self.make_thread(s, &thread_id, &title(&s.text))?;
            }
            let new = NewTask {
                id: &task_id,
                prompt: &s.text,
                target: &self.me,
                created: now_millis(),
            };
            let notice = missed.map(|m| missed_slots(s, m));
            self.repo
                .change(
                    &thread_id,
                    &format!(
                        "task {} queued by schedule {} for {slot}",
                        short(&task_id),
                        short(&s.id)
                    ),
                    |tx| {
                        if let (Some(m), Some(n)) = (missed, &notice) {
                            thread::add_missed(
                                tx,
                                &missed_id(&s.id, m.last),
                                &task_id,
                                &missed_text(m, Some(&task_id)),
                                now_millis(),
                                n,
                            )?;
                        }
                        thread::add_scheduled_task(tx, &new, &s.id, slot)
                    },
                )
                .map_err(|e| e.to_string())?;
            info!(schedule = %s.id, slot, task = %task_id, "scheduled run queued");
        }
        self.record(
            s,
            &format!("schedule {} ran {slot}", short(&s.id)),
            &RunRecord {
                last_slot: Some(slot),
                ran: Some((&task_id, thread_id.as_str())),
                missed: missed.map(record_of),
                ..RunRecord::default()
            },
        )?;
        if missed.is_some() && !exists {
            self.notifier
                .notify(&thread_id, &task_id, Event::Missed, Some(&s.text));
        }
        Ok(())
    }

    fn skip(&self, s: &ScheduleEntry, m: &Missed) -> Result<(), String> {
        let thread_id = match &s.thread {
            Some(t) => DocId::parse(t).ok_or_else(|| format!("bad thread id {t:?}"))?,
            // A schedule without a thread notes what it skipped in a thread of its own, where
            // its run would have gone.
            None => {
                let (_, own) = run_ids(&s.id, m.last, 0);
                if !self.thread_is_mine_or_free(&own) {
                    return Err("the thread for this notice is taken by another device".into());
                }
                self.make_thread(s, &own, &format!("{} (missed)", title(&s.text)))?;
                own
            }
        };
        let id = missed_id(&s.id, m.last);
        let noted = self
            .repo
            .read(&thread_id, thread::messages)
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .any(|msg| msg.id == id && msg.author == self.me);
        if !noted {
            let slots = missed_slots(s, m);
            self.repo
                .change(
                    &thread_id,
                    &format!("schedule {} missed {} runs", short(&s.id), m.count),
                    |tx| {
                        thread::add_missed(tx, &id, "", &missed_text(m, None), now_millis(), &slots)
                    },
                )
                .map_err(|e| e.to_string())?;
            info!(schedule = %s.id, count = m.count, reason = m.reason.as_str(), "missed runs skipped");
        }
        self.record(
            s,
            &format!("schedule {} skipped {} missed runs", short(&s.id), m.count),
            &RunRecord {
                last_slot: Some(m.last),
                missed: Some(record_of(m)),
                ..RunRecord::default()
            },
        )?;
        if !noted {
            self.notifier.notify_missed(&s.id, m.count);
        }
        Ok(())
    }

    fn record(&self, s: &ScheduleEntry, message: &str, r: &RunRecord<'_>) -> Result<(), String> {
        self.repo
            .change(&DocId::index(), message, |tx| {
                schedules::record(tx, &s.id, r)
            })
            .map_err(|e| e.to_string())
    }
}

/// The ids of the run of `slot`: its task, and its thread when the schedule names none. The
/// same on every start, so a run is found instead of made twice; `attempt` moves past ids
/// another device took first.
pub fn run_ids(schedule: &str, slot: i64, attempt: u32) -> (String, DocId) {
    let mut h = Sha256::new();
    h.update(b"errand/schedule-run/1\0");
    h.update(schedule.as_bytes());
    h.update(b"\0");
    h.update(slot.to_be_bytes());
    h.update(attempt.to_be_bytes());
    let digest = h.finalize();
    let hex = errand_sync::ids::hex(&digest);
    let task = hex[..16].to_owned();
    let thread = DocId::parse(&hex[32..64]).unwrap_or_else(DocId::new_thread);
    (task, thread)
}

fn missed_id(schedule: &str, last: i64) -> String {
    let (task, _) = run_ids(schedule, last, u32::MAX);
    format!("missed-{task}")
}

fn title(text: &str) -> String {
    text.chars().take(60).collect()
}

fn missed_slots(s: &ScheduleEntry, m: &Missed) -> MissedSlots {
    MissedSlots {
        schedule: s.id.clone(),
        first: m.first,
        last: m.last,
        count: i64::try_from(m.count).unwrap_or(i64::MAX),
        reason: m.reason.as_str().to_owned(),
    }
}

fn record_of(m: &Missed) -> (i64, i64, i64, &'static str, i64) {
    (
        m.first,
        m.last,
        i64::try_from(m.count).unwrap_or(i64::MAX),
        m.reason.as_str(),
        now_millis(),
    )
}

/// What the thread says of missed slots.
fn missed_text(m: &Missed, catch_up: Option<&str>) -> String {
    let count = if m.capped {
        format!("at least {}", m.count)
    } else {
        m.count.to_string()
    };
    let runs = if m.count == 1 && !m.capped {
        "run"
    } else {
        "runs"
    };
    let what = match catch_up {
        Some(task) => format!("running once now to catch up (task {})", short(task)),
        None => "not run: this schedule skips missed runs".to_owned(),
    };
    format!(
        "missed {count} scheduled {runs} ({} to {}): {}; {what}",
        m.first,
        m.last,
        m.reason.describe()
    )
}
