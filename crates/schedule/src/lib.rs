//! errand-schedule: when a schedule's runs fall, and which of them a desktop runs.
//!
//! - [`rule`]: a schedule's rule (a five-field cron expression in a time zone, or a fixed
//!   period) and the slots it yields. Pure functions of time.
//! - [`core`]: the scheduler as a state machine with no IO: it is told the schedules, what has
//!   been recorded and what time it is (wall and monotonic), and says which slot to run and
//!   which to record as missed. The desktop's driver (`errand_executor::scheduler`) moves its
//!   outputs into the documents.

pub mod core;
pub mod rule;

pub use core::{Action, MissedRule, Now, Reason, Schedule, ScheduleId, Scheduler};
pub use rule::{Rule, RuleError};

/// The rule a schedule stored in the index describes: its cron expression read in `tz`, or
/// else its period counted from `anchor_ms` (when it was made).
pub fn rule_from_parts(
    cron: Option<&str>,
    every_ms: Option<i64>,
    tz: &str,
    anchor_ms: i64,
) -> Result<Rule, RuleError> {
    match (cron, every_ms) {
        (Some(expr), _) => Rule::cron(expr, tz),
        (None, Some(ms)) => Rule::every_ms(ms, anchor_ms),
        (None, None) => Rule::cron("", tz),
    }
}

/// A time for people: `2026-11-27 09:00 CET` in the zone `zone` (UTC if it is unknown).
pub fn show_time(ms: i64, zone: &str) -> String {
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_zoned(tz).strftime("%Y-%m-%d %H:%M %Z").to_string(),
        Err(_) => format!("{ms} ms"),
    }
}
