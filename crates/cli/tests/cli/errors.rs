//! Failures: non-zero exit and exactly one line on stderr, `errand: REASON`.

use crate::support::{Home, Out, paired, send, short};

/// Runs a command that must fail; checks the reason contains `expected`. Returns the output so
/// that the one-line rule can be checked after everything else.
fn fails(home: &Home, args: &[&str], expected: &str) -> Out {
    let out = home.run(args);
    let reason = out.failure();
    assert!(
        reason.contains(expected),
        "`errand {}`: expected {expected:?} in {reason:?}",
        args.join(" ")
    );
    out
}

#[test]
fn commands_on_a_home_without_a_space_fail_with_one_line() {
    let home = Home::new("empty");
    let no_space = "not paired with any space";
    let hash = "0".repeat(64);
    let outs = [
        fails(&home, &["show", "nope"], no_space),
        fails(&home, &["tasks"], no_space),
        fails(&home, &["threads"], no_space),
        fails(&home, &["send", "hello"], no_space),
        fails(&home, &["sync"], no_space),
        fails(&home, &["devices"], no_space),
        fails(&home, &["history"], no_space),
        fails(&home, &["at", &hash], no_space),
        fails(&home, &["at", "zzzz"], no_space),
        fails(&home, &["pair", "--yes"], no_space),
    ];
    // Nothing was created by trying.
    home.assert_no_space();
    for out in &outs {
        out.assert_one_line_error();
    }
}

#[test]
fn join_garbage_fails_with_one_line() {
    let home = Home::new("joiner");
    let out = fails(&home, &["join", "garbage"], "bad ticket");
    home.assert_no_space();
    out.assert_one_line_error();
    let out = fails(&home, &["--json", "join", "garbage"], "bad ticket");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", out.stdout);
    out.assert_one_line_error();
}

#[test]
fn bad_arguments_on_a_paired_home_fail_with_one_line() {
    let p = paired();
    let zeros = "0".repeat(64);
    let outs = [
        // Through the desktop's running daemon.
        fails(&p.desk, &["at", "zzzz"], "is not a change hash"),
        fails(&p.desk, &["at", &zeros], "is not in document"),
        fails(&p.desk, &["at", ","], "at least one change hash"),
        fails(&p.desk, &["history", "--doc", "ffffffff"], "no thread"),
        fails(&p.desk, &["show", "nope"], "no task \"nope\""),
        fails(&p.desk, &["up", "--yes"], "already running"),
        fails(&p.desk, &["serve"], "already running"),
        // On the phone, which opens its home itself (the desktop is reachable).
        fails(
            &p.phone,
            &["send", "hi", "--to", "phone"],
            "only desktops run tasks",
        ),
        fails(
            &p.phone,
            &["send", "hi", "--to", "nobody"],
            "no device \"nobody\"",
        ),
        fails(&p.phone, &["send", "   "], "needs some text"),
        fails(
            &p.phone,
            &["send", "hi", "--thread", "ffffffff"],
            "no thread",
        ),
        fails(&p.phone, &["join", &p.ticket], "already part of space"),
    ];
    // None of the failed sends left a task behind.
    assert!(p.phone.task_ids().is_empty());
    assert!(p.desk.task_ids().is_empty());
    for out in &outs {
        out.assert_one_line_error();
    }
    p.daemon.terminate();
}

/// With the desktop away, a phone command still says one thing: its result or its reason.
#[test]
fn commands_on_a_phone_whose_desktop_is_away_keep_stderr_clean() {
    let p = paired();
    let sent = send(&p.phone, &["something", "--timeout", "5"]);
    p.daemon.terminate();
    let task = sent["task"].as_str().expect("task id").to_owned();

    let shown = p.phone.run(&["--json", "show", short(&task)]);
    shown.success();
    let failed = fails(&p.phone, &["show", "nope"], "no task");
    shown.assert_quiet();
    failed.assert_one_line_error();
}

#[test]
fn a_closed_stdout_does_not_make_errand_panic() {
    let p = paired();
    // The reader goes away (as with `errand history | head -1`).
    let out = p.desk.run_with_stdout_closed(&["--json", "history"]);
    assert!(
        !out.stderr.contains("panicked"),
        "errand panicked on a closed stdout: {}",
        out.stderr
    );
    p.daemon.terminate();
}
