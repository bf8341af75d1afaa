//! Helpers: device homes in temp dirs, one-shot commands with a deadline, daemons whose stdout
//! is read line by line, and waiting on conditions without fixed sleeps.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long a one-shot command may take before the test calls it hung.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(40);
/// How long a daemon may take to print an expected line.
pub const LINE_DEADLINE: Duration = Duration::from_secs(20);
/// Interval between polls of a condition (inside a deadline loop).
const POLL: Duration = Duration::from_millis(100);

/// `errand`, run in network namespace `netns` if given.
fn errand(netns: Option<&str>) -> Command {
    let bin = env!("CARGO_BIN_EXE_errand");
    let mut cmd = match netns {
        None => Command::new(bin),
        Some(ns) => {
            // `ip netns exec` execs errand in place, so the child's pid is errand's.
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, bin]);
            cmd
        }
    };
    match netns {
        // Loopback only, nothing announced on the LAN.
        None => cmd
            .env("ERRAND_BIND", "127.0.0.1:0")
            .env("ERRAND_NO_MDNS", "true"),
        // A host of its own: every interface there, found by mDNS.
        Some(_) => cmd
            .env("ERRAND_BIND", "0.0.0.0:0")
            .env_remove("ERRAND_NO_MDNS"),
    };
    // Relays off, default logging, nothing inherited from the developer's shell.
    cmd.env_remove("ERRAND_HOME")
        .env_remove("ERRAND_RELAY")
        .env_remove("ERRAND_RELAY_ONLY")
        .env_remove("ERRAND_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// One device home (in its own temp dir, with room beside it for ticket and PNG files).
#[derive(Debug)]
pub struct Home {
    dir: tempfile::TempDir,
    label: &'static str,
    /// The network namespace its processes run in (a LAN host), if not the test's own.
    netns: Option<String>,
}

impl Home {
    pub fn new(label: &'static str) -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix(&format!("errand-cli-{label}-"))
                .tempdir()
                .expect("temp dir"),
            label,
            netns: None,
        }
    }

    /// A home whose processes run in network namespace `netns`, listening on every interface
    /// there and announcing themselves by mDNS.
    pub fn in_netns(label: &'static str, netns: &str) -> Home {
        Home {
            netns: Some(netns.to_owned()),
            ..Home::new(label)
        }
    }

    /// The `--home` directory (created by errand itself on first use).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A file beside the home, for tickets and QR codes.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = errand(self.netns.as_deref());
        cmd.arg("--home").arg(self.path()).args(args);
        cmd
    }

    /// Runs `errand --home HOME ARGS...` to completion (or panics after [`COMMAND_DEADLINE`]).
    pub fn run(&self, args: &[&str]) -> Out {
        run(self.label, self.command(args), COMMAND_DEADLINE)
    }

    /// Runs a command under a clock shifted by `shift` (libfaketime's syntax: `+2h`, `-1h`),
    /// as on a device whose clock is that far off.
    pub fn run_skewed(&self, shift: &str, args: &[&str]) -> Out {
        let errand = self.command(args);
        let mut cmd = Command::new("faketime");
        cmd.arg("-f")
            .arg(shift)
            .arg(errand.get_program())
            .args(errand.get_args())
            .stdin(Stdio::null());
        for (key, value) in errand.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        run(self.label, cmd, COMMAND_DEADLINE)
    }

    /// [`Home::run_skewed`] for a command that must succeed and print JSON.
    pub fn json_skewed(&self, shift: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run_skewed(shift, &all).json()
    }

    /// The pid that the process holding this home wrote, if any.
    pub fn holder_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path().join("errand.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Runs a command that must succeed and print JSON; returns the JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(&all).json()
    }

    /// Runs a command whose stdout is closed before it prints anything.
    pub fn run_with_stdout_closed(&self, args: &[&str]) -> Out {
        let mut cmd = self.command(args);
        let what = describe_cmd(self.label, &cmd);
        let mut child = KillOnDrop(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        );
        drop(child.0.stdout.take());
        let stderr = collect(child.0.stderr.take().expect("piped"));
        let end = Instant::now() + COMMAND_DEADLINE;
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < end, "{what} hung");
            thread::sleep(Duration::from_millis(10));
        };
        Out {
            what,
            status,
            stdout: String::new(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Starts a long-running command (`up`, `serve`, `pair`) and reads its stdout.
    pub fn spawn(&self, args: &[&str]) -> Daemon {
        Daemon::spawn(self.label, self.command(args))
    }

    /// Starts a long-running command with extra environment variables (e.g. `DISPLAY`, an API
    /// key for the model), set on that process only.
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        Daemon::spawn(self.label, cmd)
    }

    /// `errand up --name NAME --yes` with ticket and PNG files beside the home; returns once it
    /// serves, with the ticket text.
    pub fn up(&self, name: &str) -> (Daemon, String) {
        self.up_with(name, &[], &[])
    }

    /// [`Home::up`] with extra arguments (`--policy FILE`) and environment variables.
    pub fn up_with(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> (Daemon, String) {
        let ticket_file = self.file("ticket.txt");
        let png = self.file("qr.png");
        let mut args = vec![
            "up",
            "--name",
            name,
            "--yes",
            "--ticket-file",
            path_str(&ticket_file),
            "--qr-png",
            path_str(&png),
        ];
        args.extend_from_slice(extra);
        let mut daemon = self.spawn_env(&args, env);
        daemon.expect_line("the serving line", |l| l.starts_with("serving as "));
        let ticket = read_ticket(&ticket_file);
        (daemon, ticket)
    }

    /// `errand serve`; returns once it serves.
    pub fn serve(&self) -> Daemon {
        self.serve_with(&[], &[])
    }

    /// [`Home::serve`] with extra arguments (`--policy FILE`) and environment variables.
    pub fn serve_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let mut daemon = self.spawn_env(&args, env);
        daemon.expect_line("the serving line", |l| l.starts_with("serving as "));
        daemon
    }

    /// This home's device id.
    pub fn device_id(&self) -> String {
        str_field(&self.json(&["status"]), "device")
    }

    /// The (name, role) of every device this home lists, sorted.
    pub fn device_names(&self) -> Vec<(String, String)> {
        let devices = self.json(&["devices"]);
        let mut out: Vec<(String, String)> = array(&devices)
            .iter()
            .map(|d| (str_field(d, "name"), str_field(d, "role")))
            .collect();
        out.sort();
        out
    }

    /// The task ids this home lists, sorted.
    pub fn task_ids(&self) -> Vec<String> {
        let tasks = self.json(&["tasks"]);
        let mut ids: Vec<String> = array(&tasks).iter().map(|t| str_field(t, "id")).collect();
        ids.sort();
        ids
    }

    /// Asserts that this home belongs to no space.
    pub fn assert_no_space(&self) {
        let status = self.json(&["status"]);
        assert!(
            status["space"].is_null(),
            "{} should have no space, but status says {status:#}",
            self.label
        );
        assert!(status["role"].is_null(), "{status:#}");
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

pub fn read_ticket(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read ticket file {}: {e}", path.display()));
    text.trim().to_owned()
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "{}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts exit code 0; returns stdout.
    pub fn success(&self) -> &str {
        assert!(self.status.success(), "command failed: {}", self.describe());
        &self.stdout
    }

    /// Asserts exit code 0 and parses stdout as JSON.
    pub fn json(&self) -> Value {
        let stdout = self.success();
        serde_json::from_str(stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.describe()))
    }

    /// Asserts a non-zero exit with a reason on stderr; returns the reason (the text after
    /// `errand: ` on the last such line). The one-line rule is checked by
    /// [`Out::assert_one_line_error`].
    pub fn failure(&self) -> String {
        assert!(
            !self.status.success(),
            "command should have failed: {}",
            self.describe()
        );
        assert!(
            self.status.code().is_some(),
            "killed by a signal instead of exiting: {}",
            self.describe()
        );
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("errand: "))
            .unwrap_or_else(|| panic!("no `errand: ` reason on stderr: {}", self.describe()));
        line["errand: ".len()..].to_owned()
    }

    /// Asserts that stderr is exactly one line and that it starts with `errand: `.
    pub fn assert_one_line_error(&self) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("errand: "),
            "stderr must be exactly one line starting with `errand: `, got {} lines: {}",
            lines.len(),
            self.describe()
        );
    }

    /// Asserts that a successful command printed nothing on stderr.
    pub fn assert_quiet(&self) {
        assert!(
            self.stderr.trim().is_empty(),
            "a successful command printed on stderr: {}",
            self.describe()
        );
    }
}

