//! A desktop that crashed in the middle of a scheduled run settles it at its next start
//! without running the slot twice or losing it: the slot was written as pending before the
//! run's task; if the task exists, the slot ran; if not, it never did and counts as missed.
//!
//! The crash is the state it leaves in the desktop's own documents, written here as the
//! scheduler would have written it up to the moment of the crash; the executor (with its
//! scheduler) then starts on that home, as `errand serve` would.

use errand_executor::scheduler::run_ids;
use errand_sync::DocId;
use errand_sync::schema::index::schedules::{self, NewSchedule, RunRecord};
use errand_sync::schema::{index, now_millis, thread};

use crate::approvals::start_executor_with;
use crate::support::{TestNode, desktop, until};

const HOUR: i64 = 3_600_000;

/// An hourly schedule on `desk`, made two hours and ten minutes ago: its slots fell 70 and 10
/// minutes ago. The first is recorded as settled; the second was being run when the desktop
/// crashed (`pending_slot`), and `made_task` says whether its task had been written.
fn crashed_mid_run(desk: &TestNode, made_task: bool) -> (String, i64) {
    let repo = desk.node.repo();
    let me = desk.node.id().to_string();
    let created = now_millis() - 2 * HOUR - 10 * 60_000;
    let (first, second) = (created + HOUR, created + 2 * HOUR);
    let id = "5c4ed01e5c4ed01e";
    let new = NewSchedule {
        id,
        text: "/sh echo scheduled",
        cron: None,
        every_ms: Some(HOUR),
        tz: "UTC",
        thread: None,
        target: &me,
        missed: "run-once",
        created,
    };
    repo.change(&DocId::index(), "schedule added", |tx| {
        schedules::add(tx, &new)?;
        schedules::record(
            tx,
            id,
            &RunRecord {
                last_slot: Some(first),
                pending_slot: Some(second),
                ..RunRecord::default()
            },
        )
    })
    .unwrap();
    if made_task {
        let (task, doc) = run_ids(id, second, 0);
        repo.create(&doc, "thread created", |tx| {
            thread::create(tx, doc.as_str(), "scheduled")
        })
        .unwrap();
        repo.change(&DocId::index(), "thread listed", |tx| {
            index::add_thread(
                tx,
                &index::ThreadEntry {
                    id: doc.to_string(),
                    title: "scheduled".into(),
                    created: now_millis(),
                    created_by: me.clone(),
                    archived: false,
                },
            )
        })
        .unwrap();
        repo.change(&doc, "task queued", |tx| {
            thread::add_scheduled_task(
                tx,
                &thread::NewTask {
                    id: &task,
                    prompt: "/sh echo scheduled",
                    target: &me,
                    created: now_millis(),
                },
                id,
                second,
            )
        })
        .unwrap();
    }
    (id.to_owned(), second)
}

fn schedule(desk: &TestNode, id: &str) -> schedules::ScheduleEntry {
    desk.node
        .repo()
        .read(&DocId::index(), schedules::list)
        .unwrap()
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap()
}

fn runs(desk: &TestNode, id: &str) -> Vec<thread::Task> {
    desk.node
        .tasks(None)
        .unwrap()
        .into_iter()
        .filter(|t| t.schedule.as_deref() == Some(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_task_was_written_before_the_crash_is_recorded_not_repeated() {
    let desk = desktop("desk").await;
    let (id, slot) = crashed_mid_run(&desk, true);
    let executor = start_executor_with(&desk, "allow");
    until("the interrupted run is recorded", &[&desk.node], || {
        let s = schedule(&desk, &id);
        let ok = s.run.last_slot == Some(slot);
        async move { ok }
    })
    .await;
    until("the run is done", &[&desk.node], || {
        let done = runs(&desk, &id)
            .iter()
            .all(|t| t.status == thread::TaskStatus::Done);
        async move { done }
    })
    .await;
    let s = schedule(&desk, &id);
    assert_eq!(s.run.missed_total, 0, "{s:#?}");
    assert_eq!(s.run.last_run, Some(slot));
    let all = runs(&desk, &id);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].slot, Some(slot));
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_task_was_never_written_is_missed_and_caught_up_once() {
    let desk = desktop("desk").await;
    let (id, slot) = crashed_mid_run(&desk, false);
    let executor = start_executor_with(&desk, "allow");
    until("the missed slot is caught up", &[&desk.node], || {
        let s = schedule(&desk, &id);
        let ok = s.run.last_run == Some(slot);
        async move { ok }
    })
    .await;
    let s = schedule(&desk, &id);
    assert_eq!(s.run.missed_count, Some(1), "{s:#?}");
    assert_eq!(s.run.missed_first, Some(slot));
    assert_eq!(s.run.missed_reason.as_deref(), Some("off"));
    let all = runs(&desk, &id);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].slot, Some(slot));
    executor.stop().await;
}
