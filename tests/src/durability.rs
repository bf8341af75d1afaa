//! What a node acknowledged is there after a restart, and compaction loses nothing.

use std::sync::{Arc, Mutex};

use errand_sync::schema::DocId;
use errand_sync::schema::thread::TaskStatus;

use crate::approvals::start_executor_with_policy;
use crate::ntfy::Ntfy;
use crate::support::{TestNode, WAIT, desktop, node_in, task_ids, until};

#[tokio::test]
async fn acknowledged_changes_survive_a_restart() {
    let desk = desktop("desk").await;
    let addrs_before = desk.node.addrs();
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(
            desk.node
                .send(&format!("task {i}"), None, None)
                .unwrap()
                .task,
        );
    }
    // In-process, a restart is a shutdown and a reopen; the kill -9 case needs a real process
    // and is tested with the command line (crates/cli/tests).
    let TestNode { node, home } = desk;
    node.shutdown().await;
    drop(node);
    let desk = node_in(home).await;
    sent.sort();
    assert_eq!(task_ids(&desk.node), sent);
    assert_eq!(
        desk.node.addrs(),
        addrs_before,
        "the listening port changed"
    );
}

#[tokio::test]
async fn compaction_keeps_every_change_and_the_history() {
    let desk = desktop("desk").await;
    let first = desk.node.send("first", None, None).unwrap();
    for i in 0..80 {
        desk.node
            .send(&format!("more {i}"), Some(&first.thread), None)
            .unwrap();
    }
    let thread = DocId::parse(&first.thread).unwrap();
    let history_before = desk.node.history(Some(&first.thread), None).unwrap().len();
    let (_, chunks_before) = desk
        .node
        .repo()
        .store()
        .load_doc(thread.as_str())
        .unwrap()
        .unwrap();
    assert!(chunks_before > 80);
    assert!(desk.node.repo().compact(10).unwrap() >= 1);
    let (_, chunks_after) = desk
        .node
        .repo()
        .store()
        .load_doc(thread.as_str())
        .unwrap()
        .unwrap();
    assert_eq!(chunks_after, 1);

    let TestNode { node, home } = desk;
    node.shutdown().await;
    drop(node);
    let desk = node_in(home).await;
    assert_eq!(desk.node.tasks(Some(&first.thread)).unwrap().len(), 81);
    assert_eq!(
        desk.node.history(Some(&first.thread), None).unwrap().len(),
        history_before
    );
    // New changes append after the snapshot and survive again.
    desk.node
        .send("after compaction", Some(&first.thread), None)
        .unwrap();
    let TestNode { node, home } = desk;
    node.shutdown().await;
    drop(node);
    let desk = node_in(home).await;
    assert_eq!(desk.node.tasks(Some(&first.thread)).unwrap().len(), 82);
}

/// The executor settles a task that cannot start (here: it needs a model, and none is
/// configured) without a disk flush of its own, so that a burst of them shares flushes. No one
/// may hear of such an outcome while a crash could still take it back: the notifier makes it
/// durable before it posts. Alone (no peer whose replicator would flush), the desktop's
/// writes are all durable at the moment the failure reaches the push service. And the
/// notifier, which keeps the registered endpoints between events, sees one registered after
/// a failure it had nowhere to send.
#[tokio::test]
async fn a_failure_is_durable_before_it_is_posted() {
    let desk = desktop("desk").await;
    let repo = desk.node.repo().clone();
    let durable_at_post = Arc::new(Mutex::new(Vec::new()));
    let seen = durable_at_post.clone();
    let ntfy = Ntfy::start_observing(false, move |p| {
        let durable = *repo.durability().borrow();
        seen.lock().unwrap().push((p.message.clone(), durable));
    });
    let _executor = start_executor_with_policy(&desk, "allow_private_network = true\n");

    let unheard = desk.node.send("plan my week", None, None).unwrap();
    until("the first task failed", &[&desk.node], || {
        let failed = desk
            .node
            .task(&unheard.task)
            .is_ok_and(|t| t.status == TaskStatus::Failed);
        async move { failed }
    })
    .await;
    desk.node
        .notify_add(&ntfy.url("desk"), &["failed".to_owned()], false)
        .unwrap();

    let sent = desk.node.send("summarise my week", None, None).unwrap();
    let short = sent.task[..8].to_owned();
    let posted = tokio::task::spawn_blocking(move || {
        ntfy.wait_for(WAIT, |m| m.message.contains(&short)).message
    })
    .await
    .unwrap();
    assert!(posted.ends_with("failed"), "{posted}");
    assert_eq!(
        *durable_at_post.lock().unwrap(),
        [(posted, true)],
        "the failure was posted while it could still be lost"
    );
}