fn describe_cmd(label: &str, cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("[{label}] errand {}", args.join(" "))
}

fn collect<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs a command to completion; kills it and panics if it outlives `deadline`.
fn run(label: &str, mut cmd: Command, deadline: Duration) -> Out {
    let what = describe_cmd(label, &cmd);
    let mut child = KillOnDrop(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
    );
    let stdout = collect(child.0.stdout.take().expect("piped"));
    let stderr = collect(child.0.stderr.take().expect("piped"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.0.kill();
            let _ = child.0.wait();
            panic!(
                "{what} did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Out {
        what,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A child that is killed (and reaped) when the test lets go of it, even on panic.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A long-running `errand` process whose stdout lines arrive through a channel.
#[derive(Debug)]
pub struct Daemon {
    what: String,
    child: Option<KillOnDrop>,
    lines: Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    fn spawn(label: &str, mut cmd: Command) -> Daemon {
        let what = describe_cmd(label, &cmd);
        let mut child = KillOnDrop(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        );
        let (tx, lines) = mpsc::channel();
        let stdout = child.0.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.0.stderr.take().expect("piped");
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Daemon {
            what,
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").0.id()
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.0.try_wait(), Ok(None)))
    }

    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
            self.what,
            self.seen.join("\n"),
            self.stderr.lock().unwrap_or_else(|e| e.into_inner())
        )
    }

    /// Waits (up to [`LINE_DEADLINE`]) for a new stdout line that matches; returns it.
    pub fn expect_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.expect_line_within(what, LINE_DEADLINE, matches)
    }

    /// A line that matches, already printed or waited for like [`Daemon::expect_line`]: for
    /// events that are not ordered with the ones the test waited for first.
    pub fn seen_or_expect(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.drain();
        match self.seen.iter().find(|l| matches(l)) {
            Some(line) => line.clone(),
            None => self.expect_line(what, matches),
        }
    }

    pub fn expect_line_within(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {what} within {timeout:?}: {}",
                        self.describe()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the process ended before printing {what}: {}",
                        self.describe()
                    )
                }
            }
        }
    }

    /// The next stdout line, if one comes within `timeout` (also kept in [`Daemon::seen`]).
    /// Panics if the process ended.
    pub fn next_line_within(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the process ended: {}", self.describe())
            }
        }
    }

    /// Takes every line printed so far into [`Daemon::seen`].
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Sends SIGTERM and waits for the exit; asserts that it exits 0.
    pub fn terminate(mut self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(
            status.success(),
            "SIGTERM should stop it cleanly, got {status}: {}",
            self.describe()
        );
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-KILL`) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.0.kill().expect("SIGKILL");
            child.0.wait().expect("reap");
        }
    }

    /// Waits for the process to end by itself (up to `timeout`); returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.0.try_wait().expect("wait") {
                self.child = None;
                // Collect everything it printed: the pipes reach their end now.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() >= end {
                panic!("did not exit within {timeout:?}: {}", self.describe());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "gave up after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {v:#}"))
}

pub fn str_field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected string field {key:?} in {v:#}"))
        .to_owned()
}

pub fn short(id: &str) -> &str {
    &id[..8]
}

/// A desktop `desk` serving (after `up`) and a phone `phone` paired with it.
#[derive(Debug)]
pub struct Paired {
    pub desk: Home,
    pub phone: Home,
    pub daemon: Daemon,
    pub desk_id: String,
    pub phone_id: String,
    /// The (now spent) ticket the phone joined with.
    pub ticket: String,
}

pub fn paired() -> Paired {
    paired_with(Home::new("desk"), &[], &[])
}

/// [`paired`] with a desktop home prepared by the caller (a model.toml written into it) and
/// extra `up` arguments and environment variables for the desktop daemon.
pub fn paired_with(desk: Home, extra: &[&str], env: &[(&str, &str)]) -> Paired {
    let phone = Home::new("phone");
    let (mut daemon, ticket) = desk.up_with("desk", extra, env);
    phone.run(&["join", &ticket, "--name", "phone"]).success();
    let phone_id = phone.device_id();
    let added = format!("device phone ({}) added as phone", short(&phone_id));
    daemon.expect_line(&added, |l| l == added);
    let desk_id = desk.device_id();
    Paired {
        desk,
        phone,
        daemon,
        desk_id,
        phone_id,
        ticket,
    }
}

/// Sends a task and returns the `send --json` reply.
pub fn send(home: &Home, args: &[&str]) -> Value {
    let mut all = vec!["send"];
    all.extend_from_slice(args);
    home.json(&all)
}

/// Whether `line` is the daemon's event line for `task` (whatever its status by now: the
/// desktop may already have run it) with this prompt.
/// A task event line: `task ID STATUS: PROMPT`, followed by ` (REASON)` when the task ended
/// with one.
pub fn is_task_line(line: &str, task: &str, prompt: &str) -> bool {
    line.starts_with(&format!("task {} ", short(task)))
        && (line.ends_with(&format!(": {prompt}")) || line.contains(&format!(": {prompt} (")))
}

/// `member` issues a ticket (through its running daemon, or on its own) and `newcomer` joins
/// with it under `name` and `role`; returns the newcomer's device id.
pub fn join_through(member: &Home, newcomer: &Home, name: &str, role: &str) -> String {
    let ticket_file = member.file(&format!("ticket-for-{name}.txt"));
    let mut pair = member.spawn(&[
        "pair",
        "--yes",
        "--role",
        role,
        "--ticket-file",
        path_str(&ticket_file),
    ]);
    pair.expect_line("the waiting line", |l| {
        l.starts_with("waiting for a device to join")
    });
    let ticket = read_ticket(&ticket_file);
    newcomer
        .run(&["join", &ticket, "--name", name, "--role", role])
        .success();
    assert!(pair.wait_exit(Duration::from_secs(15)).success());
    newcomer.device_id()
}

/// [`join_through`] the desktop whose daemon is `daemon`, which reports the new device.
pub fn join(desk: &Home, daemon: &mut Daemon, newcomer: &Home, name: &str, role: &str) -> String {
    let id = join_through(desk, newcomer, name, role);
    let added = format!("device {name} ({}) added as {role}", short(&id));
    daemon.expect_line(&added, |l| l == added);
    id
}

/// Sync rounds of `home` until one ends in sync with the desktop (a device that just joined
/// may need more than one on a loaded machine).
pub fn sync_with_desk(home: &Home, desk_id: &str) {
    wait_until(
        "a sync round in sync with the desktop",
        Duration::from_secs(40),
        || {
            let synced = home.json(&["sync", "--timeout", "5"]);
            let desk = array(&synced)
                .iter()
                .find(|e| e["id"] == desk_id)
                .unwrap_or_else(|| panic!("desk in {synced:#}"))
                .clone();
            (desk["synced"] == true).then_some(())
        },
    );
}
