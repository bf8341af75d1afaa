//! Approval decisions count only from members whose role may approve, whatever a document
//! holds: a viewer that writes a correctly signed decision straight into a thread (going
//! around its own node's refusal) is refused by the desktop, and the request stays open for
//! the phone, in every node's list of requests and in the notifications of new ones.

use std::sync::Arc;
use std::time::Duration;

use errand_executor::agent::Limits;
use errand_executor::policy::Policy;
use errand_executor::runner::{self, ExecutorConfig, ExecutorHandle};
use errand_node::{Node, NodeEvent};
use errand_sync::schema::now_millis;
use errand_sync::schema::thread::{self, Decision, TaskStatus};
use errand_sync::{DocId, Role};

use crate::members::Members;
use crate::support::{TestNode, WAIT, desktop, done, dropped, node, node_in, pair, until};

/// A desktop running its executor, a phone and a viewer, all paired.
async fn desk_phone_and_viewer() -> (TestNode, TestNode, TestNode, ExecutorHandle) {
    let desk = desktop("desk").await;
    let phone = node().await;
    let viewer = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    pair(&desk, &viewer, "viewer", Role::Viewer).await;
    let executor = start_executor(&desk);
    (desk, phone, viewer, executor)
}

/// Starts the desktop's executor with shell commands needing approval, as `errand up` would.
fn start_executor(desk: &TestNode) -> ExecutorHandle {
    start_executor_with(desk, "ask")
}

/// Starts the desktop's executor with shell commands ruled `shell` (allow, ask, deny).
pub(crate) fn start_executor_with(desk: &TestNode, shell: &str) -> ExecutorHandle {
    start_executor_with_policy(desk, &format!("[actions]\nshell = \"{shell}\"\n"))
}

/// Starts the desktop's executor under the policy `policy` (a policy file's text).
pub(crate) fn start_executor_with_policy(desk: &TestNode, policy: &str) -> ExecutorHandle {
    let home = desk.home.path();
    let policy = Policy::parse(policy, home, home).unwrap();
    policy.ensure_workspace().unwrap();
    let config = ExecutorConfig {
        device: desk.node.id(),
        policy,
        model: None,
        model_limits: Limits {
            max_steps: 1,
            max_time: Duration::from_secs(20),
        },
        model_hint: "direct commands only".into(),
        max_parallel: 2,
        shell_timeout: Duration::from_secs(20),
        connectors: std::sync::Arc::new(errand_executor::connectors::Connectors::none()),
    };
    runner::start(
        desk.node.repo().clone(),
        config,
        Arc::new(Members(desk.node.clone())),
    )
}

/// The approval request `id` in a thread, as `node` holds it (every decision, counted or not).
fn approval_on(node: &Node, thread_doc: &DocId, id: &str) -> Option<thread::Approval> {
    node.repo()
        .read(thread_doc, |d| thread::approvals(d, thread_doc.as_str()))
        .ok()
        .flatten()?
        .into_iter()
        .find(|a| a.id == id)
}

/// What a viewer can do around its own node's refusal: once it sees the request for `task`
/// (and its node refuses to decide it), sign a denial with its own key and write it straight
/// into the thread. Returns the request's id once the desktop holds that denial.
async fn viewer_forges_a_denial(
    desk: &TestNode,
    viewer: &TestNode,
    thread_doc: &DocId,
    task: &str,
    nodes: &[&Node],
) -> String {
    until("the viewer sees the approval request", nodes, || {
        let ok = viewer
            .node
            .approvals(true)
            .is_ok_and(|a| a.iter().any(|a| a.task == task));
        async move { ok }
    })
    .await;
    let request = viewer.node.approvals(true).unwrap().remove(0);
    assert!(viewer.node.decide(&request.id, false).is_err());

    let approval = approval_on(&viewer.node, thread_doc, &request.id).unwrap();
    let key =
        errand_pairing::identity::load_or_create(&viewer.home.path().join("device.key")).unwrap();
    assert_eq!(key.public(), viewer.node.id());
    let space = desk.node.space().unwrap().to_string();
    let at = now_millis();
    let signed = thread::approval_signed_bytes(&space, &approval, false, at);
    let denial = Decision {
        device: viewer.node.id().to_string(),
        approve: false,
        at,
        signature: errand_sync::ids::hex(&key.sign(&signed).to_bytes()),
    };
    let mut desk_events = desk.node.subscribe();
    viewer
        .node
        .repo()
        .change(thread_doc, "approval denied by viewer", |tx| {
            thread::decide(tx, &request.id, &denial)
        })
        .unwrap();

    // The desktop refuses the change (a viewer's role may not decide) and drops the viewer.
    let reason = dropped(&mut desk_events, &viewer.node.id()).await;
    assert!(reason.contains("its role may not"), "{reason}");
    let _ = nodes;
    let held = approval_on(&desk.node, thread_doc, &request.id).unwrap();
    assert!(held.decisions.is_empty(), "{held:#?}");
    request.id
}

