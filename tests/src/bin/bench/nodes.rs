//! (f) Through running nodes: a desktop `Node` with its event watcher and the real executor,
//! and a phone `Node`, paired over loopback as `errand up` and a phone app run them. The
//! desktop holds a thread of N finished tasks, synced to the phone; then new tasks are sent
//! from the phone into that thread one at a time, each timed from just before `Node::send` (a
//! durable commit on the phone) until the desktop's repo has announced the merged change
//! carrying it and made it durable. Every announcement also reaches the desktop's executor
//! and event watcher, as in `errand up`: their work per change is part of what is measured,
//! since the next task waits for the desktop to settle the previous one (the executor fails
//! each, having no model, and the phone sees it failed before the next is sent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use errand_executor::agent::Limits;
use errand_executor::connectors::Connectors;
use errand_executor::policy::Policy;
use errand_executor::runner::{self as executor, ExecutorConfig};
use errand_node::{Node, NodeConfig};
use errand_sync::Role;
use errand_sync::schema::thread;
use errand_sync::schema::{self, DocId};
use errand_tests::members::Members;
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use super::{Stats, WAIT, WARMUP, add_done_tasks, group, ms, stats};

/// Thread sizes of (f): the goal compares the largest with the smallest.
pub const THREADS: [usize; 2] = [100, 10_000];
/// (f)'s goal: the median at 10,000 tasks, and its ratio to the median at 100.
const GOAL_MEDIAN_MS: f64 = 2.0;
const GOAL_RATIO: f64 = 1.5;
/// Tasks per change when building the desktop's thread.
const BATCH: usize = 500;

#[derive(Debug)]
pub struct NodePropagation {
    pub tasks: usize,
    pub latency: Stats,
    /// `Node::send` alone: the phone's part (checks, transaction, durable commit).
    pub send: Stats,
    pub setup_ms: f64,
    /// `Node::history` of the thread with a limit of [`HISTORY_LIMIT`] (`errand history
    /// --limit 20`), on the desktop at the end.
    pub history_tail: Stats,
    /// The whole history of the thread, and how many commits it has.
    pub history_all: Stats,
    pub commits: usize,
}

/// The limit of the history timed in (f), as `errand history --limit 20` asks.
const HISTORY_LIMIT: usize = 20;
/// Times each history read is repeated.
const HISTORY_READS: usize = 20;

async fn open(dir: &std::path::Path) -> Result<Arc<Node>> {
    let mut config = NodeConfig::new(dir);
    config.bind = Some("127.0.0.1:0".parse()?);
    Ok(Arc::new(Node::open(config).await?))
}

/// The desktop's real executor under the default policy, as `errand up` starts it, with no
/// model (a task that needs one fails).
pub fn start_executor(
    desk: &Arc<Node>,
    home: &std::path::Path,
) -> Result<executor::ExecutorHandle> {
    let policy = Policy::parse("", home, home).context("the default policy")?;
    policy.ensure_workspace()?;
    let config = ExecutorConfig {
        device: desk.id(),
        policy,
        model: None,
        model_limits: Limits {
            max_steps: 1,
            max_time: WAIT,
        },
        model_hint: "errand-bench has no model".into(),
        max_parallel: 4,
        shell_timeout: WAIT,
        connectors: Arc::new(Connectors::none()),
    };
    Ok(executor::start(
        desk.repo().clone(),
        config,
        Arc::new(Members(desk.clone())),
    ))
}

/// Waits until `ok` holds, re-checking at each change of `repo` (and every 100 ms).
async fn until(
    what: &str,
    changes: &mut broadcast::Receiver<errand_sync::DocChanged>,
    mut ok: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        tokio::select! {
            _ = changes.recv() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = tokio::time::sleep_until(deadline) => bail!("timed out waiting for {what}"),
        }
    }
    Ok(())
}

/// Adds `n` finished tasks to `doc` on the desktop (sent by it, to it, done).
fn fill(desk: &Node, doc: &DocId, n: usize) -> Result<()> {
    let me = desk.id().to_string();
    let mut added = 0;
    while added < n {
        let batch = BATCH.min(n - added);
        let now = schema::now_millis();
        desk.repo().change(doc, &format!("{batch} tasks"), |tx| {
            add_done_tasks(tx, &me, batch, "earlier work", now)
        })?;
        added += batch;
    }
    Ok(())
}

