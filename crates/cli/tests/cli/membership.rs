//! Membership that no document can rewrite, and roles the desktop chooses (issue 11, points 3
//! and 4): a paired phone that turns hostile and writes the index changes nothing on the desktop
//! or on the honest phone, before and after a restart; a ticket gives the role it was made for.

use std::time::Duration;

use errand_sync::DocId;
use errand_sync::schema::index;
use errand_tests::hostile::{IndexAttack, attack_index};

use crate::support::{
    Home, array, is_task_line, join, paired, path_str, read_ticket, send, short, str_field,
    sync_with_desk,
};

fn names(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
        .collect()
}

#[test]
fn a_hostile_phone_rewriting_the_index_changes_no_membership() {
    let p = paired();
    let mut daemon = p.daemon;
    let hostile = Home::new("hostile");
    let hostile_id = join(&p.desk, &mut daemon, &hostile, "hostile", "phone");
    let lost = Home::new("lost");
    let lost_id = join(&p.desk, &mut daemon, &lost, "lost", "viewer");
    p.desk.run(&["devices", "revoke", "lost"]).success();
    let revoked = format!("device lost ({}) revoked", short(&lost_id));
    daemon.expect_line(&revoked, |l| l == revoked);
    sync_with_desk(&hostile, &p.desk_id);
    sync_with_desk(&p.phone, &p.desk_id);
    let honest = names(&[
        ("desk", "desktop"),
        ("hostile", "phone"),
        ("phone", "phone"),
    ]);
    assert_eq!(p.desk.device_names(), honest);
    assert_eq!(p.phone.device_names(), honest);

    // The hostile phone names itself the root, rewrites the space, deletes the desktop's and
    // the phone's certificates and the revocation of the lost viewer, certifies itself a
    // desktop, and revokes the desktop (the space's creator) "at time 0".
    attack_index(
        &hostile.path(),
        &IndexAttack {
            root: Some(hostile_id.clone()),
            space: Some("00".repeat(16)),
            delete_members: vec![p.desk_id.clone(), p.phone_id.clone()],
            delete_revocations: vec![lost_id.clone()],
            self_certify_desktop: true,
            revoke_at_zero: vec![p.desk_id.clone()],
        },
    );
    // Where received changes are checked against owner rules (issue 11, points 1 and 2), the
    // desktop refuses this change whole; where they are not, it takes it, and the pinned root
    // and the ledger make it change nothing. Either way nothing may change.
    hostile.run(&["sync", "--timeout", "5"]).success();

    // Nothing changed on the desktop: it lists its devices and serves the honest phone.
    assert_eq!(p.desk.device_names(), honest);
    let sent = send(&p.phone, &["after the takeover", "--timeout", "5"]);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    assert_eq!(str_field(&sent, "target"), p.desk_id);
    let task = str_field(&sent, "task");
    daemon.expect_line("the task's event", |l| {
        is_task_line(l, &task, "after the takeover")
    });
    // Nor on the honest phone, which has the hostile writes by now.
    sync_with_desk(&p.phone, &p.desk_id);
    assert_eq!(p.phone.device_names(), honest);
    // The revoked viewer stays out.
    let synced = lost.json(&["sync", "--timeout", "2"]);
    assert!(
        array(&synced).iter().all(|e| e["synced"] == false),
        "{synced:#}"
    );

    // And after a restart of the desktop.
    let desk_log = daemon.stderr();
    daemon.terminate();
    assert_eq!(p.desk.device_names(), honest);
    assert_eq!(p.phone.device_names(), honest);
    let desk = p.desk.serve();
    let sent = send(&p.phone, &["after the restart", "--timeout", "10"]);
    assert_eq!(sent["delivered"], true, "{sent:#}");
    desk.terminate();

    // If the writes landed, the desktop holds the index as the hostile phone left it, and said
    // that it ignored the other root.
    let repo = errand_tests::hostile::own_repo(&p.desk.path());
    let (root, members, revocations) = repo
        .read(&DocId::index(), |doc| {
            (
                index::root(doc),
                index::members(doc),
                index::revocations(doc),
            )
        })
        .expect("read the index")
        .expect("an index");
    if root.as_deref() == Some(hostile_id.as_str()) {
        assert!(!members.iter().any(|m| m.device == p.desk_id));
        assert!(!revocations.iter().any(|r| r.device == lost_id));
        assert!(
            desk_log.contains("the index names another space or root than the one pinned here"),
            "{desk_log}"
        );
    }
}

#[test]
fn a_viewer_ticket_admits_a_viewer_whatever_the_joiner_asks() {
    let p = paired();
    let mut daemon = p.daemon;
    let tablet = Home::new("tablet");
    let ticket_file = p.desk.file("viewer.txt");
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

    // Asking to be a desktop is refused before anything is sent; the ticket stays good.
    let out = tablet.run(&["join", &ticket, "--name", "tablet", "--role", "desktop"]);
    let reason = out.failure();
    assert!(
        reason.contains("this ticket admits a viewer, not a desktop"),
        "{reason}"
    );
    out.assert_one_line_error();
    tablet.assert_no_space();

    // Joining with it makes a viewer, and every side says so.
    let out = tablet.run(&["join", &ticket, "--name", "tablet"]);
    let said = out.success();
    assert!(
        said.contains("joining as viewer; verification code "),
        "{said}"
    );
    assert!(said.contains(" as viewer"), "{said}");
    let tablet_id = tablet.device_id();
    let joining = pair.expect_line("the joining line", |l| l.contains("is joining"));
    assert!(
        joining.starts_with("\"tablet\" (viewer) is joining; verification code "),
        "{joining}"
    );
    let line = format!("paired with tablet (viewer, {})", short(&tablet_id));
    pair.expect_line(&line, |l| l == line);
    assert!(pair.wait_exit(Duration::from_secs(15)).success());
    let added = format!("device tablet ({}) added as viewer", short(&tablet_id));
    daemon.expect_line(&added, |l| l == added);
    assert_eq!(str_field(&tablet.json(&["status"]), "role"), "viewer");
    assert_eq!(
        p.desk.device_names(),
        names(&[
            ("desk", "desktop"),
            ("phone", "phone"),
            ("tablet", "viewer")
        ])
    );
}

#[test]
fn a_phone_cannot_revoke_the_desktop() {
    let p = paired();
    let out = p.phone.run(&["devices", "revoke", "desk"]);
    let reason = out.failure();
    assert_eq!(
        reason,
        "cannot revoke desk: the space's creator cannot be revoked"
    );
    out.assert_one_line_error();
    assert_eq!(
        p.desk.device_names(),
        names(&[("desk", "desktop"), ("phone", "phone")])
    );
    p.daemon.terminate();
}
