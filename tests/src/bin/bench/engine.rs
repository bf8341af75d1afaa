//! (a), (b) and (c): the bare engine. One new task from a phone's repo to a desktop's over an
//! established connection, a brand-new phone's first sync, and the same steps through the
//! `Repo` API with no network, to show where the time goes.

use super::*;

#[derive(Debug)]
pub(super) struct Propagation {
    pub(super) tasks: usize,
    pub(super) latency: Stats,
    pub(super) bytes_per_task: f64,
    pub(super) datagrams_per_task: f64,
    pub(super) stream_frames_per_task: f64,
    /// Mean size of the automerge change that adds one task (as stored, uncompressed).
    pub(super) change_bytes: f64,
    /// The phone's `repo.change` alone (automerge transaction and durable redb commit).
    pub(super) commit: Stats,
    pub(super) setup_ms: f64,
}

/// (a): a desktop thread of `tasks` tasks, synced to a phone; then `iterations` new tasks, one at
/// a time, from the phone to the desktop.
pub(super) async fn propagation(tasks: usize, iterations: usize) -> Result<Propagation> {
    let setup = Instant::now();
    let desktop = Home::new(true).await?;
    let phone = Home::new(false).await?;
    let desktop_id = desktop.id().to_string();
    let doc = build_space(&desktop, tasks, false)?;

    let conn = phone.connect(&desktop).await?;
    let index_doc = DocId::index();
    let mut progress = phone.replicator.progress();
    wait_progress(&mut progress, "the phone to receive the thread", || {
        phone.repo.read(&doc, task_count).ok().flatten() == Some(tasks)
    })
    .await?;
    wait_quiet(&phone, &desktop, &[&index_doc, &doc]).await?;
    let setup_ms = ms(setup.elapsed());

    let mut changes = desktop.repo.subscribe();
    let mut samples = Vec::with_capacity(iterations);
    let mut before = Wire::default();
    let mut change_bytes = 0usize;
    let mut commits = Vec::with_capacity(iterations);
    for i in 0..WARMUP + iterations {
        if i == WARMUP {
            before = Wire::of(&conn);
        }
        drain(&mut changes);
        let id = random_hex16();
        let prompt = format!("bench task {i}: {}", PROMPTS[i % PROMPTS.len()]);
        let start = Instant::now();
        phone
            .repo
            .change(&doc, &format!("task {id} queued"), |tx| {
                thread::add_task(
                    tx,
                    &thread::NewTask {
                        id: &id,
                        prompt: &prompt,
                        target: &desktop_id,
                        created: schema::now_millis(),
                    },
                )
            })?;
        let committed = Instant::now();
        let arrived = loop {
            let at = next_remote_change(&mut changes, &doc).await?;
            let readable = desktop
                .repo
                .read(&doc, |d| thread::task(d, doc.as_str(), &id).is_some())?
                .unwrap_or(false);
            if readable {
                break at;
            }
        };
        // Received changes are written lazily and made durable before the desktop answers:
        // the figure is until they are durable.
        let arrived = nodes::durable(&desktop.repo).await?.max(arrived);
        if i >= WARMUP {
            samples.push(ms(arrived - start));
            commits.push(ms(committed - start));
            change_bytes += phone
                .repo
                .read(&doc, |d| {
                    d.get_last_local_change().map(|c| c.raw_bytes().len())
                })?
                .flatten()
                .unwrap_or(0);
        }
        wait_quiet(&phone, &desktop, &[&doc]).await?;
    }
    let wire = Wire::of(&conn).since(before);
    let total = desktop.repo.read(&doc, task_count)?.unwrap_or(0);
    if total != tasks + WARMUP + iterations {
        bail!(
            "desktop holds {total} tasks, expected {}",
            tasks + WARMUP + iterations
        );
    }
    conn.close(0u32.into(), b"done");
    phone.close().await;
    desktop.close().await;
    Ok(Propagation {
        tasks,
        latency: stats(samples),
        bytes_per_task: wire.bytes as f64 / iterations as f64,
        datagrams_per_task: wire.datagrams as f64 / iterations as f64,
        stream_frames_per_task: wire.stream_frames as f64 / iterations as f64,
        change_bytes: change_bytes as f64 / iterations as f64,
        commit: stats(commits),
        setup_ms,
    })
}

