//! Edits made on both sides while apart all survive the merge.

use errand_sync::Role;

use crate::support::{TestNode, desktop, node, node_in, pair, task_ids, until};

async fn reopen(n: TestNode) -> TestNode {
    n.node.shutdown().await;
    let TestNode { node, home } = n;
    drop(node);
    node_in(home).await
}

#[tokio::test]
async fn concurrent_edits_on_both_sides_all_survive() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    let first = phone.node.send("shared thread", None, None).unwrap();
    until(
        "the desktop has the thread",
        &[&desk.node, &phone.node],
        || {
            let ok = task_ids(&desk.node).contains(&first.task);
            async move { ok }
        },
    )
    .await;

    // Apart: each side opens its home alone and edits the same thread.
    desk.node.shutdown().await;
    let phone = reopen(phone).await;
    let from_phone = phone
        .node
        .send("from the phone", Some(&first.thread), None)
        .unwrap();
    let other_thread = phone
        .node
        .send("a new thread from the phone", None, None)
        .unwrap();
    phone.node.cancel(&first.task).unwrap();
    phone.node.shutdown().await;
    let TestNode {
        node,
        home: phone_home,
    } = phone;
    drop(node);

    let desk = reopen(desk).await;
    let from_desk = desk
        .node
        .send("from the desk", Some(&first.thread), None)
        .unwrap();
    assert!(!task_ids(&desk.node).contains(&from_phone.task));

    // Together again.
    let phone = node_in(phone_home).await;
    let expected = {
        let mut v = vec![
            first.task.clone(),
            from_phone.task.clone(),
            other_thread.task.clone(),
            from_desk.task.clone(),
        ];
        v.sort();
        v
    };
    until(
        "both sides hold every task",
        &[&desk.node, &phone.node],
        || {
            let ok = task_ids(&desk.node) == expected && task_ids(&phone.node) == expected;
            async move { ok }
        },
    )
    .await;
    until(
        "the cancel request reached the desktop",
        &[&desk.node, &phone.node],
        || {
            let ok = desk
                .node
                .task(&first.task)
                .is_ok_and(|t| t.cancel_requested);
            async move { ok }
        },
    )
    .await;
    // Both threads are listed on both sides.
    assert_eq!(desk.node.threads().unwrap().len(), 2);
    assert_eq!(phone.node.threads().unwrap().len(), 2);
}
