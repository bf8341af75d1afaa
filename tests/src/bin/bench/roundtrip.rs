//! (d) and (e): the round trip of a trivial task through the desktop's real executor, and
//! of a trivial connector call, from the phone's durable change until it reads `done`.

use super::*;

/// (d) needs no approvals (its policy allows shell), so nobody may give one; every home of
/// the bench may send tasks.
#[derive(Debug)]
struct NoApprovers;

impl Authority for NoApprovers {
    fn may_send(&self, _device: &DeviceId) -> bool {
        true
    }
    fn may_approve(&self, _device: &DeviceId) -> bool {
        false
    }
    fn name(&self, _device: &DeviceId) -> Option<String> {
        None
    }
}

/// A task's map in a thread document (`tasks/<bucket>/<id>`).
fn task_obj(d: &automerge::Automerge, id: &str) -> Option<automerge::ObjId> {
    let (Value::Object(ObjType::Map), tasks) = d.get(ROOT, "tasks").ok()?? else {
        return None;
    };
    let (Value::Object(ObjType::Map), bucket) = d.get(&tasks, thread::task_bucket(id)).ok()??
    else {
        return None;
    };
    let (Value::Object(ObjType::Map), task) = d.get(&bucket, id).ok()?? else {
        return None;
    };
    Some(task)
}

/// A task's status, read with a handful of map look-ups (cheaper than building the `Task`).
fn task_status(d: &automerge::Automerge, id: &str) -> Option<TaskStatus> {
    thread::task_status(d, id)
}

/// How many tasks of a thread are queued for `target`, reading only a few fields of each.
fn queued_for(d: &automerge::Automerge, target: &str) -> usize {
    thread::task_states(d, &std::collections::HashSet::new())
        .iter()
        .filter(|t| t.status == TaskStatus::Queued && t.target == target)
        .count()
}

/// One change announcement of the desktop's repo for the thread of (d), seen by the monitor.
#[derive(Debug)]
struct Mark {
    at: Instant,
    local: bool,
}

#[derive(Debug)]
pub(super) struct RoundTrip {
    /// The task sent each time.
    pub(super) prompt: &'static str,
    /// Finished tasks in the thread before the first timed round trip.
    pub(super) tasks: usize,
    /// Phone's change until the phone's repo shows the task done.
    pub(super) latency: Stats,
    /// Desktop: merged task announced until the executor's `done` commit announced.
    pub(super) executor: Stats,
    /// Desktop: merged task announced until the executor's `running` claim announced.
    pub(super) claim: Stats,
    /// Desktop: `running` announced until its last commit before `done` announced (the
    /// progress entry "running /sh true").
    pub(super) progress: Stats,
    /// Desktop: that until `done` announced (`sh -c true` and the `done` commit).
    pub(super) finish: Stats,
    /// Phone's change until the desktop announces the merged task.
    pub(super) to_desktop: Stats,
    /// Desktop announces `done` until the phone shows it.
    pub(super) back: Stats,
    /// Changes the phone merges per round trip, announced by its repo.
    pub(super) phone_merges: f64,
    /// Commits the desktop's executor makes per round trip.
    pub(super) executor_commits: f64,
    pub(super) bytes_per_task: f64,
    pub(super) datagrams_per_task: f64,
    /// `schema::thread::tasks` over the whole thread at the end, on the desktop's repo.
    pub(super) read_all: Stats,
    /// The status and target of every task alone (what finding queued work needs).
    pub(super) scan_status: Stats,
    /// `tools::shell::sh` of the same command alone, before the executor starts.
    pub(super) shell: Stats,
    pub(super) setup_ms: f64,
}

