//! Tickets that must not admit anyone: spent, expired, malformed, unreachable, forged. Each is
//! refused with a one-line reason and changes nothing on either side.

use std::time::Duration;

use data_encoding::BASE32_NOPAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{
    Home, Out, array, is_task_line, now_unix, paired, path_str, send, short, str_field, wait_until,
};

fn names(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
        .collect()
}

/// Asserts the refusal left both sides as they were.
fn assert_nothing_changed(desk: &Home, joiner: &Home, desk_devices: &[(&str, &str)]) {
    joiner.assert_no_space();
    assert_eq!(desk.device_names(), names(desk_devices));
}

#[test]
fn a_spent_ticket_is_refused() {
    let p = paired();
    let mut daemon = p.daemon;
    let late = Home::new("late");
    let out = late.run(&["join", &p.ticket, "--name", "late"]);
    let reason = out.failure();
    assert!(reason.contains("already been used"), "{reason}");
    let refused = format!(
        "pairing with {} refused: this ticket has already been used",
        short(&late.device_id())
    );
    daemon.expect_line(&refused, |l| l == refused);
    assert_nothing_changed(&p.desk, &late, &[("desk", "desktop"), ("phone", "phone")]);
    assert_eq!(
        p.phone.device_names(),
        names(&[("desk", "desktop"), ("phone", "phone")])
    );
    out.assert_one_line_error();
    daemon.terminate();
}

#[test]
fn an_expired_ticket_is_refused() {
    let desk = Home::new("desk");
    let joiner = Home::new("joiner");
    let ticket_file = desk.file("ticket.txt");
    let daemon = desk.spawn(&[
        "--json",
        "up",
        "--name",
        "desk",
        "--yes",
        "--ttl",
        "1",
        "--ticket-file",
        path_str(&ticket_file),
    ]);
    let mut daemon = daemon;
    let line = daemon.expect_line("the ticket as JSON", |l| l.starts_with('{'));
    let info: Value = serde_json::from_str(&line).expect("JSON");
    let ticket = str_field(&info, "ticket");
    let expires = info["expires_at"].as_u64().expect("expires_at");
    assert!(
        expires <= now_unix() + 1,
        "--ttl 1 gives a one-second ticket"
    );
    // Expiry is a matter of wall-clock time: wait until it has certainly passed.
    wait_until("the ticket to expire", Duration::from_secs(5), || {
        (now_unix() > expires).then_some(())
    });
    let out = joiner.run(&["join", &ticket, "--name", "late"]);
    let reason = out.failure();
    assert!(reason.contains("expired"), "{reason}");
    assert_nothing_changed(&desk, &joiner, &[("desk", "desktop")]);
    out.assert_one_line_error();
    daemon.terminate();
}

#[test]
fn malformed_tickets_are_refused_with_a_reason() {
    let desk = Home::new("desk");
    let joiner = Home::new("joiner");
    let (daemon, ticket) = desk.up("desk");

    let mut changed: Vec<char> = ticket.chars().collect();
    let at = ticket.len() / 2;
    changed[at] = if changed[at] == 'A' { 'B' } else { 'A' };
    let changed: String = changed.into_iter().collect();
    let truncated = &ticket[..ticket.len() - 8];
    let bad_chars = format!("{}!{}", &ticket[..20], &ticket[20..]);
    let cases: [(&str, &str, &str); 5] = [
        (
            "random text",
            "not a ticket at all",
            "not an errand pairing ticket",
        ),
        ("empty", "", "not an errand pairing ticket"),
        ("truncated", truncated, "incomplete"),
        (
            "one character changed",
            &changed,
            "damaged (checksum mismatch)",
        ),
        ("a stray character", &bad_chars, "do not belong"),
    ];
    let mut outs: Vec<Out> = Vec::new();
    for (what, text, expected) in cases {
        let out = joiner.run(&["join", text, "--name", "joiner"]);
        let reason = out.failure();
        assert!(
            reason.starts_with("bad ticket: ") && reason.contains(expected),
            "{what}: expected {expected:?} in {reason:?}"
        );
        joiner.assert_no_space();
        outs.push(out);
    }
    assert_nothing_changed(&desk, &joiner, &[("desk", "desktop")]);
    for out in &outs {
        out.assert_one_line_error();
    }
    // None of them reached the desktop or burnt the ticket: the real one still works.
    joiner.run(&["join", &ticket, "--name", "joiner"]).success();
    assert_eq!(
        desk.device_names(),
        names(&[("desk", "desktop"), ("joiner", "phone")])
    );
    daemon.terminate();
}

#[test]
fn a_ticket_for_a_desktop_that_is_gone_is_unreachable() {
    let gone = Home::new("gone");
    let joiner = Home::new("joiner");
    let (daemon, ticket) = gone.up("gone");
    daemon.kill9();
    let out = joiner.run(&["join", &ticket, "--name", "joiner"]);
    let reason = out.failure();
    assert!(reason.contains("cannot reach"), "{reason}");
    assert_nothing_changed(&gone, &joiner, &[("gone", "desktop")]);
    out.assert_one_line_error();
}

