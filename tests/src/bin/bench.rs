//! `errand-bench`: measures replication speed with real parts (redb files in temp dirs, iroh
//! endpoints on 127.0.0.1 with relays off) and prints the numbers. It asserts nothing about time.
//!
//! ```text
//! cargo run --release -p errand-tests --bin errand-bench -- [--json] [--iterations N] [--sync-runs N]
//!     [--round-trips N] [--spaces N,N,...] [--partition-secs N] [--only abcdefgh]
//! ```
//!
//! (a) Propagation of one new task from a phone home to a desktop home over an established
//!     connection, on a thread already holding 1,000 and 10,000 tasks: from just before the
//!     phone's `repo.change` (a durable commit) until the desktop's repo has announced the
//!     merged change, the task reads back and the change is durable there (received changes are
//!     written lazily and made durable before the desktop answers).
//! (b) Initial sync of a brand-new phone from a desktop holding a thread of 1,000 and 10,000
//!     tasks: from just before the phone dials until the phone holds every task.
//! (c) The same steps through the `Repo` API in one process with no network, plus a bare
//!     durable redb commit, to show where the time of (a) and (b) goes.
//! (d) The round trip of a trivial task: the phone queues `/sh true` for the desktop in a
//!     thread that already holds 0, 100 and 1,000 finished tasks; the desktop's real executor
//!     (policy: shell allowed; no approval needed, so nobody may approve) runs it; from just
//!     before the phone's durable `repo.change` until the phone's repo announces a merged
//!     change after which the task reads `done`. The executor's share is read off the desktop's
//!     change broadcasts by a monitor task: from the announcement of the merged task to the
//!     announcement of the executor's `done` commit, split at its `running` and progress
//!     commits. Also timed: the shell tool alone, and reading the whole thread.
//!
//! (e) The round trip of a trivial connector call, `/mcp files list_allowed_directories` (a
//!     read-only tool of `@modelcontextprotocol/server-filesystem`, installed by
//!     `scripts/setup-tests`, running as the desktop's child process), measured as (d) in a
//!     thread of 0 tasks, beside `/sh true` measured the same way in the same run.
//!
//! (f) Through running nodes (`bench/nodes.rs`): one new task from a phone `Node` to a desktop
//!     `Node` running its executor and event watcher, on a thread of 100 and of 10,000 tasks.
//! (g) Spaces of 10, 100 and 1,000 threads of 20 tasks (`bench/spaces.rs`; `--spaces 10000`
//!     for bigger ones): the desktop node in a process of its own, a phone node here: cold
//!     start, listing every task and memory after it, a fresh phone, a reconnect, a catch-up.
//! (h) Bursts of 1,000 sends from a phone node, into one thread and into new threads, and a
//!     partition of the link for `--partition-secs` (default 120) (`bench/links.rs`): a desktop
//!     node in a process and a network namespace of its own (root and iproute2; without them
//!     the bursts run over loopback and the partition is skipped).
//!
//! Bytes on the wire are the UDP payload bytes of the phone's connection in both directions
//! (`Connection::stats()`: `udp_tx.bytes + udp_rx.bytes`), i.e. everything both endpoints sent
//! to each other: QUIC headers, encryption overhead, acks and the framed sync messages.

#[path = "bench/links.rs"]
mod links;
#[path = "bench/nodes.rs"]
mod nodes;
#[path = "bench/spaces.rs"]
mod spaces;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::{ObjType, ROOT, ReadDoc, Value};
use errand_executor::agent::Limits;
use errand_executor::connectors::{ConnectorConfig, Connectors, Server};
use errand_executor::policy::Policy;
use errand_executor::runner::{self as executor, Authority, ExecutorConfig};
use errand_executor::tools;
use errand_sync::authorship::FixedAuthors;
use errand_sync::schema::thread::TaskStatus;
use errand_sync::schema::{self, index, thread};
use errand_sync::{
    DeviceId, DocChanged, DocId, Gate, Replicator, Repo, Role, SYNC_ALPN, SpaceId, Store,
};
use iroh::endpoint::{Connection, PortmapperConfig, presets};
use iroh::protocol::{ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, RelayMode};
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Tasks per transaction when building a big thread.
const BUILD_BATCH: usize = 1_000;
/// Untimed iterations before the timed ones (first use of code paths, allocator, page cache).
const WARMUP: usize = 5;
const WAIT: Duration = Duration::from_secs(60);

