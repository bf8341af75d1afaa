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

    // Each task is found by its id, or a beginning no other id shares, on the desktop that
    // received it as on the phone that made it; and again once a store whose listing was
    // dropped (as one from before the listing) has listed them all from its threads.
    let found = |n: &TestNode| {
        sent.iter().all(|id| {
            n.node.task(id).is_ok_and(|t| &t.id == id)
                && n.node
                    .task(&shortest_unique(id, &sent))
                    .is_ok_and(|t| &t.id == id)
        })
    };
    assert!(found(&desk) && found(&phone));
    desk.node.repo().store().forget_task_index().unwrap();
    assert!(found(&desk));
    assert!(desk.node.repo().store().tasks_indexed().unwrap());
    // 600 ids of 16 hex digits: some digit begins more than one of them.
    let shared = ('0'..='9')
        .chain('a'..='f')
        .map(String::from)
        .find(|d| sent.iter().filter(|id| id.starts_with(d.as_str())).count() > 1)
        .unwrap();
    assert!(matches!(
        desk.node.task(&shared),
        Err(errand_node::NodeError::Ambiguous(_))
    ));
    assert!(matches!(
        desk.node.task("not-an-id"),
        Err(errand_node::NodeError::NotFound(_))
    ));
}

/// The shortest beginning of `id` that no other id of `all` begins with.
fn shortest_unique(id: &str, all: &BTreeSet<String>) -> String {
    (1..=id.len())
        .map(|n| &id[..n])
        .find(|p| all.iter().filter(|o| o.starts_with(p)).count() == 1)
        .unwrap_or(id)
        .to_owned()
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

/// A node that has run before takes in its threads, for its events and its listings, from
/// the views it stored of them, without loading one; what changed since is read anew and is
/// news, what did not is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reads_its_threads_from_their_views() {
    use errand_node::NodeEvent;
    use errand_sync::schema::thread::{self, TaskStatus};

    let desk = desktop("desk").await;
    let sent: Vec<_> = (0..40)
        .map(|i| desk.node.send(&format!("task {i}"), None, None).unwrap())
        .collect();
    // Two restarts: in the first the node derives the views as it reads the threads (for its
    // events, a listing and a look-up of a task); the second reads them.
    let TestNode { node, home } = desk;
    node.shutdown().await;
    drop(node);
    let desk = node_in(home).await;
    desk.node.primed().await;
    assert_eq!(desk.node.tasks(None).unwrap().len(), 40);
    assert_eq!(desk.node.task(&sent[5].task).unwrap().id, sent[5].task);
    let TestNode { node, home } = desk;
    node.shutdown().await;
    drop(node);
    let desk = node_in(home).await;
    let mut events = desk.node.subscribe();
    desk.node.primed().await;
    assert_eq!(desk.node.repo().loaded(), 1, "only the index is loaded");
    let listed = desk.node.tasks(None).unwrap();
    assert_eq!(listed.len(), 40);
    assert!(listed.iter().all(|t| t.status == TaskStatus::Queued));
    assert_eq!(desk.node.repo().loaded(), 1, "listing loads no thread");
    // Finding a task by its id, or a prefix of it, loads its thread and no other.
    let wanted = &sent[5];
    assert_eq!(desk.node.task(&wanted.task[..10]).unwrap().id, wanted.task);
    assert_eq!(desk.node.task(&wanted.task).unwrap().thread, wanted.thread);
    assert_eq!(
        desk.node.repo().loaded(),
        2,
        "only the task's thread is loaded"
    );
    assert!(desk.node.task("ffffffffffffffffff").is_err());

    // One task starts: the listing shows it, and it is the only news.
    let started = &sent[17];
    let doc = DocId::parse(&started.thread).unwrap();
    desk.node
        .repo()
        .change(&doc, "task started", |tx| {
            thread::set_status(tx, &started.task, TaskStatus::Running, 1)
        })
        .unwrap();
    let running: Vec<String> = desk
        .node
        .tasks(None)
        .unwrap()
        .into_iter()
        .filter(|t| t.status == TaskStatus::Running)
        .map(|t| t.id)
        .collect();
    assert_eq!(running, std::slice::from_ref(&started.task));
    let news = tokio::time::timeout(crate::support::WAIT, async {
        loop {
            if let NodeEvent::TaskChanged { task, status, .. } = events.recv().await.unwrap() {
                return (task, status);
            }
        }
    })
    .await
    .expect("an event for the started task");
    assert_eq!(news, (started.task.clone(), TaskStatus::Running));
}
