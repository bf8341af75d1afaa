//! `history` reads as a log with device names; `at` shows a document as it was.

use serde_json::Value;

use crate::support::{array, paired, send, short, str_field};

fn entry<'a>(history: &'a Value, message: &str) -> &'a Value {
    array(history)
        .iter()
        .find(|e| e["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} in history {history:#}"))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v:#}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// The tasks of a thread document as `at` prints it: spread over the buckets under `tasks`.
fn tasks_in(doc: &Value) -> Value {
    let mut all = serde_json::Map::new();
    for bucket in doc["tasks"].as_object().expect("a tasks map").values() {
        for (id, task) in bucket.as_object().expect("a bucket map") {
            all.insert(id.clone(), task.clone());
        }
    }
    Value::Object(all)
}

#[test]
fn index_history_reads_as_a_log_and_at_shows_the_past() {
    let p = paired();
    let sent = send(&p.phone, &["look back", "--timeout", "5"]);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    let thread = str_field(&sent, "thread");

    let history = p.desk.json(&["history", "--doc", "index"]);
    assert_eq!(
        p.desk.json(&["history"]),
        history,
        "the index is the default document"
    );
    let created = entry(&history, "space created by desk");
    assert_eq!(str_field(created, "device"), "desk");
    assert_eq!(str_field(created, "device_id"), p.desk_id);
    assert!(
        str_field(created, "actor").starts_with(&p.desk_id),
        "a device writes as an actor of its own: {created:#}"
    );
    let added = entry(&history, "device phone added as phone by desk");
    assert_eq!(str_field(added, "device"), "desk");
    let listed = entry(&history, &format!("thread {} listed", short(&thread)));
    assert_eq!(str_field(listed, "device"), "phone");
    assert_eq!(str_field(listed, "device_id"), p.phone_id);
    for e in array(&history) {
        assert_eq!(str_field(e, "hash").len(), 64, "{e:#}");
        assert!(e["time"].as_i64().is_some_and(|t| t > 0), "{e:#}");
        assert!(e["seq"].as_u64().is_some_and(|s| s >= 1), "{e:#}");
    }

    // --limit N: the newest N.
    let last = p.desk.json(&["history", "--limit", "1"]);
    assert_eq!(array(&last).len(), 1);
    assert_eq!(last[0], *array(&history).last().expect("history"));

    // At the first change: only the desktop, no threads.
    let then = p.desk.run(&["at", &str_field(created, "hash")]).json();
    assert_eq!(keys(&then["members"]), [p.desk_id.as_str()]);
    assert_eq!(then["members"][&p.desk_id]["name"], "desk");
    assert!(keys(&then["threads"]).is_empty(), "{then:#}");

    // At every change: the phone and the thread.
    let all: Vec<String> = array(&history)
        .iter()
        .map(|e| str_field(e, "hash"))
        .collect();
    let now = p.desk.run(&["at", &all.join(",")]).json();
    let mut members = vec![p.desk_id.clone(), p.phone_id.clone()];
    members.sort();
    assert_eq!(keys(&now["members"]), members);
    assert_eq!(now["members"][&p.phone_id]["role"], "phone");
    assert_eq!(keys(&now["threads"]), [thread.as_str()]);

    // The phone holds the same history.
    let phone_history = p.phone.json(&["history"]);
    let phone_listed = entry(&phone_history, &format!("thread {} listed", short(&thread)));
    assert_eq!(phone_listed["hash"], listed["hash"]);

    // For people: one line per commit with the device name.
    let human = p.desk.run(&["history"]);
    let human = human.success();
    assert!(
        human
            .lines()
            .any(|l| l.contains("desk") && l.contains("space created by desk")),
        "{human}"
    );
    p.daemon.terminate();
}

