//! `errand`: the desktop node and every command a phone can give, on the command line.

/// `println!` that ends the program quietly when stdout is closed (`errand history | head`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!($($arg)*))
    };
}

mod commands;
mod executor;
mod output;
mod schedule;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use errand_node::NodeConfig;

/// jemalloc, with background threads that give memory freed for a while back to the system
/// (settings in .cargo/config.toml). glibc's malloc keeps what a thread freed in that thread's
/// arena: a desktop of 1,000 threads stayed at 73 MiB after listing every task, where it now
/// settles at 33 MiB. See "Memory" in ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "errand",
    version,
    about = "Hand work to your own computer from your phone: peer to peer, no server, no account."
)]
pub struct Cli {
    /// The device home: keys, database and control socket [default: the platform data dir]
    #[arg(long, env = "ERRAND_HOME", global = true)]
    home: Option<PathBuf>,
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    json: bool,
    /// Listen on this address [default: every interface, on this home's previous port]
    #[arg(long, env = "ERRAND_BIND", global = true)]
    bind: Option<SocketAddr>,
    /// Use this self-hosted iroh relay (relays are off otherwise)
    #[arg(long, env = "ERRAND_RELAY", global = true)]
    relay: Option<String>,
    /// Reach peers only through the relay: no direct addresses (hides this device's IP
    /// addresses from its peers)
    #[arg(long, env = "ERRAND_RELAY_ONLY", global = true, requires = "relay")]
    relay_only: bool,
    /// Do not announce this device or look for the others on the local network (mDNS)
    #[arg(long, env = "ERRAND_NO_MDNS", global = true)]
    no_mdns: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Desktop: create the identity and space if needed, show a pairing QR code, then serve
    Up {
        /// This device's name [default: the host name]
        #[arg(long)]
        name: Option<String>,
        /// Admit a device with a valid ticket without asking
        #[arg(long)]
        yes: bool,
        /// Also write the pairing QR code to this PNG file
        #[arg(long)]
        qr_png: Option<PathBuf>,
        /// Also write the ticket text to this file
        #[arg(long)]
        ticket_file: Option<PathBuf>,
        /// How long the ticket is valid, in seconds
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// The role the ticket gives the device that joins with it
        #[arg(long, default_value = "phone")]
        role: errand_sync::Role,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Run the node until interrupted
    Serve {
        #[command(flatten)]
        run: RunOptions,
    },
    /// Show a one-time pairing ticket and wait for a device to join
    Pair {
        #[arg(long)]
        qr_png: Option<PathBuf>,
        #[arg(long)]
        ticket_file: Option<PathBuf>,
        /// How long the ticket is valid, in seconds
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// Admit the device without asking
        #[arg(long)]
        yes: bool,
        /// The role the ticket gives the device that joins with it
        #[arg(long, default_value = "phone")]
        role: errand_sync::Role,
    },
    /// Pair this home with the device that showed TICKET
    Join {
        ticket: String,
        /// This device's name [default: the host name]
        #[arg(long)]
        name: Option<String>,
        /// Refuse to join unless the ticket gives this role (the desktop chooses it)
        #[arg(long)]
        role: Option<errand_sync::Role>,
    },
    /// Send a task to a desktop
    Send {
        text: String,
        /// Add to this thread (id prefix) instead of starting a new one
        #[arg(long)]
        thread: Option<String>,
        /// The desktop that should run it (name or id prefix) [default: the space's first desktop]
        #[arg(long)]
        to: Option<String>,
        /// Wait for the task to finish
        #[arg(long)]
        wait: bool,
        /// Seconds to wait for delivery (and, with --wait, for the result)
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// List tasks
    Tasks {
        #[arg(long)]
        thread: Option<String>,
    },
    /// Show one task; with --save, write one of its artifacts to a file
    Show {
        task: String,
        /// Save an artifact (fetched from the desktop if needed) to this file
        #[arg(long)]
        save: Option<PathBuf>,
        /// Which artifact to save, counting from 1
        #[arg(long, default_value_t = 1)]
        artifact: usize,
    },
    /// List approval requests waiting for a decision
    Approvals {
        /// Include decided and expired ones
        #[arg(long)]
        all: bool,
    },
    /// Allow what an approval request asks (ID prefix)
    Approve { id: String },
    /// Refuse what an approval request asks (ID prefix)
    Deny { id: String },
    /// Print a thread's conversation: prompts, answers, questions and approvals, in order
    Thread {
        /// Thread id prefix
        id: String,
    },
    /// List the questions the agent asks, waiting for an answer
    Questions {
        /// Include answered and expired ones
        #[arg(long)]
        all: bool,
    },
    /// Answer a question the agent asks (ID prefix); the task goes on with the answer
    Answer { id: String, text: String },
    /// Wait for a task to finish
    Wait {
        task: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Ask the desktop to stop a task
    Cancel { task: String },
    /// List threads
    Threads,
    /// Print events as they happen, one per line
    Watch,
    /// A document's commits: time, device, message
    History {
        /// Thread id prefix, or `index` [default: index]
        #[arg(long)]
        doc: Option<String>,
        /// Only the newest N
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print a document as it was at HEADS (change hashes from `errand history`)
    At {
        heads: String,
        #[arg(long)]
        doc: Option<String>,
    },
    /// List the space's devices, or revoke one
    Devices {
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Where this device wants to be told of events while its app is not running: HTTP
    /// endpoints that take a POSTed message (a self-hosted ntfy topic, a UnifiedPush endpoint)
    Notify {
        #[command(subcommand)]
        action: NotifyAction,
    },
    /// Tasks a desktop runs by itself at set times, even while no phone is connected
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// For each device of the space: whether it can be reached right now, and if not why
    Doctor {
        /// How long to try each device, in seconds
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// This device, its space and its peers
    Status,
    /// Sync once with every reachable peer
    Sync {
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyAction {
    /// Register an endpoint; the desktop that runs a task POSTs to it when one of the events
    /// happens (by default a generic title, the event and the task id: no task content)
    Add {
        url: String,
        /// Comma-separated: done, failed, approval, question, missed (default: all but missed)
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Let messages carry the task's prompt or result
        #[arg(long)]
        content: bool,
    },
    /// This device's endpoints
    List,
    /// Stop using an endpoint (id or id prefix)
    Remove { id: String },
    /// Send a test message from this device to each of its endpoints, and say how it went
    Test,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Add a schedule and print its id. Each run is a task in the schedule's thread (a new
    /// thread per run when none is named), run by the target desktop
    Add {
        /// A five-field cron expression: minute hour day-of-month month day-of-week
        /// ("0 9 * * 1-5"), or @hourly, @daily, @weekly, @monthly, @yearly
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// A fixed period instead: 15m, 1h30m, 1d (at least 1 minute)
        #[arg(long)]
        every: Option<String>,
        /// The time zone the cron expression is read in (IANA, like Europe/Paris; default:
        /// this device's)
        #[arg(long)]
        tz: Option<String>,
        /// The thread every run goes to (id or prefix)
        #[arg(long)]
        thread: Option<String>,
        /// The desktop that runs it (name or id prefix)
        #[arg(long)]
        to: Option<String>,
        /// What happens to runs missed while the desktop was off or asleep: run-once (one
        /// catch-up run) or skip
        #[arg(long, default_value = "run-once")]
        missed: String,
        /// What each run does, as `errand send` takes it
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Every schedule: its rule, target, next run, last run and how it went, missed runs
    List,
    /// Stop running a schedule until it is resumed (runs due meanwhile are not owed)
    Pause { id: String },
    /// Run a paused schedule again, from its next slot
    Resume { id: String },
    /// Remove a schedule for good
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Stop syncing with a device (name or id prefix): this device refuses it at once, the
    /// others once they have synced
    Revoke { id: String },
}

/// How a serving node runs.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Do not run tasks here (an always-on relay of documents)
    #[arg(long)]
    no_executor: bool,
    /// The executor's policy file [default: HOME/policy.toml]
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The model configuration [default: HOME/model.toml]
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// The connectors (MCP servers) file [default: HOME/connectors.toml]
    #[arg(long)]
    connectors: Option<PathBuf>,
}

fn default_home() -> Result<PathBuf> {
    directories::ProjectDirs::from("", "", "errand")
        .map(|d| d.data_dir().to_path_buf())
        .context("cannot find a data directory for this user; pass --home DIR")
}

impl Cli {
    fn config(&self) -> Result<NodeConfig> {
        let home = match &self.home {
            Some(h) => h.clone(),
            None => default_home()?,
        };
        let mut config = NodeConfig::new(home);
        config.bind = self.bind;
        config.relay = match &self.relay {
            Some(url) => Some(
                url.parse()
                    .with_context(|| format!("--relay {url:?} is not a relay URL"))?,
            ),
            None => None,
        };
        config.relay_only = self.relay_only;
        config.lan_discovery = !self.no_mdns;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ERRAND_LOG")
                // LAN discovery is best effort: a machine without a network (or without
                // multicast) is normal here, not worth a warning on every command.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,iroh=off,swarm_discovery=off,iroh_mdns_address_lookup=off,acto=off",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("errand: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("errand: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}
