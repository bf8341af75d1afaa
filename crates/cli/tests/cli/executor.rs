//! The desktop executor as the phone sees it: tasks sent from a phone home (a separate process
//! with its own home) run on the desktop (`up --yes`), under its policy, with approvals decided
//! on the phone, cancel, restart, parallel threads, screenshots under a real Xvfb, and a model
//! played by a local script server speaking the provider's wire format.
//!
//! Everything is asserted from the phone's side (`--json show`, `approvals`, `show --save`),
//! except what only the desktop machine can tell: whether a file was written there, whether a
//! process still runs there.

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use errand_tests::model_server::{
    Provider, RecordedRequest, ScriptServer, anthropic_text, anthropic_tool_use, openai_text,
    openai_tool_call,
};
use serde_json::{Value, json};

use crate::support::{Home, Paired, array, paired_with, path_str, send, str_field, wait_until};

mod guards;
mod model;
mod screen;

pub(crate) use model::{anthropic_tool_result, write_model_config};

/// How long a task may take to reach the state a test waits for (each poll of the phone is a
/// whole `errand show` process with a short sync).
const TASK_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Set-up and the phone's view.

/// A desktop started with `up --policy FILE` when `policy` is given (the file is written beside
/// its home), with `env` in the daemon's environment, and a phone paired with it.
pub(crate) fn setup(policy: Option<&str>, env: &[(&str, &str)]) -> (Paired, Option<PathBuf>) {
    setup_home(Home::new("desk"), policy, env)
}

pub(crate) fn setup_home(
    desk: Home,
    policy: Option<&str>,
    env: &[(&str, &str)],
) -> (Paired, Option<PathBuf>) {
    let file = policy.map(|text| {
        let file = desk.file("policy.toml");
        fs::write(&file, text).expect("write the policy file");
        file
    });
    let mut extra = Vec::new();
    if let Some(file) = &file {
        extra.extend(["--policy", path_str(file)]);
    }
    (paired_with(desk, &extra, env), file)
}

/// The desktop's workspace folder (the default: HOME/workspace), resolved.
pub(crate) fn workspace(desk: &Home) -> PathBuf {
    let dir = desk.path().join("workspace");
    fs::create_dir_all(&dir).expect("workspace");
    dir.canonicalize().expect("resolve the workspace")
}

/// The phone sends a task; returns (task id, thread id).
pub(crate) fn send_task(phone: &Home, prompt: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![prompt, "--timeout", "10"];
    args.extend_from_slice(extra);
    let sent = send(phone, &args);
    assert_eq!(
        sent["delivered"], true,
        "the desktop is online, so the task reaches it: {sent:#}"
    );
    (str_field(&sent, "task"), str_field(&sent, "thread"))
}

/// The task as the phone shows it (`errand --json show TASK` on the phone's home).
pub(crate) fn phone_show(phone: &Home, task: &str) -> Value {
    phone.json(&["show", task])
}

