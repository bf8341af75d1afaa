//! Schedules: tasks a desktop runs by itself at set times (`errand schedule`). They live in the
//! index, so any phone or desktop can add, pause, resume and remove them offline; the target
//! desktop runs them (`errand_executor::scheduler`).

use errand_schedule::{MissedRule, Rule};
use errand_sync::Role;
use errand_sync::schema::index::schedules::{self, NewSchedule, ScheduleEntry};
use errand_sync::schema::{DocId, now_millis, thread};
use serde::{Deserialize, Serialize};

use super::{Node, short};
use crate::error::NodeError;

/// What a new schedule is to be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// A five-field cron expression (or `@daily` and the like).
    pub cron: Option<String>,
    /// A period instead: `15m`, `1h30m`, `1d`.
    pub every: Option<String>,
    /// The IANA time zone the cron expression is read in; this device's zone by default.
    pub tz: Option<String>,
    /// The thread every run goes to (id or prefix); a new thread per run by default.
    pub thread: Option<String>,
    /// The desktop that runs it (name or id prefix); the space's first desktop by default.
    pub to: Option<String>,
    /// `run-once` (the default) or `skip`.
    pub missed: Option<String>,
    pub text: String,
}

/// A schedule as people see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    pub id: String,
    pub text: String,
    /// The rule in one line: `cron 0 9 * * 1-5 (Europe/Paris)`, `every 15m`.
    pub rule: String,
    pub cron: Option<String>,
    pub every_ms: Option<i64>,
    pub tz: String,
    pub thread: Option<String>,
    pub target: String,
    pub target_name: String,
    pub missed: String,
    pub created: i64,
    pub created_by: String,
    pub paused: bool,
    pub removed: bool,
    /// When it runs next (Unix ms), unless paused or removed.
    pub next_run: Option<i64>,
    /// The last slot handled (run or missed).
    pub last_slot: Option<i64>,
    /// The last slot run, the task that ran it and how that went.
    pub last_run: Option<i64>,
    pub last_task: Option<String>,
    pub last_thread: Option<String>,
    pub last_status: Option<String>,
    /// Missed runs in all, and the latest batch: first and last slot, how many, why.
    pub missed_total: i64,
    pub missed_first: Option<i64>,
    pub missed_last: Option<i64>,
    pub missed_count: Option<i64>,
    pub missed_reason: Option<String>,
}

/// The most of a schedule's text: the same bound as a task's prompt.
fn check_text(text: &str) -> Result<&str, NodeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(NodeError::BadInput(
            "a schedule needs some text to run".into(),
        ));
    }
    thread::check_prompt(text).map_err(|e| NodeError::BadInput(e.to_string()))?;
    Ok(text)
}

impl Node {
    /// Adds a schedule; returns it as listed.
    pub fn schedule_add(&self, spec: &ScheduleSpec) -> Result<ScheduleInfo, NodeError> {
        self.may_edit_schedules()?;
        let text = check_text(&spec.text)?;
        let created = now_millis();
        let tz = match &spec.tz {
            Some(tz) => tz.trim().to_owned(),
            None => errand_schedule::rule::local_zone(),
        };
        let bad = |e: errand_schedule::RuleError| NodeError::BadInput(e.to_string());
        let (cron, every_ms) = match (&spec.cron, &spec.every) {
            (Some(_), Some(_)) => {
                return Err(NodeError::BadInput(
                    "give either --cron or --every, not both".into(),
                ));
            }
            (None, None) => {
                return Err(NodeError::BadInput(
                    "a schedule needs --cron \"EXPR\" or --every DURATION".into(),
                ));
            }
            (Some(expr), None) => {
                Rule::cron(expr, &tz).map_err(bad)?;
                (Some(expr.trim().to_owned()), None)
            }
            (None, Some(every)) => {
                let Rule::Every { period_ms, .. } = Rule::every(every, created).map_err(bad)?
                else {
                    return Err(NodeError::BadInput(format!("bad period {every:?}")));
                };
                (None, Some(period_ms))
            }
        };
        let missed: MissedRule = match &spec.missed {
            Some(m) => m
                .trim()
                .parse()
                .map_err(|e: errand_schedule::core::BadMissedRule| {
                    NodeError::BadInput(e.to_string())
                })?,
            None => MissedRule::RunOnce,
        };
        let target = match &spec.to {
            Some(t) => self.resolve_target(t)?,
            None => self.default_target()?,
        };
        if target.role != Role::Desktop {
            return Err(NodeError::BadInput(format!(
                "{} is a {}; only desktops run schedules",
                target.name, target.role
            )));
        }
        let thread = match &spec.thread {
            Some(t) => Some(self.resolve_thread(t)?.to_string()),
            None => None,
        };
        let id = errand_sync::ids::hex(&rand::random::<[u8; 8]>());
        let new = NewSchedule {
            id: &id,
            text,
            cron: cron.as_deref(),
            every_ms,
            tz: &tz,
            thread: thread.as_deref(),
            target: &target.id,
            missed: missed.as_str(),
            created,
        };
        self.repo
            .change(
                &DocId::index(),
                &format!("schedule {} added", short(&id)),
                |tx| schedules::add(tx, &new),
            )
            .map_err(|e| match e {
                errand_sync::repo::ChangeError::Schema(_) => NodeError::NotAllowed(
                    "this space was created before schedules existed; create a new space to use them"
                        .into(),
                ),
                e => e.into(),
            })?;
        self.schedule(&id)
    }

