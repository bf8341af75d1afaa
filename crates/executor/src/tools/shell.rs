//! The shell tool: `sh -c COMMAND` in the workspace, with bounded output, a timeout and
//! cancellation.
//!
//! The command runs in its own process group so that cancelling or timing out kills
//! everything it started (`make` and its compilers, a pipeline, a background `sleep`), not only
//! the `sh` at the top. The group is killed with the external `kill` command because sending a
//! signal from Rust needs `libc` and unsafe code, which the workspace denies.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::action::ToolOutput;
use crate::tools::ToolError;

mod ledger;

pub use ledger::ProcessLedger;

/// At most this much of stdout, and of stderr, is kept; the rest is read and dropped so the
/// command never blocks on a full pipe.
const MAX_CAPTURE: usize = 1024 * 1024;

/// After the shell exits, background processes it left behind may still hold its stdout or
/// stderr open. Output is collected for this much longer, then the task finishes with what it
/// has, leaving those processes running (a command may start a program on purpose).
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How much of the output an error message quotes.
const ERROR_TAIL_CHARS: usize = 2000;

/// Output of one stream, bounded.
#[derive(Debug, Default)]
struct Capture {
    kept: Vec<u8>,
    total: u64,
}

impl Capture {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = MAX_CAPTURE.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The kept text with one trailing newline trimmed, and a note if some was dropped.
    fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if self.total > self.kept.len() as u64 {
            text.push_str(&format!(
                "\n[output truncated: {} bytes, only the first {} kept]",
                self.total,
                self.kept.len()
            ));
        }
        text
    }
}

/// Why the command stopped before finishing.
enum Interrupted {
    Cancelled,
    TimedOut,
}

/// Runs `sh -c command` in `cwd` with stdin from /dev/null and only the variables of `env`
/// (the policy's [`crate::policy::Policy::child_env`]): nothing else of the daemon's
/// environment, such as the model's API key, reaches the command.
///
/// Success is exit status 0; the text is stdout, then stderr (if any) under a `stderr:` line.
/// A non-zero exit is [`ToolError::Failed`] with the status and the end of stderr (or of
/// stdout when stderr is empty). Cancel gives [`ToolError::Cancelled`] (or
/// [`ToolError::CancelledWithOutput`] with what it printed so far) and timeout
/// [`ToolError::TimedOut`], both after the whole process group has been killed.
/// `started` gets the process group id as soon as the command runs (see [`ProcessLedger`]).
pub async fn sh(
    command: &str,
    cwd: &Path,
    env: &[(OsString, OsString)],
    cancel: CancellationToken,
    timeout: Duration,
    started: impl FnOnce(u32),
) -> Result<ToolOutput, ToolError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ToolError::Io {
            path: format!("sh (in {})", cwd.display()),
            source,
        })?;
    // With process_group(0) the group id is the child's pid.
    let pgid = child.id();
    if let Some(pgid) = pgid {
        started(pgid);
    }
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pgid, &mut child).await;
        return Err(ToolError::Failed("sh: output pipes missing".to_owned()));
    };

    let deadline = Instant::now() + timeout;
    let mut out = Capture::default();
    let mut err = Capture::default();
    let mut out_buf = vec![0u8; 64 * 1024];
    let mut err_buf = vec![0u8; 64 * 1024];
    let mut out_open = true;
    let mut err_open = true;
    let mut status: Option<ExitStatus> = None;
    let mut grace_end: Option<Instant> = None;

    let interrupted = loop {
        if status.is_some() && !out_open && !err_open {
            break None;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Some(Interrupted::Cancelled),
            // Once the shell has exited the command is done; only the grace period is left.
            _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                break Some(Interrupted::TimedOut)
            }
            read = read_some(&mut stdout, &mut out_buf), if out_open => match read {
                Some(n) => out.push(&out_buf[..n]),
                None => out_open = false,
            },
            read = read_some(&mut stderr, &mut err_buf), if err_open => match read {
                Some(n) => err.push(&err_buf[..n]),
                None => err_open = false,
            },
            exited = child.wait(), if status.is_none() => match exited {
                Ok(exited) => {
                    status = Some(exited);
                    grace_end = Some(Instant::now() + EXIT_GRACE);
                }
                Err(source) => {
                    kill_group(pgid, &mut child).await;
                    return Err(ToolError::Io { path: "sh".to_owned(), source });
                }
            },
            _ = sleep_until_opt(grace_end) => break None,
        }
    };

    match interrupted {
        Some(Interrupted::Cancelled) => {
            kill_group(pgid, &mut child).await;
            // What it wrote before it was killed may still sit in the pipes.
            let drain = async {
                while out_open || err_open {
                    tokio::select! {
                        read = read_some(&mut stdout, &mut out_buf), if out_open => match read {
                            Some(n) => out.push(&out_buf[..n]),
                            None => out_open = false,
                        },
                        read = read_some(&mut stderr, &mut err_buf), if err_open => match read {
                            Some(n) => err.push(&err_buf[..n]),
                            None => err_open = false,
                        },
                    }
                }
            };
            let _ = tokio::time::timeout(EXIT_GRACE, drain).await;
            let so_far = joined(&out.text(), &err.text());
            return Err(if so_far.is_empty() {
                ToolError::Cancelled
            } else {
                ToolError::CancelledWithOutput(so_far)
            });
        }
        Some(Interrupted::TimedOut) => {
            kill_group(pgid, &mut child).await;
            return Err(ToolError::TimedOut(whole_seconds(timeout)));
        }
        None => {}
    }
    let Some(status) = status else {
        // The loop only ends without interruption once the shell has exited.
        return Err(ToolError::Failed("sh: exit status unknown".to_owned()));
    };

    let stdout_text = out.text();
    let stderr_text = err.text();
    if status.success() {
        return Ok(ToolOutput::text(joined(&stdout_text, &stderr_text)));
    }
    let how = match status.code() {
        Some(code) => format!("exit status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(signal) => format!("killed by signal {signal}"),
                None => "abnormal exit".to_owned(),
            }
        }
    };
    let detail = if stderr_text.trim().is_empty() {
        &stdout_text
    } else {
        &stderr_text
    };
    let detail = tail(detail.trim(), ERROR_TAIL_CHARS);
    Err(ToolError::Failed(if detail.is_empty() {
        how
    } else {
        format!("{how}: {detail}")
    }))
}

