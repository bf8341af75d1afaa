//! How things look on a terminal.

use errand_node::NodeEvent;
use errand_node::node::{
    ApprovalInfo, ConversationEntry, DeviceInfo, HistoryLine, QuestionInfo, Sent, Status, short,
};
use errand_sync::schema::index::ThreadEntry;
use errand_sync::schema::thread::Task;

/// Writes one line to stdout. A reader that went away (a closed pipe) ends the program
/// quietly, as it does for other Unix tools; there is no one left to tell.
pub fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written.and_then(|()| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

pub fn sent(s: &Sent) -> String {
    let head = format!(
        "task {} queued in thread {} for {}",
        short(&s.task),
        short(&s.thread),
        s.target_name
    );
    if s.delivered {
        format!("{head}: delivered")
    } else {
        format!(
            "{head}: not delivered yet ({} is not reachable now); it goes out as soon as both devices are online (a running node, or `errand sync`)",
            s.target_name
        )
    }
}

pub fn tasks(tasks: &[Task]) -> String {
    if tasks.is_empty() {
        return "no tasks".into();
    }
    let mut out = format!(
        "{:<8}  {:<16}  {:<8}  {}\n",
        "TASK", "STATUS", "THREAD", "PROMPT"
    );
    for t in tasks {
        out.push_str(&format!(
            "{:<8}  {:<16}  {:<8}  {}\n",
            short(&t.id),
            t.status.as_str(),
            short(&t.thread),
            one_line(&t.prompt, 60)
        ));
    }
    out.trim_end().to_owned()
}

pub fn task(t: &Task) -> String {
    let mut out = format!(
        "task     {}\nthread   {}\nstatus   {}\nprompt   {}\ncreated  {}\n",
        t.id,
        t.thread,
        t.status,
        t.prompt,
        time(t.created)
    );
    if let Some(s) = t.started {
        out.push_str(&format!("started  {}\n", time(s)));
    }
    if let Some(f) = t.finished {
        out.push_str(&format!("finished {}\n", time(f)));
    }
    if t.cancel_requested && !t.status.is_final() {
        out.push_str("cancel   requested\n");
    }
    for p in &t.progress {
        out.push_str(&format!("progress {}  {}\n", time(p.at), p.text));
    }
    for a in &t.artifacts {
        out.push_str(&format!(
            "artifact {}  {} ({} bytes, {})\n",
            short(&a.hash),
            a.name,
            a.size,
            a.mime
        ));
    }
    for n in &t.notifications {
        let how = if n.delivered {
            format!("notified at {} ({})", time(n.at), n.outcome)
        } else {
            format!("notification failed at {}: {}", time(n.at), n.outcome)
        };
        out.push_str(&format!(
            "notice   {} ({}): {how}\n",
            n.event,
            short(&n.device)
        ));
    }
    if let Some(e) = &t.error {
        out.push_str(&format!("error    {e}\n"));
    }
    if let Some(r) = &t.result {
        out.push_str(&format!("result\n{r}\n"));
    }
    out.trim_end().to_owned()
}

pub fn approvals(approvals: &[ApprovalInfo]) -> String {
    if approvals.is_empty() {
        return "no approval requests waiting".into();
    }
    let mut out = format!(
        "{:<8}  {:<8}  {:<9}  {:<10}  {}\n",
        "ID", "TASK", "STATE", "EXPIRES", "ACTION"
    );
    for a in approvals {
        // Relative, by the asking desktop's clock: this device's own clock may be off.
        out.push_str(&format!(
            "{:<8}  {:<8}  {:<9}  {:<10}  {}\n",
            short(&a.id),
            short(&a.task),
            a.state,
            remaining(a.expires_in_ms),
            one_line(&a.action, 60)
        ));
    }
    out.trim_end().to_owned()
}

pub fn questions(questions: &[QuestionInfo]) -> String {
    if questions.is_empty() {
        return "no questions waiting".into();
    }
    let mut out = format!(
        "{:<8}  {:<8}  {:<8}  {:<19}  {}\n",
        "ID", "TASK", "STATE", "EXPIRES", "QUESTION"
    );
    for q in questions {
        out.push_str(&format!(
            "{:<8}  {:<8}  {:<8}  {}  {}\n",
            short(&q.id),
            short(&q.task),
            q.state,
            time(q.expires_at),
            one_line(&q.question, 60)
        ));
    }
    out.trim_end().to_owned()
}

/// A thread as a conversation: each entry headed by its time, author and kind, its text
/// indented below (kept whole: this is where a long answer is read).
pub fn conversation(entries: &[ConversationEntry]) -> String {
    if entries.is_empty() {
        return "no turns yet".into();
    }
    let mut out = String::new();
    for e in entries {
        let head = match e.kind.as_str() {
            "prompt" => format!("{} asked (task {}, {})", e.by, short(&e.task), e.state),
            "answer" => format!("{} answered ({})", e.by, e.state),
            "question" => format!("{} asks (question {}, {})", e.by, short(&e.id), e.state),
            "approval" => format!(
                "{} asks for approval (approval {}, {})",
                e.by,
                short(&e.id),
                e.state
            ),
            other => format!("{} ({other})", e.by),
        };
        out.push_str(&format!("{}  {head}\n", time(e.at)));
        for line in e.text.lines() {
            out.push_str(&format!("    {line}\n"));
        }
        match (&e.reply_by, &e.reply) {
            (Some(by), Some(reply)) => out.push_str(&format!("    → {by}: {reply}\n")),
            (Some(by), None) => out.push_str(&format!("    → {} by {by}\n", e.state)),
            _ => {}
        }
    }
    out.trim_end().to_owned()
}

pub fn threads(threads: &[ThreadEntry]) -> String {
    if threads.is_empty() {
        return "no threads".into();
    }
    let mut out = format!("{:<8}  {:<19}  {}\n", "THREAD", "CREATED", "TITLE");
    for t in threads {
        out.push_str(&format!(
            "{:<8}  {}  {}\n",
            short(&t.id),
            time(t.created),
            one_line(&t.title, 60)
        ));
    }
    out.trim_end().to_owned()
}

pub fn notify_entries(entries: &[errand_sync::schema::index::NotifyEntry]) -> String {
    if entries.is_empty() {
        return "no notification endpoints (errand notify add URL)".into();
    }
    let mut out = format!("{:<12}  {:<34}  {}\n", "ID", "EVENTS", "URL");
    for e in entries {
        let events = if e.content {
            format!("{} (with content)", e.events.join(","))
        } else {
            e.events.join(",")
        };
        out.push_str(&format!("{:<12}  {:<34}  {}\n", e.id, events, e.url));
    }
    out.trim_end().to_owned()
}

pub fn devices(devices: &[DeviceInfo]) -> String {
    let mut out = format!(
        "{:<8}  {:<20}  {:<8}  {}\n",
        "DEVICE", "NAME", "ROLE", "STATE"
    );
    let now = errand_sync::schema::now_millis();
    for d in devices {
        let state = if d.this_device {
            "this device".to_owned()
        } else if d.connected {
            "connected".to_owned()
        } else {
            match d.last_seen_ms {
                Some(at) => format!(
                    "not connected, last seen {}",
                    errand_node::node::ago(at, now)
                ),
                None => "not connected, never seen".to_owned(),
            }
        };
        out.push_str(&format!(
            "{:<8}  {:<20}  {:<8}  {}{}\n",
            short(&d.id),
            one_line(&d.name, 20),
            d.role.as_str(),
            state,
            skew_note(d.clock_offset_ms)
        ));
    }
    out.trim_end().to_owned()
}

pub fn history(lines: &[HistoryLine]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&format!(
            "{}  {:<16}  {:<40}  {}\n",
            time(l.entry.time),
            one_line(&l.device, 16),
            one_line(&l.entry.message, 40),
            l.entry.hash
        ));
    }
    out.trim_end().to_owned()
}