const GOAL_MEDIAN_MS: f64 = 1.0;
const GOAL_P99_MS: f64 = 5.0;
const GOAL_BYTES_PER_TASK: f64 = 400.0;
const GOAL_INITIAL_10K_MS: f64 = 150.0;
const GOAL_ROUND_TRIP_MEDIAN_MS: f64 = 10.0;
/// (e): the most a trivial `/mcp` round trip may add to the `/sh true` one.
const GOAL_MCP_EXTRA_MS: f64 = 20.0;

/// The task of (e): a read-only tool of the filesystem server, so no approval is needed.
const MCP_PROMPT: &str = "/mcp files list_allowed_directories";

/// The task of (d), and the policy under which the desktop runs it without asking.
const ROUND_TRIP_PROMPT: &str = "/sh true";
const ROUND_TRIP_POLICY: &str = "[actions]\nshell = \"allow\"\n";
/// Finished tasks already in the thread that (d) sends to (the executor reads the whole thread
/// when it changes).
const ROUND_TRIP_THREADS: [usize; 3] = [0, 100, 1_000];

const BYTES_MEANING: &str = "UDP payload bytes sent by both endpoints on the phone-desktop \
connection (phone Connection::stats(): udp_tx.bytes + udp_rx.bytes)";

#[derive(Debug)]
struct Args {
    json: bool,
    iterations: Option<usize>,
    sync_runs: usize,
    round_trips: usize,
    /// The sections to run, e.g. "abcd".
    only: String,
    /// The space sizes of (g), in threads.
    spaces: Vec<usize>,
    /// How long the link of (h) is down.
    partition_secs: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        json: false,
        iterations: None,
        sync_runs: 5,
        round_trips: 100,
        only: "abcdfgh".into(),
        spaces: spaces::SPACES.to_vec(),
        partition_secs: links::PARTITION_SECS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--iterations" => {
                let n = it.next().context("--iterations needs a number")?;
                let n: usize = n.parse().with_context(|| format!("--iterations {n:?}"))?;
                if n == 0 {
                    bail!("--iterations must be at least 1");
                }
                args.iterations = Some(n);
            }
            "--sync-runs" => {
                let n = it.next().context("--sync-runs needs a number")?;
                let n: usize = n.parse().with_context(|| format!("--sync-runs {n:?}"))?;
                if n == 0 {
                    bail!("--sync-runs must be at least 1");
                }
                args.sync_runs = n;
            }
            "--round-trips" => {
                let n = it.next().context("--round-trips needs a number")?;
                let n: usize = n.parse().with_context(|| format!("--round-trips {n:?}"))?;
                if n == 0 {
                    bail!("--round-trips must be at least 1");
                }
                args.round_trips = n;
            }
            "--only" => {
                let sections = it.next().context("--only needs section letters, e.g. ad")?;
                if sections.is_empty() || !sections.chars().all(|c| "abcdefgh".contains(c)) {
                    bail!("--only {sections:?}: give some of the letters a to h");
                }
                args.only = sections;
            }
            "--partition-secs" => {
                let n = it.next().context("--partition-secs needs a number")?;
                args.partition_secs = n
                    .parse()
                    .with_context(|| format!("--partition-secs {n:?}"))?;
            }
            "--spaces" => {
                let list = it.next().context("--spaces needs sizes, e.g. 10,1000")?;
                args.spaces = list
                    .split(',')
                    .map(|n| match n.trim().parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => bail!(
                            "--spaces {list:?}: give thread counts of at least 1, e.g. 10,1000"
                        ),
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!(
                    "errand-bench [--json] [--iterations N] [--sync-runs N] [--round-trips N] \
                     [--spaces N,...] [--partition-secs N] [--only SECTIONS]\n\n\
                     --json           print one JSON object instead of a table\n\
                     --iterations N   timed propagation iterations per thread size\n                 \
                     (default 300 at 1,000 tasks, 100 at 10,000)\n\
                     --sync-runs N    fresh phones per initial-sync size (default 5)\n\
                     --round-trips N  timed /sh true round trips per thread size (default 100)\n\
                     --spaces N,...   space sizes of (g), in threads (default 10,100,1000)\n\
                     --partition-secs N  how long the link of (h) is down (default 120)\n\
                     --only SECTIONS  run only these of the sections a to h (default abcdfgh)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

/// The one space every home of the bench belongs to (change signatures cover it).
const BENCH_SPACE: SpaceId = SpaceId([0xbe; 16]);

/// Membership is another layer: the bench lets every device in.
#[derive(Debug)]
struct AllowAll;

impl Gate for AllowAll {
    fn allows(&self, _peer: &DeviceId) -> bool {
        true
    }
}

/// One device home: a redb file in a temp dir, its repo, a loopback endpoint, a replicator.
#[derive(Debug)]
struct Home {
    repo: Arc<Repo>,
    endpoint: Endpoint,
    replicator: Replicator,
    router: Option<Router>,
    dir: tempfile::TempDir,
}

impl Home {
    /// `serve`: accept sync connections (the desktop); otherwise the home only dials.
    async fn new(serve: bool) -> Result<Home> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(&dir.path().join("errand.redb"))?);
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .portmapper_config(PortmapperConfig::Disabled)
            .transport_config(errand_sync::net::transport_config())
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")?
            .bind()
            .await?;
        // Every home is a member: the bench measures replication and the cost of checking
        // every change's signature and owner, not membership.
        let repo = Arc::new(Repo::new(
            store,
            endpoint.secret_key().clone(),
            Arc::new(FixedAuthors::anyone(Role::Desktop)),
        ));
        repo.set_space(BENCH_SPACE)?;
        let replicator = Replicator::new(repo.clone(), endpoint.clone(), Arc::new(AllowAll));
        let router = serve.then(|| {
            Router::builder(endpoint.clone())
                .accept(SYNC_ALPN, replicator.clone())
                .spawn()
        });
        Ok(Home {
            repo,
            endpoint,
            replicator,
            router,
            dir,
        })
    }

    fn id(&self) -> DeviceId {
        self.endpoint.id()
    }

    fn addr(&self) -> Result<EndpointAddr> {
        let sock: SocketAddr = self
            .endpoint
            .bound_sockets()
            .into_iter()
            .find(SocketAddr::is_ipv4)
            .context("endpoint has no IPv4 socket")?;
        Ok(EndpointAddr::new(self.id()).with_ip_addr(sock))
    }

    /// Dials `peer` on the sync ALPN and hands the connection to this home's replicator (as
    /// its dialler would); returns the connection so that its statistics can be read.
    async fn connect(&self, peer: &Home) -> Result<Connection> {
        let conn = self.endpoint.connect(peer.addr()?, SYNC_ALPN).await?;
        let replicator = self.replicator.clone();
        let handed = conn.clone();
        tokio::spawn(async move {
            let _ = replicator.accept(handed).await;
        });
        Ok(conn)
    }

    async fn close(self) {
        self.replicator.shutdown();
        if let Some(router) = self.router {
            let _ = router.shutdown().await;
        }
        self.endpoint.close().await;
    }
}

fn random_hex16() -> String {
    DocId::new_thread().as_str()[..16].to_owned()
}

/// Adds `n` tasks to a thread, sent by the desktop `me` to itself and already done: the past
/// of a thread, for the sections that need a big one.
fn add_done_tasks(
    tx: &mut impl automerge::transaction::Transactable,
    me: &str,
    n: usize,
    prompt: &str,
    now: i64,
) -> Result<(), automerge::AutomergeError> {
    for _ in 0..n {
        let id = random_hex16();
        thread::add_task(
            tx,
            &thread::NewTask {
                id: &id,
                prompt,
                target: me,
                created: now,
            },
        )?;
        thread::set_status(tx, &id, TaskStatus::Running, now)?;
        thread::finish(tx, &id, Ok("ok"), TaskStatus::Done, now)?;
    }
    Ok(())
}

const PROMPTS: [&str; 4] = [
    "summarise the PDFs in ~/inbox and file them by sender",
    "/sh cargo test --workspace",
    "take a screenshot of the build dashboard",
    "rename the holiday photos by date taken",
];

/// Creates the space's index and one thread of `tasks` tasks on `desktop`, `BUILD_BATCH` tasks
/// per change. The tasks are addressed to the desktop; they are queued, or with `finished` done
/// with a short result (as the desktop's executor would have left them).
fn build_space(desktop: &Home, tasks: usize, finished: bool) -> Result<DocId> {
    let repo = &desktop.repo;
    let me = desktop.id().to_string();
    let space = SpaceId::random().to_string();
    repo.create(&DocId::index(), "space created", |tx| {
        index::create(tx, &space, &me)
    })?;
    let doc = DocId::new_thread();
    repo.create(&doc, "thread created", |tx| {
        thread::create(tx, doc.as_str(), "bench")
    })?;
    let entry = index::ThreadEntry {
        id: doc.as_str().to_owned(),
        title: "bench".into(),
        created: schema::now_millis(),
        created_by: me.clone(),
        archived: false,
    };
    repo.change(&DocId::index(), "thread bench created", |tx| {
        index::add_thread(tx, &entry)
    })?;
    let mut done = 0;
    while done < tasks {
        let n = BUILD_BATCH.min(tasks - done);
        let now = schema::now_millis();
        repo.change(&doc, &format!("{n} tasks queued"), |tx| {
            for i in done..done + n {
                let id = random_hex16();
                thread::add_task(
                    tx,
                    &thread::NewTask {
                        id: &id,
                        prompt: PROMPTS[i % PROMPTS.len()],
                        target: &me,
                        created: now,
                    },
                )?;
                if finished {
                    thread::set_status(tx, &id, TaskStatus::Running, now)?;
                    thread::add_progress(tx, &id, "running", now)?;
                    thread::finish(tx, &id, Ok("ok"), TaskStatus::Done, now)?;
                }
            }
            Ok(())
        })?;
        done += n;
    }
    Ok(doc)
}

/// Number of tasks in a thread document, without building them (cheap enough to poll).
fn task_count(d: &automerge::Automerge) -> usize {
    thread::task_count(d)
}

/// Waits on a replicator's progress ticks until `cond` holds.
async fn wait_progress(
    progress: &mut watch::Receiver<u64>,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        progress.borrow_and_update();
        if cond() {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("replicator went away while waiting for {what}"),
            Err(_) => bail!("timed out after {WAIT:?} waiting for {what}"),
        }
    }
}

