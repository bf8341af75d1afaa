//! A change that was reported done survives a crash (`kill -9`) of the process that holds it.

use std::time::Duration;

use crate::support::{paired, send, str_field, wait_until};

#[test]
fn acknowledged_tasks_survive_sigkill_of_the_desktop() {
    let p = paired();
    let mut ids = Vec::new();
    for i in 0..10 {
        // From the phone: acknowledged once the desktop holds it.
        let sent = send(&p.phone, &[&format!("phone task {i}"), "--timeout", "5"]);
        assert_eq!(sent["delivered"], true, "{sent:#}");
        ids.push(str_field(&sent, "task"));
        // On the desktop, through its running daemon's control socket.
        let sent = send(&p.desk, &[&format!("desk task {i}")]);
        assert_eq!(sent["delivered"], true, "{sent:#}");
        ids.push(str_field(&sent, "task"));
    }
    ids.sort();
    assert_eq!(p.desk.task_ids(), ids, "listed before the crash");

    p.daemon.kill9();
    let daemon = p.desk.serve();
    assert_eq!(
        p.desk.task_ids(),
        ids,
        "every acknowledged task after kill -9"
    );
    daemon.terminate();
}

#[test]
fn a_phone_node_killed_keeps_its_own_tasks() {
    let p = paired();
    p.daemon.terminate();
    // The phone runs a node of its own; the desktop is away.
    let phone_node = p.phone.serve();
    let sent = send(&p.phone, &["kept on the phone", "--timeout", "0"]);
    assert_eq!(sent["delivered"], false, "{sent:#}");
    let task = str_field(&sent, "task");
    phone_node.kill9();

    assert_eq!(p.phone.task_ids(), vec![task.clone()]);
    // And it still goes out once the desktop is back.
    let desk = p.desk.serve();
    p.phone.json(&["sync", "--timeout", "10"]);
    wait_until(
        "the desktop to hold the task",
        Duration::from_secs(20),
        || (p.desk.task_ids() == [task.clone()]).then_some(()),
    );
    desk.terminate();
}