pub async fn node_propagation(tasks: usize, iterations: usize) -> Result<NodePropagation> {
    let setup = Instant::now();
    let desk_dir = tempfile::tempdir()?;
    let phone_dir = tempfile::tempdir()?;
    let desk = open(desk_dir.path()).await?;
    desk.init_space(Some("desk"))?;
    let phone = open(phone_dir.path()).await?;
    let ticket = desk.create_ticket(Duration::from_secs(60), true, Role::Phone)?;
    phone
        .join(&ticket.ticket, Some("phone"), Some(Role::Phone))
        .await?;

    let exec = start_executor(&desk, desk_dir.path())?;

    // The thread: made by the desktop, filled, and synced to the phone.
    let first = desk.send("the thread's first task", None, None)?;
    let doc = DocId::parse(&first.thread).context("a thread id")?;
    fill(&desk, &doc, tasks.saturating_sub(1))?;
    let mut phone_changes = phone.repo().subscribe();
    // The thread, and its entry in the index (`send` names a thread the index lists).
    until("the phone to hold the thread", &mut phone_changes, || {
        phone.repo().read(&doc, thread::task_count).ok().flatten() == Some(tasks)
            && phone
                .threads()
                .is_ok_and(|all| all.iter().any(|t| t.id == first.thread))
    })
    .await?;
    let setup_ms = ms(setup.elapsed());

    let mut desk_changes = desk.repo().subscribe();
    let mut latency = Vec::new();
    let mut sends = Vec::new();
    for i in 0..WARMUP + iterations {
        // Whatever the desktop announced before this send is not its arrival.
        while desk_changes.try_recv().is_ok() {}
        let t0 = Instant::now();
        let sent = phone.send(&format!("new work {i}"), Some(&first.thread), None)?;
        let sent_at = Instant::now();
        let arrived = tokio::time::timeout(WAIT, async {
            loop {
                match desk_changes.recv().await {
                    Ok(c) if !c.local && c.doc == doc && c.touched.tasks.contains(&sent.task) => {
                        return Ok(Instant::now());
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        bail!("the desktop's announcements lagged by {n}")
                    }
                    Err(broadcast::error::RecvError::Closed) => bail!("the desktop closed"),
                }
            }
        })
        .await
        .context("the task to reach the desktop")??;
        // Received changes are written lazily and made durable before the desktop answers:
        // the figure is until they are durable.
        let arrived = durable(desk.repo()).await?.max(arrived);
        if i >= WARMUP {
            latency.push(ms(arrived - t0));
            sends.push(ms(sent_at - t0));
        }
        // Settled before the next: the desktop has run it (it fails: no model) and the
        // phone has seen that.
        until("the phone to see the task end", &mut phone_changes, || {
            phone.task(&sent.task).is_ok_and(|t| t.status.is_final())
        })
        .await?;
    }
    exec.stop().await;
    let (mut tail, mut all, mut commits) = (Vec::new(), Vec::new(), 0);
    for _ in 0..HISTORY_READS {
        let t0 = Instant::now();
        let lines = desk.history(Some(&first.thread), Some(HISTORY_LIMIT))?;
        tail.push(ms(t0.elapsed()));
        if lines.len() != HISTORY_LIMIT {
            bail!("history --limit {HISTORY_LIMIT} gave {} lines", lines.len());
        }
        let t0 = Instant::now();
        commits = desk.history(Some(&first.thread), None)?.len();
        all.push(ms(t0.elapsed()));
    }
    phone.shutdown().await;
    desk.shutdown().await;
    Ok(NodePropagation {
        tasks,
        latency: stats(latency),
        send: stats(sends),
        setup_ms,
        history_tail: stats(tail),
        history_all: stats(all),
        commits,
    })
}

/// The median at the largest thread, and its ratio to the median at the smallest.
fn verdict(props: &[NodePropagation]) -> Option<(f64, f64)> {
    let small = props.iter().find(|p| p.tasks == THREADS[0])?;
    let large = props.iter().find(|p| p.tasks == THREADS[1])?;
    Some((
        large.latency.median,
        large.latency.median / small.latency.median,
    ))
}

pub fn table(props: &[NodePropagation]) {
    println!(
        "(f) new task through running nodes, phone Node::send until the desktop Node (with its \
         executor and event watcher) holds it durably; send = Node::send alone"
    );
    println!(
        "  {:>8}  {:>4}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
        "tasks", "n", "median", "p99", "min", "send", "setup s"
    );
    for p in props {
        println!(
            "  {:>8}  {:>4}  {:>6.2}ms  {:>6.2}ms  {:>6.2}ms  {:>6.2}ms  {:>8.1}",
            group(p.tasks),
            p.latency.n,
            p.latency.median,
            p.latency.p99,
            p.latency.min,
            p.send.median,
            p.setup_ms / 1e3
        );
    }
    for p in props {
        println!(
            "  {:>8} tasks: history --limit {HISTORY_LIMIT} median {:.2} ms; the whole history \
             ({} commits) {:.2} ms",
            group(p.tasks),
            p.history_tail.median,
            group(p.commits),
            p.history_all.median
        );
    }
    if let Some((median, ratio)) = verdict(props) {
        let met = median <= GOAL_MEDIAN_MS && ratio <= GOAL_RATIO;
        println!(
            "  goal at {} tasks: median <= {GOAL_MEDIAN_MS} ms and <= {GOAL_RATIO}x the median at \
             {}: {median:.2} ms, {ratio:.2}x: {}",
            group(THREADS[1]),
            group(THREADS[0]),
            if met { "met" } else { "NOT met" }
        );
    }
}

pub fn json(props: &[NodePropagation]) -> Json {
    let rows: Vec<Json> = props
        .iter()
        .map(|p| {
            json!({
                "tasks": p.tasks,
                "latency_ms": super::stats_json(&p.latency),
                "send_ms": super::stats_json(&p.send),
                "setup_ms": p.setup_ms,
                "history_limit": HISTORY_LIMIT,
                "history_tail_ms": super::stats_json(&p.history_tail),
                "history_all_ms": super::stats_json(&p.history_all),
                "commits": p.commits,
            })
        })
        .collect();
    let goal = verdict(props).map(|(median, ratio)| {
        json!({
            "median_ms_max": GOAL_MEDIAN_MS,
            "ratio_max": GOAL_RATIO,
            "median_ms": median,
            "ratio": ratio,
            "met": median <= GOAL_MEDIAN_MS && ratio <= GOAL_RATIO,
        })
    });
    json!({ "threads": rows, "goal": goal })
}

/// When everything `repo` wrote is durable (now, if it already is).
pub async fn durable(repo: &errand_sync::Repo) -> Result<Instant> {
    let mut durability = repo.durability();
    tokio::time::timeout(WAIT, durability.wait_for(|d| *d))
        .await
        .context("the desktop to make what it received durable")?
        .context("the repo went away")?;
    Ok(Instant::now())
}