#[derive(Debug)]
pub(super) struct InitialSync {
    pub(super) tasks: usize,
    pub(super) runs: usize,
    /// Until the phone holds every task.
    pub(super) complete: Stats,
    /// Until both sides report every document in sync (the wire is quiet).
    pub(super) quiet: Stats,
    /// Bytes until quiet, median over runs.
    pub(super) bytes_median: u64,
    pub(super) bytes_min: u64,
    pub(super) bytes_max: u64,
}

/// (b): a desktop holding the index and a thread of `tasks` tasks; `runs` brand-new phones
/// connect in turn.
pub(super) async fn initial_sync(tasks: usize, runs: usize) -> Result<InitialSync> {
    let desktop = Home::new(true).await?;
    // The tasks name some phone as their sender; the fresh phones only read them.
    let sender = Home::new(false).await?;
    let doc = build_space(&desktop, tasks, false)?;
    sender.close().await;
    let index_doc = DocId::index();

    let mut complete = Vec::new();
    let mut quiet = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..runs {
        let phone = Home::new(false).await?;
        let mut changes = phone.repo.subscribe();
        let start = Instant::now();
        let conn = phone.connect(&desktop).await?;
        let done = loop {
            let at = next_remote_change(&mut changes, &doc).await?;
            if phone.repo.read(&doc, task_count)? == Some(tasks) {
                break at;
            }
        };
        wait_quiet(&phone, &desktop, &[&index_doc, &doc]).await?;
        quiet.push(ms(start.elapsed()));
        complete.push(ms(done - start));
        bytes.push(Wire::of(&conn).bytes);
        // The full check, outside the timed part: it builds every task and holds the repo.
        let held = phone
            .repo
            .read(&doc, |d| thread::tasks(d, doc.as_str()).len())?
            .unwrap_or(0);
        if held != tasks {
            bail!("phone holds {held} tasks by schema::thread::tasks, expected {tasks}");
        }
        conn.close(0u32.into(), b"done");
        phone.close().await;
    }
    desktop.close().await;
    bytes.sort_unstable();
    Ok(InitialSync {
        tasks,
        runs,
        complete: stats(complete),
        quiet: stats(quiet),
        bytes_median: bytes[(bytes.len() - 1) / 2],
        bytes_min: bytes[0],
        bytes_max: bytes[bytes.len() - 1],
    })
}

/// (c): the same steps through the Repo API alone, in one process with no network, to show
/// where the time of (a) and (b) goes.
#[derive(Debug)]
pub(super) struct Breakdown {
    pub(super) tasks: usize,
    /// Phone: `repo.change` adding one task (transaction + durable commit).
    pub(super) change: Stats,
    /// Phone: `generate_sync_message` carrying that change.
    pub(super) generate: Stats,
    /// Desktop: `receive_sync_message` of it (decode, apply, durable commit, broadcast).
    pub(super) receive: Stats,
    /// Desktop: the acknowledgement it sends back, and the phone taking it.
    pub(super) ack: Stats,
    /// A durable redb commit of 700 bytes alone (`Store::set_record`): the floor under
    /// `change` and `receive`.
    pub(super) redb_commit: Stats,
    /// Fresh phone: desktop's `generate_sync_message` answering a first request for the thread.
    pub(super) initial_generate_ms: f64,
    pub(super) initial_message_bytes: usize,
    /// Fresh phone: `receive_sync_message` of that answer (load, durable commit).
    pub(super) initial_receive_ms: f64,
    /// Fresh phone: the rest of the exchange until neither side has anything to say.
    pub(super) initial_rest_ms: f64,
    /// What the fresh phone's store then holds for the thread, and how many chunks.
    pub(super) stored_bytes: usize,
    pub(super) stored_chunks: usize,
    /// What `Automerge::save` of the same document takes.
    pub(super) snapshot_bytes: usize,
    /// `Repo::doc_ids` on the phone after the iterations (the replicator's dialler calls it on
    /// every document change).
    pub(super) doc_ids: Stats,
}

/// Exchanges sync messages between two repos until neither has anything to say; `a` speaks
/// first. Returns the number of messages.
fn converge(
    a: &Repo,
    sa: &mut automerge::sync::State,
    b: &Repo,
    sb: &mut automerge::sync::State,
    doc: &DocId,
) -> Result<usize> {
    let mut messages = 0;
    for _ in 0..100 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(doc, sa)? {
            b.receive_sync_message(doc, sb, &m)?;
            messages += 1;
            quiet = false;
        }
        if let Some(m) = b.generate_sync_message(doc, sb)? {
            a.receive_sync_message(doc, sa, &m)?;
            messages += 1;
            quiet = false;
        }
        if quiet {
            return Ok(messages);
        }
    }
    bail!("in-process sync of {doc} did not converge")
}

