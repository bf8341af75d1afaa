//! How the executor works through what waits for it.

use errand_node::Node;
use errand_sync::Role;
use errand_sync::schema::thread::TaskStatus;

use crate::approvals::{start_executor_with, start_executor_with_policy};
use crate::ntfy::Ntfy;
use crate::support::{desktop, node, pair, until};

/// Tasks a desktop cannot start (here: they need a model, and none is configured) that wait in
/// a row end in one change: a desktop that comes back to a queue of them answers them all at
/// once, not with a change, a signature and a message to every peer each. A task that can run
/// (a direct command) runs in its turn between two such changes, and every answer is in the
/// conversation in the thread's order.
#[tokio::test]
async fn tasks_that_cannot_start_end_together_in_the_threads_order() {
    let desk = desktop("desk").await;
    let first = desk.node.send("plan my week", None, None).unwrap();
    let thread = first.thread.clone();
    let send = |text: &str| {
        desk.node
            .send(text, Some(thread.as_str()), None)
            .unwrap()
            .task
    };
    let unrun = [
        first.task.clone(),
        send("book a table"),
        send("sort the photos"),
    ];
    let command = send("/sh echo between");
    let cancelled = send("water the plants");
    desk.node.cancel(&cancelled).unwrap();
    let last = send("call mum");
    let sent = desk.node.history(Some(&thread), None).unwrap().len();

    let _executor = start_executor_with(&desk, "allow");
    all_ended(&desk.node, &thread).await;

    let short = |id: &str| id[..8].to_owned();
    let executor_commits: Vec<String> = desk.node.history(Some(&thread), None).unwrap()[sent..]
        .iter()
        .map(|line| line.entry.message.clone())
        .collect();
    assert_eq!(
        executor_commits,
        [
            format!(
                "3 tasks failed ({}, {}, {})",
                short(&unrun[0]),
                short(&unrun[1]),
                short(&unrun[2])
            ),
            format!("task {} running", short(&command)),
            format!("task {} progress", short(&command)),
            format!("task {} done", short(&command)),
            format!(
                "task {} cancelled; task {} failed",
                short(&cancelled),
                short(&last)
            ),
        ]
    );

    let status = |id: &str| desk.node.task(id).unwrap().status;
    assert!(unrun.iter().all(|t| status(t) == TaskStatus::Failed));
    assert_eq!(status(&command), TaskStatus::Done);
    assert_eq!(status(&cancelled), TaskStatus::Cancelled);
    assert_eq!(status(&last), TaskStatus::Failed);
    let answers: Vec<(String, String)> = desk
        .node
        .conversation(&thread)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "answer")
        .map(|e| (e.task, e.state))
        .collect();
    let expected: Vec<(String, String)> = unrun
        .iter()
        .map(|t| (t.clone(), "failed".to_owned()))
        .chain([
            (command.clone(), "done".to_owned()),
            (cancelled.clone(), "cancelled".to_owned()),
            (last.clone(), "failed".to_owned()),
        ])
        .collect();
    assert_eq!(answers, expected);
}

/// One change ends at most `UNRUN_AT_ONCE` (64) of them: a queue of 70 ends in two, 64 then 6.
#[tokio::test]
async fn one_change_ends_at_most_sixty_four_tasks() {
    let desk = desktop("desk").await;
    let first = desk.node.send("task 0", None, None).unwrap();
    let thread = first.thread.clone();
    for i in 1..70 {
        desk.node
            .send(&format!("task {i}"), Some(thread.as_str()), None)
            .unwrap();
    }
    let sent = desk.node.history(Some(&thread), None).unwrap().len();

    let _executor = start_executor_with(&desk, "allow");
    all_ended(&desk.node, &thread).await;

    let counts = commit_counts(&desk.node, &thread, sent);
    assert_eq!(counts, ["64 tasks failed", "6 tasks failed"]);
    let tasks = desk.node.tasks(Some(&thread)).unwrap();
    assert!(tasks.iter().all(|t| t.status == TaskStatus::Failed));
}

