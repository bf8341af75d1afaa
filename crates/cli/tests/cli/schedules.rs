//! Schedules, end to end with separate processes (issue 15): slots run once each across a
//! restart; slots that passed while the desktop was stopped show as missed and are caught up
//! once (`run-once`) or not (`skip`); with two desktops only the target runs a schedule;
//! concurrent edits converge; bad rules are refused.
//!
//! A schedule "made hours ago" is one added by a phone whose clock is set back (libfaketime):
//! its slots are counted from when it was made, so the desktop finds them already passed
//! without the test waiting hours.

use std::path::PathBuf;
use std::time::Duration;

use errand_tests::ntfy::Ntfy;
use serde_json::Value;

use crate::executor::setup_home;
use crate::support::join_through;
use crate::support::{Home, array, path_str, str_field, wait_until};

const ALLOW_SHELL: &str = "[actions]\nshell = \"allow\"\n";
const HOUR: i64 = 3_600_000;

/// `errand schedule add` on `home` (with its clock shifted by `shift`, if any); the new id.
fn add(home: &Home, shift: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["schedule", "add"];
    all.extend_from_slice(args);
    let out = match shift {
        Some(shift) => home.run_skewed(shift, &all),
        None => home.run(&all),
    };
    let id = out.success().trim().to_owned();
    assert_eq!(id.len(), 16, "the id alone: {id:?}");
    id
}

/// The schedule as `home` lists it.
fn listed(home: &Home, id: &str) -> Option<Value> {
    array(&home.json(&["schedule", "list"]))
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
}

/// The tasks of schedule `id` that `home` holds.
fn runs_of(home: &Home, id: &str) -> Vec<Value> {
    array(&home.json(&["tasks"]))
        .iter()
        .filter(|t| t["schedule"] == id)
        .cloned()
        .collect()
}

fn wait_schedule(home: &Home, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, Duration::from_secs(60), || {
        listed(home, id).filter(|s| ok(s))
    })
}

fn policy_args(file: &Option<PathBuf>) -> Vec<&str> {
    match file {
        Some(f) => vec!["--policy", path_str(f)],
        None => vec![],
    }
}

#[test]
fn an_every_minute_schedule_runs_each_slot_once_across_a_desktop_restart() {
    let (p, policy) = setup_home(Home::new("desk"), Some(ALLOW_SHELL), &[]);
    // Made 50 s ago by the phone's clock: the first slot is 10 s away.
    let id = add(&p.phone, Some("-50s"), &["--every", "1m", "/sh echo tick"]);
    let first = wait_schedule(&p.desk, &id, "the first run", |s| {
        s["last_status"] == "done"
    });
    let first_slot = first["last_run"].as_i64().expect("a slot");
    // Stop and start again before the next slot.
    p.daemon.terminate();
    let daemon = p.desk.serve_with(&policy_args(&policy), &[]);
    let second = wait_schedule(&p.desk, &id, "the second run", |s| {
        s["last_run"].as_i64() > Some(first_slot) && s["last_status"] == "done"
    });
    assert_eq!(second["last_run"].as_i64(), Some(first_slot + 60_000));
    let runs = runs_of(&p.desk, &id);
    let mut slots: Vec<i64> = runs.iter().filter_map(|t| t["slot"].as_i64()).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![first_slot, first_slot + 60_000], "{runs:#?}");
    for t in &runs {
        assert_eq!(t["status"], "done", "{t:#}");
        assert_eq!(t["result"].as_str().map(str::trim), Some("tick"));
    }
    assert_eq!(second["missed_total"], 0, "{second:#}");
    daemon.terminate();
}

