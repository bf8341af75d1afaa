//! Pairing a phone with a desktop: `up`, `join`, `pair`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Home, array, now_unix, paired, path_str, read_ticket, short, str_field};

fn pair_of(name: &str, role: &str) -> (String, String) {
    (name.to_owned(), role.to_owned())
}

/// Asserts what `devices --json` on `home` says: the names and roles, and which one is this
/// device.
fn assert_devices(home: &Home, this_id: &str, expected: &[(String, String)]) {
    assert_eq!(home.device_names(), expected);
    let devices = home.json(&["devices"]);
    for d in array(&devices) {
        assert_eq!(
            d["this_device"].as_bool(),
            Some(str_field(d, "id") == this_id),
            "{d:#}"
        );
    }
}

#[test]
fn up_and_join_pair_a_desktop_and_a_phone() {
    let desk = Home::new("desk");
    let phone = Home::new("phone");
    let ticket_file = desk.file("ticket.txt");
    let png = desk.file("qr.png");
    let mut daemon = desk.spawn(&[
        "--json",
        "up",
        "--name",
        "desk",
        "--yes",
        "--ticket-file",
        path_str(&ticket_file),
        "--qr-png",
        path_str(&png),
    ]);
    // With --json the first line is the ticket.
    let first = daemon.expect_line("the ticket as JSON", |l| l.starts_with('{'));
    let info: Value = serde_json::from_str(&first).expect("ticket line is JSON");
    let ticket = str_field(&info, "ticket");
    assert!(ticket.starts_with("ERRAND1"), "{ticket}");
    assert_eq!(
        read_ticket(&ticket_file),
        ticket,
        "ticket file = printed ticket"
    );
    let expires = info["expires_at"].as_u64().expect("expires_at");
    let now = now_unix();
    assert!(
        (now + 590..=now + 610).contains(&expires),
        "default expiry is 10 minutes: {expires} vs now {now}"
    );
    let png_bytes = std::fs::read(&png).expect("the QR PNG exists");
    assert!(
        png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "qr.png is not a PNG"
    );

    let out = phone.run(&["join", &ticket, "--name", "phone"]);
    let stdout = out.success();
    let code_line = stdout
        .lines()
        .find(|l| l.starts_with("joining as phone; verification code "))
        .unwrap_or_else(|| panic!("no verification code line in {stdout}"));
    let code: String = code_line["joining as phone; verification code ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ' ')
        .collect();
    let code = code.trim().to_owned();
    assert!(
        code.len() >= 7 && code.chars().all(|c| c.is_ascii_digit() || c == ' '),
        "code looks like `NNN NNN`: {code:?}"
    );
    let desk_id = desk.device_id();
    let phone_id = phone.device_id();
    let space = str_field(&desk.json(&["status"]), "space");
    assert!(
        stdout.contains(&format!(
            "paired with desk ({}) in space {space}",
            short(&desk_id)
        )),
        "{stdout}"
    );

    // The desktop saw the same code and added the phone.
    let requested = daemon.expect_line("pairing_requested", |l| l.contains("pairing_requested"));
    let requested: Value = serde_json::from_str(&requested).expect("JSON event");
    assert_eq!(str_field(&requested, "code"), code);
    assert_eq!(str_field(&requested, "name"), "phone");
    // The device is added once its certificate is in the index, which may come before or
    // after the pairing request's event: the two are not ordered.
    let added = daemon.seen_or_expect("device_added", |l| l.contains("device_added"));
    let added: Value = serde_json::from_str(&added).expect("JSON event");
    assert_eq!(str_field(&added, "device"), phone_id);
    assert_eq!(str_field(&added, "name"), "phone");
    assert_eq!(str_field(&added, "role"), "phone");
    assert_eq!(str_field(&added, "added_by"), desk_id);

    let both = [pair_of("desk", "desktop"), pair_of("phone", "phone")];
    assert_devices(&desk, &desk_id, &both);
    assert_devices(&phone, &phone_id, &both);
    assert_eq!(str_field(&phone.json(&["status"]), "space"), space);
    assert_eq!(str_field(&phone.json(&["status"]), "role"), "phone");
    assert_eq!(str_field(&desk.json(&["status"]), "role"), "desktop");

    // And for people.
    let human = phone.run(&["devices"]);
    let human = human.success();
    assert!(human.contains("this device"), "{human}");
    assert!(
        human.contains("desk") && human.contains("desktop"),
        "{human}"
    );

    daemon.terminate();
}

#[test]
fn join_json_reports_the_space_host_and_code() {
    let desk = Home::new("desk");
    let phone = Home::new("phone");
    let (mut daemon, ticket) = desk.up("desk");
    let joined = phone.json(&["join", &ticket, "--name", "pocket"]);
    let status = desk.json(&["status"]);
    assert_eq!(str_field(&joined, "space"), str_field(&status, "space"));
    assert_eq!(str_field(&joined, "host"), str_field(&status, "device"));
    assert_eq!(str_field(&joined, "host_name"), "desk");
    let code = str_field(&joined, "code");
    let line = format!("device \"pocket\" wants to pair as phone; verification code {code}");
    daemon.expect_line(&line, |l| l == line);
    let added = format!(
        "device pocket ({}) added as phone",
        short(&phone.device_id())
    );
    // Not ordered with the request's line (see `up_and_join_pair_a_desktop_and_a_phone`).
    daemon.seen_or_expect(&added, |l| l == added);
    assert_eq!(
        desk.device_names(),
        [pair_of("desk", "desktop"), pair_of("pocket", "phone")]
    );
    daemon.terminate();
}

#[test]
fn pair_without_a_daemon_admits_one_device_and_exits() {
    let desk = Home::new("desk");
    let phone = Home::new("phone");
    // A desktop that has a space but no running node.
    let (daemon, _first_ticket) = desk.up("desk");
    // Stopped hard: `daemon::sigterm_right_after_the_serving_line_exits_zero` covers SIGTERM.
    daemon.kill9();

    let ticket_file = desk.file("second.txt");
    let mut pair = desk.spawn(&["pair", "--yes", "--ticket-file", path_str(&ticket_file)]);
    pair.expect_line("the waiting line", |l| {
        l.starts_with("waiting for a device to join")
    });
    let ticket = read_ticket(&ticket_file);
    phone
        .run(&["join", &ticket, "--name", "phone", "--role", "phone"])
        .success();
    let phone_id = phone.device_id();
    let line = format!("paired with phone (phone, {})", short(&phone_id));
    pair.expect_line(&line, |l| l == line);
    let status = pair.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "pair exits 0 once a device joined: {status}"
    );
    assert_eq!(
        desk.device_names(),
        [pair_of("desk", "desktop"), pair_of("phone", "phone")]
    );
}