/// (d): a desktop with the real executor and a thread of `tasks` finished tasks, synced to a
/// phone; then `iterations` round trips of `/sh true`, one at a time.
pub(super) async fn round_trip(
    tasks: usize,
    iterations: usize,
    prompt: &'static str,
) -> Result<RoundTrip> {
    let setup = Instant::now();
    let desktop = Home::new(true).await?;
    let phone = Home::new(false).await?;
    let desktop_id = desktop.id().to_string();
    let doc = build_space(&desktop, tasks, true)?;

    let home = desktop.dir.path();
    let policy = Policy::parse(ROUND_TRIP_POLICY, home, home).context("the bench's policy")?;
    policy.ensure_workspace()?;
    // The tool alone, as the executor calls it, before the executor starts.
    let mut shell = Vec::new();
    for _ in 0..WARMUP + 20 {
        let t0 = Instant::now();
        let command = ROUND_TRIP_PROMPT.trim_start_matches("/sh ");
        tools::shell::sh(
            command,
            policy.workspace(),
            &policy.child_env(),
            CancellationToken::new(),
            WAIT,
            |_| {},
        )
        .await
        .with_context(|| format!("sh -c {command:?} alone"))?;
        shell.push(ms(t0.elapsed()));
    }
    shell.drain(..WARMUP);
    let connectors = Arc::new(bench_connectors(prompt, &policy)?);
    let config = ExecutorConfig {
        device: desktop.id(),
        policy,
        model: None,
        model_limits: Limits {
            max_steps: 1,
            max_time: WAIT,
        },
        model_hint: "errand-bench runs direct commands only".into(),
        max_parallel: 4,
        shell_timeout: WAIT,
        connectors,
    };
    let exec = executor::start(desktop.repo.clone(), config, Arc::new(NoApprovers));

    let conn = phone.connect(&desktop).await?;
    let index_doc = DocId::index();
    let mut progress = phone.replicator.progress();
    wait_progress(&mut progress, "the phone to receive the thread", || {
        phone.repo.read(&doc, task_count).ok().flatten() == Some(tasks)
    })
    .await?;
    wait_quiet(&phone, &desktop, &[&index_doc, &doc]).await?;
    let setup_ms = ms(setup.elapsed());

    // The monitor: timestamps every announcement of the thread on the desktop. A thread of
    // its own, so that its timestamps do not wait for a tokio worker (the executor and the
    // replicators keep them busy). It reads nothing (a status read after the announcement could
    // already see a later change): which commit each local announcement was is found after
    // the round trip, from the desktop's history. It ends when the repo goes away or nobody
    // listens.
    let (marks_tx, mut marks) = mpsc::unbounded_channel::<Result<Mark, String>>();
    {
        let doc = doc.clone();
        let mut rx = desktop.repo.subscribe();
        std::thread::Builder::new()
            .name("bench-monitor".into())
            .spawn(move || {
                loop {
                    let mark = match rx.blocking_recv() {
                        Ok(c) if c.doc == doc => Ok(Mark {
                            at: Instant::now(),
                            local: c.local,
                        }),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            Err(format!("the desktop monitor missed {n} announcements"))
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if marks_tx.send(mark).is_err() {
                        break;
                    }
                }
            })?;
    }
    let desktop_actor = desktop.repo.actor();

    let mut changes = phone.repo.subscribe();
    let mut before = Wire::default();
    let (mut latency, mut executor_ms, mut claim, mut progress, mut finish) = Default::default();
    let (mut to_desktop, mut back) = Default::default();
    let (mut phone_merges, mut executor_commits) = (0usize, 0usize);
    for i in 0..WARMUP + iterations {
        if i == WARMUP {
            before = Wire::of(&conn);
        }
        drain(&mut changes);
        while marks.try_recv().is_ok() {}
        let id = random_hex16();
        let heads_before = desktop.repo.heads(&doc)?;
        let start = Instant::now();
        phone
            .repo
            .change(&doc, &format!("task {id} queued"), |tx| {
                thread::add_task(
                    tx,
                    &thread::NewTask {
                        id: &id,
                        prompt,
                        target: &desktop_id,
                        created: schema::now_millis(),
                    },
                )
            })?;
        // The phone: wait for a merged change after which the task is done.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut merges = 0;
        let seen = loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(c)) if !c.local && c.doc == doc => merges += 1,
                Ok(Ok(_)) => continue,
                // Behind: the thread may have changed.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => bail!("phone repo went away"),
                Err(_) => bail!("timed out after {WAIT:?} waiting for task {id} to be done"),
            }
            let status = phone.repo.read(&doc, |d| task_status(d, &id))?.flatten();
            // After the read: the change that made it done is merged by then, if not earlier.
            let at = Instant::now();
            match status {
                Some(TaskStatus::Done) => break at,
                Some(status @ (TaskStatus::Failed | TaskStatus::Cancelled)) => {
                    let error = phone
                        .repo
                        .read(&doc, |d| thread::task(d, doc.as_str(), &id))?
                        .flatten()
                        .and_then(|t| t.error)
                        .unwrap_or_default();
                    bail!("task {id} ({prompt}) ended {status}: {error}");
                }
                _ => {}
            }
        };
        // The desktop's side. Its commits since the round trip began, in order (one chain of
        // its own), each with the task's status as of that commit; then as many local
        // announcements from the monitor, after the merge of the phone's change.
        let commits: Vec<Option<TaskStatus>> = desktop
            .repo
            .read(&doc, |d| {
                let task = task_obj(d, &id);
                d.get_changes(&heads_before)
                    .iter()
                    .filter(|c| c.actor_id() == &desktop_actor)
                    .map(|c| {
                        let (status, _) =
                            d.get_at(task.as_ref()?, "status", &[c.hash()]).ok()??;
                        status.as_str()?.parse().ok()
                    })
                    .collect()
            })?
            .unwrap_or_default();
        let Some(done_at) = commits.iter().position(|s| *s == Some(TaskStatus::Done)) else {
            bail!("no commit of the desktop made task {id} done: {commits:?}");
        };
        let Some(claim_at) = commits.iter().position(|s| *s == Some(TaskStatus::Running)) else {
            bail!("no commit of the desktop claimed task {id}: {commits:?}");
        };
        let mut received = None;
        let mut local = Vec::new();
        while local.len() <= done_at {
            let mark = match tokio::time::timeout_at(deadline, marks.recv()).await {
                Ok(Some(Ok(mark))) => mark,
                Ok(Some(Err(e))) => bail!("{e}"),
                Ok(None) => bail!("the desktop monitor stopped"),
                Err(_) => bail!("timed out waiting for the desktop's announcements of {id}"),
            };
            match (mark.local, received) {
                (false, None) => received = Some(mark.at),
                (false, Some(_)) => bail!("the desktop merged two changes for task {id}"),
                (true, None) => bail!("the desktop committed before it received task {id}"),
                (true, Some(_)) => local.push(mark.at),
            }
        }
        let Some(received) = received else {
            bail!("the desktop did not announce task {id}");
        };
        let (claimed, done) = (local[claim_at], local[done_at]);
        let last = local[done_at.saturating_sub(1).max(claim_at)];
        let commits = done_at + 1;
        if i >= WARMUP {
            let push = |v: &mut Vec<f64>, d: Duration| v.push(ms(d));
            push(&mut latency, seen - start);
            push(&mut executor_ms, done - received);
            push(&mut claim, claimed - received);
            push(&mut progress, last - claimed);
            push(&mut finish, done - last);
            push(&mut to_desktop, received - start);
            push(&mut back, seen.saturating_duration_since(done));
            phone_merges += merges;
            executor_commits += commits;
        }
        wait_quiet(&phone, &desktop, &[&doc]).await?;
    }
    let wire = Wire::of(&conn).since(before);
    drop(marks);
    exec.stop().await;

    let (mut read_all, mut scan_status) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t0 = Instant::now();
        let all = desktop
            .repo
            .read(&doc, |d| thread::tasks(d, doc.as_str()).len())?;
        let t1 = Instant::now();
        let queued = desktop.repo.read(&doc, |d| queued_for(d, &desktop_id))?;
        read_all.push(ms(t1 - t0));
        scan_status.push(ms(t1.elapsed()));
        if all.is_none() || queued != Some(0) {
            bail!("desktop: thread gone or tasks left queued ({queued:?})");
        }
    }

    // Outside the timed part: every task the bench sent is done on both sides.
    for (side, home) in [("desktop", &desktop), ("phone", &phone)] {
        let all = home
            .repo
            .read(&doc, |d| thread::tasks(d, doc.as_str()))?
            .unwrap_or_default();
        let done = all.iter().filter(|t| t.status == TaskStatus::Done).count();
        if all.len() != tasks + WARMUP + iterations || done != all.len() {
            bail!(
                "the {side} holds {} tasks, {done} done; expected {} all done",
                all.len(),
                tasks + WARMUP + iterations
            );
        }
    }
    conn.close(0u32.into(), b"done");
    phone.close().await;
    desktop.close().await;
    let n = iterations as f64;
    Ok(RoundTrip {
        prompt,
        tasks,
        latency: stats(latency),
        executor: stats(executor_ms),
        claim: stats(claim),
        progress: stats(progress),
        finish: stats(finish),
        to_desktop: stats(to_desktop),
        back: stats(back),
        phone_merges: phone_merges as f64 / n,
        executor_commits: executor_commits as f64 / n,
        bytes_per_task: wire.bytes as f64 / n,
        datagrams_per_task: wire.datagrams as f64 / n,
        read_all: stats(read_all),
        scan_status: stats(scan_status),
        shell: stats(shell),
        setup_ms,
    })
}