/// Waits until both sides report `doc` in sync with each other.
async fn wait_quiet(phone: &Home, desktop: &Home, docs: &[&DocId]) -> Result<()> {
    let mut p = phone.replicator.progress();
    let mut d = desktop.replicator.progress();
    let (pid, did) = (phone.id(), desktop.id());
    let held = |home: &Home| docs.iter().all(|doc| home.repo.holds(doc));
    wait_progress(&mut p, "the phone to be in sync", || {
        held(phone) && phone.replicator.in_sync(&did)
    })
    .await?;
    wait_progress(&mut d, "the desktop to be in sync", || {
        held(desktop) && desktop.replicator.in_sync(&pid)
    })
    .await
}

/// Receives the next change announcement of `doc` from a peer; returns when it was received.
async fn next_remote_change(
    rx: &mut broadcast::Receiver<DocChanged>,
    doc: &DocId,
) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(c)) if !c.local && &c.doc == doc => return Ok(Instant::now()),
            Ok(Ok(_)) => {}
            // Behind: every document may have changed.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Ok(Instant::now()),
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("repo went away"),
            Err(_) => bail!("timed out after {WAIT:?} waiting for a change of {doc}"),
        }
    }
}

fn drain(rx: &mut broadcast::Receiver<DocChanged>) {
    while !matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
    ) {}
}

