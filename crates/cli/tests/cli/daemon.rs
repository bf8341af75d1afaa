//! The node's life: started, asked to stop, started again.

use crate::support::Home;

/// `serving as ...` means ready: a SIGTERM from then on is a clean stop (exit 0), even right
/// away. Several rounds, because the window is small.
#[test]
fn sigterm_right_after_the_serving_line_exits_zero() {
    let home = Home::new("desk");
    let (daemon, _ticket) = home.up("desk");
    daemon.terminate();
    for _ in 0..4 {
        home.serve().terminate();
    }
}

#[test]
fn a_restarted_desktop_keeps_its_identity_space_and_port() {
    let home = Home::new("desk");
    let (daemon, _ticket) = home.up("desk");
    let before = home.json(&["status"]);
    daemon.terminate();
    let daemon = home.serve();
    let after = home.json(&["status"]);
    for key in ["device", "name", "space", "role", "addrs"] {
        assert_eq!(after[key], before[key], "{key} after a restart");
    }
    daemon.terminate();
}
