//! Reachability beyond direct loopback addresses: a self-hosted iroh relay, and devices on a
//! LAN finding each other by mDNS.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Home, array, is_task_line, path_str, send, short, str_field, wait_until};

const RELAY_START: Duration = Duration::from_secs(20);

/// The real iroh-relay server, built by scripts/setup-tests (or named by `IROH_RELAY`).
fn relay_binary() -> PathBuf {
    let path = std::env::var_os("IROH_RELAY").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/iroh-relay"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no iroh-relay at {}: run scripts/setup-tests (it builds the relay server once)",
        path.display()
    );
    path
}

/// `iroh-relay --dev` serving plain HTTP on a loopback port; killed when dropped.
struct Relay {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        // A port nobody holds right now; the relay binds it a moment later.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!("http_bind_addr = \"127.0.0.1:{port}\"\nenable_metrics = false\n"),
        )
        .expect("write relay.toml");
        let child = Command::new(relay_binary())
            .args(["--dev", "--config-path", path_str(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iroh-relay");
        let mut relay = Relay {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_until("the relay to accept connections", RELAY_START, || {
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("iroh-relay exited: {status}");
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        });
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_devices_without_direct_addresses_pair_and_sync_through_a_relay() {
    let relay = Relay::start();
    let through_relay = ["--relay", relay.url.as_str(), "--relay-only"];
    let desk = Home::new("desk");
    let phone = Home::new("phone");
    let (mut daemon, ticket) = desk.up_with("desk", &through_relay, &[]);

    let mut join = vec!["join", ticket.as_str(), "--name", "phone"];
    join.extend_from_slice(&through_relay);
    phone.run(&join).success();
    let phone_id = phone.device_id();
    let added = format!("device phone ({}) added as phone", short(&phone_id));
    daemon.expect_line(&added, |l| l == added);

    for home in [&desk, &phone] {
        let mut args = vec!["--json", "status"];
        args.extend_from_slice(&through_relay);
        let status = home.run(&args).json();
        assert_eq!(
            array(&status["addrs"]).len(),
            0,
            "no direct address: {status:#}"
        );
        assert_eq!(
            status["relay"].as_str().map(|r| r.trim_end_matches('/')),
            Some(relay.url.as_str()),
            "{status:#}"
        );
    }
    let devices = desk.json(&["devices"]);
    assert!(
        array(&devices)
            .iter()
            .all(|d| array(&d["addrs"]).is_empty()),
        "nobody published a direct address: {devices:#}"
    );

    let mut args = vec!["through the relay", "--timeout", "15"];
    args.extend_from_slice(&through_relay);
    let sent = send(&phone, &args);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    let task = str_field(&sent, "task");
    daemon.expect_line("the task's event", |l| {
        is_task_line(l, &task, "through the relay")
    });
    daemon.terminate();
}

/// Two LAN hosts (network namespaces joined by a veth pair), removed when dropped.
struct Lan {
    name: String,
}

impl Lan {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netns-lan")
    }

    fn run(args: &[&str]) {
        let out = Command::new(Self::script())
            .args(args)
            .output()
            .expect("run scripts/netns-lan");
        assert!(
            out.status.success(),
            "scripts/netns-lan {args:?} failed (the LAN test needs root for network \
             namespaces): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up() -> Lan {
        Lan::create("up", "lan")
    }

    /// One host with nothing but loopback.
    fn isolated() -> Lan {
        Lan::create("isolated", "nonet")
    }

    fn create(how: &str, what: &str) -> Lan {
        let name = format!("errand-{what}-{}", std::process::id());
        Lan::run(&["down", &name]);
        Lan::run(&[how, &name]);
        Lan { name }
    }

    fn host(&self, side: &str) -> String {
        format!("{}-{side}", self.name)
    }

    /// Moves a host ("a" or "b") to another address.
    fn readdress(&self, side: &str, addr: &str) {
        Lan::run(&["readdress", &self.name, side, addr]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        Lan::run(&["down", &self.name]);
    }
}

fn device_addrs(home: &Home, device: &str) -> Vec<String> {
    let devices = home.json(&["devices"]);
    array(&devices)
        .iter()
        .find(|d| d["id"] == device)
        .map(|d| array(&d["addrs"]).iter().map(Value::to_string).collect())
        .unwrap_or_default()
}

fn synced(sync: &Value, peer: &str) -> bool {
    array(sync)
        .iter()
        .any(|p| p["id"] == peer && p["synced"] == true)
}

#[test]
fn a_device_that_moved_on_the_lan_is_found_by_mdns() {
    let lan = Lan::up();
    let (host_a, host_b) = (lan.host("a"), lan.host("b"));
    let desk = Home::in_netns("desk", &host_a);
    let phone = Home::in_netns("phone", &host_b);
    let (mut daemon, ticket) = desk.up("desk");
    phone.run(&["join", &ticket, "--name", "phone"]).success();
    let phone_id = phone.device_id();
    let added = format!("device phone ({}) added as phone", short(&phone_id));
    daemon.expect_line(&added, |l| l == added);
    let desk_id = desk.device_id();
    let before = device_addrs(&phone, &desk_id);
    assert!(
        before.iter().any(|a| a.contains("10.231.0.1:")),
        "the phone knows the desktop at its first address: {before:?}"
    );

    // Both move to other addresses (new leases, say) while the desktop is off, so neither
    // can reach the other where it remembers it.
    daemon.terminate();
    lan.readdress("a", "10.231.0.3");
    lan.readdress("b", "10.231.0.4");
    let mut daemon = desk.serve();

    // What the phone remembers no longer leads there ...
    let blind = phone
        .run(&["--json", "--no-mdns", "sync", "--timeout", "2"])
        .json();
    assert!(!synced(&blind, &desk_id), "{blind:#}");
    // ... but the desktop announces itself on the LAN.
    let sync = phone.json(&["sync", "--timeout", "20"]);
    assert!(synced(&sync, &desk_id), "{sync:#}");
    let after = device_addrs(&phone, &desk_id);
    assert!(
        after.iter().any(|a| a.contains("10.231.0.3:")),
        "the phone learned the new address: {after:?}"
    );
    let sent = send(&phone, &["found on the LAN", "--timeout", "15"]);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    let task = str_field(&sent, "task");
    daemon.expect_line("the task's event", |l| {
        is_task_line(l, &task, "found on the LAN")
    });
    daemon.terminate();
}

#[test]
fn on_a_machine_with_no_network_at_all_commands_work_and_stay_quiet() {
    let host = Lan::isolated();
    let desk = Home::in_netns("desk", &host.host("a"));
    let (daemon, _ticket) = desk.up("desk");
    for args in [&["status"][..], &["send", "offline work"], &["tasks"]] {
        let out = desk.run(args);
        out.success();
        out.assert_quiet();
    }
    daemon.terminate();
    let out = desk.run(&["--json", "send", "still offline", "--timeout", "1"]);
    assert_eq!(
        out.json()["delivered"],
        true,
        "a desktop holds its own tasks"
    );
    out.assert_quiet();
}
