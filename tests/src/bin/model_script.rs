//! `errand-model-script`: the scripted model server as a process, for tests that run errand as
//! separate processes (an executor daemon configured with this server's base URL).
//!
//! ```text
//! errand-model-script --provider anthropic|openai --script FILE.json
//! ```
//!
//! FILE.json is a JSON array of reply bodies in the provider's format, answered in order; an
//! element `{"http_status": 401, "body": {...}}` answers with another status. The first line
//! on stdout is the base URL to put in the model config; after it, every request received is
//! printed as one JSON line (`{"method", "path", "headers", "body"}`), so a test can wait for
//! and inspect what the executor sent. Serves on 127.0.0.1 until killed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use errand_tests::model_server::{Provider, Reply, ScriptServer};
use serde_json::Value;

const USAGE: &str = "usage: errand-model-script --provider anthropic|openai --script FILE.json";

fn main() {
    if let Err(e) = run() {
        eprintln!("errand-model-script: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let mut provider = None;
    let mut script = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--provider" => {
                let value = args.next().context("--provider needs a value")?;
                provider = Some(value.parse::<Provider>().map_err(anyhow::Error::msg)?);
            }
            "--script" => {
                script = Some(PathBuf::from(args.next().context("--script needs a file")?));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let (Some(provider), Some(script)) = (provider, script) else {
        bail!("--provider and --script are required\n{USAGE}");
    };

    let text = std::fs::read_to_string(&script)
        .with_context(|| format!("cannot read script {}", script.display()))?;
    let entries: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("script {} is not a JSON array", script.display()))?;
    let replies = entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            Reply::from_script_entry(entry)
                .map_err(|e| anyhow::anyhow!("script {} entry {i}: {e}", script.display()))
        })
        .collect::<Result<Vec<_>>>()?;

    let server = ScriptServer::try_start(provider, replies)
        .context("cannot start the server on 127.0.0.1")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.base_url())?;
    stdout.flush()?;

    let mut printed = 0;
    loop {
        let Some(requests) = server.wait_for_requests(printed + 1, Duration::from_secs(3600))
        else {
            continue;
        };
        for request in &requests[printed..] {
            writeln!(stdout, "{}", request.to_json())?;
        }
        stdout.flush()?;
        printed = requests.len();
    }
}