pub(super) async fn breakdown(tasks: usize, iterations: usize) -> Result<Breakdown> {
    let desktop = Home::new(false).await?;
    let phone = Home::new(false).await?;
    let (d, p) = (&desktop.repo, &phone.repo);
    let desktop_id = desktop.id().to_string();
    let doc = build_space(&desktop, tasks, false)?;
    let fresh = Home::new(false).await?;
    let f = &fresh.repo;
    let (mut sdf, mut sf) = Default::default();
    let request = f
        .generate_sync_message(&doc, &mut sf)?
        .context("a fresh repo had no request")?;
    d.receive_sync_message(&doc, &mut sdf, &request)?;
    let i0 = Instant::now();
    let answer = d
        .generate_sync_message(&doc, &mut sdf)?
        .context("desktop had no answer")?;
    let i1 = Instant::now();
    f.receive_sync_message(&doc, &mut sf, &answer)?;
    let i2 = Instant::now();
    converge(f, &mut sf, d, &mut sdf, &doc)?;
    let i3 = Instant::now();
    let held = f.read(&doc, task_count)?.unwrap_or(0);
    if held != tasks {
        bail!("in-process fresh copy holds {held} tasks, expected {tasks}");
    }
    let (stored_bytes, stored_chunks) = f
        .store()
        .load_doc(doc.as_str())?
        .map_or((0, 0), |(b, n)| (b.len(), n));
    let snapshot_bytes = f.save(&doc)?.map_or(0, |b| b.len());
    let (mut sd, mut sp) = Default::default();
    converge(p, &mut sp, d, &mut sd, &doc)?;

    let mut redb_commit = Vec::new();
    for i in 0..WARMUP + iterations {
        let t0 = Instant::now();
        p.store()
            .set_record("bench", &format!("k{i}"), &[7u8; 700])?;
        if i >= WARMUP {
            redb_commit.push(ms(t0.elapsed()));
        }
    }

    let (mut change, mut generate, mut receive, mut ack) = (vec![], vec![], vec![], vec![]);
    for i in 0..WARMUP + iterations {
        let id = random_hex16();
        let prompt = format!("bench task {i}: {}", PROMPTS[i % PROMPTS.len()]);
        let t0 = Instant::now();
        p.change(&doc, &format!("task {id} queued"), |tx| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: &id,
                    prompt: &prompt,
                    target: &desktop_id,
                    created: schema::now_millis(),
                },
            )
        })?;
        let t1 = Instant::now();
        let m = p
            .generate_sync_message(&doc, &mut sp)?
            .context("phone had nothing to send after a change")?;
        let t2 = Instant::now();
        d.receive_sync_message(&doc, &mut sd, &m)?;
        let t3 = Instant::now();
        converge(d, &mut sd, p, &mut sp, &doc)?;
        let t4 = Instant::now();
        if i >= WARMUP {
            change.push(ms(t1 - t0));
            generate.push(ms(t2 - t1));
            receive.push(ms(t3 - t2));
            ack.push(ms(t4 - t3));
        }
    }

    let mut doc_ids = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let ids = p.doc_ids()?;
        doc_ids.push(ms(t0.elapsed()));
        if ids.is_empty() {
            bail!("phone lists no documents");
        }
    }
    for home in [desktop, phone, fresh] {
        home.close().await;
    }
    Ok(Breakdown {
        tasks,
        change: stats(change),
        generate: stats(generate),
        receive: stats(receive),
        ack: stats(ack),
        redb_commit: stats(redb_commit),
        initial_generate_ms: ms(i1 - i0),
        initial_message_bytes: answer.len(),
        initial_receive_ms: ms(i2 - i1),
        initial_rest_ms: ms(i3 - i2),
        stored_bytes,
        stored_chunks,
        snapshot_bytes,
        doc_ids: stats(doc_ids),
    })
}