    /// Every schedule not removed, oldest first.
    pub fn schedules(&self) -> Result<Vec<ScheduleInfo>, NodeError> {
        self.require_space()?;
        let entries = self
            .repo
            .read(&DocId::index(), schedules::list)?
            .unwrap_or_default();
        let names = self.names();
        let now = now_millis();
        Ok(entries
            .iter()
            .filter(|e| !e.removed)
            .map(|e| self.info(e, &names, now))
            .collect())
    }

    /// One schedule, by id or id prefix (removed ones too, so a removal can be shown).
    pub fn schedule(&self, needle: &str) -> Result<ScheduleInfo, NodeError> {
        let entry = self.find_schedule(needle, true)?;
        Ok(self.info(&entry, &self.names(), now_millis()))
    }

    fn find_schedule(&self, needle: &str, removed_too: bool) -> Result<ScheduleEntry, NodeError> {
        self.require_space()?;
        let needle = needle.trim();
        let entries = self
            .repo
            .read(&DocId::index(), schedules::list)?
            .unwrap_or_default();
        let found: Vec<&ScheduleEntry> = entries
            .iter()
            .filter(|e| !needle.is_empty() && e.id.starts_with(needle))
            .filter(|e| removed_too || !e.removed)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(NodeError::NotFound(format!("no schedule {needle:?}"))),
            _ => Err(NodeError::Ambiguous(format!(
                "{needle:?} names more than one schedule"
            ))),
        }
    }

    /// Pauses (`true`) or resumes a schedule. A resumed schedule runs its next slot; the ones
    /// that fell while it was paused are not owed.
    pub fn schedule_pause(&self, needle: &str, paused: bool) -> Result<ScheduleInfo, NodeError> {
        self.may_edit_schedules()?;
        let entry = self.find_schedule(needle, false)?;
        let verb = if paused { "paused" } else { "resumed" };
        self.repo.change(
            &DocId::index(),
            &format!("schedule {} {verb}", short(&entry.id)),
            |tx| schedules::set_paused(tx, &entry.id, paused, now_millis()).map(|_| ()),
        )?;
        self.schedule(&entry.id)
    }

    pub fn schedule_remove(&self, needle: &str) -> Result<ScheduleInfo, NodeError> {
        self.may_edit_schedules()?;
        let entry = self.find_schedule(needle, false)?;
        self.repo.change(
            &DocId::index(),
            &format!("schedule {} removed", short(&entry.id)),
            |tx| schedules::remove(tx, &entry.id),
        )?;
        self.schedule(&entry.id)
    }

    fn may_edit_schedules(&self) -> Result<(), NodeError> {
        self.require_space()?;
        if self.role() == Some(Role::Viewer) {
            return Err(NodeError::NotAllowed(
                "this device is a viewer: it can read and sync, not change schedules".into(),
            ));
        }
        Ok(())
    }

    fn info(
        &self,
        e: &ScheduleEntry,
        names: &std::collections::HashMap<String, String>,
        now: i64,
    ) -> ScheduleInfo {
        let rule =
            errand_schedule::rule_from_parts(e.cron.as_deref(), e.every_ms, &e.tz, e.created);
        let floor = [Some(e.created), e.resumed_at, e.run.last_slot, Some(now)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
        let next_run = match &rule {
            Ok(rule) if !e.paused && !e.removed => rule.next_after(floor),
            _ => None,
        };
        let last_status = match (&e.run.last_task, &e.run.last_thread) {
            (Some(task), Some(thread)) => DocId::parse(thread).and_then(|doc| {
                self.repo
                    .read(&doc, |d| thread::task_status(d, task))
                    .ok()
                    .flatten()
                    .flatten()
                    .map(|s| s.to_string())
            }),
            _ => None,
        };
        ScheduleInfo {
            id: e.id.clone(),
            text: e.text.clone(),
            rule: match &rule {
                Ok(rule) => rule.describe(),
                Err(err) => format!("bad rule: {err}"),
            },
            cron: e.cron.clone(),
            every_ms: e.every_ms,
            tz: e.tz.clone(),
            thread: e.thread.clone(),
            target: e.target.clone(),
            target_name: names.get(&e.target).cloned().unwrap_or_default(),
            missed: e.missed.clone(),
            created: e.created,
            created_by: e.created_by.clone(),
            paused: e.paused,
            removed: e.removed,
            next_run,
            last_slot: e.run.last_slot,
            last_run: e.run.last_run,
            last_task: e.run.last_task.clone(),
            last_thread: e.run.last_thread.clone(),
            last_status,
            missed_total: e.run.missed_total,
            missed_first: e.run.missed_first,
            missed_last: e.run.missed_last,
            missed_count: e.run.missed_count,
            missed_reason: e.run.missed_reason.clone(),
        }
    }
}
