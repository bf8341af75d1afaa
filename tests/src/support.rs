//! Building blocks: nodes in temporary homes, paired in-process, and waiting without sleeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use errand_node::{Node, NodeConfig};
use errand_sync::Role;
use tempfile::TempDir;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestNode {
    /// Shared, so that an executor can hold the node as its authority on approvals.
    pub node: Arc<Node>,
    pub home: TempDir,
}

pub async fn node_in(home: TempDir) -> TestNode {
    let mut config = NodeConfig::new(home.path());
    config.bind = Some("127.0.0.1:0".parse().unwrap());
    let node = Arc::new(Node::open(config).await.unwrap());
    TestNode { node, home }
}

pub async fn node() -> TestNode {
    node_in(tempfile::tempdir().unwrap()).await
}

/// A desktop that created a space.
pub async fn desktop(name: &str) -> TestNode {
    let d = node().await;
    d.node.init_space(Some(name)).unwrap();
    d
}

/// Pairs `joiner` into `host`'s space, admitting it without confirmation.
pub async fn pair(host: &TestNode, joiner: &TestNode, name: &str, role: Role) {
    let ticket = host
        .node
        .create_ticket(Duration::from_secs(60), true, role)
        .unwrap();
    joiner
        .node
        .join(&ticket.ticket, Some(name), Some(role))
        .await
        .unwrap();
}

/// Waits until `check` holds, re-checking whenever either node reports an event.
pub async fn until<F, Fut>(what: &str, nodes: &[&Node], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut progress: Vec<_> = nodes.iter().map(|n| n.replicator().progress()).collect();
    let mut changes: Vec<_> = nodes.iter().map(|n| n.repo().subscribe()).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        let wake = async {
            let p = futures_any(progress.iter_mut().map(|p| {
                Box::pin(async move {
                    let _ = p.changed().await;
                })
            }));
            let c = futures_any(changes.iter_mut().map(|c| {
                Box::pin(async move {
                    let _ = c.recv().await;
                })
            }));
            tokio::select! { _ = p => {}, _ = c => {} }
        };
        // Wake on any event, and at the latest every 100 ms: a condition may turn true
        // through something that sends no event (a dial loop giving up, say).
        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            _ = wake => {}
            _ = tick => {}
            _ = tokio::time::sleep_until(deadline) => panic!("timed out waiting until {what}"),
        }
    }
}

async fn futures_any<F: Future<Output = ()> + Unpin>(futs: impl Iterator<Item = F>) {
    let futs: Vec<F> = futs.collect();
    if futs.is_empty() {
        return std::future::pending().await;
    }
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

pub fn task_ids(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = node
        .tasks(None)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

/// Waits for `events` to report `peer` dropped (it sent something refused); returns the
/// reason.
pub async fn dropped(
    events: &mut tokio::sync::broadcast::Receiver<errand_node::NodeEvent>,
    peer: &errand_sync::DeviceId,
) -> String {
    use tokio::sync::broadcast::error::RecvError;
    let peer = peer.to_string();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(errand_node::NodeEvent::PeerDropped { peer: p, reason }) if p == peer => {
                    return reason;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("the peer is dropped")
}

/// Waits until `node` shows `task` done.
pub async fn done(node: &Node, task: &str, nodes: &[&Node]) {
    until("the task is done", nodes, || {
        let ok = node
            .task(task)
            .is_ok_and(|t| t.status == errand_sync::schema::thread::TaskStatus::Done);
        async move { ok }
    })
    .await;
}
