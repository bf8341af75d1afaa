//! How the executor works through what waits for it.

use errand_sync::schema::thread::TaskStatus;

use crate::approvals::start_executor_with;
use crate::support::{desktop, until};

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
    until("every task ended", &[&desk.node], || {
        let ended = desk
            .node
            .tasks(Some(&thread))
            .unwrap()
            .iter()
            .all(|t| t.status.is_final());
        async move { ended }
    })
    .await;

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
    until("every task ended", &[&desk.node], || {
        let ended = desk
            .node
            .tasks(Some(&thread))
            .unwrap()
            .iter()
            .all(|t| t.status == TaskStatus::Failed);
        async move { ended }
    })
    .await;

    let counts: Vec<String> = desk.node.history(Some(&thread), None).unwrap()[sent..]
        .iter()
        .map(|line| line.entry.message.split(" (").next().unwrap().to_owned())
        .collect();
    assert_eq!(counts, ["64 tasks failed", "6 tasks failed"]);
}
