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
//!     durable redb commit, to show where the time of (a) and (b) goes (`bench/engine.rs`).
//! (d) The round trip of a trivial task: the phone queues `/sh true` for the desktop in a
//!     thread that already holds 0, 100 and 1,000 finished tasks; the desktop's real executor
//!     (policy: shell allowed; no approval needed, so nobody may approve) runs it; from just
//!     before the phone's durable `repo.change` until the phone's repo announces a merged
//!     change after which the task reads `done`. The executor's share is read off the desktop's
//!     change broadcasts by a monitor task: from the announcement of the merged task to the
//!     announcement of the executor's `done` commit, split at its `running` and progress
//!     commits. Also timed: the shell tool alone, and reading the whole thread
//!     (`bench/roundtrip.rs`, with (e)).
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
//! The report, a table or `--json`, is `bench/report.rs`.
//!
//! Bytes on the wire are the UDP payload bytes of the phone's connection in both directions
//! (`Connection::stats()`: `udp_tx.bytes + udp_rx.bytes`), i.e. everything both endpoints sent
//! to each other: QUIC headers, encryption overhead, acks and the framed sync messages.

#[path = "bench/engine.rs"]
mod engine;
#[path = "bench/links.rs"]
mod links;
#[path = "bench/nodes.rs"]
mod nodes;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/roundtrip.rs"]
mod roundtrip;
#[path = "bench/spaces.rs"]
mod spaces;

use engine::{
    Breakdown, InitialSync, Propagation, breakdown, initial_sync, propagation, table_a, table_b,
    table_c,
};
use report::{report_json, report_table, stats_json, verdict};
use roundtrip::{RoundTrip, round_trip, table_d};

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
    // Logs only when asked (`ERRAND_LOG=errand_sync=debug`, as for `errand`), to stderr: the
    // desktop processes inherit it, and their stderr is this one's.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("ERRAND_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
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