pub(super) fn table_a(props: &[Propagation]) {
    println!("(a) one new task, phone -> desktop, over an established connection");
    println!(
        "    from before the phone's durable repo.change until the desktop has merged it durably"
    );
    println!(
        "    (the phone pushes the change while its own durable write runs; repo.change returns after it)"
    );
    println!(
        "    {:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "tasks", "iters", "median", "p99", "mean", "min", "max", "bytes/task"
    );
    for p in props {
        let l = &p.latency;
        println!(
            "    {:>8} {:>6} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>11.0}",
            group(p.tasks),
            l.n,
            l.median,
            l.p99,
            l.mean,
            l.min,
            l.max,
            p.bytes_per_task
        );
    }
    println!("    per new task:");
    for p in props {
        println!(
            "      {:>6} tasks: phone's repo.change alone median {:.3} ms; {:.1} UDP datagrams, \
             {:.1} QUIC stream frames, automerge change {:.0} bytes",
            group(p.tasks),
            p.commit.median,
            p.datagrams_per_task,
            p.stream_frames_per_task,
            p.change_bytes
        );
    }
    println!("    goals (informational):");
    for p in props {
        if p.tasks == 1_000 {
            println!(
                "      1,000 tasks: median {:.3} ms (goal <= {GOAL_MEDIAN_MS} ms), p99 {:.3} ms (goal <= {GOAL_P99_MS} ms): {}",
                p.latency.median,
                p.latency.p99,
                verdict(p.latency.median <= GOAL_MEDIAN_MS && p.latency.p99 <= GOAL_P99_MS)
            );
        }
        println!(
            "      {} tasks: {:.0} bytes per new task (goal <= {GOAL_BYTES_PER_TASK}): {}",
            group(p.tasks),
            p.bytes_per_task,
            verdict(p.bytes_per_task <= GOAL_BYTES_PER_TASK)
        );
    }
}

pub(super) fn table_b(syncs: &[InitialSync]) {
    println!("(b) initial sync of a brand-new phone (index + one thread), fresh phone each run");
    println!(
        "    from before the phone dials until it holds every task; 'quiet' = both sides in sync"
    );
    println!(
        "    {:>8} {:>5} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "tasks", "runs", "median", "min", "max", "quiet med", "bytes med"
    );
    for s in syncs {
        println!(
            "    {:>8} {:>5} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>10.1}ms {:>12}",
            group(s.tasks),
            s.runs,
            s.complete.median,
            s.complete.min,
            s.complete.max,
            s.quiet.median,
            s.bytes_median
        );
    }
    println!("    goals (informational):");
    for s in syncs.iter().filter(|s| s.tasks == 10_000) {
        println!(
            "      10,000 tasks: median {:.1} ms (goal <= {GOAL_INITIAL_10K_MS} ms): {}",
            s.complete.median,
            verdict(s.complete.median <= GOAL_INITIAL_10K_MS)
        );
    }
}

pub(super) fn table_c(parts: &[Breakdown]) {
    println!(
        "(c) where the time goes: the same steps through the Repo API in one process, no network"
    );
    println!(
        "    medians, ms  {:>8} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "tasks", "change", "generate", "receive", "ack round", "redb commit"
    );
    for b in parts {
        println!(
            "    new task     {:>8} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>11.3}",
            group(b.tasks),
            b.change.median,
            b.generate.median,
            b.receive.median,
            b.ack.median,
            b.redb_commit.median
        );
    }
    println!(
        "      change = phone repo.change (transaction + durable commit); generate = phone's sync"
    );
    println!(
        "      message; receive = desktop receive_sync_message (apply + durable commit); ack round"
    );
    println!("      = desktop's reply and the phone taking it; redb commit = one durable 700-byte");
    println!("      Store::set_record alone, the floor under change and receive");
    println!(
        "    initial sync {:>8} {:>10} {:>10} {:>10} {:>10}",
        "tasks", "generate", "bytes", "receive", "rest"
    );
    for b in parts {
        println!(
            "                 {:>8} {:>10.1} {:>10} {:>10.1} {:>10.1}",
            group(b.tasks),
            b.initial_generate_ms,
            b.initial_message_bytes,
            b.initial_receive_ms,
            b.initial_rest_ms
        );
    }
    println!(
        "      generate = desktop answering a fresh phone's first request for the thread; receive ="
    );
    println!(
        "      fresh phone applying that answer (incl. durable commit); rest = until both are quiet"
    );
    for b in parts {
        println!(
            "    {:>6} tasks: the fresh phone stores the thread as {} bytes in {} chunk(s) \
             (Automerge::save: {} bytes); Repo::doc_ids on the phone: median {:.3} ms",
            group(b.tasks),
            b.stored_bytes,
            b.stored_chunks,
            b.snapshot_bytes,
            b.doc_ids.median
        );
    }
}
