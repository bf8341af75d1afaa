//! What no document or web page can make the desktop do, whatever its policy's folders say:
//! read or write errand's own home and configuration, hand the model's API key (or anything
//! else the policy does not pass on) to a shell command, or fetch from this machine's network;
//! and `errand send` keeps to the prompt limit.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use super::{send_task, setup, status, wait_final};
use crate::support::{Home, path_str};

/// The policy allows writing the folder that holds the home and the policy file, and runs
/// shell commands without asking: the guards must hold anyway.
#[test]
fn tools_never_reach_the_home_children_get_a_clean_environment_and_fetch_stays_public() {
    let desk = Home::new("desk");
    let around = desk
        .path()
        .parent()
        .expect("the home's folder")
        .to_path_buf();
    let policy = format!(
        "writable = [\"{}\"]\npass_env = [\"ERRAND_PASSED_ON\"]\n[actions]\nshell = \"allow\"\ndelete = \"allow\"\n",
        path_str(&around)
    );
    let (p, policy_file) = super::setup_home(
        desk,
        Some(&policy),
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-not-for-tools"),
            ("SSH_AUTH_SOCK", "/tmp/agent-not-for-tools"),
            ("ERRAND_PASSED_ON", "passed-on"),
        ],
    );
    let policy_file = policy_file.expect("a policy file");
    let home = p.desk.path();

    // 1. The home and the policy file are errand's own.
    for prompt in [
        format!("/read {}", home.join("device.key").display()),
        format!("/read {}", home.join("errand.redb").display()),
        format!("/write {} [actions]", policy_file.display()),
        format!("/write {} x", home.join("new-file").display()),
        format!("/rm {}", home.join("device.key").display()),
    ] {
        let (task, _) = send_task(&p.phone, &prompt, &[]);
        let done = wait_final(&p.phone, &task);
        assert_eq!(status(&done), "failed", "{prompt}: {done:#}");
        let error = done["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("belongs to errand itself"),
            "{prompt}: {error}"
        );
    }
    let policy_now = std::fs::read_to_string(&policy_file).expect("the policy file");
    assert_eq!(policy_now, policy, "the policy file is unchanged");
    // Beside the home, the folder is as writable as the policy says.
    let (task, _) = send_task(
        &p.phone,
        &format!("/write {} fine", around.join("beside.txt").display()),
        &[],
    );
    assert_eq!(status(&wait_final(&p.phone, &task)), "done");

    // 2. A shell command sees the default variables and what the policy passes on, never the
    //    model's key or the agent socket.
    let (task, _) = send_task(&p.phone, "/sh env", &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    let env = done["result"].as_str().unwrap_or_default();
    assert!(env.contains("ERRAND_PASSED_ON=passed-on"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(!env.contains("sk-ant-not-for-tools"), "{env}");
    assert!(!env.contains("SSH_AUTH_SOCK"), "{env}");

    // 3. /fetch does not reach loopback, by address or by name, unless the policy says so.
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("address").port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let (task, _) = send_task(&p.phone, &format!("/fetch {url}"), &[]);
        let done = wait_final(&p.phone, &task);
        assert_eq!(status(&done), "failed", "{url}: {done:#}");
        let error = done["error"].as_str().unwrap_or_default();
        assert!(error.contains("allow_private_network"), "{url}: {error}");
    }
    server.set_nonblocking(true).expect("nonblocking");
    assert!(
        server.accept().is_err(),
        "the loopback server was contacted"
    );

    // 4. `errand send` refuses a prompt over the limit in one line that names it; nothing is
    //    sent.
    let before = p.phone.task_ids();
    let big = "x".repeat(errand_sync::schema::thread::MAX_PROMPT_BYTES + 1);
    let out = p.phone.run(&["send", &big]);
    out.assert_one_line_error();
    let error = out.failure();
    assert!(error.contains("limit of 102400 bytes"), "{error}");
    assert_eq!(p.phone.task_ids(), before);
}

/// With `allow_private_network = true`, the same fetch reaches the loopback server.
#[test]
fn a_policy_that_allows_private_addresses_fetches_from_loopback() {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("address").port();
    let serving = std::thread::spawn(move || {
        let (stream, _) = server.accept().expect("a request");
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        (&stream)
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlocal")
            .expect("answer");
    });
    let (p, _) = setup(Some("allow_private_network = true\n"), &[]);
    let (task, _) = send_task(&p.phone, &format!("/fetch http://127.0.0.1:{port}/"), &[]);
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(done["result"], "local");
    serving.join().expect("the server thread");
}
