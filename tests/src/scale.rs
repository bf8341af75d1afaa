//! Spaces with many documents replicate over one connection: nothing stalls at QUIC's stream
//! limit, a fresh device receives everything, and a device that was away catches up. Real
//! nodes over loopback QUIC with their redb files.

use std::collections::BTreeSet;

use errand_sync::schema::DocId;

use crate::support::{TestNode, desktop, node, node_in, pair, until};

/// Whether two nodes hold the same documents at the same heads (equal digests), and every
/// thread the index lists is held.
fn same_space(a: &TestNode, b: &TestNode) -> bool {
    let complete = |n: &TestNode| {
        n.node.threads().is_ok_and(|ts| {
            ts.iter()
                .all(|t| DocId::parse(&t.id).is_some_and(|d| n.node.repo().holds(&d)))
        })
    };
    a.node.repo().digest() == b.node.repo().digest() && complete(a) && complete(b)
}

fn task_set(n: &TestNode) -> BTreeSet<String> {
    n.node
        .tasks(None)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// Before one stream per connection, the 101st document's stream waited forever for one of
/// the first hundred to close: a phone sending into 130 new threads saw 31 tasks never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_tasks_in_three_hundred_new_threads_all_arrive() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", errand_sync::Role::Phone).await;
    let mut sent = BTreeSet::new();
    for i in 0..300 {
        sent.insert(
            phone
                .node
                .send(&format!("task {i}"), None, None)
                .unwrap()
                .task,
        );
    }
    until(
        "the desktop holds every thread the phone made",
        &[&desk.node, &phone.node],
        || {
            let ok = same_space(&desk, &phone);
            async move { ok }
        },
    )
    .await;
    assert_eq!(desk.node.threads().unwrap().len(), 300);
    assert_eq!(task_set(&desk), sent);
    // And `errand sync` agrees that the phone and the desktop are in sync.
    let report = phone
        .node
        .sync_round(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert!(report.iter().all(|p| p.synced), "{report:?}");
}

/// A phone paired with a desktop that already has 2,000 threads receives all of them (and
/// not only the first hundred), and a phone that was off while 1,000 tasks were added across
/// 100 threads catches up when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_phone_receives_a_big_space_and_an_absent_one_catches_up() {
    let desk = desktop("desk").await;
    let mut threads = Vec::new();
    for i in 0..2000 {
        threads.push(
            desk.node
                .send(&format!("task {i}"), None, None)
                .unwrap()
                .thread,
        );
    }
    let phone = node().await;
    pair(&desk, &phone, "phone", errand_sync::Role::Phone).await;
    until(
        "the fresh phone holds all 2,000 threads",
        &[&desk.node, &phone.node],
        || {
            let ok = same_space(&desk, &phone);
            async move { ok }
        },
    )
    .await;
    assert_eq!(phone.node.threads().unwrap().len(), 2000);
    assert_eq!(phone.node.tasks(Some(&threads[1999])).unwrap().len(), 1);

    // The phone goes away; 1,000 tasks are added across 100 threads.
    let TestNode { node, home } = phone;
    node.shutdown().await;
    drop(node);
    let mut added = BTreeSet::new();
    for i in 0..1000 {
        let thread = &threads[i % 100];
        added.insert(
            desk.node
                .send(&format!("while away {i}"), Some(thread), None)
                .unwrap()
                .task,
        );
    }
    let phone = node_in(home).await;
    until(
        "the phone that was away catches up",
        &[&desk.node, &phone.node],
        || {
            let ok = same_space(&desk, &phone);
            async move { ok }
        },
    )
    .await;
    let held: BTreeSet<String> = threads[..100]
        .iter()
        .flat_map(|t| phone.node.tasks(Some(t)).unwrap())
        .map(|t| t.id)
        .collect();
    assert!(added.is_subset(&held));
}