/// The connectors of a round trip: the filesystem server over the workspace for (e)'s `/mcp`,
/// none otherwise.
fn bench_connectors(prompt: &str, policy: &Policy) -> Result<Connectors> {
    let workspace = policy.workspace();
    if !prompt.starts_with("/mcp ") {
        return Ok(Connectors::none());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../target/tools/npm/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js",
    );
    if !script.exists() {
        bail!("{} is missing: run scripts/setup-tests", script.display());
    }
    let config = ConnectorConfig {
        name: "files".into(),
        server: Server::Local {
            command: "node".into(),
            args: vec![
                script.display().to_string(),
                workspace.display().to_string(),
            ],
            env: Default::default(),
        },
        timeout: WAIT,
        tools: Default::default(),
    };
    Ok(Connectors::new(
        vec![config],
        workspace.to_owned(),
        policy.child_env(),
    ))
}

pub(super) fn table_d(trips: &[RoundTrip]) {
    println!(
        "(d) round trip of a trivial task: the phone queues `{ROUND_TRIP_PROMPT}` for the desktop, whose real"
    );
    println!(
        "    executor runs it (policy: shell allowed); from before the phone's durable repo.change until"
    );
    println!(
        "    the phone's repo shows the task done. 'tasks' = finished tasks in the thread before the"
    );
    println!(
        "    first timed round trip (each round trip adds one, so the thread grows by the iterations)"
    );
    println!(
        "    {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "tasks", "iters", "median", "p99", "mean", "min", "max", "bytes/task"
    );
    for t in trips {
        let l = &t.latency;
        println!(
            "    {:>8} {:>6} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>11.0}",
            group(t.tasks),
            l.n,
            l.median,
            l.p99,
            l.mean,
            l.min,
            l.max,
            t.bytes_per_task
        );
    }
    println!("    where the time goes, ms (each part's own percentile, so they need not add up):");
    println!(
        "             {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "tasks", "to desktop", "executor", "claim", "progress", "sh+done", "back"
    );
    for (label, pick) in [
        ("median", (|s: &Stats| s.median) as fn(&Stats) -> f64),
        ("p99", |s: &Stats| s.p99),
    ] {
        for t in trips {
            println!(
                "      {label:<6} {:>8} {:>11.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                group(t.tasks),
                pick(&t.to_desktop),
                pick(&t.executor),
                pick(&t.claim),
                pick(&t.progress),
                pick(&t.finish),
                pick(&t.back)
            );
        }
    }
    println!(
        "      read off the desktop's change broadcasts: to desktop = phone's change until the desktop"
    );
    println!(
        "      announces the merged task; executor = that until it announces its `done` commit, which"
    );
    println!(
        "      is claim (until its `running` commit) + progress (until its progress-entry commit) +"
    );
    println!(
        "      sh+done (`sh -c true` and the `done` commit); back = until the phone shows done"
    );
    for t in trips {
        println!(
            "      {:>6} tasks: per round trip {:.1} executor commits, {:.1} changes merged on the \
             phone, {:.1} UDP datagrams",
            group(t.tasks),
            t.executor_commits,
            t.phone_merges,
            t.datagrams_per_task
        );
    }
    for t in trips {
        println!(
            "      {:>6} tasks: errand_executor::tools::shell::sh(\"{}\") alone (no executor running): \
             median {:.3} ms",
            group(t.tasks),
            ROUND_TRIP_PROMPT.trim_start_matches("/sh "),
            t.shell.median
        );
    }
    println!(
        "    reading the thread on the desktop at the end (the executor reads all of it on every change):"
    );
    for t in trips {
        println!(
            "      {:>6} tasks ({} in the thread): schema::thread::tasks median {:.3} ms; status and \
             target of each task alone median {:.3} ms",
            group(t.tasks),
            group(t.tasks + WARMUP + t.latency.n),
            t.read_all.median,
            t.scan_status.median
        );
    }
    println!("    goals (informational):");
    for t in trips {
        println!(
            "      {:>6} tasks: median {:.3} ms (goal <= {GOAL_ROUND_TRIP_MEDIAN_MS} ms): {}",
            group(t.tasks),
            t.latency.median,
            verdict(t.latency.median <= GOAL_ROUND_TRIP_MEDIAN_MS)
        );
    }
}