/// The same ticket with another secret and a correct checksum: well-formed, but its holder
/// cannot prove the real secret.
fn with_forged_secret(ticket: &str) -> String {
    let body = ticket.strip_prefix("ERRAND1").expect("ticket prefix");
    let mut bytes = BASE32_NOPAD.decode(body.as_bytes()).expect("base32 body");
    // version u8 | host [32] | space [16] | id [16] | secret [32] | ...
    let secret = 1 + 32 + 16 + 16;
    for b in &mut bytes[secret..secret + 32] {
        *b ^= 0x5a;
    }
    let n = bytes.len() - 4;
    let sum = Sha256::digest(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum[..4]);
    format!("ERRAND1{}", BASE32_NOPAD.encode(&bytes))
}

#[test]
fn a_ticket_with_a_forged_secret_is_refused_and_the_real_one_still_works() {
    let desk = Home::new("desk");
    let joiner = Home::new("joiner");
    let (mut daemon, ticket) = desk.up("desk");
    let forged = with_forged_secret(&ticket);
    assert_ne!(forged, ticket);

    let out = joiner.run(&["join", &forged, "--name", "joiner"]);
    let reason = out.failure();
    assert!(reason.contains("wrong proof"), "{reason}");
    let joiner_id = joiner.device_id();
    let refused = format!("pairing with {} refused: wrong proof", short(&joiner_id));
    daemon.expect_line(&refused, |l| l.starts_with(&refused));
    assert_nothing_changed(&desk, &joiner, &[("desk", "desktop")]);

    // A failed proof does not spend the ticket.
    joiner.run(&["join", &ticket, "--name", "joiner"]).success();
    let added = format!("device joiner ({}) added as phone", short(&joiner_id));
    daemon.expect_line(&added, |l| l == added);
    assert_eq!(
        desk.device_names(),
        names(&[("desk", "desktop"), ("joiner", "phone")])
    );
    out.assert_one_line_error();
    daemon.terminate();
}

#[test]
fn a_device_that_never_paired_gets_nothing_and_gives_nothing() {
    let p = paired();
    let mut daemon = p.daemon;

    // A home with no space cannot even try.
    let stranger = Home::new("stranger");
    let out = stranger.run(&["sync"]);
    let reason = out.failure();
    assert!(reason.contains("not paired with any space"), "{reason}");
    out.assert_one_line_error();

    // A home that holds a copy of the phone's documents, but its own key: it knows the space
    // and the desktop's address, yet it is not a member.
    let before = send(&p.phone, &["before the copy", "--timeout", "5"]);
    assert_eq!(before["delivered"], true, "{before:#}");
    let clone = Home::new("clone");
    std::fs::create_dir(clone.path()).expect("create clone home");
    std::fs::copy(
        p.phone.path().join("errand.redb"),
        clone.path().join("errand.redb"),
    )
    .expect("copy the phone's database");
    let status = clone.json(&["status"]);
    let clone_id = str_field(&status, "device");
    assert_ne!(clone_id, p.phone_id, "the clone has its own key");
    assert!(
        status["role"].is_null(),
        "the clone is no member: {status:#}"
    );

    let sent = send(&clone, &["from the intruder", "--timeout", "2"]);
    assert_eq!(sent["delivered"], false, "{sent:#}");
    let synced = clone.json(&["sync", "--timeout", "2"]);
    let desk_entry = array(&synced)
        .iter()
        .find(|e| e["id"] == p.desk_id.as_str())
        .unwrap_or_else(|| panic!("desk in {synced:#}"))
        .clone();
    assert_eq!(desk_entry["synced"], false, "{synced:#}");

    // The phone, a member, still gets through; its task arrives after anything the clone
    // could have caused on the desktop.
    let after = send(&p.phone, &["after the copy", "--timeout", "5"]);
    assert_eq!(after["delivered"], true, "{after:#}");
    let after_id = str_field(&after, "task");
    daemon.expect_line("the task's event", |l| {
        is_task_line(l, &after_id, "after the copy")
    });
    let seen = daemon.drain().join("\n");
    assert!(
        !seen.contains(short(&clone_id)),
        "the desktop must not admit the clone:\n{seen}"
    );
    assert!(!seen.contains("from the intruder"), "{seen}");
    let desk_tasks = p.desk.json(&["tasks"]).to_string();
    assert!(!desk_tasks.contains("from the intruder"), "{desk_tasks}");
    let clone_tasks = clone.json(&["tasks"]).to_string();
    assert!(!clone_tasks.contains("after the copy"), "{clone_tasks}");
    assert_eq!(
        p.desk.device_names(),
        names(&[("desk", "desktop"), ("phone", "phone")])
    );
    daemon.terminate();
}
