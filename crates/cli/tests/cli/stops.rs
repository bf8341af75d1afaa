//! Stops, restarts and clocks, with real processes: a graceful stop of the desktop that lets a
//! task finish and records one that cannot as interrupted (never as cancelled), with its output;
//! nodes and commands that meet a home another process still holds for a moment (a node killed
//! a moment ago, starting, frozen, a one-shot command) and wait for it; and a phone run under a
//! clock hours off (libfaketime), which decides nothing by it.

use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::executor::{
    Orphans, error_text, phone_approvals, phone_show, send_task, setup, sleeps_in, status,
    wait_final, wait_status, workspace,
};
use crate::support::{Daemon, Home, array, paired, short, str_field, wait_until};

/// How long a wait for the things below may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// The node's bound on waiting for a home (`errand_node::home::HOME_WAIT`).
const HOME_WAIT_SECS: u64 = 10;
/// What the node logs while it waits for a home (at info level, hence `ERRAND_LOG`).
const WAITING: &str = "is using it";
const LOG_WAITS: (&str, &str) = ("ERRAND_LOG", "errand_node=info");

fn event(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// Whether `line` is the event of `task` ending.
fn ended(line: &str, task: &str) -> bool {
    let ev = event(line);
    ev["task"] == task && matches!(ev["status"].as_str(), Some("done" | "failed" | "cancelled"))
}

#[test]
fn a_graceful_stop_lets_a_task_finish_and_records_the_one_it_interrupts_as_failed() {
    let (p, _) = setup(
        Some("allow_private_network = true\n\n[actions]\nshell = \"allow\"\n"),
        &[],
    );
    let ws = workspace(&p.desk);
    // The phone also wants a push when a task fails (a local stand-in for ntfy).
    let ntfy = errand_tests::ntfy::Ntfy::start(false);
    p.phone
        .run(&["notify", "add", &ntfy.url("stops"), "--events", "failed"])
        .success();
    let _orphans = Orphans {
        arg: "38.5",
        cwd: ws.clone(),
    };
    // The phone runs its node and watches, as an app would.
    let _phone_node = p.phone.serve();
    let mut watch = p.phone.spawn(&["--json", "watch"]);
    // The watch prints nothing until something happens: a harmless task is sent until a line
    // shows that it listens.
    let listening = std::time::Instant::now() + DEADLINE;
    loop {
        send_task(&p.phone, "/ls", &[]);
        if watch.next_line_within(Duration::from_secs(2)).is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < listening,
            "the watch printed nothing: {}",
            watch.stderr()
        );
    }
    let (long, _) = send_task(&p.phone, "/sh echo started; sleep 38.5", &[]);
    let (brief, _) = send_task(&p.phone, "/sh sleep 3; echo finished", &[]);
    let mut running = std::collections::HashSet::new();
    while running.len() < 2 {
        let line = watch.expect_line("both tasks running", |l| {
            let ev = event(l);
            ev["status"] == "running"
                && (ev["task"] == long.as_str() || ev["task"] == brief.as_str())
        });
        running.insert(event(&line)["task"].to_string());
    }
    wait_until("the long command to start", DEADLINE, || {
        (!sleeps_in("38.5", &ws).is_empty()).then_some(())
    });

    // SIGTERM, as a service manager's restart sends it.
    p.daemon.terminate();

    // The phone hears what happened, while the desktop stops.
    let interrupted = watch.expect_line("the long task's end, with why", |l| ended(l, &long));
    let interrupted = event(&interrupted);
    assert_eq!(interrupted["status"], "failed", "{interrupted:#}");
    assert!(
        interrupted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the desktop was stopped")),
        "the event says why: {interrupted:#}"
    );
    // And the push went out before the desktop was gone.
    let pushed = ntfy.wait_for(DEADLINE, |m| {
        m.message.contains(crate::support::short(&long)) && m.message.contains("failed")
    });
    assert!(!pushed.message.contains("sleep"), "{pushed:?}");
    // It ended within the grace period, before the other was interrupted.
    let finished = match watch.seen.iter().find(|l| ended(l, &brief)) {
        Some(line) => line.clone(),
        None => watch.expect_line("the brief task's end", |l| ended(l, &brief)),
    };
    assert_eq!(event(&finished)["status"], "done", "{finished}");

    let long = phone_show(&p.phone, &long);
    assert_eq!(
        status(&long),
        "failed",
        "never cancelled unless asked: {long:#}"
    );
    assert!(
        error_text(&long).contains("the desktop was stopped")
            && error_text(&long).contains("grace period"),
        "{long:#}"
    );
    assert_eq!(long["cancel_requested"], false, "{long:#}");
    assert_eq!(long["result"], "started", "its output is kept: {long:#}");
    let brief = phone_show(&p.phone, &brief);
    assert_eq!(
        status(&brief),
        "done",
        "it finished within the grace period: {brief:#}"
    );
    assert_eq!(brief["result"], "finished", "{brief:#}");
    assert!(
        sleeps_in("38.5", &ws).is_empty(),
        "the interrupted command is gone"
    );
}

