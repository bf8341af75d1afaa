//! (g) Spaces of many threads, through real nodes: a desktop space of N threads of 20 finished
//! tasks each (N = 10, 100, 1,000 by default; `--spaces` for others, e.g. 10000), served by a
//! desktop node in a process of its own (this binary, re-run with `--space-desktop HOME`: a
//! `Node` with its executor, as `errand up` runs them), and a phone `Node` here. Measured:
//!
//! - cold start: from spawning the desktop process until its node answers (`Node::threads`);
//! - listing every task (`Node::tasks(None)`) inside the desktop, and its resident memory
//!   (`/proc/self/status`) after it: at once, and once the node has been idle for a second
//!   (what `top` shows a user; the allocator gives freed memory back after half a second). The building process listed them once before it ended (as
//!   anyone using that desktop would have), which stored each thread's task list as a view;
//!   that first listing, which derives every view, is reported too. After the catch-up the
//!   desktop lists again: the threads that changed are read anew, the others from their views;
//! - a fresh phone: from `Node::join` until `Node::sync_round` says it is in sync, holding
//!   every thread the index lists, and the bytes of that connection;
//! - a reconnect with nothing new: the phone node restarted, until in sync again, and bytes;
//! - catch-up: the phone stopped, the desktop adds 1,000 tasks spread over 100 threads (over
//!   all of them in a smaller space), the phone started again, until in sync.
//!
//! Each phone figure includes opening the phone's node; each is one run.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use errand_node::{Node, NodeConfig};
use errand_sync::Role;
use errand_sync::schema::thread;
use errand_sync::schema::{self, DocId, index};
use serde_json::{Value as Json, json};

use super::{add_done_tasks, group, ms};

/// Space sizes of (g) by default, in threads.
pub const SPACES: [usize; 3] = [10, 100, 1_000];
/// Tasks in each thread of a space.
const TASKS_PER_THREAD: usize = 20;
/// How long the desktop idles after the listing before its settled resident memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Tasks the desktop adds while the phone is away, and across how many threads at most.
const CATCH_UP_TASKS: usize = 1_000;
const CATCH_UP_THREADS: usize = 100;
/// Threads listed in the index per change while building a space.
const INDEX_BATCH: usize = 500;
/// How long a phone may take to get in sync before the run counts as failed.
const SYNC_WAIT: Duration = Duration::from_secs(60);

/// The flag that makes this binary the desktop process of (g).
pub const DESKTOP_FLAG: &str = "--space-desktop";
/// The flag that makes this binary build a space (`--space-build HOME THREADS`) and exit: in a
/// process of its own, so that the home is free for the desktop process once it has ended.
pub const BUILD_FLAG: &str = "--space-build";

/// Look-ups of a task by its id and by a prefix of it, each, in (g).
const FIND_READS: usize = 10;

#[derive(Debug)]
pub struct Space {
    pub threads: usize,
    pub build_ms: f64,
    pub first_list_ms: f64,
    pub cold_start_ms: f64,
    pub list_ms: f64,
    pub list_after_ms: f64,
    /// Listing every approval request: the first time (each thread's view derived) and again.
    pub approvals_first_ms: f64,
    pub approvals_ms: f64,
    /// Finding one task by its id or a prefix of it (`Node::task`): the median.
    pub find_ms: f64,
    pub listed: usize,
    pub rss_mib: f64,
    pub rss_settled_mib: f64,
    pub fresh_ms: f64,
    pub fresh_bytes: u64,
    pub reconnect_ms: f64,
    pub reconnect_bytes: u64,
    pub catch_up_ms: f64,
    pub catch_up_tasks: usize,
}

/// The environment variable that tells the desktop process where to listen (section (h) runs
/// it in a network namespace of its own); 127.0.0.1 otherwise.
pub const BIND_ENV: &str = "ERRAND_BENCH_BIND";

async fn open(dir: &Path) -> Result<Arc<Node>> {
    let bind = match std::env::var(BIND_ENV) {
        Ok(addr) => addr
            .parse()
            .with_context(|| format!("{BIND_ENV}={addr:?}"))?,
        Err(_) => "127.0.0.1:0".parse()?,
    };
    open_at(dir, bind).await
}

