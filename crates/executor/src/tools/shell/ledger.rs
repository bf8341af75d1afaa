//! Which shell commands are running, kept in the store so that a desktop killed with `kill -9`
//! (or crashed) can stop them when it starts again.
//!
//! Each command runs in its own process group, which outlives the executor if the executor dies
//! without killing it. The ledger records the group id with what identifies that exact process
//! (the boot it started in and its start time since boot), so the restarted executor kills the
//! group only if the same process still leads it: a group id that the system has since reused
//! for something else is left alone. Linux only (it reads `/proc`); elsewhere nothing is
//! recorded and orphans are left as they were.

use std::process::Stdio;

use errand_sync::Store;
use tracing::{info, warn};

const KIND: &str = "running-process";

/// A process as the kernel identifies it across pid reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcessIdentity {
    pid: u32,
    boot_id: String,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot when the process started.
    start_ticks: u64,
}

impl ProcessIdentity {
    fn of(pid: u32) -> Option<ProcessIdentity> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(ProcessIdentity {
            pid,
            boot_id: boot_id.trim().to_owned(),
            start_ticks: start_ticks(&stat)?,
        })
    }

    fn encode(&self) -> String {
        format!("{} {} {}", self.pid, self.boot_id, self.start_ticks)
    }

    fn decode(text: &str) -> Option<ProcessIdentity> {
        let mut parts = text.split(' ');
        let identity = ProcessIdentity {
            pid: parts.next()?.parse().ok()?,
            boot_id: parts.next()?.to_owned(),
            start_ticks: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(identity)
    }
}

/// The start time from a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted after the last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, start time field 22.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The running shell commands of this home's executor.
#[derive(Clone, Debug)]
pub struct ProcessLedger {
    store: std::sync::Arc<Store>,
}

impl ProcessLedger {
    pub fn new(store: std::sync::Arc<Store>) -> ProcessLedger {
        ProcessLedger { store }
    }

    /// Records that `task` runs the process group led by `pgid` (durably: the point is to
    /// survive a crash right after).
    pub fn started(&self, task: &str, pgid: u32) {
        let Some(identity) = ProcessIdentity::of(pgid) else {
            return;
        };
        if let Err(e) = self
            .store
            .set_record(KIND, task, identity.encode().as_bytes())
        {
            warn!(task, "cannot record running process {pgid}: {e}");
        }
    }

    /// Forgets `task`'s process group (it has ended and been reaped). Not forced to disk: if
    /// a crash loses this, the record outlives its process, and [`Self::kill_leftovers`]
    /// recognises it as stale.
    pub fn ended(&self, task: &str) {
        if let Err(e) = self.store.remove_record_lazily(KIND, task) {
            warn!(task, "cannot forget running process: {e}");
        }
    }

    /// Kills every recorded process group whose leader is still the recorded process, and
    /// forgets them all. Returns the tasks whose commands were killed.
    pub async fn kill_leftovers(&self) -> Vec<String> {
        let records = match self.store.records(KIND) {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot read running processes: {e}");
                return Vec::new();
            }
        };
        let mut killed = Vec::new();
        for (task, value) in records {
            let recorded = std::str::from_utf8(&value)
                .ok()
                .and_then(ProcessIdentity::decode);
            if let Some(recorded) = recorded
                && ProcessIdentity::of(recorded.pid).as_ref() == Some(&recorded)
            {
                let status = tokio::process::Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", recorded.pid)])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                match status {
                    Ok(s) if s.success() => {
                        info!(task, pgid = recorded.pid, "killed a command left running");
                        killed.push(task.clone());
                    }
                    Ok(s) => warn!(task, "kill of process group {}: {s}", recorded.pid),
                    Err(e) => warn!(task, "cannot run kill: {e}"),
                }
            }
            self.ended(&task);
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        let stat = format!("4242 (sleep (a) b) {}", fields.join(" "));
        assert_eq!(start_ticks(&stat), Some(22));
        assert_eq!(start_ticks("4242 (x"), None);
        assert_eq!(start_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn identities_round_trip_and_refuse_garbage() {
        let id = ProcessIdentity {
            pid: 7,
            boot_id: "9f1c-aa".into(),
            start_ticks: 123_456,
        };
        assert_eq!(ProcessIdentity::decode(&id.encode()), Some(id));
        for bad in ["", "7", "7 boot", "x boot 1", "7 boot 1 extra", "7 boot -1"] {
            assert_eq!(ProcessIdentity::decode(bad), None, "{bad:?}");
        }
    }

    fn ledger() -> (tempfile::TempDir, ProcessLedger) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        (dir, ProcessLedger::new(std::sync::Arc::new(store)))
    }

    fn sleeper() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("start sleep")
    }

    #[tokio::test]
    async fn a_recorded_group_still_led_by_its_process_is_killed_and_forgotten() {
        let (_dir, ledger) = ledger();
        let mut child = sleeper();
        ledger.started("t1", child.id());
        assert_eq!(ledger.kill_leftovers().await, ["t1"]);
        let status = child.wait().expect("reap");
        assert!(!status.success(), "killed by a signal: {status}");
        assert!(ledger.kill_leftovers().await.is_empty(), "forgotten");
    }

    #[tokio::test]
    async fn a_group_id_now_used_by_another_process_is_left_alone() {
        let (_dir, ledger) = ledger();
        let mut child = sleeper();
        let real = ProcessIdentity::of(child.id()).expect("identity");
        // As if the recorded process had ended and its pid had gone to this one since.
        let stale = ProcessIdentity {
            start_ticks: real.start_ticks.wrapping_sub(1),
            ..real
        };
        ledger
            .store
            .set_record(KIND, "t2", stale.encode().as_bytes())
            .expect("record");
        ledger.started("t3", 4_000_000_000);
        assert!(ledger.kill_leftovers().await.is_empty());
        assert!(child.try_wait().expect("poll").is_none(), "still running");
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(ledger.store.records(KIND).expect("records").is_empty());
    }

    #[test]
    fn this_process_has_an_identity_that_a_later_look_agrees_with() {
        let me = std::process::id();
        let first = ProcessIdentity::of(me).expect("/proc is there on Linux");
        assert_eq!(ProcessIdentity::of(me), Some(first));
    }
}
