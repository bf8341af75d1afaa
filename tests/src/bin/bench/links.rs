//! (h) Bursts and a partition, between a phone `Node` here and a desktop node in a process of
//! its own (as in (g): a `Node` with its executor, on a space of 10 threads), over a real link:
//!
//! - bursts: 1,000 `Node::send`s, each durable before the next, as fast as the phone makes
//!   them, into one thread and into 1,000 new threads: sends per second, and how long after
//!   the last send the desktop holds them all (the phone's `wait_delivered`, which reads the
//!   desktop's acknowledgements, for each thread and the index; then the desktop counts
//!   them). The desktop's executor starts running the tasks meanwhile, as it would. And the
//!   CPU time each process used per send over the burst, which bounds what the machine's cores
//!   allow: two processes on two cores at 2 ms of CPU per send between them make 1,000/s;
//! - a partition: the link goes down for `--partition-secs` (default 120) and the phone sends
//!   a task meanwhile; measured from the moment the link is back until the desktop holds it,
//!   which includes noticing the link, redialling and syncing. Then again with a burst of
//!   [`BURST`] sends into new threads made while the link is down: how long after it is back
//!   the desktop holds them all (a phone back in reach with a thousand new conversations).
//!
//! The link is a veth pair into a network namespace that only the desktop process lives in
//! (`ip netns`, so root and iproute2); the partition takes the phone's end down (as a laptop's
//! Wi-Fi dropping: its routes go, and the other end loses its carrier). Without a namespace
//! the bursts run over loopback and the partition is skipped, saying so; `ERRAND_BENCH_LOOPBACK=1`
//! asks for that (a profiler such as `perf` cannot unwind the stacks of a process that
//! `ip netns exec` put in a mount namespace of its own).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use errand_node::Node;
use serde_json::{Value as Json, json};

use super::spaces::{self, Desktop};
use super::{Stats, group, ms, stats};

/// Set, the desktop runs on loopback, with no namespace and no partition.
const LOOPBACK_ENV: &str = "ERRAND_BENCH_LOOPBACK";
/// Sends of each burst.
pub const BURST: usize = 1_000;
/// Lone sends into new threads, each delivered before the next.
const LONE: usize = 50;
/// The partition by default, in seconds.
pub const PARTITION_SECS: u64 = 120;
/// How long the desktop may take to hold everything before the run counts as failed.
const SETTLE_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct Burst {
    pub into: &'static str,
    pub sends: usize,
    pub send_ms: f64,
    pub settle_ms: f64,
    /// CPU time per send, in milliseconds, of this process (the phone) and of the desktop's,
    /// from the first send until the desktop held them all.
    pub cpu_per_send: Option<(f64, f64)>,
    /// What each send cost the phone and the desktop in database commits, fsyncs, bytes
    /// written to storage and UDP datagrams sent, over the same span.
    pub io_per_send: (Io, Io),
}

/// Counts of one process's writes and datagrams (see [`Burst::io_per_send`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    pub commits: f64,
    pub fsyncs: f64,
    /// `write_bytes` of `/proc/PID/io`, in KiB; `None` where the kernel does not count it.
    pub kib_written: Option<f64>,
    /// `OutDatagrams` of the process's network namespace (`/proc/PID/net/snmp`): the desktop
    /// has one of its own on a veth link; the phone's also counts anything else of the host's.
    pub datagrams: Option<f64>,
}

impl Io {
    /// This process's counts now: `commits` and `fsyncs` from its repo, the rest from `/proc`.
    fn now(pid: &str, commits: u64, fsyncs: u64) -> Io {
        Io {
            commits: commits as f64,
            fsyncs: fsyncs as f64,
            kib_written: proc_field(&format!("/proc/{pid}/io"), "write_bytes:")
                .map(|b| b as f64 / 1024.0),
            datagrams: udp_out(&format!("/proc/{pid}/net/snmp")).map(|n| n as f64),
        }
    }

    /// Per send, from `before` to `self`, over `sends`.
    fn per_send(self, before: Io, sends: usize) -> Io {
        let n = sends as f64;
        let each = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b) / n);
        Io {
            commits: (self.commits - before.commits) / n,
            fsyncs: (self.fsyncs - before.fsyncs) / n,
            kib_written: each(self.kib_written, before.kib_written),
            datagrams: each(self.datagrams, before.datagrams),
        }
    }

    fn json(&self) -> Json {
        json!({
            "commits": self.commits,
            "fsyncs": self.fsyncs,
            "kib_written": self.kib_written,
            "udp_datagrams": self.datagrams,
        })
    }
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} commits, {:.2} fsyncs", self.commits, self.fsyncs)?;
        if let Some(kib) = self.kib_written {
            write!(f, ", {kib:.0} KiB written")?;
        }
        if let Some(n) = self.datagrams {
            write!(f, ", {n:.2} UDP datagrams")?;
        }
        Ok(())
    }
}