pub async fn open_at(dir: &Path, bind: std::net::SocketAddr) -> Result<Arc<Node>> {
    let mut config = NodeConfig::new(dir);
    config.bind = Some(bind);
    Ok(Arc::new(Node::open(config).await?))
}

/// Stops a node and waits until its home can be opened again in this process, as an app
/// restarting its node does (the FFI's `close`): the node's last tasks let go of the store a
/// moment after `shutdown`, and redb closes the file after that.
async fn close(node: Arc<Node>) -> Result<()> {
    let closed = node.repo().store().closed();
    node.shutdown().await;
    drop(node);
    tokio::time::timeout(Duration::from_secs(10), closed.wait())
        .await
        .context("the phone's home was still in use 10 s after it stopped")
}

/// Resident and peak resident memory of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The CPU time (user and system, every thread) a process has used, in milliseconds, from its
/// `/proc/PID/stat`: fields 14 and 15, in clock ticks of USER_HZ (100 on Linux).
pub fn cpu_ms(stat: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) * 10.0)
}

/// Builds a space of `threads` threads of [`TASKS_PER_THREAD`] finished tasks in `home`, as
/// the desktop: each thread in one commit, the index listing them in batches. Then lists every
/// task once and prints how long that took (`first-list MS`), and runs its executor.
pub async fn build(home: &Path, threads: usize) -> Result<()> {
    // Built offline, wherever the desktop will listen later.
    let desk = open_at(home, "127.0.0.1:0".parse()?).await?;
    desk.init_space(Some("desk"))?;
    let me = desk.id().to_string();
    let repo = desk.repo().clone();
    let mut listed = Vec::with_capacity(INDEX_BATCH);
    for n in 0..threads {
        let doc = DocId::new_thread();
        let now = schema::now_millis();
        repo.create(&doc, "thread with its tasks", |tx| {
            thread::create(tx, doc.as_str(), &format!("thread {n}"))?;
            add_done_tasks(tx, &me, TASKS_PER_THREAD, "earlier work", now)
        })?;
        listed.push((doc, n, now));
        if listed.len() == INDEX_BATCH || n + 1 == threads {
            repo.change(&DocId::index(), "threads listed", |tx| {
                for (doc, n, now) in listed.drain(..) {
                    index::add_thread(
                        tx,
                        &index::ThreadEntry {
                            id: doc.as_str().to_owned(),
                            title: format!("thread {n}"),
                            created: now,
                            created_by: me.clone(),
                            archived: false,
                        },
                    )?;
                }
                Ok(())
            })?;
        }
    }
    let t0 = Instant::now();
    let listed = desk.tasks(None)?.len();
    println!("first-list {} {listed}", ms(t0.elapsed()));
    // And runs its executor once, as `errand up` would have: at its start the executor reads
    // the open tasks of every thread (deriving their views the first time).
    super::nodes::start_executor(&desk, home)?.stop().await;
    desk.shutdown().await;
    Ok(())
}