pub fn status(s: &Status) -> String {
    let mut out = format!("device  {} ({})\n", s.device, s.name);
    match (&s.space, s.role) {
        (Some(space), Some(role)) => out.push_str(&format!("space   {space} as {role}\n")),
        (Some(space), None) => {
            out.push_str(&format!("space   {space} (this device is not a member)\n"))
        }
        _ => out.push_str("space   none yet (errand up, or errand join TICKET)\n"),
    }
    out.push_str(&format!("listen  {}\n", s.addrs.join(" ")));
    if let Some(relay) = &s.relay {
        out.push_str(&format!("relay   {relay}\n"));
    }
    out.push_str(&format!("threads {}\n", s.threads));
    for p in &s.peers {
        out.push_str(&format!(
            "peer    {} {} {}{}\n",
            short(&p.id),
            p.name,
            if p.connected {
                "connected"
            } else {
                "not connected"
            },
            skew_note(p.clock_offset_ms)
        ));
    }
    out.trim_end().to_owned()
}

pub fn event(ev: &NodeEvent) -> String {
    match ev {
        NodeEvent::TaskChanged {
            task,
            status,
            prompt,
            reason,
            ..
        } => {
            let line = format!("task {} {}: {}", short(task), status, one_line(prompt, 60));
            match reason {
                Some(reason) => format!("{line} ({})", one_line(reason, 200)),
                None => line,
            }
        }
        NodeEvent::ApprovalRequested {
            approval,
            task,
            action,
            ..
        } => {
            format!(
                "approval {} requested for task {}: {action}",
                short(approval),
                short(task)
            )
        }
        NodeEvent::InputRequested {
            question,
            task,
            text,
            ..
        } => format!(
            "question {} for task {}: {}",
            short(question),
            short(task),
            one_line(text, 200)
        ),
        NodeEvent::PeerConnected { peer } => format!("peer {} connected", short(peer)),
        NodeEvent::PeerLost { peer } => format!("peer {} lost", short(peer)),
        NodeEvent::SyncFinished { peer, doc } => {
            format!("synced {} with {}", short(doc), short(peer))
        }
        NodeEvent::PeerDropped { peer, reason } => {
            format!("peer {} dropped: {reason}", short(peer))
        }
        NodeEvent::PairingRequested {
            name, role, code, ..
        } => {
            format!("device {name:?} wants to pair as {role}; verification code {code}")
        }
        NodeEvent::DeviceAdded {
            name, device, role, ..
        } => {
            format!("device {name} ({}) added as {role}", short(device))
        }
        NodeEvent::DeviceRevoked { name, device } => {
            format!("device {name} ({}) revoked", short(device))
        }
        NodeEvent::PairingRefused { device, reason } => {
            format!("pairing with {} refused: {reason}", short(device))
        }
        NodeEvent::JoinCode { code } => format!("verification code {code}"),
        NodeEvent::ClockSkew { peer, offset_ms } => {
            format!("peer {} {}", short(peer), skew(*offset_ms))
        }
    }
}