/// `errand serve` on a home, logging its waits.
fn serve_logged(home: &Home) -> Daemon {
    home.spawn_env(&["serve"], &[LOG_WAITS])
}

fn wait_for_home(process: &Daemon, holder: u32) {
    wait_until("the process to wait for the home", DEADLINE, || {
        let stderr = process.stderr();
        stderr.contains(WAITING).then_some(stderr)
    });
    let stderr = process.stderr();
    assert!(
        stderr.contains(&format!("pid {holder}, `errand")),
        "it names the process it waits for: {stderr}"
    );
}

#[test]
fn a_node_started_right_after_one_was_killed_or_froze_waits_for_the_home() {
    let home = Home::new("desk");
    let mut node = home.serve();
    // SIGKILL, and at once a new node, before the old process has been reaped: repeated.
    for _ in 0..4 {
        node.signal("-KILL");
        let next = home.serve();
        node.kill9();
        node = next;
    }
    // A node that stops answering (frozen, as under a debugger or on a starved machine) still
    // holds the home: the next one waits, says for whom, and starts once it is gone.
    node.signal("-STOP");
    let mut next = serve_logged(&home);
    wait_for_home(&next, node.pid());
    node.kill9();
    next.expect_line("the serving line", |l| l.starts_with("serving as "));
    next.terminate();
}

#[test]
fn commands_and_nodes_wait_for_a_home_held_for_a_moment_and_then_name_its_holder() {
    let p = paired();
    // With the desktop away, a phone's `sync` holds its home for its whole timeout.
    p.daemon.terminate();
    let sync = p.phone.spawn(&["sync", "--timeout", "4"]);
    wait_until("the sync to hold the phone's home", DEADLINE, || {
        (p.phone.holder_pid() == Some(sync.pid())).then_some(())
    });
    // A node and a command started meanwhile both wait, and both get through.
    let mut node = serve_logged(&p.phone);
    let status = thread::scope(|s| {
        let status = s.spawn(|| p.phone.json(&["status"]));
        node.expect_line("the serving line", |l| l.starts_with("serving as "));
        status.join().expect("status")
    });
    assert_eq!(str_field(&status, "device"), p.phone_id, "{status:#}");
    assert!(node.stderr().contains(WAITING), "{}", node.stderr());

    // A command that meets a node which stops answering (stopping, frozen) waits, and opens
    // the home itself once the node is gone.
    node.signal("-STOP");
    let mut command = p.phone.spawn_env(&["--json", "status"], &[LOG_WAITS]);
    wait_for_home(&command, node.pid());
    node.kill9();
    let exit = command.wait_exit(DEADLINE);
    assert!(exit.success(), "{exit}: {}", command.stderr());
    let status: Value = serde_json::from_str(&command.seen.join("\n")).expect("status JSON");
    assert_eq!(str_field(&status, "device"), p.phone_id, "{status:#}");

    // A holder that never lets go: after the bound, the error names it.
    let holder = p.phone.spawn(&["sync", "--timeout", "60"]);
    wait_until("the second sync to hold the phone's home", DEADLINE, || {
        (p.phone.holder_pid() == Some(holder.pid())).then_some(())
    });
    holder.signal("-STOP");
    let refused = p.phone.run(&["status"]);
    refused.assert_one_line_error();
    let reason = refused.failure();
    assert!(
        reason.contains(&format!("pid {}", holder.pid()))
            && reason.contains(&format!("did not let go within {HOME_WAIT_SECS} s")),
        "{reason}"
    );
    holder.kill9();
}

/// libfaketime's shifts for a phone whose clock is ahead, and one whose clock is behind.
const AHEAD: &str = "+2h";
const BEHIND: &str = "-1h";
const TWO_HOURS_MS: i64 = 2 * 3600 * 1000;

fn offset_of(devices: &Value, device: &str) -> i64 {
    array(devices)
        .iter()
        .find(|d| d["id"] == device)
        .and_then(|d| d["clock_offset_ms"].as_i64())
        .unwrap_or_else(|| panic!("no clock offset for {device}: {devices:#}"))
}

fn near(value: i64, want: i64) -> bool {
    (value - want).abs() < 60_000
}