#[test]
fn thread_history_shows_who_queued_the_task() {
    let p = paired();
    let sent = send(&p.phone, &["remember this", "--timeout", "5"]);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    let thread = str_field(&sent, "thread");
    let task = str_field(&sent, "task");
    let prefix = &thread[..6];

    let again = send(
        &p.phone,
        &["and this", "--thread", prefix, "--timeout", "5"],
    );
    assert_eq!(again["delivered"], true, "{again:#}");
    let second = str_field(&again, "task");

    let history = p.desk.json(&["history", "--doc", prefix]);
    // The phone's two commits (a new thread comes with its first task, in one change), with
    // the desktop's own between or after them (when it runs the tasks).
    let phone_part: Vec<(String, String)> = array(&history)
        .iter()
        .filter(|e| e["device"] != "desk")
        .map(|e| (str_field(e, "message"), str_field(e, "device")))
        .collect();
    assert_eq!(
        phone_part,
        [
            (
                format!(
                    "thread {} created, task {} queued",
                    short(&thread),
                    short(&task)
                ),
                "phone".to_owned()
            ),
            (
                format!("task {} queued", short(&second)),
                "phone".to_owned()
            ),
        ],
        "{history:#}"
    );
    assert_eq!(
        history[0]["device"], "phone",
        "the thread's first change is the phone's: {history:#}"
    );

    let created = str_field(&history[0], "hash");
    let queued = str_field(entry(&history, &phone_part[1].0), "hash");
    let before = p.desk.run(&["at", &created, "--doc", prefix]).json();
    assert_eq!(before["thread"], thread.as_str());
    let tasks = tasks_in(&before);
    assert_eq!(keys(&tasks), [task.as_str()], "{before:#}");
    assert_eq!(tasks[&task]["prompt"], "remember this");
    assert_eq!(tasks[&task]["status"], "queued");
    let after = p.desk.run(&["at", &queued, "--doc", prefix]).json();
    let tasks = tasks_in(&after);
    let mut both = vec![task.clone(), second.clone()];
    both.sort();
    assert_eq!(keys(&tasks), both, "{after:#}");
    assert_eq!(tasks[&second]["prompt"], "and this");
    assert_eq!(tasks[&second]["status"], "queued");

    // A change of another document is not in this one.
    let index = p.desk.json(&["history", "--limit", "1"]);
    let out = p
        .desk
        .run(&["at", &str_field(&index[0], "hash"), "--doc", prefix]);
    let reason = out.failure();
    assert!(reason.contains("is not in document"), "{reason}");
    out.assert_one_line_error();
    p.daemon.terminate();
}

/// A member writes a map nested 20,000 levels deep into a thread's root, with its own key: a
/// valid 77 KB-ish document that anything recursing over its values cannot walk. The desktop
/// refuses the change (a thread's root is written by its first change only), says so, drops
/// the member and stays up with the task intact; the member's own copy, which holds the
/// change, shows the nesting cut at the documented depth in `errand at`.
#[test]
fn a_document_nested_twenty_thousand_levels_deep_is_refused_and_shown_cut_where_it_is() {
    let mut p = paired();
    let sent = send(&p.phone, &["deep", "--timeout", "5"]);
    let thread = str_field(&sent, "thread");
    let task = str_field(&sent, "task");
    errand_tests::hostile::write_deep_nesting(&p.phone.path(), &p.phone_id, &thread, 20_000);
    let _ = p.phone.run(&["sync", "--timeout", "5"]);
    let line = p.daemon.expect_line("the desktop refuses the change", |l| {
        l.contains("dropped") && l.contains("skeleton")
    });
    assert!(line.contains(short(&p.phone_id)), "{line}");
    let history = p.desk.json(&["history", "--doc", &thread]);
    assert!(
        array(&history)
            .iter()
            .all(|e| e["message"] != "nested deep"),
        "{history:#}"
    );
    let history = p.phone.json(&["history", "--doc", &thread]);
    let hash = array(&history)
        .iter()
        .find(|e| e["message"] == "nested deep")
        .map(|e| str_field(e, "hash"))
        .expect("the writer holds its change");
    let doc = p.phone.json(&["at", &hash, "--doc", &thread]);
    let mut value = &doc["deep"];
    let mut depth = 2; // the root, then `deep`
    while let Some(next) = value.get("deeper") {
        value = next;
        depth += 1;
    }
    assert_eq!(
        value.as_str(),
        Some(errand_sync::schema::TOO_DEEP),
        "the nesting is cut with a note"
    );
    assert_eq!(depth, errand_sync::schema::MAX_JSON_DEPTH + 1);
    let shown = p.desk.json(&["show", &task]);
    assert_eq!(shown["prompt"], "deep", "{shown:#}");
    assert!(p.daemon.is_running(), "the desktop's daemon died");
}