/// stdout, then stderr (if any) under a `stderr:` line.
fn joined(stdout: &str, stderr: &str) -> String {
    let mut text = stdout.to_owned();
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str("stderr:\n");
        text.push_str(stderr);
    }
    text
}

/// Reads once; `None` at end of stream or on a read error (a broken pipe ends the capture,
/// it does not fail the command).
async fn read_some(reader: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Option<usize> {
    match reader.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Sleeps until `until`, or forever when there is no deadline yet.
async fn sleep_until_opt(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Kills the whole process group with SIGKILL, then reaps the shell.
///
/// The shell has not been reaped when this is called, so its pid (the group id) cannot have
/// been reused. If the `kill` command cannot run, the shell alone is killed as a fallback.
async fn kill_group(pgid: Option<u32>, child: &mut Child) {
    if let Some(pgid) = pgid {
        kill_process_group(pgid).await;
    }
    // Whatever happened above, the shell itself must go; errors mean it is already gone.
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Sends SIGKILL to a whole process group. The caller makes sure the group is still its own
/// (its leader not yet reaped). Connector servers are stopped with this too.
pub(crate) async fn kill_process_group(pgid: u32) {
    let killed = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(err) = killed {
        tracing::warn!("cannot run kill for process group {pgid}: {err}");
    }
}

/// A timeout in whole seconds for [`ToolError::TimedOut`], rounded up so a sub-second timeout
/// does not read as "0 s".
pub(crate) fn whole_seconds(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)
}

/// The last `max_chars` characters of `text`, marked when cut.
fn tail(text: &str, max_chars: usize) -> String {
    let count = text.chars().count();
    if count <= max_chars {
        return text.to_owned();
    }
    let skipped: String = text.chars().skip(count - max_chars).collect();
    format!("...{skipped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    fn env() -> Vec<(OsString, OsString)> {
        std::env::vars_os().collect()
    }

    async fn run(command: &str) -> Result<ToolOutput, ToolError> {
        let tmp = tempfile::tempdir().unwrap();
        run_in(command, tmp.path()).await
    }

    /// Runs `command` in `dir`, uncancelled, with a long timeout.
    async fn run_in(command: &str, dir: &Path) -> Result<ToolOutput, ToolError> {
        sh(command, dir, &env(), CancellationToken::new(), LONG, |_| {}).await
    }

    /// Whether the process is gone. A killed process whose parent died is reparented to init;
    /// if init in a container does not reap, it stays a zombie, which counts as gone.
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    /// Polls `condition` until it holds or the deadline passes.
    async fn eventually(mut condition: impl FnMut() -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn echo() {
        assert_eq!(run("echo hi").await.unwrap(), ToolOutput::text("hi"));
        assert_eq!(run("printf 'a\\n\\n'").await.unwrap().text, "a\n");
        assert_eq!(run("true").await.unwrap().text, "");
    }

    #[tokio::test]
    async fn runs_in_cwd_with_null_stdin() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("marker"), "").unwrap();
        let out = run_in("ls; cat", tmp.path()).await.unwrap();
        assert_eq!(out.text, "marker");
    }

    #[tokio::test]
    async fn stderr_is_reported() {
        let out = run("echo out; echo err >&2").await.unwrap();
        assert_eq!(out.text, "out\nstderr:\nerr");
        let out = run("echo only >&2").await.unwrap();
        assert_eq!(out.text, "stderr:\nonly");
    }

    #[tokio::test]
    async fn failure_has_status_and_tail() {
        let err = run("echo out; echo bad thing >&2; exit 3")
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Failed(_)), "{err:?}");
        assert_eq!(err.to_string(), "exit status 3: bad thing");
        let err = run("echo just stdout; exit 1").await.unwrap_err();
        assert_eq!(err.to_string(), "exit status 1: just stdout");
        let err = run("exit 2").await.unwrap_err();
        assert_eq!(err.to_string(), "exit status 2");
        let err = run("kill -KILL $$").await.unwrap_err();
        assert_eq!(err.to_string(), "killed by signal 9");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let out = run("head -c 3000000 /dev/zero | tr '\\0' a").await.unwrap();
        assert!(
            out.text
                .ends_with("[output truncated: 3000000 bytes, only the first 1048576 kept]"),
            "{}",
            &out.text[out.text.len() - 100..]
        );
        assert!(out.text.len() < MAX_CAPTURE + 200);
    }

    #[tokio::test]
    async fn background_process_holding_the_pipe_does_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let out = run_in("sleep 30 & echo $! > pid; echo started", tmp.path())
            .await
            .unwrap();
        assert_eq!(out.text, "started");
        // Clean up the sleep so it does not outlive the test.
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status();
    }

    #[tokio::test]
    async fn cancel_keeps_what_the_command_printed_so_far() {
        let tmp = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cwd = tmp.path().to_owned();
            let cancel = cancel.clone();
            async move {
                sh(
                    "echo started; echo warned >&2; touch ready; sleep 30",
                    &cwd,
                    &env(),
                    cancel,
                    LONG,
                    |_| {},
                )
                .await
            }
        });
        let ready = tmp.path().join("ready");
        assert!(eventually(|| ready.exists(), Duration::from_secs(10)).await);
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        match result {
            Err(ToolError::CancelledWithOutput(text)) => {
                assert_eq!(text, "started\nstderr:\nwarned");
            }
            other => panic!("expected the output so far: {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cwd = tmp.path().to_owned();
            let cancel = cancel.clone();
            async move {
                sh(
                    "sleep 30 & echo $! > pid; wait",
                    &cwd,
                    &env(),
                    cancel,
                    LONG,
                    |_| {},
                )
                .await
            }
        });
        let mut pid = None;
        assert!(
            eventually(
                || {
                    pid = std::fs::read_to_string(&pidfile)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    pid.is_some()
                },
                Duration::from_secs(10),
            )
            .await
        );
        let pid = pid.unwrap();
        assert!(!gone(pid));
        let started = Instant::now();
        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(ToolError::Cancelled)), "{result:?}");
        assert!(eventually(|| gone(pid), Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn timeout_kills_and_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let started = Instant::now();
        let result = sh(
            "sleep 30 & echo $! > pid; wait",
            tmp.path(),
            &env(),
            CancellationToken::new(),
            Duration::from_millis(1500),
            |_| {},
        )
        .await;
        assert!(matches!(result, Err(ToolError::TimedOut(2))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(eventually(|| gone(pid), Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn missing_cwd_is_an_io_error() {
        let err = sh(
            "true",
            Path::new("/nonexistent/errand-test"),
            &env(),
            CancellationToken::new(),
            LONG,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ToolError::Io { .. }), "{err:?}");
    }

    #[test]
    fn tail_cuts_at_chars() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("ééééé", 2), "...éé");
    }
}