/// The value of `Udp: OutDatagrams` in a `/proc/net/snmp` file.
fn udp_out(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "OutDatagrams")?
        .1
        .parse()
        .ok()
}

/// The number after `field` in a file of `field value` lines.
fn proc_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
}

impl Burst {
    fn per_second(&self) -> f64 {
        self.sends as f64 / (self.send_ms / 1e3)
    }

    /// The most sends per second the machine's cores allow at this CPU cost per send.
    fn cpu_bound(&self) -> Option<f64> {
        let (phone, desk) = self.cpu_per_send?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        Some(cores * 1e3 / (phone + desk))
    }
}

#[derive(Debug)]
pub struct Links {
    /// What the link was.
    pub over: String,
    pub bursts: Vec<Burst>,
    /// A lone send into a new thread, from just before `Node::send` until the phone hears
    /// that the desktop holds the thread and its listing (`wait_delivered`): milliseconds.
    pub lone: Stats,
    /// The partition's length in seconds, and the time from healing to delivery.
    pub partition: Option<(u64, f64)>,
    /// The time from healing until the desktop held a burst sent during the partition.
    pub partition_burst_ms: Option<f64>,
    /// Why there was no partition.
    pub no_partition: Option<String>,
}

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
    outer_if: String,
    outer: IpAddr,
    inner: IpAddr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    fn create() -> Result<Netns> {
        if std::env::var_os(LOOPBACK_ENV).is_some() {
            bail!("{LOOPBACK_ENV} is set");
        }
        let tag = std::process::id() % 10_000;
        let octet = u8::try_from(tag % 250 + 1).expect("under 251");
        let ns = Netns {
            name: format!("errb{tag}"),
            outer_if: format!("errb{tag}a"),
            outer: IpAddr::V4(Ipv4Addr::new(10, 213, octet, 1)),
            inner: IpAddr::V4(Ipv4Addr::new(10, 213, octet, 2)),
        };
        let inner_if = format!("errb{tag}b");
        ip(&["netns", "add", &ns.name])?;
        // From here on, dropping `ns` cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &ns.outer_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ])?;
        ip(&["link", "set", &inner_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.outer),
            "dev",
            &ns.outer_if,
        ])?;
        ip(&["link", "set", &ns.outer_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/24", ns.inner), "dev", &inner_if])?;
        inside(&["link", "set", &inner_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn link(&self, up: bool) -> Result<()> {
        ip(&[
            "link",
            "set",
            &self.outer_if,
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outer_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

pub async fn links(partition_secs: u64) -> Result<Links> {
    let desk_home = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let built = Command::new(&exe)
        .arg(spaces::BUILD_FLAG)
        .arg(desk_home.path())
        .arg("10")
        .output()
        .context("building the desktop's space")?;
    if !built.status.success() {
        bail!("building the desktop's space failed: {}", built.status);
    }

    let netns = Netns::create();
    let (over, phone_bind, mut command, no_partition) = match &netns {
        Ok(ns) => {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &ns.name])
                .arg(&exe)
                .env(spaces::BIND_ENV, SocketAddr::new(ns.inner, 0).to_string());
            (
                format!(
                    "a veth pair into a network namespace of the desktop's ({} - {})",
                    ns.outer, ns.inner
                ),
                SocketAddr::new(ns.outer, 0),
                command,
                None,
            )
        }
        Err(e) => (
            "loopback".to_owned(),
            "127.0.0.1:0".parse()?,
            Command::new(&exe),
            Some(format!("no network namespace: {e:#}")),
        ),
    };
    command.arg(spaces::DESKTOP_FLAG).arg(desk_home.path());
    let (mut desk, ready) = Desktop::spawn_from(command)?;
    if !ready.starts_with("ready ") {
        bail!("the desktop process said {ready:?}");
    }
    let ticket = desk.ask("ticket")?.join(" ");
    let count = |desk: &mut Desktop| -> Result<usize> {
        let said = desk.ask("count")?;
        said.first()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the desktop's count: {said:?}"))
    };
    let before = count(&mut desk)?;

    let phone_home = tempfile::tempdir()?;
    let phone = spaces::open_at(phone_home.path(), phone_bind).await?;
    phone
        .join(&ticket, Some("phone"), Some(errand_sync::Role::Phone))
        .await?;
    spaces::in_sync(&phone, "a fresh phone").await?;

    // One at a time into new threads: what the first task of a conversation waits for.
    let mut lone = Vec::with_capacity(LONE);
    for i in 0..LONE {
        let t0 = Instant::now();
        let sent = phone.send(&format!("alone {i}"), None, None)?;
        if !phone
            .wait_delivered(&sent.target, &sent.thread, SETTLE_WAIT)
            .await
        {
            bail!("the desktop did not get a lone send into a new thread");
        }
        lone.push(ms(t0.elapsed()));
    }
    let lone = stats(lone);
    spaces::in_sync(&phone, "after the lone sends").await?;

    // Into one thread, then each into a thread of its own.
    let first = phone.send("the thread of the burst", None, None)?;
    spaces::in_sync(&phone, "before the burst").await?;
    let bursts = vec![
        burst(&phone, &mut desk, "one thread", Some(&first.thread)).await?,
        burst(&phone, &mut desk, "new threads", None).await?,
    ];
    let held = count(&mut desk)?;
    if held != before + LONE + 1 + 2 * BURST {
        bail!(
            "after the bursts the desktop holds {held} tasks, not {}",
            before + LONE + 1 + 2 * BURST
        );
    }

    let mut partition = None;
    let mut partition_burst_ms = None;
    if let Ok(ns) = &netns {
        ns.link(false)?;
        let sent = phone.send("sent while the link is down", None, None)?;
        // The partition itself: nothing is awaited here.
        tokio::time::sleep(Duration::from_secs(partition_secs)).await;
        ns.link(true)?;
        let t0 = Instant::now();
        if !phone
            .wait_delivered(&sent.target, &sent.thread, SETTLE_WAIT)
            .await
        {
            bail!("the desktop did not get the task sent during the partition");
        }
        partition = Some((partition_secs, ms(t0.elapsed())));

        ns.link(false)?;
        let mut sent = Vec::with_capacity(BURST);
        for i in 0..BURST {
            sent.push(phone.send(&format!("offline {i}"), None, None)?);
        }
        tokio::time::sleep(Duration::from_secs(partition_secs)).await;
        ns.link(true)?;
        let t0 = Instant::now();
        for s in &sent {
            if !phone
                .wait_delivered(&s.target, &s.thread, SETTLE_WAIT)
                .await
            {
                bail!("the desktop did not get the burst sent during the partition");
            }
        }
        partition_burst_ms = Some(ms(t0.elapsed()));
    }
    phone.shutdown().await;
    desk.quit()?;
    drop(netns);
    Ok(Links {
        over,
        bursts,
        lone,
        partition,
        partition_burst_ms,
        no_partition,
    })
}

/// Sends [`BURST`] tasks from `phone` into `thread` (each into a new thread when `None`) as
/// fast as it makes them; then waits until the desktop holds every thread, and the index
/// listing them, as the phone sent them (the desktop's own changes since, its executor's, do
/// not count here).
async fn burst(
    phone: &Node,
    desk: &mut Desktop,
    into: &'static str,
    thread: Option<&str>,
) -> Result<Burst> {
    let cpu = |desk: &Desktop| Some((spaces::cpu_ms("/proc/self/stat")?, desk.cpu_ms()?));
    let io = |desk: &mut Desktop| -> Result<(Io, Io)> {
        let said = desk.ask("writes")?;
        let count = |i: usize| -> Result<u64> {
            said.get(i)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("the desktop's writes: {said:?}"))
        };
        let repo = phone.repo();
        Ok((
            Io::now("self", repo.commits(), repo.fsyncs()),
            Io::now(&desk.pid().to_string(), count(0)?, count(1)?),
        ))
    };
    let io_before = io(desk)?;
    let cpu_before = cpu(desk);
    let t0 = Instant::now();
    let mut sent = Vec::with_capacity(BURST);
    for i in 0..BURST {
        sent.push(phone.send(&format!("burst {i}"), thread, None)?);
    }
    let send_ms = ms(t0.elapsed());
    let t1 = Instant::now();
    sent.dedup_by(|a, b| a.thread == b.thread);
    for s in &sent {
        if !phone
            .wait_delivered(&s.target, &s.thread, SETTLE_WAIT)
            .await
        {
            bail!("the desktop did not get the burst into {into}");
        }
    }
    let settle_ms = ms(t1.elapsed());
    let per_send = |before: f64, after: f64| (after - before) / BURST as f64;
    let cpu_per_send = cpu_before
        .zip(cpu(desk))
        .map(|((p0, d0), (p1, d1))| (per_send(p0, p1), per_send(d0, d1)));
    let io_after = io(desk)?;
    let io_per_send = (
        io_after.0.per_send(io_before.0, BURST),
        io_after.1.per_send(io_before.1, BURST),
    );
    Ok(Burst {
        into,
        sends: BURST,
        send_ms,
        settle_ms,
        cpu_per_send,
        io_per_send,
    })
}

pub fn table(links: &Links) {
    println!(
        "(h) bursts and a partition: a phone node here, a desktop node in its own process (with \
         its executor), over {}",
        links.over
    );
    println!(
        "  {:>12}  {:>6}  {:>9}  {:>9}  {:>14}",
        "burst into", "sends", "sending", "sends/s", "all held after"
    );
    let lone = &links.lone;
    println!(
        "  a lone send into a new thread, until the phone hears the desktop holds it: median \
         {:.2} ms, p99 {:.2} ms ({} sends, each delivered before the next)",
        lone.median, lone.p99, lone.n
    );
    for b in &links.bursts {
        println!(
            "  {:>12}  {:>6}  {:>7.0}ms  {:>9.0}  {:>12.0}ms",
            b.into,
            group(b.sends),
            b.send_ms,
            b.per_second(),
            b.settle_ms
        );
        println!(
            "  goal: {} sends/s or more into {}: {:.0}: {}",
            group(1_000),
            b.into,
            b.per_second(),
            if b.per_second() >= 1_000.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        if let (Some((phone, desk)), Some(bound)) = (b.cpu_per_send, b.cpu_bound()) {
            println!(
                "  CPU per send into {}: phone {phone:.2} ms, desktop {desk:.2} ms: on this \
                 machine's cores, at most {bound:.0} sends/s at that cost",
                b.into
            );
        }
        println!(
            "  per send into {}: phone {}; desktop {}",
            b.into, b.io_per_send.0, b.io_per_send.1
        );
        println!(
            "  goal: the desktop holds all within 1,000 ms of the last send ({}): {:.0} ms: {}",
            b.into,
            b.settle_ms,
            if b.settle_ms <= 1_000.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    match (links.partition, &links.no_partition) {
        (Some((secs, heal_ms)), _) => {
            println!(
                "  partition of {secs} s, a task sent during it: held by the desktop {heal_ms:.0} ms \
                 after the link came back"
            );
            println!(
                "  goal: reconnected and delivered within 2,000 ms: {heal_ms:.0} ms: {}",
                if heal_ms <= 2_000.0 { "met" } else { "NOT met" }
            );
            if let Some(burst_ms) = links.partition_burst_ms {
                println!(
                    "  partition of {secs} s, {} tasks sent during it into new threads: all held by \
                     the desktop {burst_ms:.0} ms after the link came back",
                    group(BURST)
                );
            }
        }
        (None, Some(why)) => println!("  partition: skipped ({why})"),
        (None, None) => {}
    }
}

pub fn json(links: &Links) -> Json {
    json!({
        "over": links.over,
        "lone_new_thread_ms": {
            "n": links.lone.n,
            "median": links.lone.median,
            "p99": links.lone.p99,
        },
        "bursts": links.bursts.iter().map(|b| json!({
            "into": b.into,
            "sends": b.sends,
            "send_ms": b.send_ms,
            "sends_per_second": b.per_second(),
            "all_held_after_ms": b.settle_ms,
            "cpu_ms_per_send": b.cpu_per_send.map(|(phone, desk)| json!({
                "phone": phone,
                "desktop": desk,
            })),
            "io_per_send": {
                "phone": b.io_per_send.0.json(),
                "desktop": b.io_per_send.1.json(),
            },
        })).collect::<Vec<_>>(),
        "partition": links.partition.map(|(secs, heal_ms)| json!({
            "seconds": secs,
            "delivered_after_heal_ms": heal_ms,
            "burst_delivered_after_heal_ms": links.partition_burst_ms,
        })),
        "partition_skipped": links.no_partition,
    })
}