#[test]
fn slots_missed_while_the_desktop_was_stopped_show_as_missed_and_run_once_or_not() {
    let ntfy = Ntfy::start(false);
    let (p, policy) = setup_home(
        Home::new("desk"),
        Some(&format!("allow_private_network = true\n{ALLOW_SHELL}")),
        &[],
    );
    // The phone wants to hear of missed runs.
    p.phone
        .run(&["notify", "add", &ntfy.url("phone"), "--events", "missed"])
        .success();
    p.phone.run(&["sync"]).success();
    p.daemon.terminate();
    // Made five hours ago (by the phone's clock) while the desktop is off: five hourly slots
    // have passed by the time it starts.
    let once = add(
        &p.phone,
        Some("-5h"),
        &["--every", "1h", "/sh echo caught-up"],
    );
    let skip = add(
        &p.phone,
        Some("-5h"),
        &["--every", "1h", "--missed", "skip", "/sh echo skipped"],
    );
    let daemon = p.desk.serve_with(&policy_args(&policy), &[]);
    p.phone.run(&["sync"]).success();

    let caught = wait_schedule(&p.desk, &once, "the catch-up run", |s| {
        s["last_status"] == "done"
    });
    assert_eq!(caught["missed_count"], 5, "{caught:#}");
    assert_eq!(caught["missed_reason"], "off");
    assert_eq!(caught["last_run"], caught["missed_last"]);
    let runs = runs_of(&p.desk, &once);
    assert_eq!(
        runs.len(),
        1,
        "one catch-up run however many missed: {runs:#?}"
    );
    assert_eq!(runs[0]["slot"], caught["missed_last"]);
    // The thread says so, before the run.
    let thread = str_field(&runs[0], "thread");
    let conversation = p.desk.json(&["thread", &thread]);
    let entries = array(&conversation);
    assert_eq!(entries[0]["kind"], "missed", "{conversation:#}");
    assert_eq!(entries[0]["state"], "off");
    assert!(
        str_field(&entries[0], "text").starts_with("missed 5 scheduled runs"),
        "{conversation:#}"
    );
    assert_eq!(entries[1]["kind"], "prompt");
    // And the phone was told, without the task's text.
    let told = ntfy.wait_for(Duration::from_secs(30), |m| {
        m.message.contains("catches up on missed scheduled runs")
    });
    assert!(!told.message.contains("caught-up"), "{told:?}");

    let skipped = wait_schedule(&p.desk, &skip, "the skipped runs recorded", |s| {
        s["missed_count"] == 5
    });
    assert_eq!(skipped["missed_reason"], "off");
    assert!(skipped["last_run"].is_null(), "{skipped:#}");
    assert!(runs_of(&p.desk, &skip).is_empty());
    ntfy.wait_for(Duration::from_secs(30), |m| {
        m.message == format!("schedule {} missed 5 scheduled runs", &skip[..8])
    });
    // Next run: an hour after the last missed slot, not before.
    assert_eq!(
        skipped["next_run"].as_i64(),
        skipped["missed_last"].as_i64().map(|l| l + HOUR)
    );
    // What the list says, for people.
    let text = p.desk.run(&["schedule", "list"]);
    assert!(
        text.success().contains("missed: 5 (latest:"),
        "{}",
        text.success()
    );
    assert!(
        text.success().contains("the desktop was off"),
        "{}",
        text.success()
    );

    // And a restart repeats none of it.
    daemon.terminate();
    let daemon = p.desk.serve_with(&policy_args(&policy), &[]);
    p.desk.run(&["sync"]).success();
    assert_eq!(runs_of(&p.desk, &once).len(), 1);
    let again = listed(&p.desk, &once).expect("listed");
    assert_eq!(again["missed_total"], 5, "{again:#}");
    daemon.terminate();
}