/// The desktop process of (g): a node on `home` with its executor, answering the commands of
/// [`Desktop`] on stdin, one line each.
pub async fn desktop_process(home: &Path) -> Result<()> {
    let started = Instant::now();
    let desk = open(home).await?;
    let exec = super::nodes::start_executor(&desk, home)?;
    let threads = desk.threads()?.len();
    let out = std::io::stdout();
    writeln!(out.lock(), "ready {} {threads}", ms(started.elapsed()))?;
    let mut lines = std::io::stdin().lock().lines();
    while let Some(line) = lines.next().transpose()? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["list"] => {
                let t0 = Instant::now();
                let n = desk.tasks(None)?.len();
                let took = ms(t0.elapsed());
                let (rss, _) = memory();
                format!("listed {n} {took} {rss}")
            }
            ["settled"] => {
                // Idle on purpose: this is the measurement (memory once nothing happens).
                tokio::time::sleep(SETTLE).await;
                format!("settled {}", memory().0)
            }
            ["ticket"] => {
                let ticket = desk.create_ticket(Duration::from_secs(600), true, Role::Phone)?;
                format!("ticket {}", ticket.ticket)
            }
            ["approvals"] => {
                let t0 = Instant::now();
                let n = desk.approvals(false)?.len();
                format!("approvals {n} {}", ms(t0.elapsed()))
            }
            ["find"] => {
                // A task of the last thread listed, by its whole id and by its first 8 digits.
                let last = desk.threads()?.last().context("a thread")?.id.clone();
                let id = desk
                    .tasks(Some(&last))?
                    .first()
                    .context("a task")?
                    .id
                    .clone();
                let mut took = Vec::new();
                for needle in std::iter::repeat_n([id.as_str(), &id[..8]], FIND_READS).flatten() {
                    let t0 = Instant::now();
                    let found = desk.task(needle)?;
                    took.push(ms(t0.elapsed()));
                    if found.id != id {
                        bail!("looking up {needle} found {}", found.id);
                    }
                }
                format!("found {}", super::stats(took).median)
            }
            ["id"] => format!("id {}", desk.id()),
            ["count"] => format!("count {}", desk.tasks(None)?.len()),
            ["writes"] => {
                let repo = desk.repo();
                format!("writes {} {}", repo.commits(), repo.fsyncs())
            }
            ["primed"] => {
                desk.primed().await;
                "primed".to_owned()
            }
            ["add", threads, per] => {
                let (threads, per): (usize, usize) = (threads.parse()?, per.parse()?);
                let me = desk.id().to_string();
                let now = schema::now_millis();
                for t in desk.threads()?.iter().take(threads) {
                    let doc = DocId::parse(&t.id).context("a thread id")?;
                    desk.repo().change(&doc, "more tasks", |tx| {
                        add_done_tasks(tx, &me, per, "later work", now)
                    })?;
                }
                "added".to_owned()
            }
            ["quit"] => break,
            _ => format!("error: unknown command {line:?}"),
        };
        writeln!(out.lock(), "{reply}")?;
    }
    exec.stop().await;
    desk.shutdown().await;
    Ok(())
}

/// The desktop process, driven from here.
pub struct Desktop {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Desktop {
    fn spawn(home: &Path) -> Result<(Desktop, String)> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg(DESKTOP_FLAG).arg(home);
        Desktop::spawn_from(command)
    }

    /// Starts the desktop process on `home` with `command`, which runs this binary with
    /// [`DESKTOP_FLAG`] (through `ip netns exec`, say); returns it and its first line.
    pub fn spawn_from(mut command: Command) -> Result<(Desktop, String)> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the desktop process")?;
        let stdin = child.stdin.take().context("its stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("its stdout")?);
        let mut desk = Desktop {
            child,
            stdin,
            stdout,
        };
        let ready = desk.line()?;
        Ok((desk, ready))
    }

