//! More than two devices: pairing through any member, members passing documents on, revocation,
//! roles, and two desktops.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Daemon, Home, array, join_through, paired_with, path_str, send, short, str_field, wait_until,
};

const ALLOW_SHELL: &str = "[actions]\nshell = \"allow\"\n";
const TASK_DEADLINE: Duration = Duration::from_secs(30);

/// A policy file beside `home` that lets shell commands run without asking.
fn allow_shell(home: &Home) -> PathBuf {
    let file = home.file("policy.toml");
    fs::write(&file, ALLOW_SHELL).expect("write the policy file");
    file
}

fn added_line(name: &str, id: &str, role: &str) -> String {
    format!("device {name} ({}) added as {role}", short(id))
}

fn revoked_line(name: &str, id: &str) -> String {
    format!("device {name} ({}) revoked", short(id))
}

fn expect_exact(daemon: &mut Daemon, line: &str) {
    daemon.expect_line(line, |l| l == line);
}

/// The task as `home` shows it, once `ok` holds for it.
fn wait_task(home: &Home, task: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, TASK_DEADLINE, || {
        let shown = home.run(&["--json", "show", task]);
        if !shown.status.success() {
            return None;
        }
        let shown = shown.json();
        ok(&shown).then_some(shown)
    })
}

fn lists_task(home: &Home, task: &str) -> bool {
    home.task_ids().iter().any(|t| t == task)
}

/// Whether `home` sees `peer` connected right now.
fn connected(home: &Home, peer: &str) -> bool {
    let devices = home.json(&["devices"]);
    array(&devices)
        .iter()
        .any(|d| d["id"] == peer && d["connected"] == true)
}

/// Whether `sync --json` on `home` reports `peer` as synced.
fn synced_with(sync: &Value, peer: &str) -> bool {
    array(sync)
        .iter()
        .find(|p| p["id"] == peer)
        .unwrap_or_else(|| panic!("{peer} in {sync:#}"))["synced"]
        == true
}

#[test]
fn a_member_passes_on_tasks_and_results_while_the_desktop_is_away() {
    let desk = Home::new("desk");
    let policy = allow_shell(&desk);
    let p = paired_with(desk, &["--policy", path_str(&policy)], &[]);
    let mut desk_daemon = p.daemon;
    let mut phone_daemon = p.phone.serve_with(&["--no-executor"], &[]);

    // An always-on home server joins through the phone, not the desktop.
    let server = Home::new("server");
    let server_id = join_through(&p.phone, &server, "server", "viewer");
    let added = added_line("server", &server_id, "viewer");
    expect_exact(&mut phone_daemon, &added);
    expect_exact(&mut desk_daemon, &added);
    let mut server_daemon = server.serve_with(&["--no-executor"], &[]);
    wait_until(
        "the server and the desktop to connect directly",
        TASK_DEADLINE,
        || connected(&p.desk, &server_id).then_some(()),
    );

    // The desktop goes away; the phone's task reaches only the server.
    desk_daemon.terminate();
    let sent = send(&p.phone, &["/sh echo passed on", "--timeout", "1"]);
    assert_eq!(sent["delivered"], false, "the desktop is off: {sent:#}");
    let task = str_field(&sent, "task");
    wait_until("the server to hold the task", TASK_DEADLINE, || {
        lists_task(&server, &task).then_some(())
    });
    phone_daemon.terminate();

    // The desktop comes back while the phone is away: it gets the task from the server, runs
    // it, and the result goes back to the server.
    let desk_daemon = p.desk.serve_with(&["--policy", path_str(&policy)], &[]);
    let done = wait_task(&server, &task, "the server to hold the result", |t| {
        t["status"] == "done"
    });
    assert_eq!(done["result"], "passed on", "{done:#}");
    desk_daemon.terminate();

    // The phone meets only the server, and has the result.
    let sync = p.phone.json(&["sync", "--timeout", "10"]);
    assert!(synced_with(&sync, &server_id), "{sync:#}");
    assert!(
        !synced_with(&sync, &p.desk_id),
        "the desktop is off: {sync:#}"
    );
    let shown = p.phone.json(&["show", &task]);
    assert_eq!(shown["status"], "done", "{shown:#}");
    assert_eq!(shown["result"], "passed on", "{shown:#}");
    server_daemon.drain();
    server_daemon.terminate();
}