#[test]
fn with_two_desktops_only_a_schedule_s_target_runs_it() {
    let desk_a = Home::new("desk-a");
    let (p, _) = setup_home(desk_a, Some(ALLOW_SHELL), &[]);
    let desk_b = Home::new("desk-b");
    let b_id = join_through(&p.desk, &desk_b, "desk-b", "desktop");
    std::fs::write(desk_b.file("policy.toml"), ALLOW_SHELL).expect("policy");
    let policy_b = desk_b.file("policy.toml");
    let daemon_b = desk_b.serve_with(&["--policy", path_str(&policy_b)], &[]);
    p.phone.run(&["sync"]).success();

    let on_a = add(
        &p.phone,
        Some("-3h"),
        &["--every", "1h", "--to", "desk", "/sh echo a"],
    );
    let on_b = add(
        &p.phone,
        Some("-3h"),
        &["--every", "1h", "--to", "desk-b", "/sh echo b"],
    );
    p.phone.run(&["sync"]).success();
    for (id, target) in [(&on_a, &p.desk_id), (&on_b, &b_id)] {
        for home in [&p.desk, &desk_b] {
            let s = wait_schedule(home, id, "the run, seen by both desktops", |s| {
                s["last_status"] == "done"
            });
            assert_eq!(&str_field(&s, "target"), target);
            let runs = runs_of(home, id);
            assert_eq!(runs.len(), 1, "{runs:#?}");
            assert_eq!(&str_field(&runs[0], "created_by"), target);
            assert_eq!(&str_field(&runs[0], "target"), target);
        }
    }
    daemon_b.terminate();
}

#[test]
fn concurrent_edits_of_a_schedule_converge() {
    let (p, policy) = setup_home(Home::new("desk"), Some(ALLOW_SHELL), &[]);
    let id = add(&p.phone, None, &["--every", "1h", "/sh echo edited"]);
    wait_schedule(&p.desk, &id, "the desktop has it", |_| true);
    p.daemon.terminate();
    // Apart: the phone pauses and resumes, the desktop pauses.
    p.phone.run(&["schedule", "pause", &id]).success();
    p.phone.run(&["schedule", "resume", &id]).success();
    p.desk.run(&["schedule", "pause", &id]).success();
    let daemon = p.desk.serve_with(&policy_args(&policy), &[]);
    p.phone.run(&["sync"]).success();
    let on_desk = wait_schedule(&p.desk, &id, "the edits merged", |s| s["created"].is_i64());
    let on_phone = listed(&p.phone, &id).expect("the phone lists it");
    for field in ["paused", "next_run", "rule", "text"] {
        assert_eq!(
            on_desk[field], on_phone[field],
            "{field}: {on_desk:#} {on_phone:#}"
        );
    }
    // Removed on one device, gone on both.
    p.phone.run(&["schedule", "remove", &id]).success();
    p.phone.run(&["sync"]).success();
    wait_until(
        "the removal reaches the desktop",
        Duration::from_secs(30),
        || listed(&p.desk, &id).is_none().then_some(()),
    );
    daemon.terminate();
}

#[test]
fn bad_rules_and_zones_are_refused_in_one_line() {
    let (p, _) = setup_home(Home::new("desk"), Some(ALLOW_SHELL), &[]);
    for (args, says) in [
        (vec!["--cron", "61 * * * *", "x"], "minute"),
        (vec!["--cron", "0 9 * *", "x"], "five fields"),
        (vec!["--cron", "0 0 30 2 *", "x"], "never"),
        (
            vec!["--cron", "0 9 * * *", "--tz", "Mars/Olympus", "x"],
            "time zone",
        ),
        (vec!["--every", "5x", "x"], "5x"),
        (vec!["--every", "10s", "x"], "at least 1 minute"),
        (
            vec!["--every", "1h", "--missed", "later", "x"],
            "run-once or skip",
        ),
    ] {
        let mut all = vec!["schedule", "add"];
        all.extend_from_slice(&args);
        let out = p.phone.run(&all);
        assert!(out.failure().contains(says), "{args:?}: {}", out.failure());
        out.assert_one_line_error();
    }
    assert!(array(&p.phone.json(&["schedule", "list"])).is_empty());
    let out = p.phone.run(&["schedule", "pause", "ffff"]);
    assert!(out.failure().contains("no schedule"), "{}", out.failure());
    p.daemon.terminate();
}