/// How far another device's clock is from this one's, for people.
fn skew(offset_ms: i64) -> String {
    let secs = offset_ms.unsigned_abs().div_ceil(1000);
    let amount = match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    };
    let way = if offset_ms > 0 { "ahead of" } else { "behind" };
    format!(
        "has a clock {amount} {way} this device's; its approval requests still expire by its clock"
    )
}

/// A warning for a clock more than a minute off, else nothing.
fn skew_note(offset_ms: Option<i64>) -> String {
    match offset_ms {
        Some(ms) if ms.abs() > errand_node::clock::SKEW_LIMIT_MS => {
            format!(" (clock off: {})", skew(ms))
        }
        _ => String::new(),
    }
}

/// Time left until `in_ms` from now, for people.
fn remaining(in_ms: i64) -> String {
    if in_ms <= 0 {
        return "passed".to_owned();
    }
    let secs = in_ms.div_euclid(1000);
    if secs < 120 {
        format!("in {secs} s")
    } else {
        format!("in {} min", secs / 60)
    }
}

/// `errand doctor`: one block per device, its state first, then why.
pub fn doctor(found: &[errand_node::node::Diagnosis]) -> String {
    let mut out = String::new();
    for d in found {
        let state = if d.this_device {
            "this device"
        } else if d.revoked {
            "revoked"
        } else if d.reachable == Some(true) {
            "reachable"
        } else {
            "NOT reachable"
        };
        out.push_str(&format!(
            "{} ({}, {}): {state}\n",
            one_line(&d.name, 30),
            d.role.as_str(),
            short(&d.device)
        ));
        if d.this_device {
            continue;
        }
        for f in &d.findings {
            out.push_str(&format!("  - {}\n", f.text));
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_reads_in_sensible_units() {
        assert_eq!(skew_note(Some(59_000)), "");
        assert_eq!(skew_note(None), "");
        assert!(skew(7_200_000).starts_with("has a clock 2 h 0 min ahead of"));
        assert!(skew(-90_000).starts_with("has a clock 90 s behind"));
        assert!(skew(-600_000).starts_with("has a clock 10 min behind"));
        assert_eq!(remaining(-1), "passed");
        assert_eq!(remaining(30_500), "in 30 s");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(time(1_795_000_000_123), "2026-11-18 11:06:40");
    }
}
