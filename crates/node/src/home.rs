//! Who holds a home, and reaching it while another process is starting, stopping or briefly
//! using it.
//!
//! Only one process may open a home's database. A node that is starting (database open, control
//! socket not yet listening), a node that is stopping (socket closed, database not yet let go),
//! a process killed a moment ago that the kernel has not finished tearing down, and a one-shot
//! command that syncs for a few seconds all hold the home for a short while. Whoever comes next
//! waits for up to [`HOME_WAIT`], talking to the node through its socket as soon as one answers,
//! or opening the home as soon as it is free. After that the error names the holder: every
//! process that opens a home writes its pid beside the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::control::Client;
use crate::error::NodeError;
use crate::node::{Node, NodeConfig};

/// How long a command or a starting node waits for another process to let go of the home
/// (README, "Using it").
pub const HOME_WAIT: Duration = Duration::from_secs(10);
/// How long a node's control socket may take to answer before the node counts as not
/// serving (stopped by a debugger, being killed).
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The pid of the process that holds the home, written once it has the database open.
const PID_FILE: &str = "errand.pid";

/// What a command reached.
#[derive(Debug)]
pub enum Reached {
    /// The node serving this home answered on its control socket.
    Running { client: Client, pid: u32 },
    /// Nobody else holds the home: it is open in this process.
    Here(std::sync::Arc<Node>),
}

/// Reaches a home: the node that serves it, if one answers, else the home itself, waiting up
/// to `wait` while another process holds it.
pub async fn reach(config: &NodeConfig, wait: Duration) -> Result<Reached, NodeError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    let mut told = false;
    loop {
        if let Some((client, pid)) = Client::connect_serving(&config.home, PING_TIMEOUT).await {
            return Ok(Reached::Running { client, pid });
        }
        match Node::open(config.clone()).await {
            Ok(node) => return Ok(Reached::Here(std::sync::Arc::new(node))),
            Err(NodeError::Busy { holder, .. }) if Instant::now() < deadline => {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(
                        "waiting up to {} s for {}: {holder} is using it",
                        wait.as_secs(),
                        config.home.display()
                    );
                }
            }
            Err(NodeError::Busy { database, .. }) => {
                return Err(NodeError::Busy {
                    database,
                    holder: holder(&config.home),
                    waited: wait.as_secs(),
                });
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Records this process as the home's holder. Called with the database open, so no other
/// process writes the file meanwhile.
pub(crate) fn claim(home: &Path) {
    let path = home.join(PID_FILE);
    let temp = home.join(format!("{PID_FILE}.{}", std::process::id()));
    let written = std::fs::write(&temp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        tracing::debug!("cannot write {}: {e}", path.display());
        let _ = std::fs::remove_file(&temp);
    }
}

/// Who holds the home, as far as can be told: the pid it wrote, if that process is alive.
pub fn holder(home: &Path) -> String {
    let pid = std::fs::read_to_string(home.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match pid.and_then(|pid| Some((pid, command_line(pid)?))) {
        Some((pid, command)) => format!("pid {pid}, `{command}`"),
        // It has the database open but has not written its pid yet, or it wrote it in
        // another pid namespace.
        None => "a process that has not said which it is".to_owned(),
    }
}

/// The command line of a live errand process.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(PathBuf::from(format!("/proc/{pid}/cmdline"))).ok()?;
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let program = Path::new(parts.first()?).file_name()?.to_string_lossy();
    // A recycled pid now running something else does not hold the home.
    if !program.starts_with("errand") {
        return None;
    }
    let mut shown = vec![program.into_owned()];
    shown.extend(parts.into_iter().skip(1));
    Some(shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_named_only_while_its_process_lives() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            holder(dir.path()),
            "a process that has not said which it is"
        );
        // The pid file names this process; it is shown only if its program is errand's
        // (this test binary's name starts with `errand_node`, so it is).
        claim(dir.path());
        let me = std::fs::read_to_string(dir.path().join(PID_FILE)).unwrap();
        assert_eq!(me.trim(), std::process::id().to_string());
        let shown = holder(dir.path());
        let program = std::env::current_exe().unwrap();
        let program = program.file_name().unwrap().to_string_lossy();
        if program.starts_with("errand") {
            assert!(
                shown.starts_with(&format!("pid {}, `errand", std::process::id())),
                "{shown}"
            );
        } else {
            assert_eq!(shown, "a process that has not said which it is");
        }
        std::fs::write(dir.path().join(PID_FILE), "4294967295\n").unwrap();
        assert_eq!(
            holder(dir.path()),
            "a process that has not said which it is"
        );
    }
}
