//! Notifications reach a phone whose app is not running: the phone registers an endpoint (here
//! a local stand-in for ntfy's publish API), and the desktop that runs its task POSTs there when
//! the task needs an approval and when it is done, with no task content unless asked; each
//! delivery's outcome shows in `errand show`, failures included.

use std::time::Duration;

use errand_tests::ntfy::Ntfy;
use serde_json::Value;

use crate::executor::setup_home;
use crate::support::{Home, array, send, short, str_field, wait_until};

const POLICY: &str = "allow_private_network = true\n\n[actions]\nshell = \"ask\"\n";

/// The task's notices as the phone sees them, once there are `n`.
fn notices(phone: &Home, task: &str, n: usize) -> Vec<Value> {
    wait_until(
        "the phone sees the notification outcomes",
        Duration::from_secs(30),
        || {
            let shown = phone.json(&["show", task]);
            let list = shown["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (list.len() >= n).then_some(list)
        },
    )
}

#[test]
fn an_approval_request_and_a_finished_task_are_posted_without_their_content() {
    let ntfy = Ntfy::start(false);
    let (p, _) = setup_home(Home::new("desk"), Some(POLICY), &[]);
    let url = ntfy.url("errand-phone");
    let added = p
        .phone
        .json(&["notify", "add", &url, "--events", "done,approval"]);
    assert_eq!(added["url"], url.as_str());
    let listed = p.phone.json(&["notify", "list"]);
    assert_eq!(array(&listed).len(), 1, "{listed:#}");
    // The phone can try it itself.
    let tried = p.phone.run(&["notify", "test"]);
    assert!(
        tried.success().contains("delivered (HTTP 200)"),
        "{}",
        tried.success()
    );
    ntfy.wait_for(Duration::from_secs(5), |m| {
        m.message == "errand test notification"
    });

    let sent = send(&p.phone, &["/sh echo secret-output", "--timeout", "10"]);
    let task = str_field(&sent, "task");
    let asked = ntfy.wait_for(Duration::from_secs(30), |m| {
        m.message.contains(short(&task)) && m.message.contains("approval")
    });
    assert_eq!(asked.topic, "errand-phone");
    assert_eq!(asked.title.as_deref(), Some("errand"));
    assert!(!asked.message.contains("echo"), "{asked:?}");

    let requests = wait_until(
        "the phone sees the request",
        Duration::from_secs(20),
        || {
            let r = p.phone.json(&["approvals"]);
            (!array(&r).is_empty()).then_some(r)
        },
    );
    p.phone
        .run(&["approve", &str_field(&array(&requests)[0], "id")])
        .success();
    let done = ntfy.wait_for(Duration::from_secs(30), |m| {
        m.message.contains(short(&task)) && m.message.contains("done")
    });
    assert!(!done.message.contains("secret-output"), "{done:?}");

    let list = notices(&p.phone, &task, 2);
    for n in &list {
        assert_eq!(n["delivered"], true, "{n:#}");
        assert_eq!(n["outcome"], "HTTP 200", "{n:#}");
        assert_eq!(n["device"], p.phone_id.as_str());
    }
    let shown = p.phone.run(&["show", &task]);
    assert!(
        shown.success().contains("notified at"),
        "{}",
        shown.success()
    );
    p.daemon.terminate();
}

#[test]
fn an_endpoint_that_refuses_is_retried_and_its_failure_shows() {
    let ntfy = Ntfy::start(true);
    let (p, _) = setup_home(
        Home::new("desk"),
        Some("allow_private_network = true\n\n[actions]\nshell = \"allow\"\n"),
        &[],
    );
    // Bad input first: a clear one-line error, nothing registered.
    let out = p.phone.run(&["notify", "add", "ftp://example.org/x"]);
    assert!(out.failure().contains("not an http"), "{}", out.failure());
    out.assert_one_line_error();
    let out = p
        .phone
        .run(&["notify", "add", &ntfy.url("t"), "--events", "done,bogus"]);
    assert!(out.failure().contains("unknown event"), "{}", out.failure());
    out.assert_one_line_error();
    assert!(array(&p.phone.json(&["notify", "list"])).is_empty());

    let added = p.phone.json(&["notify", "add", &ntfy.url("t")]);
    let sent = send(&p.phone, &["/sh echo hi", "--timeout", "10"]);
    let task = str_field(&sent, "task");
    let list = notices(&p.phone, &task, 1);
    assert_eq!(list[0]["delivered"], false, "{list:#?}");
    assert_eq!(list[0]["outcome"], "HTTP 500 (after 3 attempts)");
    assert_eq!(ntfy.attempts(), 3);
    let shown = p.phone.run(&["show", &task]);
    assert!(
        shown.success().contains("notification failed"),
        "{}",
        shown.success()
    );

    let tried = p.phone.run(&["notify", "test"]);
    assert!(
        tried.failure().contains("1 of 1 endpoints did not take"),
        "{}",
        tried.failure()
    );
    assert!(
        tried.stdout.contains("failed: HTTP 500"),
        "{}",
        tried.stdout
    );

    // Removed, it gets nothing more.
    p.phone
        .run(&["notify", "remove", &str_field(&added, "id")])
        .success();
    assert!(array(&p.phone.json(&["notify", "list"])).is_empty());
    p.daemon.terminate();
}