#[test]
fn a_revoked_device_keeps_what_it_had_and_gets_nothing_new() {
    let p = paired_with(Home::new("desk"), &[], &[]);
    let mut desk_daemon = p.daemon;
    let tablet = Home::new("tablet");
    let tablet_id = join_through(&p.desk, &tablet, "tablet", "phone");
    expect_exact(&mut desk_daemon, &added_line("tablet", &tablet_id, "phone"));
    let mut phone_daemon = p.phone.serve_with(&["--no-executor"], &[]);
    let _tablet_daemon = tablet.serve_with(&["--no-executor"], &[]);

    let before = send(&p.phone, &["before the loss", "--timeout", "10"]);
    let old_task = str_field(&before, "task");
    wait_until("the tablet to hold the first task", TASK_DEADLINE, || {
        lists_task(&tablet, &old_task).then_some(())
    });

    // The desktop revokes the tablet: it refuses it at once ...
    let out = p.desk.run(&["devices", "revoke", "tablet"]);
    let said = out.success();
    assert!(said.contains("revoked tablet"), "{said}");
    let revoked = revoked_line("tablet", &tablet_id);
    expect_exact(&mut desk_daemon, &revoked);
    // ... and the phone as soon as it has synced the revocation.
    expect_exact(&mut phone_daemon, &revoked);
    let listed = p.phone.device_names();
    assert!(
        !listed.iter().any(|(name, _)| name == "tablet"),
        "the phone no longer lists the tablet: {listed:?}"
    );

    // With the desktop off, the phone alone decides whether the tablet gets anything.
    desk_daemon.terminate();
    let after = send(&p.phone, &["after the loss", "--timeout", "1"]);
    let new_task = str_field(&after, "task");
    let sync = tablet.json(&["sync", "--timeout", "3"]);
    assert!(!synced_with(&sync, &p.phone_id), "{sync:#}");
    assert!(!connected(&p.phone, &tablet_id));
    let held = tablet.task_ids();
    assert!(
        held.contains(&old_task),
        "the tablet still reads what it had: {held:?}"
    );
    assert!(
        !held.contains(&new_task),
        "the tablet got a task sent after its revocation: {held:?}"
    );
    let shown = tablet.json(&["show", &old_task]);
    assert_eq!(str_field(&shown, "prompt"), "before the loss");
    phone_daemon.terminate();
}

#[test]
fn a_viewer_sees_approval_requests_but_can_neither_decide_them_nor_add_devices() {
    let p = paired_with(Home::new("desk"), &[], &[]);
    let mut desk_daemon = p.daemon;
    let viewer = Home::new("viewer");
    let viewer_id = join_through(&p.desk, &viewer, "viewer", "viewer");
    expect_exact(
        &mut desk_daemon,
        &added_line("viewer", &viewer_id, "viewer"),
    );
    let _viewer_daemon = viewer.serve_with(&["--no-executor"], &[]);

    let sent = send(&p.phone, &["/sh echo approved", "--timeout", "10"]);
    let task = str_field(&sent, "task");
    let request = wait_until("the viewer to see the request", TASK_DEADLINE, || {
        let pending = viewer.json(&["approvals"]);
        array(&pending)
            .iter()
            .find(|a| a["task"] == task.as_str())
            .map(|a| str_field(a, "id"))
    });

    let out = viewer.run(&["approve", short(&request)]);
    let reason = out.failure();
    out.assert_one_line_error();
    assert!(
        reason.contains("may not decide approvals"),
        "the refusal says why: {reason}"
    );
    let still = viewer.json(&["approvals"]);
    assert!(
        array(&still).iter().any(|a| a["id"] == request.as_str()),
        "the request is still pending: {still:#}"
    );

    // Nor may it add devices.
    let out = viewer.run(&["pair", "--yes"]);
    let reason = out.failure();
    assert!(reason.contains("may not add devices"), "{reason}");

    // The phone may decide it.
    p.phone.json(&["approve", short(&request)]);
    let done = wait_task(&p.phone, &task, "the approved task to finish", |t| {
        t["status"] == "done"
    });
    assert_eq!(done["result"], "approved", "{done:#}");
    desk_daemon.terminate();
}

#[test]
fn with_two_desktops_a_task_runs_only_on_its_target() {
    let first = Home::new("desk");
    let policy = allow_shell(&first);
    let p = paired_with(first, &["--policy", path_str(&policy)], &[]);
    let mut first_daemon = p.daemon;
    let second = Home::new("desk2");
    let second_policy = allow_shell(&second);
    let second_id = join_through(&p.desk, &second, "desk2", "desktop");
    expect_exact(
        &mut first_daemon,
        &added_line("desk2", &second_id, "desktop"),
    );
    let _second_daemon = second.serve_with(&["--policy", path_str(&second_policy)], &[]);
    let workspace = |home: &Home| {
        let dir = home.path().join("workspace");
        fs::create_dir_all(&dir).expect("workspace");
        dir.canonicalize()
            .expect("resolve the workspace")
            .display()
            .to_string()
    };

    // The phone learns of the second desktop from the first.
    let out = p.phone.run(&["send", "hello", "--to", "desk2"]);
    let reason = out.failure();
    assert!(reason.contains("`errand sync`"), "{reason}");
    p.phone.json(&["sync", "--timeout", "10"]);
    let to_second = send(&p.phone, &["/sh pwd", "--to", "desk2", "--timeout", "10"]);
    assert_eq!(str_field(&to_second, "target"), second_id);
    let by_default = send(&p.phone, &["/sh pwd", "--timeout", "10"]);
    assert_eq!(
        str_field(&by_default, "target"),
        p.desk_id,
        "the space's first desktop is the default"
    );
    for (sent, home) in [(&to_second, &second), (&by_default, &p.desk)] {
        let task = str_field(sent, "task");
        let done = wait_task(&p.phone, &task, "the task to finish", |t| {
            t["status"] == "done"
        });
        assert_eq!(
            done["result"],
            workspace(home).as_str(),
            "it ran in its target's workspace: {done:#}"
        );
    }

    let out = p.phone.run(&["send", "hello", "--to", "phone"]);
    let reason = out.failure();
    assert!(reason.contains("only desktops run tasks"), "{reason}");
    first_daemon.terminate();
}
