//! Presence people can trust (issue 15, point 5): each device records when it last saw each
//! other one (`errand devices`), and `errand doctor` tries every device for real and says why
//! one cannot be reached: not running (last seen when), never connected, no address or relay,
//! revoked, a clock more than a minute off.

use serde_json::Value;

use crate::support::join_through;
use crate::support::{Home, array, paired, str_field};

/// The doctor's verdict on `device`, as `home` gives it.
fn diagnosis(found: &Value, device: &str) -> Value {
    array(found)
        .iter()
        .find(|d| d["device"] == device)
        .cloned()
        .unwrap_or_else(|| panic!("no diagnosis of {device}: {found:#}"))
}

fn codes(d: &Value) -> Vec<String> {
    array(&d["findings"])
        .iter()
        .map(|f| str_field(f, "code"))
        .collect()
}

#[test]
fn devices_show_when_each_was_last_seen_and_doctor_says_why_one_is_unreachable() {
    let p = paired();
    // A second phone joins through the desktop but never runs: this phone never saw it.
    let other = Home::new("other");
    let other_id = join_through(&p.desk, &other, "other", "phone");
    p.phone.run(&["sync"]).success();

    let found = p.phone.json(&["doctor", "--timeout", "2"]);
    let desk = diagnosis(&found, &p.desk_id);
    assert_eq!(desk["reachable"], true, "{desk:#}");
    let desk_codes = codes(&desk);
    assert!(
        desk_codes[0] == "connected" || desk_codes[0] == "reachable",
        "{desk:#}"
    );
    let me = diagnosis(&found, &p.phone_id);
    assert_eq!(me["this_device"], true);
    let never = diagnosis(&found, &other_id);
    assert_eq!(never["reachable"], false, "{never:#}");
    let never_codes = codes(&never);
    for code in ["unreachable", "never_connected", "no_relay"] {
        assert!(never_codes.contains(&code.to_owned()), "{code}: {never:#}");
    }

    // The desktop stops: the phone remembers when it last saw it, and says so.
    p.daemon.terminate();
    let devices = p.phone.json(&["devices"]);
    let seen = array(&devices)
        .iter()
        .find(|d| d["id"] == p.desk_id.as_str())
        .and_then(|d| d["last_seen_ms"].as_i64())
        .expect("the desk was seen");
    assert!(
        crate::support::now_unix() as i64 * 1000 - seen < 60_000,
        "{devices:#}"
    );
    let text = p.phone.run(&["devices"]);
    assert!(
        text.success().contains("not connected, last seen"),
        "{}",
        text.success()
    );
    let found = p.phone.json(&["doctor", "--timeout", "2"]);
    let desk = diagnosis(&found, &p.desk_id);
    assert_eq!(desk["reachable"], false, "{desk:#}");
    let desk_codes = codes(&desk);
    assert!(desk_codes.contains(&"last_seen".to_owned()), "{desk:#}");
    assert!(
        !desk_codes.contains(&"never_connected".to_owned()),
        "{desk:#}"
    );
    let text = p.phone.run(&["doctor", "--timeout", "2"]);
    assert!(
        text.success().contains("desk (desktop,") && text.success().contains("NOT reachable"),
        "{}",
        text.success()
    );
    assert!(
        text.success().contains("  - last seen "),
        "{}",
        text.success()
    );
}

#[test]
fn doctor_names_a_revoked_device_and_a_clock_that_is_off() {
    let p = paired();
    let other = Home::new("other");
    let other_id = join_through(&p.desk, &other, "other", "phone");
    p.desk.run(&["devices", "revoke", &other_id[..8]]).success();
    let found = p.desk.json(&["doctor", "--timeout", "2"]);
    let revoked = diagnosis(&found, &other_id);
    assert_eq!(revoked["revoked"], true, "{found:#}");
    assert_eq!(codes(&revoked), ["revoked"]);
    assert!(
        p.desk
            .run(&["doctor"])
            .success()
            .contains("revoked: no member syncs with it any more")
    );

    // The phone's clock five minutes ahead: the doctor measures the desktop as behind.
    let found = p.phone.json_skewed("+5m", &["doctor", "--timeout", "2"]);
    let desk = diagnosis(&found, &p.desk_id);
    assert_eq!(desk["reachable"], true, "{desk:#}");
    assert!(codes(&desk).contains(&"clock_skew".to_owned()), "{desk:#}");
    let offset = desk["clock_offset_ms"].as_i64().expect("measured");
    assert!((-320_000..-280_000).contains(&offset), "{offset}");
    p.daemon.terminate();
}
