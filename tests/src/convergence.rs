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
    // The thread and its listing in the index travel separately, in either order; the desk
    // sends into the thread by its listing.
    until(
        "the desktop holds and lists the thread",
        &[&desk.node, &phone.node],
        || {
            let ok = task_ids(&desk.node).contains(&first.task)
                && desk
                    .node
                    .threads()
                    .is_ok_and(|t| t.iter().any(|t| t.id == first.thread));
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
    // Threads arrive on their own and their listing with the index, in any order: wait for
    // both.
    until(
        "both sides hold and list every task",
        &[&desk.node, &phone.node],
        || {
            let ok = task_ids(&desk.node) == expected
                && task_ids(&phone.node) == expected
                && [&desk.node, &phone.node]
                    .iter()
                    .all(|n| n.threads().is_ok_and(|t| t.len() == 2));
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

/// Sync states are saved when a document stream goes quiet or ends, not after every message;
/// a session that ends must still leave them behind, so the next one resumes where it was.
#[tokio::test]
async fn a_finished_session_leaves_its_sync_states_saved() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    let sent = phone.node.send("remember me", None, None).unwrap();
    let thread = errand_sync::DocId::parse(&sent.thread).unwrap();
    let desk_id = desk.node.id().to_string();
    // What the session knows of the desktop's copy: the desktop's answer about the thread
    // (being in sync by the digests can come first, and the states saved then name no heads).
    assert!(
        phone
            .node
            .wait_delivered(&desk_id, &sent.thread, crate::support::WAIT)
            .await,
        "the phone hears that the desktop holds the thread"
    );
    phone.node.shutdown().await;
    until(
        "the phone's sync state with the desktop names the thread's heads",
        &[&phone.node],
        || {
            let saved = phone
                .node
                .repo()
                .store()
                .sync_state(&desk_id, thread.as_str())
                .unwrap()
                .and_then(|b| automerge::sync::State::decode(&b).ok());
            let heads = phone.node.repo().heads(&thread).unwrap();
            let ok = saved.is_some_and(|s| {
                let mut shared = s.shared_heads.clone();
                let mut ours = heads.clone();
                shared.sort();
                ours.sort();
                shared == ours
            });
            async move { ok }
        },
    )
    .await;
}

/// A thread and its listing in the index travel separately, in either order: a thread held
/// before its listing arrives is shown by `tasks`, and can be named by an id prefix to read
/// it or send into it, as a listed one can.
#[tokio::test]
async fn a_thread_held_before_its_listing_can_be_named() {
    use errand_sync::schema::{DocId, thread};
    let desk = desktop("desk").await;
    let listed = desk.node.send("listed", None, None).unwrap();
    // What a thread that arrived ahead of its listing is here: held, not listed.
    let unlisted = DocId::new_thread();
    desk.node
        .repo()
        .create(&unlisted, "thread created", |tx| {
            thread::create(tx, unlisted.as_str(), "ahead of its listing")?;
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: "0123456789abcdef",
                    prompt: "first",
                    target: &desk.node.id().to_string(),
                    created: 1,
                },
            )
        })
        .unwrap();
    assert!(
        desk.node
            .threads()
            .unwrap()
            .iter()
            .all(|t| t.id != unlisted.as_str())
    );
    assert!(task_ids(&desk.node).contains(&"0123456789abcdef".to_owned()));

    let prefix = &unlisted.as_str()[..8];
    let sent = desk.node.send("second", Some(prefix), None).unwrap();
    assert_eq!(sent.thread, unlisted.as_str());
    let prompts: Vec<String> = desk
        .node
        .tasks(Some(prefix))
        .unwrap()
        .into_iter()
        .map(|t| t.prompt)
        .collect();
    assert_eq!(prompts, ["first", "second"]);
    // A listed thread is still found by its listing.
    assert_eq!(
        desk.node
            .resolve_thread(&listed.thread[..8])
            .unwrap()
            .as_str(),
        listed.thread
    );
}
