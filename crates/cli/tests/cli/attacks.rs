//! A paired phone turns hostile and sends a live desktop process what used to crash, freeze or
//! bloat it (issue 12, point 6): crafted bloom filters, made-up documents past the quota, and a
//! change far over the size limit. After each, the desktop is still up, the honest phone's next
//! task arrives promptly, and the desktop's memory stays within what the limits allow.

use std::time::{Duration, Instant};

use errand_sync::DocId;
use errand_sync::limits::Limits;
use errand_sync::net::CLOSE_PROTOCOL;
use errand_sync::quota::Quotas;
use errand_sync::schema::thread;
use errand_sync::wire::MAX_FRAME;
use errand_tests::hostile::{self, RawMember};

use crate::support::{Daemon, Home, array, is_task_line, join, paired, send, short, str_field};

/// How long an honest task may take from `send` to the desktop's event line. The issue asks
/// for a second; a loaded CI machine starting the `send` process gets a little more.
const HONEST_WITHIN: Duration = Duration::from_secs(2);
/// The 10 MB prompt of the issue: two and a half times the largest change a node takes.
const HUGE_PROMPT: usize = 10 * 1024 * 1024;

/// Resident and peak resident memory of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("the desktop (pid {pid}) is gone: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sends one task from the honest phone (through its running node) and returns how long it
/// took until the desktop printed it.
fn honest_task(phone: &Home, desk: &mut Daemon, n: usize) -> Duration {
    let prompt = format!("honest task {n}");
    let started = Instant::now();
    let task = str_field(&send(phone, &[&prompt]), "task");
    desk.expect_line("the honest task", |l| is_task_line(l, &task, &prompt));
    started.elapsed()
}