#[tokio::test]
async fn a_decision_a_viewer_signs_and_writes_into_the_thread_is_refused() {
    let (desk, phone, viewer, _executor) = desk_phone_and_viewer().await;

    let sent = phone.node.send("/sh echo ran", None, None).unwrap();
    let thread_doc = DocId::parse(&sent.thread).unwrap();
    let nodes = [
        desk.node.as_ref(),
        phone.node.as_ref(),
        viewer.node.as_ref(),
    ];
    let request = viewer_forges_a_denial(&desk, &viewer, &thread_doc, &sent.task, &nodes).await;

    // The phone approves later; the viewer's earlier denial would win if it counted.
    phone.node.decide(&request, true).unwrap();
    until("the task has ended", &nodes, || {
        let ok = phone
            .node
            .task(&sent.task)
            .is_ok_and(|t| matches!(t.status, TaskStatus::Done | TaskStatus::Failed));
        async move { ok }
    })
    .await;
    let task = phone.node.task(&sent.task).unwrap();
    assert_eq!(task.status, TaskStatus::Done, "{task:#?}");
    assert_eq!(
        task.result.as_deref().map(str::trim),
        Some("ran"),
        "{task:#?}"
    );
    assert!(
        task.progress
            .iter()
            .any(|p| p.text.contains("approved by phone")),
        "{:#?}",
        task.progress
    );
    let decided = phone.node.approvals(false).unwrap();
    let decided = decided.iter().find(|a| a.id == request).unwrap();
    assert_eq!(decided.decided_by.as_deref(), Some("phone"), "{decided:#?}");
}

/// A phone that was away while a request was made, and a viewer forged a denial of it, is
/// still told about the request when it comes back: the forged decision does not count.
#[tokio::test]
async fn a_phone_back_online_is_told_of_a_request_only_a_viewer_has_decided() {
    let (desk, phone, viewer, _executor) = desk_phone_and_viewer().await;
    let TestNode {
        node: phone_node,
        home: phone_home,
    } = phone;
    phone_node.shutdown().await;
    drop(phone_node);

    let sent = desk.node.send("/sh echo ran", None, None).unwrap();
    let thread_doc = DocId::parse(&sent.thread).unwrap();
    let both = [desk.node.as_ref(), viewer.node.as_ref()];
    let request = viewer_forges_a_denial(&desk, &viewer, &thread_doc, &sent.task, &both).await;

    let phone = node_in(phone_home).await;
    let mut events = phone.node.subscribe();
    let told = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::ApprovalRequested { approval, .. }) if approval == request => {
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await;
    assert!(told.is_ok(), "the phone was not told of the request");
    // At once: the listing reads every thread held, whether or not the index entry that
    // lists it has arrived yet (it can come after the thread's document).
    let pending = phone.node.approvals(true).unwrap();
    assert!(pending.iter().any(|a| a.id == request), "{pending:#?}");
    // And its approval still decides.
    phone.node.decide(&request, true).unwrap();
    let nodes = [desk.node.as_ref(), phone.node.as_ref()];
    done(&phone.node, &sent.task, &nodes).await;
}

/// A request in a thread whose index entry has not arrived (the thread's document and its
/// listing travel separately) is listed all the same: a phone told of it can decide it.
#[tokio::test]
async fn a_request_in_a_thread_not_listed_yet_is_listed() {
    let desk = desktop("desk").await;
    let phone = node().await;
    pair(&desk, &phone, "phone", Role::Phone).await;
    // The desktop writes a thread with a task and a request in it, and no index entry: as
    // the phone sees it while that entry is still on its way.
    let doc = DocId::new_thread();
    let repo = desk.node.repo();
    let me = desk.node.id().to_string();
    repo.create(&doc, "thread created", |tx| {
        thread::create(tx, doc.as_str(), "not listed")
    })
    .unwrap();
    let new = thread::NewTask {
        id: "00aa11bb22cc33dd",
        prompt: "/sh true",
        target: &me,
        created: now_millis(),
    };
    repo.change(&doc, "task queued", |tx| thread::add_task(tx, &new))
        .unwrap();
    let ask = thread::NewApproval {
        id: "44ee55ff66aa77bb",
        task: new.id,
        action: "run shell command `true`",
        class: "shell",
        requested_by: &me,
        requested_at: now_millis(),
        expires_at: now_millis() + 600_000,
    };
    repo.change(&doc, "approval requested", |tx| {
        thread::request_approval(tx, &ask)
    })
    .unwrap();
    let nodes = [desk.node.as_ref(), phone.node.as_ref()];
    until("the phone lists the request", &nodes, || async {
        let pending = phone.node.approvals(true).unwrap();
        pending.iter().any(|a| a.id == ask.id)
    })
    .await;
    assert!(
        phone
            .node
            .threads()
            .unwrap()
            .iter()
            .all(|t| t.id != doc.as_str()),
        "the index lists the thread after all"
    );
}
