//! A member turns hostile: it paired normally and holds a valid key, and from then on writes
//! whatever it likes into the documents it holds, with that key (or under another device's
//! actor). Whatever it writes that it does not own is refused by the desktop and by the honest
//! phone, which say so (a `PeerDropped` event naming the rule) and drop it; the honest devices
//! keep working. Every attack here was seen working before changes were signed and owned.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, AutomergeError, ObjType, ROOT, ReadDoc};
use errand_node::Node;
use errand_sync::authorship::{self, Envelope};
use errand_sync::schema::DocId;
use errand_sync::schema::thread::{self, TaskStatus};
use errand_sync::{Role, wire};

use crate::approvals::start_executor_with;
use crate::support::{TestNode, desktop, done, dropped, node, pair, until};

/// A desktop, an honest phone and a member that will turn (a phone unless said otherwise).
async fn space(hostile_role: Role) -> (TestNode, TestNode, TestNode) {
    let desk = desktop("desk").await;
    let phone = node().await;
    let hostile = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    pair(&desk, &hostile, "stolen", hostile_role).await;
    (desk, phone, hostile)
}

/// The hostile member writes one change into `doc` with its own node's repo (signed with
/// its own key, as any compromised app could), and the desktop refuses it. Returns the reason
/// the desktop gave.
async fn desk_refuses(
    desk: &TestNode,
    hostile: &TestNode,
    doc: &DocId,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
) -> String {
    let mut events = desk.node.subscribe();
    hostile
        .node
        .repo()
        .change(doc, "hostile", f)
        .expect("the hostile member's own node takes anything");
    dropped(&mut events, &hostile.node.id()).await
}

/// The honest phone sends a command and it runs on the desktop: the space still works.
async fn still_works(desk: &TestNode, phone: &TestNode, text: &str) {
    let sent = phone
        .node
        .send(&format!("/sh echo {text}"), None, None)
        .unwrap();
    let nodes = [desk.node.as_ref(), phone.node.as_ref()];
    done(&phone.node, &sent.task, &nodes).await;
    let task = phone.node.task(&sent.task).unwrap();
    assert_eq!(task.result.as_deref().map(str::trim), Some(text));
}

fn task_obj(doc: &impl ReadDoc, task: &str) -> automerge::ObjId {
    let tasks = doc.get(ROOT, "tasks").unwrap().unwrap().1;
    let bucket = doc
        .get(&tasks, thread::task_bucket(task))
        .unwrap()
        .unwrap()
        .1;
    doc.get(&bucket, task).unwrap().unwrap().1
}

/// Waits until `node` holds task `task` of `doc`.
async fn holds(node: &Node, doc: &DocId, task: &str, nodes: &[&Node]) {
    until("the task has arrived", nodes, || {
        let ok = node
            .repo()
            .read(doc, |d| thread::task(d, doc.as_str(), task).is_some())
            .ok()
            .flatten()
            .unwrap_or(false);
        async move { ok }
    })
    .await;
}

/// Seen before: a member marked the honest phone's queued task `done` with a forged result on
/// both devices, and the executor never ran it.
#[tokio::test]
async fn a_forged_result_of_a_queued_task_is_refused_and_the_task_runs() {
    let (desk, phone, hostile) = space(Role::Phone).await;
    let sent = phone.node.send("/sh echo real", None, None).unwrap();
    let doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        hostile.node.as_ref(),
    ];
    holds(&hostile.node, &doc, &sent.task, &nodes).await;
    holds(&desk.node, &doc, &sent.task, &nodes).await;
    let task = sent.task.clone();
    let reason = desk_refuses(&desk, &hostile, &doc, move |tx| {
        let obj = task_obj(&*tx, &task);
        tx.put(&obj, "status", "done")?;
        tx.put(&obj, "result", "forged")
    })
    .await;
    assert!(reason.contains("of a task it does not run"), "{reason}");
    // Only now does the desktop start running tasks: the task is still queued for it.
    assert_eq!(
        desk.node.task(&sent.task).unwrap().status,
        TaskStatus::Queued
    );
    let _executor = start_executor_with(&desk, "allow");
    done(&phone.node, &sent.task, &nodes).await;
    for n in [&desk.node, &phone.node] {
        let t = n.task(&sent.task).unwrap();
        assert_eq!(t.result.as_deref().map(str::trim), Some("real"), "{t:#?}");
    }
}