/// Polls the phone's view of a task until `ok` holds for it.
fn wait_phone(phone: &Home, task: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + TASK_DEADLINE;
    loop {
        let last = phone_show(phone, task);
        if ok(&last) {
            return last;
        }
        assert!(
            Instant::now() < end,
            "gave up after {TASK_DEADLINE:?} waiting for the phone to see {what}; last seen: {last:#}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn status(task: &Value) -> &str {
    task["status"].as_str().unwrap_or("")
}

/// Waits until the phone sees the task in `want`.
pub(crate) fn wait_status(phone: &Home, task: &str, want: &str) -> Value {
    wait_phone(phone, task, &format!("status {want}"), |t| {
        status(t) == want
    })
}

/// Waits until the phone sees the task ended (done, failed or cancelled).
pub(crate) fn wait_final(phone: &Home, task: &str) -> Value {
    wait_phone(phone, task, "the task ended", |t| {
        matches!(status(t), "done" | "failed" | "cancelled")
    })
}

pub(crate) fn error_text(task: &Value) -> String {
    task["error"].as_str().unwrap_or("").to_owned()
}

/// The approval requests the phone lists (`approvals --all --json`), for one task.
pub(crate) fn phone_approvals(phone: &Home, task: &str) -> Vec<Value> {
    let all = phone.json(&["approvals", "--all"]);
    array(&all)
        .iter()
        .filter(|a| a["task"] == task)
        .cloned()
        .collect()
}

pub(crate) fn progress_texts(task: &Value) -> Vec<String> {
    array(&task["progress"])
        .iter()
        .map(|p| str_field(p, "text"))
        .collect()
}

fn millis(task: &Value, key: &str) -> i64 {
    task[key]
        .as_i64()
        .unwrap_or_else(|| panic!("expected a time in {key:?}: {task:#}"))
}

// ---------------------------------------------------------------------------------------------
// Processes on the desktop machine.

/// The ids of processes running `sleep ARG` (directly, or as `sh -c sleep ARG`) in `cwd`. The
/// working directory ties them to this test's workspace, so another test run on this machine
/// cannot be mistaken for ours.
pub(crate) fn sleeps_in(arg: &str, cwd: &Path) -> Vec<u32> {
    let wanted = [format!("sleep {arg}"), format!("sh -c sleep {arg}")];
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = raw
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if !wanted.contains(&cmdline) {
            continue;
        }
        if fs::read_link(entry.path().join("cwd")).is_ok_and(|dir| dir == cwd) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// `sleep ARG` processes of a workspace that the desktop may leave behind (a SIGKILLed daemon
/// orphans its command; a failed cancel leaves it running), killed when the test ends whatever
/// its outcome. Only processes that still match at that moment are killed, so a recycled pid
/// is never hit.
pub(crate) struct Orphans {
    pub(crate) arg: &'static str,
    pub(crate) cwd: PathBuf,
}

impl Drop for Orphans {
    fn drop(&mut self) {
        for pid in sleeps_in(self.arg, &self.cwd) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1, 2, 10: approvals decided on the phone.

#[test]
fn a_shell_command_runs_after_the_phone_approves_it() {
    let (p, _) = setup(None, &[]);
    let (task, _) = send_task(&p.phone, "/sh echo hi", &[]);

    let waiting = wait_status(&p.phone, &task, "waiting_approval");
    assert!(waiting["result"].is_null(), "{waiting:#}");
    let listed = p.phone.json(&["approvals"]);
    let pending: Vec<&Value> = array(&listed)
        .iter()
        .filter(|a| a["task"] == task)
        .collect();
    assert_eq!(pending.len(), 1, "one request for the task: {listed:#}");
    let approval = pending[0];
    assert!(
        str_field(approval, "action").contains("echo hi"),
        "the request shows what would run: {approval:#}"
    );
    assert_eq!(str_field(approval, "class"), "shell", "{approval:#}");
    assert_eq!(str_field(approval, "state"), "pending", "{approval:#}");

    p.phone
        .run(&["approve", &str_field(approval, "id")])
        .success();
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(done["result"], "hi", "{done:#}");
    assert!(
        progress_texts(&done)
            .iter()
            .any(|t| t == "approved by phone"),
        "the progress says who approved: {done:#}"
    );
    let after = phone_approvals(&p.phone, &task);
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(str_field(&after[0], "state"), "approved", "{after:#?}");
    assert!(
        array(&p.phone.json(&["approvals"])).is_empty(),
        "nothing is left waiting"
    );
}

#[test]
fn a_denied_shell_command_never_runs() {
    let (p, _) = setup(None, &[]);
    let ws = workspace(&p.desk);
    let (task, _) = send_task(&p.phone, "/sh touch ran; echo no", &[]);

    wait_status(&p.phone, &task, "waiting_approval");
    let requests = phone_approvals(&p.phone, &task);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    p.phone
        .run(&["deny", &str_field(&requests[0], "id")])
        .success();

    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    assert!(
        error_text(&failed).contains("denied by phone"),
        "the error names who denied it: {failed:#}"
    );
    assert!(failed["result"].is_null(), "{failed:#}");
    assert!(
        !ws.join("ran").exists(),
        "the denied command ran: {} exists",
        ws.join("ran").display()
    );
    let after = phone_approvals(&p.phone, &task);
    assert_eq!(str_field(&after[0], "state"), "denied", "{after:#?}");
}

#[test]
fn watch_on_the_phone_prints_the_approval_request() {
    let (p, _) = setup(None, &[]);
    // `watch` without a running node opens the home itself and holds it, so the phone's other
    // commands could not run meanwhile: the phone runs its node, and every command (watch,
    // send, deny) goes through it, as an app would.
    let _phone_node = p.phone.serve();
    let mut watch = p.phone.spawn(&["--json", "watch"]);
    // The watch prints nothing until something happens: a harmless task (a listing of the
    // workspace, which needs no approval) is sent until a line shows that it listens.
    let listening = Instant::now() + TASK_DEADLINE;
    loop {
        send_task(&p.phone, "/ls", &[]);
        if watch.next_line_within(Duration::from_secs(2)).is_some() {
            break;
        }
        assert!(
            Instant::now() < listening,
            "the watch printed nothing: {}",
            watch.stderr()
        );
    }
    let (task, _) = send_task(&p.phone, "/sh echo hi", &[]);
    let line = watch.expect_line("an approval_requested event for the task", |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|ev| ev["event"] == "approval_requested" && ev["task"] == task.as_str())
    });
    let event: Value = serde_json::from_str(&line).expect("JSON event");
    assert!(
        str_field(&event, "action").contains("echo hi"),
        "the event says what is asked: {event:#}"
    );
    for line in &watch.seen {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|v| v["event"].is_string()),
            "every watch line is one JSON event: {line:?}"
        );
    }
    // Settle the request so the desktop is not left waiting.
    p.phone
        .run(&["deny", &str_field(&event, "approval")])
        .success();
    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
}

// ---------------------------------------------------------------------------------------------
// 3, 4: the policy.

#[test]
fn a_policy_that_denies_shell_refuses_without_asking() {
    let (p, _) = setup(Some("[actions]\nshell = \"deny\"\n"), &[]);
    let (task, _) = send_task(&p.phone, "/sh echo x", &[]);
    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    assert!(
        error_text(&failed).contains("denied by policy"),
        "the error says the policy refused it: {failed:#}"
    );
    assert!(failed["result"].is_null(), "{failed:#}");
    let requests = phone_approvals(&p.phone, &task);
    assert!(
        requests.is_empty(),
        "a denied class is not asked about: {requests:#?}"
    );
}

#[test]
fn files_outside_the_allowed_folders_are_neither_read_nor_written() {
    let (p, _) = setup(None, &[]);
    let ws = workspace(&p.desk);
    // A folder outside every allowed folder, beside the desktop's home.
    let outside_dir = p.desk.file("elsewhere");
    fs::create_dir_all(&outside_dir).expect("outside folder");
    fs::write(outside_dir.join("secret.txt"), "top secret").expect("secret");
    std::os::unix::fs::symlink("/etc/passwd", ws.join("pw")).expect("symlink to /etc/passwd");
    std::os::unix::fs::symlink(&outside_dir, ws.join("out")).expect("symlink to a folder");
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_line = passwd.lines().next().unwrap_or("root:x:0:0").to_owned();
    let depth = ws.components().count();
    let to_root = "../".repeat(depth);

    let refused = [
        "/read ../../etc/passwd".to_owned(),
        format!("/read {to_root}etc/passwd"),
        "/read /etc/passwd".to_owned(),
        "/read pw".to_owned(),
        "/read out/secret.txt".to_owned(),
        "/ls out".to_owned(),
        "/write ../outside.txt x".to_owned(),
        "/write out/planted.txt x".to_owned(),
    ];
    let tasks: Vec<String> = refused
        .iter()
        .map(|prompt| send_task(&p.phone, prompt, &[]).0)
        .collect();
    for (prompt, task) in refused.iter().zip(&tasks) {
        let failed = wait_final(&p.phone, task);
        assert_eq!(status(&failed), "failed", "{prompt}: {failed:#}");
        assert!(
            error_text(&failed).contains("denied by policy"),
            "{prompt}: the error is the policy's: {failed:#}"
        );
        let shown = failed.to_string();
        assert!(
            !shown.contains(&passwd_line) && !shown.contains("top secret"),
            "{prompt}: content from outside reached the phone: {failed:#}"
        );
        assert!(
            phone_approvals(&p.phone, task).is_empty(),
            "{prompt}: nothing to ask about"
        );
    }
    assert!(!p.desk.path().join("outside.txt").exists());
    assert!(!outside_dir.join("planted.txt").exists());

    // Inside the workspace both work.
    let (write, _) = send_task(&p.phone, "/write notes.txt hello", &[]);
    let written = wait_final(&p.phone, &write);
    assert_eq!(status(&written), "done", "{written:#}");
    assert_eq!(
        fs::read_to_string(ws.join("notes.txt")).expect("notes.txt"),
        "hello"
    );
    let (read, _) = send_task(&p.phone, "/read notes.txt", &[]);
    let read = wait_final(&p.phone, &read);
    assert_eq!(status(&read), "done", "{read:#}");
    assert_eq!(read["result"], "hello", "{read:#}");
}

// ---------------------------------------------------------------------------------------------
// 5, 6: cancel and restart.

#[test]
fn cancel_from_the_phone_stops_the_running_command() {
    let (p, _) = setup(Some("[actions]\nshell = \"allow\"\n"), &[]);
    let ws = workspace(&p.desk);
    let _leftover = Orphans {
        arg: "37.25",
        cwd: ws.clone(),
    };
    let (task, _) = send_task(&p.phone, "/sh sleep 37.25", &[]);
    wait_status(&p.phone, &task, "running");
    wait_until("the sleep to start", TASK_DEADLINE, || {
        (!sleeps_in("37.25", &ws).is_empty()).then_some(())
    });

    let asked = Instant::now();
    p.phone.run(&["cancel", &task]).success();
    let cancelled = wait_final(&p.phone, &task);
    let took = asked.elapsed();
    assert_eq!(status(&cancelled), "cancelled", "{cancelled:#}");
    assert!(
        took < Duration::from_secs(15),
        "cancel took {took:?}, the command alone would take 37 s"
    );
    assert!(cancelled["result"].is_null(), "{cancelled:#}");
    wait_until("the sleep to be gone", Duration::from_secs(5), || {
        sleeps_in("37.25", &ws).is_empty().then_some(())
    });
}

#[test]
fn a_task_interrupted_by_a_crash_fails_its_command_is_killed_and_it_is_not_run_again() {
    let (p, policy) = setup(Some("[actions]\nshell = \"allow\"\n"), &[]);
    let policy = policy.expect("policy file");
    let ws = workspace(&p.desk);
    // The command runs in its own process group, so a SIGKILL of the daemon leaves it running
    // as an orphan until the restarted executor kills it (the guard cleans up if it does not).
    let _orphans = Orphans {
        arg: "41.5",
        cwd: ws.clone(),
    };
    let (task, _) = send_task(&p.phone, "/sh sleep 41.5", &[]);
    wait_status(&p.phone, &task, "running");
    wait_until("the sleep to start", TASK_DEADLINE, || {
        (!sleeps_in("41.5", &ws).is_empty()).then_some(())
    });

    p.daemon.kill9();
    let _daemon = p.desk.serve_with(&["--policy", path_str(&policy)], &[]);

    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    assert!(
        error_text(&failed).contains("interrupted"),
        "the error says it was interrupted: {failed:#}"
    );
    let runs = progress_texts(&failed)
        .iter()
        .filter(|t| t.starts_with("running "))
        .count();
    assert_eq!(runs, 1, "it ran once: {failed:#}");
    // The orphan is gone and nothing ran it again.
    wait_until("the orphaned command to be killed", TASK_DEADLINE, || {
        sleeps_in("41.5", &ws).is_empty().then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// 7: threads in parallel, tasks of a thread in order.

#[test]
fn threads_run_in_parallel_and_a_thread_runs_in_order() {
    let (p, _) = setup(Some("[actions]\nshell = \"allow\"\n"), &[]);
    // Each waits (for at most 20 s) for the file the other creates: both finish only if they
    // ran at the same time.
    let wait_for = |mine: &str, theirs: &str| {
        format!(
            "/sh touch {mine}; i=0; while [ ! -e {theirs} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; [ -e {theirs} ] && echo {mine} saw {theirs}"
        )
    };
    let (a, thread_a) = send_task(&p.phone, &wait_for("a", "b"), &[]);
    let (b, thread_b) = send_task(&p.phone, &wait_for("b", "a"), &[]);
    assert_ne!(
        thread_a, thread_b,
        "two sends without --thread: two threads"
    );

    // One thread: the second task starts only after the first ended.
    let (first, thread) = send_task(&p.phone, "/sh sleep 0.3; touch first-done; echo first", &[]);
    let (second, same) = send_task(
        &p.phone,
        "/sh test -e first-done && echo second",
        &["--thread", &thread],
    );
    assert_eq!(same, thread);

    let a = wait_final(&p.phone, &a);
    let b = wait_final(&p.phone, &b);
    assert_eq!(status(&a), "done", "{a:#}");
    assert_eq!(a["result"], "a saw b", "{a:#}");
    assert_eq!(status(&b), "done", "{b:#}");
    assert_eq!(b["result"], "b saw a", "{b:#}");

    let first = wait_final(&p.phone, &first);
    let second = wait_final(&p.phone, &second);
    assert_eq!(status(&first), "done", "{first:#}");
    assert_eq!(status(&second), "done", "{second:#}");
    assert_eq!(second["result"], "second", "{second:#}");
    assert!(
        millis(&second, "started") >= millis(&first, "finished"),
        "the second task of the thread started before the first finished: {first:#} {second:#}"
    );
}