/// What a connection has carried so far, both directions.
#[derive(Debug, Clone, Copy, Default)]
struct Wire {
    /// UDP payload bytes.
    bytes: u64,
    /// UDP datagrams.
    datagrams: u64,
    /// QUIC STREAM frames (a sync message fits in one unless it is large).
    stream_frames: u64,
}

impl Wire {
    fn of(conn: &Connection) -> Wire {
        let s = conn.stats();
        Wire {
            bytes: s.udp_tx.bytes + s.udp_rx.bytes,
            datagrams: s.udp_tx.datagrams + s.udp_rx.datagrams,
            stream_frames: s.frame_tx.stream + s.frame_rx.stream,
        }
    }

    fn since(self, before: Wire) -> Wire {
        Wire {
            bytes: self.bytes - before.bytes,
            datagrams: self.datagrams - before.datagrams,
            stream_frames: self.stream_frames - before.stream_frames,
        }
    }
}

#[derive(Debug, Clone)]
struct Stats {
    n: usize,
    median: f64,
    p99: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentiles of samples in milliseconds.
fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let rank = |p: f64| {
        let k = ((p / 100.0) * n as f64).ceil() as usize;
        ms[k.clamp(1, n) - 1]
    };
    Stats {
        n,
        median: rank(50.0),
        p99: rank(99.0),
        mean: ms.iter().sum::<f64>() / n as f64,
        min: ms[0],
        max: ms[n - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Debug)]
struct Propagation {
    tasks: usize,
    latency: Stats,
    bytes_per_task: f64,
    datagrams_per_task: f64,
    stream_frames_per_task: f64,
    /// Mean size of the automerge change that adds one task (as stored, uncompressed).
    change_bytes: f64,
    /// The phone's `repo.change` alone (automerge transaction and durable redb commit).
    commit: Stats,
    setup_ms: f64,
}

/// (a): a desktop thread of `tasks` tasks, synced to a phone; then `iterations` new tasks, one at
/// a time, from the phone to the desktop.
async fn propagation(tasks: usize, iterations: usize) -> Result<Propagation> {
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
struct InitialSync {
    tasks: usize,
    runs: usize,
    /// Until the phone holds every task.
    complete: Stats,
    /// Until both sides report every document in sync (the wire is quiet).
    quiet: Stats,
    /// Bytes until quiet, median over runs.
    bytes_median: u64,
    bytes_min: u64,
    bytes_max: u64,
}

/// (b): a desktop holding the index and a thread of `tasks` tasks; `runs` brand-new phones
/// connect in turn.
async fn initial_sync(tasks: usize, runs: usize) -> Result<InitialSync> {
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
struct Breakdown {
    tasks: usize,
    /// Phone: `repo.change` adding one task (transaction + durable commit).
    change: Stats,
    /// Phone: `generate_sync_message` carrying that change.
    generate: Stats,
    /// Desktop: `receive_sync_message` of it (decode, apply, durable commit, broadcast).
    receive: Stats,
    /// Desktop: the acknowledgement it sends back, and the phone taking it.
    ack: Stats,
    /// A durable redb commit of 700 bytes alone (`Store::set_record`): the floor under
    /// `change` and `receive`.
    redb_commit: Stats,
    /// Fresh phone: desktop's `generate_sync_message` answering a first request for the thread.
    initial_generate_ms: f64,
    initial_message_bytes: usize,
    /// Fresh phone: `receive_sync_message` of that answer (load, durable commit).
    initial_receive_ms: f64,
    /// Fresh phone: the rest of the exchange until neither side has anything to say.
    initial_rest_ms: f64,
    /// What the fresh phone's store then holds for the thread, and how many chunks.
    stored_bytes: usize,
    stored_chunks: usize,
    /// What `Automerge::save` of the same document takes.
    snapshot_bytes: usize,
    /// `Repo::doc_ids` on the phone after the iterations (the replicator's dialler calls it on
    /// every document change).
    doc_ids: Stats,
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

async fn breakdown(tasks: usize, iterations: usize) -> Result<Breakdown> {
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
struct RoundTrip {
    /// The task sent each time.
    prompt: &'static str,
    /// Finished tasks in the thread before the first timed round trip.
    tasks: usize,
    /// Phone's change until the phone's repo shows the task done.
    latency: Stats,
    /// Desktop: merged task announced until the executor's `done` commit announced.
    executor: Stats,
    /// Desktop: merged task announced until the executor's `running` claim announced.
    claim: Stats,
    /// Desktop: `running` announced until its last commit before `done` announced (the
    /// progress entry "running /sh true").
    progress: Stats,
    /// Desktop: that until `done` announced (`sh -c true` and the `done` commit).
    finish: Stats,
    /// Phone's change until the desktop announces the merged task.
    to_desktop: Stats,
    /// Desktop announces `done` until the phone shows it.
    back: Stats,
    /// Changes the phone merges per round trip, announced by its repo.
    phone_merges: f64,
    /// Commits the desktop's executor makes per round trip.
    executor_commits: f64,
    bytes_per_task: f64,
    datagrams_per_task: f64,
    /// `schema::thread::tasks` over the whole thread at the end, on the desktop's repo.
    read_all: Stats,
    /// The status and target of every task alone (what finding queued work needs).
    scan_status: Stats,
    /// `tools::shell::sh` of the same command alone, before the executor starts.
    shell: Stats,
    setup_ms: f64,
}

/// (d): a desktop with the real executor and a thread of `tasks` finished tasks, synced to a
/// phone; then `iterations` round trips of `/sh true`, one at a time.
async fn round_trip(tasks: usize, iterations: usize, prompt: &'static str) -> Result<RoundTrip> {
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

fn verdict(ok: bool) -> &'static str {
    if ok { "meets goal" } else { "MISSES goal" }
}

fn stats_json(s: &Stats) -> Json {
    json!({
        "samples": s.n,
        "median_ms": s.median,
        "p99_ms": s.p99,
        "mean_ms": s.mean,
        "min_ms": s.min,
        "max_ms": s.max,
    })
}

fn report_json(
    props: &[Propagation],
    syncs: &[InitialSync],
    parts: &[Breakdown],
    trips: &[RoundTrip],
    mcp: &[RoundTrip],
) -> Json {
    let propagation: Vec<Json> = props
        .iter()
        .map(|p| {
            let mut goals = serde_json::Map::new();
            if p.tasks == 1_000 {
                goals.insert("median_ms_max".into(), json!(GOAL_MEDIAN_MS));
                goals.insert("p99_ms_max".into(), json!(GOAL_P99_MS));
                goals.insert(
                    "latency_met".into(),
                    json!(p.latency.median <= GOAL_MEDIAN_MS && p.latency.p99 <= GOAL_P99_MS),
                );
            }
            goals.insert("bytes_per_task_max".into(), json!(GOAL_BYTES_PER_TASK));
            goals.insert(
                "bytes_met".into(),
                json!(p.bytes_per_task <= GOAL_BYTES_PER_TASK),
            );
            json!({
                "tasks_in_thread": p.tasks,
                "warmup_iterations": WARMUP,
                "latency": stats_json(&p.latency),
                "bytes_per_task": p.bytes_per_task,
                "datagrams_per_task": p.datagrams_per_task,
                "stream_frames_per_task": p.stream_frames_per_task,
                "change_bytes": p.change_bytes,
                "phone_commit": stats_json(&p.commit),
                "setup_ms": p.setup_ms,
                "goals": goals,
            })
        })
        .collect();
    let initial: Vec<Json> = syncs
        .iter()
        .map(|s| {
            let mut goals = serde_json::Map::new();
            if s.tasks == 10_000 {
                goals.insert("complete_median_ms_max".into(), json!(GOAL_INITIAL_10K_MS));
                goals.insert(
                    "met".into(),
                    json!(s.complete.median <= GOAL_INITIAL_10K_MS),
                );
            }
            json!({
                "tasks": s.tasks,
                "runs": s.runs,
                "until_complete": stats_json(&s.complete),
                "until_quiet": stats_json(&s.quiet),
                "bytes_median": s.bytes_median,
                "bytes_min": s.bytes_min,
                "bytes_max": s.bytes_max,
                "goals": goals,
            })
        })
        .collect();
    json!({
        "bench": "errand-bench",
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average_1min_at_end": load_average(),
        "bytes_on_the_wire": BYTES_MEANING,
        "propagation": propagation,
        "initial_sync": initial,
        "in_process_breakdown": parts.iter().map(|b| json!({
            "tasks": b.tasks,
            "phone_change": stats_json(&b.change),
            "phone_generate": stats_json(&b.generate),
            "desktop_receive": stats_json(&b.receive),
            "ack_round": stats_json(&b.ack),
            "redb_durable_commit": stats_json(&b.redb_commit),
            "initial_desktop_generate_ms": b.initial_generate_ms,
            "initial_message_bytes": b.initial_message_bytes,
            "initial_phone_receive_ms": b.initial_receive_ms,
            "initial_rest_ms": b.initial_rest_ms,
            "initial_stored_bytes": b.stored_bytes,
            "initial_stored_chunks": b.stored_chunks,
            "snapshot_bytes": b.snapshot_bytes,
            "doc_ids_scan": stats_json(&b.doc_ids),
        })).collect::<Vec<_>>(),
        "round_trip": trips.iter().map(|t| json!({
            "prompt": t.prompt,
            "finished_tasks_in_thread": t.tasks,
            "warmup_iterations": WARMUP,
            "latency": stats_json(&t.latency),
            "phone_to_desktop": stats_json(&t.to_desktop),
            "executor": stats_json(&t.executor),
            "executor_claim": stats_json(&t.claim),
            "executor_progress": stats_json(&t.progress),
            "executor_sh_and_done": stats_json(&t.finish),
            "desktop_to_phone": stats_json(&t.back),
            "executor_commits_per_task": t.executor_commits,
            "phone_merges_per_task": t.phone_merges,
            "bytes_per_task": t.bytes_per_task,
            "datagrams_per_task": t.datagrams_per_task,
            "read_all_tasks": stats_json(&t.read_all),
            "scan_status_and_target": stats_json(&t.scan_status),
            "shell_tool_alone": stats_json(&t.shell),
            "setup_ms": t.setup_ms,
            "goals": {
                "median_ms_max": GOAL_ROUND_TRIP_MEDIAN_MS,
                "met": t.latency.median <= GOAL_ROUND_TRIP_MEDIAN_MS,
            },
        })).collect::<Vec<_>>(),
        "mcp_round_trip": mcp.iter().map(|t| json!({
            "prompt": t.prompt,
            "latency": stats_json(&t.latency),
            "executor": stats_json(&t.executor),
            "bytes_per_task": t.bytes_per_task,
        })).collect::<Vec<_>>(),
        "mcp_extra_median_ms": match mcp {
            [sh, call] => json!({
                "value": call.latency.median - sh.latency.median,
                "max": GOAL_MCP_EXTRA_MS,
                "met": call.latency.median - sh.latency.median <= GOAL_MCP_EXTRA_MS,
            }),
            _ => Json::Null,
        },
    })
}

fn report_table(
    props: &[Propagation],
    syncs: &[InitialSync],
    parts: &[Breakdown],
    trips: &[RoundTrip],
    mcp: &[RoundTrip],
) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = load_average().map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
    println!(
        "errand-bench: real redb files, iroh endpoints on 127.0.0.1 (relays off), {cpus} CPUs, \
         load average {load} at the end"
    );
    println!("bytes on the wire: {BYTES_MEANING}");
    // A section left out with --only prints nothing.
    if !props.is_empty() {
        println!();
        table_a(props);
    }
    if !syncs.is_empty() {
        println!();
        table_b(syncs);
    }
    if !parts.is_empty() {
        println!();
        table_c(parts);
    }
    if !trips.is_empty() {
        println!();
        table_d(trips);
    }
    if let [sh, call] = mcp {
        println!();
        println!(
            "(e) round trip of a trivial connector call beside `/sh true`, thread of 0 tasks, as (d)"
        );
        for t in mcp {
            let l = &t.latency;
            println!(
                "    {:<40} {:>4} iters  median {:>7.3}ms  p99 {:>7.3}ms  executor median {:>7.3}ms",
                t.prompt, l.n, l.median, l.p99, t.executor.median
            );
        }
        let extra = call.latency.median - sh.latency.median;
        println!(
            "    /mcp adds {extra:.3} ms to the median (goal: at most {GOAL_MCP_EXTRA_MS} ms): {}",
            verdict(extra <= GOAL_MCP_EXTRA_MS)
        );
    }
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

fn table_a(props: &[Propagation]) {
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

fn table_b(syncs: &[InitialSync]) {
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

fn table_c(parts: &[Breakdown]) {
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

fn table_d(trips: &[RoundTrip]) {
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

/// The 1-minute load average (Linux), to judge how busy the machine was.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The same allocator as the `errand` binary, so that memory is measured as a user's node uses it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    // The processes of (g) other than this one.
    let outcome = if let [flag, home, rest @ ..] = argv.as_slice()
        && (flag == spaces::DESKTOP_FLAG || flag == spaces::BUILD_FLAG)
    {
        let home = std::path::Path::new(home);
        runtime().and_then(|rt| {
            rt.block_on(async {
                if flag == spaces::DESKTOP_FLAG {
                    spaces::desktop_process(home).await
                } else {
                    let threads = rest.first().context("how many threads")?.parse()?;
                    spaces::build(home, threads).await
                }
            })
        })
    } else {
        parse_args().and_then(|args| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(args))
        })
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("errand-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let note = |s: &str| eprintln!("errand-bench: {s}");
    let run_section = |letter: char| args.only.contains(letter);
    let mut props = Vec::new();
    for (tasks, default_iters) in [(1_000, 300), (10_000, 100)]
        .into_iter()
        .filter(|_| run_section('a'))
    {
        let iters = args.iterations.unwrap_or(default_iters);
        note(&format!(
            "(a) propagation on a thread of {} tasks, {iters} iterations",
            group(tasks)
        ));
        props.push(propagation(tasks, iters).await?);
    }
    let mut syncs = Vec::new();
    for tasks in [1_000, 10_000].into_iter().filter(|_| run_section('b')) {
        note(&format!(
            "(b) initial sync of {} tasks, {} fresh phones",
            group(tasks),
            args.sync_runs
        ));
        syncs.push(initial_sync(tasks, args.sync_runs).await?);
    }
    let mut parts = Vec::new();
    for tasks in [1_000, 10_000].into_iter().filter(|_| run_section('c')) {
        note(&format!(
            "(c) in-process breakdown at {} tasks",
            group(tasks)
        ));
        parts.push(breakdown(tasks, 100).await?);
    }
    let mut trips = Vec::new();
    for tasks in ROUND_TRIP_THREADS.into_iter().filter(|_| run_section('d')) {
        note(&format!(
            "(d) round trip of {ROUND_TRIP_PROMPT} in a thread of {} finished tasks, {} iterations",
            group(tasks),
            args.round_trips
        ));
        trips.push(round_trip(tasks, args.round_trips, ROUND_TRIP_PROMPT).await?);
    }
    let mut mcp = Vec::new();
    if run_section('e') {
        for prompt in [ROUND_TRIP_PROMPT, MCP_PROMPT] {
            note(&format!(
                "(e) round trip of {prompt} in a thread of 0 finished tasks, {} iterations",
                args.round_trips
            ));
            mcp.push(round_trip(0, args.round_trips, prompt).await?);
        }
    }
    let mut through_nodes = Vec::new();
    for tasks in nodes::THREADS.into_iter().filter(|_| run_section('f')) {
        let iters = args.iterations.unwrap_or(100);
        note(&format!(
            "(f) new task through running nodes on a thread of {} tasks, {iters} iterations",
            group(tasks)
        ));
        through_nodes.push(nodes::node_propagation(tasks, iters).await?);
    }
    let mut space_runs = Vec::new();
    for threads in args.spaces.iter().copied().filter(|_| run_section('g')) {
        note(&format!(
            "(g) a space of {} threads through running nodes",
            group(threads)
        ));
        space_runs.push(spaces::space(threads).await?);
    }
    let mut link_run = None;
    if run_section('h') {
        note(&format!(
            "(h) bursts of {} sends and a partition of {} s",
            group(links::BURST),
            args.partition_secs
        ));
        link_run = Some(links::links(args.partition_secs).await?);
    }
    if args.json {
        let mut report = report_json(&props, &syncs, &parts, &trips, &mcp);
        if let Some(all) = report.as_object_mut() {
            if !through_nodes.is_empty() {
                all.insert("through_nodes".into(), nodes::json(&through_nodes));
            }
            if !space_runs.is_empty() {
                all.insert("spaces".into(), spaces::json(&space_runs));
            }
            if let Some(l) = &link_run {
                all.insert("links".into(), links::json(l));
            }
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report_table(&props, &syncs, &parts, &trips, &mcp);
        if !through_nodes.is_empty() {
            println!();
            nodes::table(&through_nodes);
        }
        if !space_runs.is_empty() {
            println!();
            spaces::table(&space_runs);
        }
        if let Some(l) = &link_run {
            println!();
            links::table(l);
        }
    }
    Ok(())
}