/// Seen before: one write of the index's `root` field, or of the desktop's member entry, and
/// the desktop listed no devices and refused the honest phone, for good.
#[tokio::test]
async fn rewriting_the_index_is_refused_by_the_desktop_and_the_honest_phone() {
    let (desk, phone, hostile) = space(Role::Phone).await;
    let other = node().await;
    pair(&desk, &other, "stolen too", Role::Phone).await;
    let _executor = start_executor_with(&desk, "allow");
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        hostile.node.as_ref(),
    ];
    until("the member knows the phone", &nodes, || {
        let ok = hostile.node.devices().is_ok_and(|d| d.len() >= 4);
        async move { ok }
    })
    .await;
    // Hiding the phone's thread from the list.
    let sent = phone.node.send("/sh echo listed", None, None).unwrap();
    until("the member holds the thread entry", &nodes, || {
        let ok = hostile
            .node
            .threads()
            .is_ok_and(|t| t.iter().any(|t| t.id == sent.thread));
        async move { ok }
    })
    .await;
    let mut phone_events = phone.node.subscribe();
    let thread = sent.thread.clone();
    let reason = desk_refuses(&desk, &hostile, &DocId::index(), move |tx| {
        let threads = tx.get(ROOT, "threads")?.unwrap().1;
        tx.delete(&threads, thread.as_str())
    })
    .await;
    assert!(reason.contains("deletes"), "{reason}");
    // The honest phone refuses it as well, when the member reaches it.
    let reason = dropped(&mut phone_events, &hostile.node.id()).await;
    assert!(reason.contains("deletes"), "{reason}");
    // Making itself the space's root, and removing the desktop's certificate.
    let me = other.node.id().to_string();
    let desk_id = desk.node.id().to_string();
    let reason = desk_refuses(&desk, &other, &DocId::index(), move |tx| {
        tx.put(ROOT, "root", me.as_str())?;
        let members = tx.get(ROOT, "members")?.unwrap().1;
        tx.delete(&members, desk_id.as_str())
    })
    .await;
    assert!(reason.contains("skeleton"), "{reason}");
    assert!(
        desk.node
            .threads()
            .unwrap()
            .iter()
            .any(|t| t.id == sent.thread)
    );
    let names: Vec<String> = desk
        .node
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&"phone".to_owned()), "{names:?}");
    assert!(names.contains(&"desk".to_owned()), "{names:?}");
    still_works(&desk, &phone, "after the index attack").await;
}

/// Seen before: a task shown as created by the desktop, written by a member under the
/// desktop's actor. The member signs the change with its own key (it cannot sign as the
/// desktop) and sends it over its own connection: the change is not signed by the device it
/// names.
#[tokio::test]
async fn a_task_written_under_the_desktop_s_name_is_refused() {
    let (desk, phone, hostile) = space(Role::Phone).await;
    let _executor = start_executor_with(&desk, "allow");
    let sent = phone.node.send("/sh echo first", None, None).unwrap();
    let doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        hostile.node.as_ref(),
    ];
    holds(&hostile.node, &doc, &sent.task, &nodes).await;
    let saved = hostile.node.repo().save(&doc).unwrap().unwrap();
    let key = hostile.node.endpoint().secret_key().clone();
    let space = desk.node.space().unwrap();
    let hostile_id = hostile.node.id();
    hostile.node.shutdown().await;
    drop(hostile);

    // The next change of the thread, written as the desktop: its id, a suffix of our choosing.
    let mut actor = desk.node.id().as_bytes().to_vec();
    actor.extend_from_slice(&[7; 12]);
    let mut forged = automerge::Automerge::load(&saved)
        .unwrap()
        .with_actor(ActorId::from(actor));
    let target = desk.node.id().to_string();
    forged
        .transact(|tx| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: "forged-task",
                    prompt: "/sh echo as the desktop",
                    target: &target,
                    created: 1,
                },
            )
        })
        .unwrap();
    let change = forged.get_last_local_change().unwrap().clone();
    let message = automerge::sync::Message {
        heads: forged.get_heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![change.raw_bytes().to_vec()].into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    };
    let envelope = Envelope {
        sigs: vec![(
            authorship::key_of(&change.hash()),
            authorship::sign(&key, &space, &doc, &change.hash()),
        )],
        message: message.encode(),
    };
    let mut events = desk.node.subscribe();
    let raw = crate::hostile::raw_endpoint(key).await;
    let (_conn, mut send) = crate::malformed::hello(&raw, &desk.node).await;
    let msg = errand_sync::replication::Msg::Sync {
        doc: doc.clone(),
        message: envelope.encode(),
    };
    wire::write_frame(&mut send, &crate::hostile::frame(&msg))
        .await
        .unwrap();
    let reason = dropped(&mut events, &hostile_id).await;
    assert!(reason.contains("is not signed by"), "{reason}");
    assert!(desk.node.task("forged-task").is_err());
    still_works(&desk, &phone, "after the forgery").await;
}