    /// The CPU time the desktop process has used so far, in milliseconds.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_ms(&self) -> Option<f64> {
        cpu_ms(&format!("/proc/{}/stat", self.child.id()))
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the desktop process ended");
        }
        let line = line.trim_end().to_owned();
        if let Some(e) = line.strip_prefix("error: ") {
            bail!("the desktop process: {e}");
        }
        Ok(line)
    }

    /// Sends a command; returns the words of its answer after the first.
    pub fn ask(&mut self, command: &str) -> Result<Vec<String>> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self.line()?;
        Ok(line.split_whitespace().skip(1).map(str::to_owned).collect())
    }

    pub fn quit(mut self) -> Result<()> {
        writeln!(self.stdin, "quit")?;
        self.stdin.flush()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Until the phone is in sync with every peer and holds every listed thread.
pub async fn in_sync(phone: &Node, step: &str) -> Result<()> {
    let t0 = Instant::now();
    let peers = phone.sync_round(SYNC_WAIT).await?;
    if peers.is_empty() || !peers.iter().all(|p| p.synced) {
        let listed = phone.threads()?.len();
        let held = phone.repo().held();
        bail!(
            "{step}: the phone did not get in sync in {:.1} s ({listed} threads listed, {held} \
             documents held): {peers:?}",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub async fn space(threads: usize) -> Result<Space> {
    let desk_home = tempfile::tempdir()?;
    let t0 = Instant::now();
    let built = Command::new(std::env::current_exe()?)
        .arg(BUILD_FLAG)
        .arg(desk_home.path())
        .arg(threads.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("building the space")?;
    if !built.status.success() {
        bail!(
            "building a space of {threads} threads failed: {}",
            built.status
        );
    }
    let build_ms = ms(t0.elapsed());
    let said = String::from_utf8_lossy(&built.stdout);
    let first_list_ms: f64 = said
        .lines()
        .find_map(|l| l.strip_prefix("first-list "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("the building process said {said:?}"))?;

    // The desktop has run before: started once, until it had taken in its threads.
    let (mut warm_up, _) = Desktop::spawn(desk_home.path())?;
    warm_up.ask("primed")?;
    warm_up.quit()?;

    let t0 = Instant::now();
    let (mut desk, ready) = Desktop::spawn(desk_home.path())?;
    let cold_start_ms = ms(t0.elapsed());
    if !ready.starts_with("ready ") {
        bail!("the desktop process said {ready:?}");
    }
    let listing = desk.ask("list")?;
    let [listed, list_ms, rss_mib] = listing.as_slice() else {
        bail!("the desktop's listing: {listing:?}");
    };
    let (listed, list_ms, rss_mib): (usize, f64, f64) =
        (listed.parse()?, list_ms.parse()?, rss_mib.parse()?);
    if listed != threads * TASKS_PER_THREAD {
        bail!("the desktop listed {listed} tasks");
    }
    let rss_settled_mib: f64 = desk.ask("settled")?.join("").parse()?;
    // After the memory is measured: the first listing of approvals loads every thread once.
    let mut approvals = || -> Result<f64> {
        match desk.ask("approvals")?.as_slice() {
            [n, took] if n == "0" => Ok(took.parse()?),
            other => bail!("the desktop's approvals: {other:?}"),
        }
    };
    let approvals_first_ms = approvals()?;
    let approvals_ms = approvals()?;
    let find_ms: f64 = match desk.ask("find")?.as_slice() {
        [took] => took.parse()?,
        other => bail!("the desktop's look-ups: {other:?}"),
    };
    let ticket = desk.ask("ticket")?.join(" ");
    let desk_id: errand_sync::DeviceId = desk.ask("id")?.join("").parse()?;

    // A fresh phone.
    let phone_home = tempfile::tempdir()?;
    let t0 = Instant::now();
    let phone = open(phone_home.path()).await?;
    phone
        .join(&ticket, Some("phone"), Some(Role::Phone))
        .await?;
    in_sync(&phone, "a fresh phone").await?;
    let fresh_ms = ms(t0.elapsed());
    let fresh_bytes = phone.replicator().traffic(&desk_id).unwrap_or(0);
    if phone.threads()?.len() != threads {
        bail!("the phone lists {} threads", phone.threads()?.len());
    }
    close(phone).await?;

    // Back with nothing new.
    let t0 = Instant::now();
    let phone = open(phone_home.path()).await?;
    in_sync(&phone, "a reconnect").await?;
    let reconnect_ms = ms(t0.elapsed());
    let reconnect_bytes = phone.replicator().traffic(&desk_id).unwrap_or(0);
    close(phone).await?;

    // Away while the desktop adds work.
    let across = threads.min(CATCH_UP_THREADS);
    let per = CATCH_UP_TASKS.div_ceil(across);
    desk.ask(&format!("add {across} {per}"))?;
    let t0 = Instant::now();
    let phone = open(phone_home.path()).await?;
    in_sync(&phone, "a catch-up").await?;
    let catch_up_ms = ms(t0.elapsed());
    let held = phone.tasks(None)?.len();
    if held != threads * TASKS_PER_THREAD + across * per {
        bail!("after catching up the phone holds {held} tasks");
    }
    phone.shutdown().await;
    let listing = desk.ask("list")?;
    let list_after_ms: f64 = match listing.as_slice() {
        [n, took, _] if n.parse::<usize>().ok() == Some(held) => took.parse()?,
        _ => bail!("the desktop's listing after the catch-up: {listing:?}"),
    };
    desk.quit()?;
    Ok(Space {
        threads,
        build_ms,
        first_list_ms,
        cold_start_ms,
        list_ms,
        list_after_ms,
        approvals_first_ms,
        approvals_ms,
        find_ms,
        listed,
        rss_mib,
        rss_settled_mib,
        fresh_ms,
        fresh_bytes,
        reconnect_ms,
        reconnect_bytes,
        catch_up_ms,
        catch_up_tasks: across * per,
    })
}

/// The goals at 1,000 threads: (what, measured, at most, unit).
fn goals(spaces: &[Space]) -> Vec<(&'static str, f64, f64, &'static str)> {
    let mut out = Vec::new();
    if let Some(s) = spaces.iter().find(|s| s.threads == 1_000) {
        out.extend([
            ("1,000 threads: cold start", s.cold_start_ms, 100.0, "ms"),
            (
                "1,000 threads: resident 1 s after listing",
                s.rss_settled_mib,
                50.0,
                "MiB",
            ),
            ("1,000 threads: listing every task", s.list_ms, 100.0, "ms"),
            ("1,000 threads: fresh phone", s.fresh_ms, 2_000.0, "ms"),
            (
                "1,000 threads: catch-up of 1,000 tasks",
                s.catch_up_ms,
                1_000.0,
                "ms",
            ),
            (
                "1,000 threads: reconnect with nothing new",
                s.reconnect_bytes as f64 / 1024.0,
                20.0,
                "KiB",
            ),
        ]);
    }
    if let Some(s) = spaces.iter().find(|s| s.threads == 10_000) {
        out.push(("10,000 threads: fresh phone", s.fresh_ms, 15_000.0, "ms"));
    }
    out
}

pub fn table(spaces: &[Space]) {
    println!(
        "(g) spaces of N threads of {TASKS_PER_THREAD} tasks: a desktop node in its own process \
         (with its executor), a phone node here; one run each"
    );
    println!(
        "  {:>7}  {:>8}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        "threads",
        "build s",
        "1st list",
        "start",
        "list all",
        "list aft.",
        "appr. 1st",
        "approvals",
        "find task",
        "RSS MiB",
        "settled",
        "fresh",
        "fresh KB",
        "reconnect",
        "recon. KB",
        "catch-up"
    );
    for s in spaces {
        println!(
            "  {:>7}  {:>8.1}  {:>7.1}ms  {:>6.0}ms  {:>6.1}ms  {:>7.1}ms  {:>7.1}ms  {:>7.1}ms  {:>7.2}ms  {:>7.1}  {:>7.1}  {:>7.0}ms  {:>9.1}  {:>7.0}ms  {:>9.1}  {:>7.0}ms",
            group(s.threads),
            s.build_ms / 1e3,
            s.first_list_ms,
            s.cold_start_ms,
            s.list_ms,
            s.list_after_ms,
            s.approvals_first_ms,
            s.approvals_ms,
            s.find_ms,
            s.rss_mib,
            s.rss_settled_mib,
            s.fresh_ms,
            s.fresh_bytes as f64 / 1e3,
            s.reconnect_ms,
            s.reconnect_bytes as f64 / 1e3,
            s.catch_up_ms,
        );
    }
    for (what, measured, max, unit) in goals(spaces) {
        println!(
            "  goal: {what} <= {max} {unit}: {measured:.1} {unit}: {}",
            if measured <= max { "met" } else { "NOT met" }
        );
    }
}

pub fn json(spaces: &[Space]) -> Json {
    let rows: Vec<Json> = spaces
        .iter()
        .map(|s| {
            json!({
                "threads": s.threads,
                "tasks_per_thread": TASKS_PER_THREAD,
                "build_ms": s.build_ms,
                "first_list_ms": s.first_list_ms,
                "list_after_catch_up_ms": s.list_after_ms,
                "approvals_first_ms": s.approvals_first_ms,
                "approvals_ms": s.approvals_ms,
                "find_task_ms": s.find_ms,
                "cold_start_ms": s.cold_start_ms,
                "list_all_ms": s.list_ms,
                "listed": s.listed,
                "rss_mib_after_listing": s.rss_mib,
                "rss_mib_settled_after_listing": s.rss_settled_mib,
                "fresh_phone_ms": s.fresh_ms,
                "fresh_phone_bytes": s.fresh_bytes,
                "reconnect_ms": s.reconnect_ms,
                "reconnect_bytes": s.reconnect_bytes,
                "catch_up_ms": s.catch_up_ms,
                "catch_up_tasks": s.catch_up_tasks,
            })
        })
        .collect();
    let goals: Vec<Json> = goals(spaces)
        .into_iter()
        .map(|(what, measured, max, unit)| {
            json!({ "what": what, "measured": measured, "max": max, "unit": unit, "met": measured <= max })
        })
        .collect();
    json!({ "spaces": rows, "goals": goals })
}
