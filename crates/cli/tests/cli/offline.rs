//! Offline first: changes made while the other device is away arrive when both are back.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Home, array, is_task_line, paired, send, short, str_field, wait_until};

fn addrs(home: &Home) -> Value {
    home.json(&["status"])["addrs"].clone()
}

fn thread_ids(home: &Home) -> Vec<String> {
    let threads = home.json(&["threads"]);
    let mut ids: Vec<String> = array(&threads).iter().map(|t| str_field(t, "id")).collect();
    ids.sort();
    ids
}

#[test]
fn a_task_sent_while_the_desktop_is_down_arrives_after_restart() {
    let p = paired();
    let before = addrs(&p.desk);
    assert!(
        !array(&before).is_empty(),
        "the desktop listens somewhere: {before}"
    );
    p.daemon.terminate();

    let sent = send(&p.phone, &["while away", "--timeout", "1"]);
    assert_eq!(sent["delivered"], false, "{sent:#}");
    assert_eq!(str_field(&sent, "target"), p.desk_id);
    assert_eq!(str_field(&sent, "target_name"), "desk");
    let task = str_field(&sent, "task");
    assert_eq!(p.phone.task_ids(), vec![task.clone()], "the phone keeps it");

    let mut daemon = p.desk.serve();
    assert_eq!(
        addrs(&p.desk),
        before,
        "the desktop listens on the same port after a restart"
    );
    let synced = p.phone.json(&["sync", "--timeout", "10"]);
    let desk = array(&synced)
        .iter()
        .find(|e| e["id"] == p.desk_id.as_str())
        .unwrap_or_else(|| panic!("desk in {synced:#}"));
    assert_eq!(desk["synced"], true, "{synced:#}");
    daemon.expect_line("the task's event", |l| is_task_line(l, &task, "while away"));
    wait_until(
        "the desktop to list the task",
        Duration::from_secs(20),
        || p.desk.task_ids().contains(&task).then_some(()),
    );
    let shown = p.desk.json(&["show", short(&task)]);
    assert_eq!(str_field(&shown, "prompt"), "while away");
    assert_eq!(str_field(&shown, "target"), p.desk_id);
    assert_eq!(
        str_field(&shown, "created_by"),
        p.phone_id,
        "the desktop knows who sent it"
    );
    daemon.terminate();
}

#[test]
fn edits_made_apart_converge() {
    let p = paired();
    // One thread both sides know about.
    let first = send(&p.phone, &["shared start", "--timeout", "5"]);
    assert_eq!(first["delivered"], true, "{first:#}");
    let shared = str_field(&first, "thread");
    p.daemon.terminate();

    // Apart: the desktop (no daemon: the command opens the home itself) and the phone both
    // add to the shared thread and start threads of their own.
    let desk_side = send(&p.desk, &["desk side", "--thread", short(&shared)]);
    assert_eq!(
        desk_side["delivered"], true,
        "a desktop holds its own tasks: {desk_side:#}"
    );
    let desk_alone = send(&p.desk, &["desk alone"]);
    let out = p.phone.run(&[
        "send",
        "phone side",
        "--thread",
        short(&shared),
        "--timeout",
        "1",
    ]);
    let human = out.success();
    assert!(human.contains("not delivered yet"), "{human}");
    let phone_alone = send(&p.phone, &["phone alone", "--timeout", "1"]);
    assert_eq!(phone_alone["delivered"], false);

    let phone_tasks = p.phone.task_ids();
    let desk_tasks = p.desk.task_ids();
    assert_eq!(phone_tasks.len(), 3, "phone: {phone_tasks:?}");
    assert_eq!(desk_tasks.len(), 3, "desk: {desk_tasks:?}");
    for s in [&first, &phone_alone] {
        assert!(phone_tasks.contains(&str_field(s, "task")));
    }
    for s in [&first, &desk_side, &desk_alone] {
        assert!(desk_tasks.contains(&str_field(s, "task")));
    }
    let mut expected: Vec<String> = phone_tasks.iter().chain(&desk_tasks).cloned().collect();
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), 5, "{expected:?}");

    // Together again.
    let daemon = p.desk.serve();
    p.phone.json(&["sync", "--timeout", "10"]);
    wait_until(
        "both homes to list all five tasks",
        Duration::from_secs(20),
        || (p.desk.task_ids() == expected && p.phone.task_ids() == expected).then_some(()),
    );
    let threads = thread_ids(&p.desk);
    assert!(threads.contains(&shared), "{threads:?}");
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert_eq!(thread_ids(&p.phone), threads);
    for home in [&p.desk, &p.phone] {
        let in_shared = home.json(&["tasks", "--thread", short(&shared)]);
        let mut prompts: Vec<String> = array(&in_shared)
            .iter()
            .map(|t| str_field(t, "prompt"))
            .collect();
        prompts.sort();
        assert_eq!(prompts, ["desk side", "phone side", "shared start"]);
    }
    daemon.terminate();
}