/// A command that does not parse is quoted back in its reason, which is written twice (the
/// task's error and its answer): tasks whose reasons are long end in changes kept far below
/// what a peer takes of one change, so the phone that sent them still takes every answer.
#[tokio::test]
async fn long_reasons_spread_over_changes_the_phone_takes() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    // Each reason quotes about 95 KB; twelve would be one change of some 2.3 MB.
    let long = format!("/fetch {}", "x".repeat(95_000));
    let first = phone.node.send(&long, None, None).unwrap();
    let thread = first.thread.clone();
    let mut tasks = vec![first.task];
    for _ in 1..12 {
        tasks.push(phone.node.send(&long, Some(&thread), None).unwrap().task);
    }
    until(
        "the desktop holds every task",
        &[&desk.node, &phone.node],
        || {
            let held = desk.node.tasks(Some(&thread)).is_ok_and(|t| t.len() == 12);
            async move { held }
        },
    )
    .await;
    let sent = desk.node.history(Some(&thread), None).unwrap().len();

    let _executor = start_executor_with(&desk, "allow");
    all_ended(&phone.node, &thread).await;

    let counts = commit_counts(&desk.node, &thread, sent);
    assert_eq!(
        counts,
        ["5 tasks failed", "5 tasks failed", "2 tasks failed"]
    );
    for task in &tasks {
        let seen = phone.node.task(task).unwrap();
        assert_eq!(seen.status, TaskStatus::Failed);
        assert!(seen.error.unwrap().contains("/fetch needs an http"));
    }
}

/// Tasks that fail together are told of together: one message names them (a phone is not
/// woken once per task, and a push service's rate limit is not spent on a burst), and each
/// task records that it was notified.
#[tokio::test]
async fn tasks_that_fail_together_make_one_notification() {
    let desk = desktop("desk").await;
    let ntfy = Ntfy::start(false);
    desk.node
        .notify_add(&ntfy.url("desk"), &["failed".to_owned()], true)
        .unwrap();
    let first = desk.node.send("plan my week", None, None).unwrap();
    let thread = first.thread.clone();
    let mut tasks = vec![first.task.clone()];
    for text in ["book a table", "sort the photos"] {
        tasks.push(
            desk.node
                .send(text, Some(thread.as_str()), None)
                .unwrap()
                .task,
        );
    }

    let policy = "allow_private_network = true\n";
    let _executor = start_executor_with_policy(&desk, policy);
    until(
        "every task recorded its notification",
        &[&desk.node],
        || {
            let recorded = tasks
                .iter()
                .all(|t| !desk.node.task(t).unwrap().notifications.is_empty());
            async move { recorded }
        },
    )
    .await;

    let published: Vec<String> = ntfy.received().into_iter().map(|p| p.message).collect();
    let short = |id: &str| id[..8].to_owned();
    let reason = "this task needs an AI model and none is configured: direct commands only";
    let names = [short(&tasks[0]), short(&tasks[1]), short(&tasks[2])].join(", ");
    assert_eq!(published, [format!("3 tasks failed ({names}): {reason}")]);
    for task in &tasks {
        let notices = desk.node.task(task).unwrap().notifications;
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].delivered && notices[0].event == "failed",
            "{notices:?}"
        );
    }
}

/// Waits until every task of `thread` has ended.
async fn all_ended(node: &Node, thread: &str) {
    until("every task ended", &[node], || {
        let ended = node
            .tasks(Some(thread))
            .unwrap()
            .iter()
            .all(|t| t.status.is_final());
        async move { ended }
    })
    .await;
}

/// The messages of the commits to `thread` after its first `sent`, without the task ids in
/// parentheses ("64 tasks failed").
fn commit_counts(node: &Node, thread: &str, sent: usize) -> Vec<String> {
    node.history(Some(thread), None).unwrap()[sent..]
        .iter()
        .map(|line| line.entry.message.split(" (").next().unwrap().to_owned())
        .collect()
}