#[test]
fn pair_through_the_running_daemon_adds_a_viewer() {
    let p = paired();
    let mut daemon = p.daemon;
    let tablet = Home::new("tablet");
    let ticket_file = p.desk.file("second.txt");
    let mut pair = p.desk.spawn(&[
        "pair",
        "--yes",
        "--role",
        "viewer",
        "--ticket-file",
        path_str(&ticket_file),
    ]);
    pair.expect_line("the waiting line", |l| {
        l == "waiting for a device to join as viewer…"
    });
    let ticket = read_ticket(&ticket_file);
    assert_ne!(ticket, p.ticket, "every `pair` makes a new ticket");
    tablet
        .run(&["join", &ticket, "--name", "tablet", "--role", "viewer"])
        .success();
    let tablet_id = tablet.device_id();
    let line = format!("paired with tablet (viewer, {})", short(&tablet_id));
    pair.expect_line(&line, |l| l == line);
    assert!(pair.wait_exit(Duration::from_secs(15)).success());
    let added = format!("device tablet ({}) added as viewer", short(&tablet_id));
    daemon.expect_line(&added, |l| l == added);

    let three = [
        pair_of("desk", "desktop"),
        pair_of("phone", "phone"),
        pair_of("tablet", "viewer"),
    ];
    assert_eq!(p.desk.device_names(), three);
    assert_eq!(tablet.device_names(), three);
    daemon.terminate();
}

#[test]
fn pair_without_yes_and_without_a_terminal_declines() {
    let desk = Home::new("desk");
    let joiner = Home::new("joiner");
    let (daemon, _ticket) = desk.up("desk");
    daemon.kill9();

    let ticket_file = desk.file("second.txt");
    // stdin is not a terminal (it is /dev/null), so nobody can confirm.
    let mut pair = desk.spawn(&["pair", "--ticket-file", path_str(&ticket_file)]);
    pair.expect_line("the waiting line", |l| {
        l.starts_with("waiting for a device to join")
    });
    let ticket = read_ticket(&ticket_file);
    let out = joiner.run(&["join", &ticket, "--name", "tab"]);
    assert!(!out.status.success(), "the joiner is not admitted");
    let status = pair.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "pair reports that nobody was admitted");
    let pair_err = pair.stderr();
    assert!(pair_err.contains("no terminal"), "{pair_err}");
    joiner.assert_no_space();
    assert_eq!(desk.device_names(), [pair_of("desk", "desktop")]);

    // The joiner is told why, in one line.
    let reason = out.failure();
    assert!(
        reason.contains("pairing refused") && reason.contains("did not confirm"),
        "{reason}"
    );
    out.assert_one_line_error();
    let lines: Vec<&str> = pair_err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("errand: "),
        "`pair` must end with exactly one `errand: ` line on stderr, got:\n{pair_err}"
    );
}