#[test]
fn a_hostile_member_neither_crashes_freezes_nor_bloats_a_live_desktop() {
    let p = paired();
    let mut daemon = p.daemon;
    let hostile = Home::new("hostile");
    let hostile_id = join(&p.desk, &mut daemon, &hostile, "hostile", "phone");
    // The hostile phone sends one task of its own while it still behaves: its thread is one
    // the desktop holds, and where the oversized change goes later.
    let own = send(&hostile, &["a task of my own", "--timeout", "10"]);
    assert_eq!(own["delivered"], true, "{own:#}");
    let own_thread = str_field(&own, "thread");
    let desk_addrs: Vec<String> = {
        let status = p.desk.json(&["status"]);
        array(&status["addrs"])
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let phone = p.phone.serve();
    let mut took = vec![honest_task(&p.phone, &mut daemon, 0)];
    let (rss_before, peak_before) = memory(daemon.pid());

    let dropped = format!("peer {} dropped: ", short(&hostile_id));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let raw = runtime.block_on(RawMember::from_home(&hostile.path()));
    let lookups: Vec<Vec<u8>> = (0..=Quotas::DEFAULT.max_unknown_docs)
        .map(|_| hostile::sync_frame(&DocId::new_thread(), &hostile::lookup_message()))
        .collect();
    let attacks: [(&str, Vec<Vec<u8>>, &str); 4] = [
        (
            "a bloom filter of 4,294,967,295 probes",
            vec![hostile::sync_frame(
                &DocId::index(),
                &hostile::FOUR_BILLION_PROBES,
            )],
            "bloom filter",
        ),
        (
            "a bloom filter of 50 million probes",
            vec![hostile::sync_frame(
                &DocId::index(),
                &hostile::FIFTY_MILLION_PROBES,
            )],
            "bloom filter",
        ),
        (
            "a bloom filter of zero bits",
            vec![hostile::sync_frame(&DocId::index(), &hostile::ZERO_BITS)],
            "bloom filter",
        ),
        ("1,001 made-up documents", lookups, "max_unknown_docs"),
    ];
    for (i, (what, frames, reason)) in attacks.into_iter().enumerate() {
        let closed =
            runtime.block_on(raw.send(&p.desk_id, &desk_addrs, &frames, Duration::from_secs(20)));
        assert_eq!(
            closed,
            Ok(CLOSE_PROTOCOL as u64),
            "{what}: the desktop drops it"
        );
        let line = daemon.expect_line(&format!("the drop after {what}"), |l| {
            l.starts_with(&dropped)
        });
        assert!(line.contains(reason), "{what}: {line}");
        assert!(daemon.is_running(), "{what}: the desktop is up");
        took.push(honest_task(&p.phone, &mut daemon, i + 1));
    }
    runtime.block_on(raw.close());

    // A change of 10 MB, properly signed by the hostile phone: a task with a prompt of that
    // size in its own thread, which it owns. Its own app would never write it (prompts are at
    // most 100 KiB), so it writes it into its store directly and lets an ordinary sync carry it.
    {
        let repo = hostile::own_repo(&hostile.path());
        let doc = DocId::parse(&own_thread).expect("a thread id");
        // Letters drawn at random, so that compression does not shrink it on the wire.
        let mut rng = hostile::XorShift(0x9e37_79b9_7f4a_7c15);
        let prompt: String = (0..HUGE_PROMPT)
            .map(|_| char::from(b'a' + (rng.step() % 26) as u8))
            .collect();
        let id = format!("{:032x}", 0xbad_u128);
        repo.change(&doc, "a prompt of 10 MB", |tx| {
            thread::add_task(
                tx,
                &thread::NewTask {
                    id: &id,
                    prompt: &prompt,
                    target: &p.desk_id,
                    created: 1,
                },
            )
        })
        .expect("the hostile phone writes its own store");
    }
    // The hostile phone keeps trying: each sync brings the change again, and each is refused.
    let mut resident = Vec::new();
    for round in 0..3 {
        let _ = hostile.run(&["sync", "--timeout", "5"]);
        let line = daemon.expect_line("the drop after a change of 10 MB", |l| {
            l.starts_with(&dropped)
        });
        assert!(line.contains("bytes"), "{line}");
        took.push(honest_task(&p.phone, &mut daemon, 5 + round));
        assert!(daemon.is_running(), "the desktop is up");
        resident.push(memory(daemon.pid()).0);
    }

    // What one peer can make a node hold at once: a frame being inflated (up to MAX_FRAME, in
    // a buffer that doubles as it grows, so twice that while it moves), what is queued for it,
    // and a refused change inflated up to its limit, plus room for the allocator.
    let slack = 16 * 1024 * 1024;
    let bound = (2 * MAX_FRAME
        + Quotas::DEFAULT.max_in_flight_bytes
        + Limits::DEFAULT.max_change_bytes as usize
        + slack) as u64;
    let (_, peak_after) = memory(daemon.pid());
    eprintln!(
        "desktop memory: resident {:.1} MiB before, {} MiB after each 10 MB change, peak {:.1} \
         → {:.1} MiB (bound +{:.0} MiB); honest tasks took {took:?}",
        mib(rss_before),
        resident
            .iter()
            .map(|r| format!("{:.1}", mib(*r)))
            .collect::<Vec<_>>()
            .join(", "),
        mib(peak_before),
        mib(peak_after),
        mib(bound)
    );
    assert!(
        peak_after.saturating_sub(rss_before) <= bound,
        "the desktop peaked at {:.1} MiB from {:.1} MiB",
        mib(peak_after),
        mib(rss_before)
    );
    // The allocator keeps some pages of refused frames for the next ones (how many varies
    // from run to run: 49 to 77 MiB after the same three changes); refused input itself is
    // not kept, so what stays after each attack is within the same bound.
    for (round, r) in resident.iter().enumerate() {
        assert!(
            r.saturating_sub(rss_before) <= bound,
            "after refused change {round} the desktop holds {:.1} MiB, from {:.1} MiB",
            mib(*r),
            mib(rss_before)
        );
    }
    for (i, t) in took.iter().enumerate() {
        assert!(*t <= HONEST_WITHIN, "honest task {i} took {t:?}: {took:?}");
    }
    // Nothing of the refused change reached the honest phone either.
    let tasks = p.phone.json(&["tasks", "--thread", &own_thread]);
    assert_eq!(array(&tasks).len(), 1, "{tasks:#}");
    phone.terminate();
}
