//! `errand schedule`: add, list, pause, resume and remove schedules.

use std::time::Duration;

use anyhow::Result;
use errand_node::control::Request;
use errand_node::node::{ScheduleInfo, ScheduleSpec, short};
use errand_schedule::show_time;

use crate::ScheduleAction;
use crate::commands::show;
use crate::output::one_line;
use crate::session::Session;

/// How long a change waits for peers to take it before the command ends (in a session of
/// its own; a running node passes it on by itself).
const REFRESH: Duration = Duration::from_millis(1500);

pub async fn run(session: &mut Session, action: ScheduleAction, json: bool) -> Result<()> {
    match action {
        ScheduleAction::Add {
            cron,
            every,
            tz,
            thread,
            to,
            missed,
            text,
        } => {
            let spec = ScheduleSpec {
                cron,
                every,
                tz,
                thread,
                to,
                missed: Some(missed),
                text: text.join(" "),
            };
            let info: ScheduleInfo = session.call(Request::ScheduleAdd { spec }).await?;
            session.refresh(REFRESH).await;
            // The id alone on standard output, so that scripts can keep it.
            show(json, &info, |i| i.id.clone())?;
        }
        ScheduleAction::List => {
            let all: Vec<ScheduleInfo> = session.call(Request::Schedules).await?;
            show(json, &all, |all| list(all))?;
        }
        ScheduleAction::Pause { id } | ScheduleAction::Resume { id } if id.trim().is_empty() => {
            anyhow::bail!("which schedule? give its id (errand schedule list)");
        }
        ScheduleAction::Pause { id } => {
            let info: ScheduleInfo = session
                .call(Request::SchedulePause { id, paused: true })
                .await?;
            session.refresh(REFRESH).await;
            show(json, &info, |i| format!("schedule {} paused", i.id))?;
        }
        ScheduleAction::Resume { id } => {
            let info: ScheduleInfo = session
                .call(Request::SchedulePause { id, paused: false })
                .await?;
            session.refresh(REFRESH).await;
            show(json, &info, |i| {
                format!(
                    "schedule {} resumed; next run {}",
                    i.id,
                    i.next_run.map_or("unknown".into(), |t| show_time(t, &i.tz))
                )
            })?;
        }
        ScheduleAction::Remove { id } => {
            let info: ScheduleInfo = session.call(Request::ScheduleRemove { id }).await?;
            session.refresh(REFRESH).await;
            show(json, &info, |i| format!("schedule {} removed", i.id))?;
        }
    }
    Ok(())
}

/// One block per schedule: what it runs, when, where, and how its runs went.
fn list(all: &[ScheduleInfo]) -> String {
    if all.is_empty() {
        return "no schedules (errand schedule add --cron \"0 9 * * *\" TEXT)".into();
    }
    let mut out = String::new();
    for s in all {
        let state = if s.paused { "  (paused)" } else { "" };
        out.push_str(&format!("{}  {}{state}\n", s.id, one_line(&s.text, 60)));
        let target = if s.target_name.is_empty() {
            short(&s.target).to_owned()
        } else {
            s.target_name.clone()
        };
        let thread = s
            .thread
            .as_deref()
            .map_or("a new thread per run".to_owned(), |t| {
                format!("thread {}", short(t))
            });
        out.push_str(&format!(
            "  rule: {}; runs on {target}, in {thread}; missed runs: {}\n",
            s.rule, s.missed
        ));
        let next = match s.next_run {
            Some(t) => show_time(t, &s.tz),
            None if s.paused => "none while paused".into(),
            None => "none".into(),
        };
        out.push_str(&format!("  next run: {next}\n"));
        let last = match (s.last_run, &s.last_task) {
            (Some(slot), Some(task)) => {
                format!(
                    "{} (task {}, {})",
                    show_time(slot, &s.tz),
                    short(task),
                    s.last_status.as_deref().unwrap_or("not here yet")
                )
            }
            _ => "none yet".into(),
        };
        out.push_str(&format!("  last run: {last}\n"));
        if let (Some(first), Some(last), Some(count)) =
            (s.missed_first, s.missed_last, s.missed_count)
        {
            let why = s
                .missed_reason
                .as_deref()
                .and_then(|r| r.parse::<errand_schedule::Reason>().ok())
                .map_or("", |r| r.describe());
            let span = if first == last {
                show_time(first, &s.tz)
            } else {
                format!("{} to {}", show_time(first, &s.tz), show_time(last, &s.tz))
            };
            out.push_str(&format!(
                "  missed: {count} (latest: {span}: {why}); {} in all\n",
                s.missed_total
            ));
        }
    }
    out.trim_end().to_owned()
}