/// A viewer may read and sync, not have the desktop act: `send` refuses on the viewer, and a
/// task it writes around its own node is refused by the desktop.
#[tokio::test]
async fn a_viewer_cannot_send_a_task_even_around_its_own_node() {
    let (desk, phone, viewer) = space(Role::Viewer).await;
    let _executor = start_executor_with(&desk, "allow");
    let err = viewer.node.send("/sh echo hi", None, None).unwrap_err();
    assert!(err.to_string().contains("viewer"), "{err}");
    let sent = phone.node.send("/sh echo first", None, None).unwrap();
    let doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        viewer.node.as_ref(),
    ];
    holds(&viewer.node, &doc, &sent.task, &nodes).await;
    let target = desk.node.id().to_string();
    let reason = desk_refuses(&desk, &viewer, &doc, move |tx| {
        thread::add_task(
            tx,
            &thread::NewTask {
                id: "from-viewer",
                prompt: "/sh echo viewer",
                target: &target,
                created: 1,
            },
        )
    })
    .await;
    assert!(reason.contains("its role may not"), "{reason}");
    assert!(desk.node.task("from-viewer").is_err());
    still_works(&desk, &phone, "after the viewer").await;
}

/// Seen before: replacing a thread's `tasks` map hid its queued tasks for good.
#[tokio::test]
async fn replacing_a_thread_s_task_list_is_refused() {
    let (desk, phone, hostile) = space(Role::Phone).await;
    let sent = phone.node.send("/sh echo kept", None, None).unwrap();
    let doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        hostile.node.as_ref(),
    ];
    holds(&hostile.node, &doc, &sent.task, &nodes).await;
    holds(&desk.node, &doc, &sent.task, &nodes).await;
    let reason = desk_refuses(&desk, &hostile, &doc, |tx| {
        tx.put_object(ROOT, "tasks", ObjType::Map).map(|_| ())
    })
    .await;
    assert!(reason.contains("skeleton"), "{reason}");
    let _executor = start_executor_with(&desk, "allow");
    done(&phone.node, &sent.task, &nodes).await;
}

/// Seen before: a member rewrote an approval request's text to something harmless, the phone
/// approved it, and the executor ran what it really asked.
#[tokio::test]
async fn rewriting_what_an_approval_asks_is_refused() {
    let (desk, phone, hostile) = space(Role::Phone).await;
    let _executor = start_executor_with(&desk, "ask");
    let sent = phone.node.send("/sh echo asked", None, None).unwrap();
    let doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        hostile.node.as_ref(),
    ];
    until("the member sees the request", &nodes, || {
        let ok = hostile
            .node
            .approvals(true)
            .is_ok_and(|a| a.iter().any(|a| a.task == sent.task));
        async move { ok }
    })
    .await;
    let request = hostile.node.approvals(true).unwrap().remove(0);
    let id = request.id.clone();
    let reason = desk_refuses(&desk, &hostile, &doc, move |tx| {
        let approvals = tx.get(ROOT, "approvals")?.unwrap().1;
        let obj = tx.get(&approvals, id.as_str())?.unwrap().1;
        tx.put(&obj, "action", "shell: echo harmless")
    })
    .await;
    assert!(reason.contains("another desktop's approval"), "{reason}");
    let shown = phone.node.approvals(true).unwrap();
    let shown = shown.iter().find(|a| a.id == request.id).unwrap();
    assert!(shown.action.contains("echo asked"), "{shown:#?}");
    phone.node.decide(&request.id, true).unwrap();
    done(&phone.node, &sent.task, &nodes).await;
}