#[test]
fn a_phone_whose_clock_is_off_decides_by_the_desktops_clock() {
    // The default policy asks before shell commands; requests expire after 12 s.
    let (mut p, _) = setup(Some("approval_timeout_secs = 12\n"), &[]);

    // Two hours ahead: the request is still pending by the desktop's clock, and approving works.
    // Every command of the phone here runs under the wrong clock: each one that connects
    // measures the offset again, and one with a right clock would store an offset near zero.
    // The first sync waits for the measurement.
    p.phone
        .run_skewed(AHEAD, &["sync", "--timeout", "10"])
        .success();
    let sent = p.phone.json_skewed(
        AHEAD,
        &["send", "/sh echo approved in time", "--timeout", "10"],
    );
    let task = str_field(&sent, "task");
    wait_until("the phone to see the request", DEADLINE, || {
        let shown = p.phone.json_skewed(AHEAD, &["show", &task]);
        (status(&shown) == "waiting_approval").then_some(())
    });
    let listed = p.phone.json_skewed(AHEAD, &["approvals"]);
    let request = array(&listed)
        .iter()
        .find(|a| a["task"] == task.as_str())
        .unwrap_or_else(|| panic!("the phone lists the request as pending: {listed:#}"))
        .clone();
    let left = request["expires_in_ms"].as_i64().unwrap_or(-1);
    assert!(
        left > 0 && left <= 12_000,
        "expiry shown relative to the desktop: {request:#}"
    );
    p.phone
        .run_skewed(AHEAD, &["approve", &str_field(&request, "id")])
        .success();
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");

    // The skew is told: on the phone, on the desktop, and as an event there. (The phone's
    // other commands here run with a right clock, so it syncs once more under the wrong one.)
    p.phone
        .run_skewed(AHEAD, &["sync", "--timeout", "10"])
        .success();
    let phone_status = p.phone.json_skewed(AHEAD, &["status"]);
    let desk_offset = offset_of(&phone_status["peers"], &p.desk_id);
    assert!(near(desk_offset, -TWO_HOURS_MS), "{phone_status:#}");
    let shown = p.phone.run_skewed(AHEAD, &["status"]);
    assert!(shown.success().contains("clock off"), "{}", shown.stdout);
    // The desktop asks on its side of a connection, which a one-shot command may end before
    // the answer comes: each try connects again under the wrong clock.
    wait_until("the desktop to measure the phone's clock", DEADLINE, || {
        let devices = p.desk.json(&["devices"]);
        let measured = near(offset_of(&devices, &p.phone_id), TWO_HOURS_MS);
        if !measured {
            p.phone.run_skewed(AHEAD, &["sync", "--timeout", "5"]);
        }
        measured.then_some(())
    });
    let shown = p.desk.run(&["devices"]);
    assert!(
        shown.success().contains("2 h 0 min ahead"),
        "{}",
        shown.stdout
    );
    let phone = short(&p.phone_id).to_owned();
    p.daemon.expect_line("the clock skew event", |l| {
        l.starts_with(&format!("peer {phone} has a clock 2 h 0 min ahead"))
    });

    // An hour behind: a request the desktop has let expire cannot be approved, and no device
    // shows it approved.
    let (late, _) = send_task(&p.phone, "/sh echo too late", &[]);
    wait_status(&p.phone, &late, "waiting_approval");
    let failed = wait_final(&p.phone, &late);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    assert!(
        error_text(&failed).contains("no one approved it within 12 s"),
        "{failed:#}"
    );
    let id = str_field(&phone_approvals(&p.phone, &late)[0], "id");
    let refused = p.phone.run_skewed(BEHIND, &["approve", &id]);
    assert!(refused.failure().contains("expired"), "{}", refused.stderr);
    for home in [&p.phone, &p.desk] {
        let all = home.json(&["approvals", "--all"]);
        let shown = array(&all)
            .iter()
            .find(|a| a["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{all:#}"));
        assert_eq!(shown["state"], "expired", "{shown:#}");
    }

    // A task the phone sends with its clock behind, after another, comes after it.
    let (first, thread) = send_task(&p.phone, "/ls", &[]);
    let second = p.phone.json_skewed(
        BEHIND,
        &["send", "/ls", "--thread", &thread, "--timeout", "10"],
    );
    let second = str_field(&second, "task");
    for home in [&p.phone, &p.desk] {
        let listed = home.json(&["tasks", "--thread", &thread]);
        let order: Vec<String> = array(&listed).iter().map(|t| str_field(t, "id")).collect();
        assert_eq!(order, [first.clone(), second.clone()], "{listed:#}");
    }
}
