//! The FFI surface used from Rust as an app would use it through the bindings: a phone `Node`
//! paired with a desktop node running in this process (real iroh endpoints on loopback, real
//! databases in temporary directories). The Python and Kotlin suites in `mobile-bindings/` run
//! the same flows through the generated bindings against a real `errand` process.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use errand_ffi::{ErrandError, ListenerError, Node, NodeEvent, NodeListener, TaskStatus};
use errand_node::NodeConfig;

const DEADLINE: Duration = Duration::from_secs(30);

/// Records every event; panics on the first one, and fails every second one, to show that
/// neither reaches the app or stops the events.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<NodeEvent>>,
    changed: Condvar,
    calls: Mutex<u64>,
}

impl NodeListener for Recorder {
    fn on_event(&self, event: NodeEvent) -> Result<(), ListenerError> {
        let call = {
            let mut calls = self.calls.lock().expect("calls");
            *calls += 1;
            *calls
        };
        self.events.lock().expect("events").push(event);
        self.changed.notify_all();
        if call == 1 {
            panic!("a listener that panics");
        }
        if call % 2 == 0 {
            return Err(ListenerError::Failed {
                reason: "a listener that fails".into(),
            });
        }
        Ok(())
    }
}

impl Recorder {
    /// Waits (on a blocking thread) until an event matches.
    async fn wait_for(
        self: &Arc<Self>,
        what: &str,
        pred: impl Fn(&NodeEvent) -> bool + Send + 'static,
    ) -> NodeEvent {
        let me = self.clone();
        let what = what.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + DEADLINE;
            let mut events = me.events.lock().expect("events");
            loop {
                if let Some(ev) = events.iter().find(|e| pred(e)) {
                    return ev.clone();
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "no {what} event in {DEADLINE:?}: {events:#?}"
                );
                events = me.changed.wait_timeout(events, left).expect("events").0;
            }
        })
        .await
        .expect("waiter")
    }
}

async fn desktop(home: &std::path::Path) -> Arc<errand_node::Node> {
    let mut config = NodeConfig::new(home);
    config.bind = Some("127.0.0.1:0".parse().expect("addr"));
    let node = errand_node::Node::open(config)
        .await
        .expect("desktop opens");
    node.init_space(Some("desk")).expect("space");
    Arc::new(node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_sends_and_follows_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desk = desktop(&dir.path().join("desk")).await;
    let phone_home = dir.path().join("phone").display().to_string();

    let phone = Node::open(phone_home.clone(), Some("127.0.0.1:0".into()), None, false)
        .await
        .expect("phone opens");
    let status = phone.status().await.expect("status");
    assert!(!status.paired);
    assert!(status.role.is_none());

    // Errors are kinds with readable messages.
    let e = phone.send("hello".into(), None, None).await.unwrap_err();
    assert!(
        matches!(e, ErrandError::NotPaired(ref m) if m.contains("not paired")),
        "{e:?}"
    );
    let e = phone.pair("not a ticket".into(), None).await.unwrap_err();
    assert!(
        matches!(e, ErrandError::InvalidInput(ref m) if m.contains("ticket")),
        "{e:?}"
    );
    let e = Node::open(phone_home.clone(), Some("nowhere".into()), None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, ErrandError::InvalidInput(_)), "{e:?}");

    let recorder = Arc::new(Recorder::default());
    let subscription = phone.subscribe(recorder.clone()).expect("subscribe");

    let ticket = desk
        .create_ticket(Duration::from_secs(60), true, errand_sync::Role::Phone)
        .expect("ticket");
    let paired = phone
        .pair(ticket.ticket.clone(), Some("pocket".into()))
        .await
        .expect("pairs");
    assert_eq!(paired.host_name, "desk");
    assert_eq!(paired.host_id, desk.id().to_string());
    recorder
        .wait_for("join code", |e| matches!(e, NodeEvent::JoinCode { .. }))
        .await;

    let sent = phone
        .send("/sh echo hi".into(), None, None)
        .await
        .expect("sends");
    assert_eq!(sent.target_name, "desk");
    let task_id = sent.task_id.clone();
    let ev = recorder
        .wait_for("task queued", move |e| {
            matches!(e, NodeEvent::TaskChanged { task_id: t, status: TaskStatus::Queued, .. } if *t == task_id)
        })
        .await;
    assert!(matches!(ev, NodeEvent::TaskChanged { ref prompt, .. } if prompt == "/sh echo hi"));
    assert!(
        phone
            .wait_delivered(sent.task_id.clone(), 20_000)
            .await
            .expect("wait"),
        "the desktop never acknowledged the task"
    );
    recorder
        .wait_for(
            "peer connected",
            |e| matches!(e, NodeEvent::PeerConnected { name: Some(n), .. } if n == "desk"),
        )
        .await;
    assert!(
        desk.tasks(None)
            .expect("desk tasks")
            .iter()
            .any(|t| t.id == sent.task_id)
    );

    let tasks = phone.tasks(None).await.expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status, TaskStatus::Queued);
    let threads = phone.threads().await.expect("threads");
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].id, sent.thread_id);
    let task = phone
        .task(sent.task_id[..6].to_owned())
        .await
        .expect("by prefix");
    assert_eq!(task.id, sent.task_id);
    let e = phone.task("ffffffffff".into()).await.unwrap_err();
    assert!(matches!(e, ErrandError::NotFound(_)), "{e:?}");

    let history = phone
        .history(Some(sent.thread_id.clone()), None)
        .await
        .expect("history");
    assert!(
        history
            .iter()
            .any(|h| h.message.contains("queued") && h.device == "pocket"),
        "{history:#?}"
    );
    let first = history.first().expect("a first commit").hash.clone();
    let then = phone
        .document_at(vec![first], Some(sent.thread_id.clone()))
        .await
        .expect("at");
    assert!(then.starts_with('{'), "{then}");

    let devices = phone.devices().await.expect("devices");
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().any(|d| d.this_device && d.name == "pocket"));
    // The desktop's clock was measured on connection (same machine: within a second), and
    // this device has no offset to itself.
    let desk_record = devices
        .iter()
        .find(|d| !d.this_device)
        .expect("the desktop");
    let offset = desk_record
        .clock_offset_ms
        .expect("the desktop's clock was measured");
    assert!(offset.abs() < 1_000, "{offset}");
    assert!(
        devices
            .iter()
            .all(|d| !d.this_device || d.clock_offset_ms.is_none())
    );
    assert!(desk_record.last_seen_ms.is_some(), "connected: seen now");
    // The doctor tries the desktop for real.
    let found = phone.doctor(2_000).await.expect("doctor");
    let desk_found = found
        .iter()
        .find(|d| d.device_id == desk_record.id)
        .expect("the desktop diagnosed");
    assert_eq!(desk_found.reachable, Some(true), "{desk_found:?}");
    assert!(found.iter().any(|d| d.this_device && d.reachable.is_none()));

    // Where the phone wants pushes: registered, listed, refused when malformed, removed.
    let endpoint = phone
        .notify_add("https://ntfy.example.org/pocket".into(), vec![], false)
        .await
        .expect("notify_add");
    assert_eq!(endpoint.events, ["done", "failed", "approval", "question"]);
    let e = phone
        .notify_add("ftp://example.org".into(), vec![], false)
        .await
        .unwrap_err();
    assert!(matches!(e, ErrandError::InvalidInput(_)), "{e:?}");
    assert_eq!(
        phone.notify_list().await.expect("list"),
        std::slice::from_ref(&endpoint)
    );
    phone.notify_remove(endpoint.id).await.expect("remove");
    assert!(phone.notify_list().await.expect("list").is_empty());

    // Schedules: added with a rule and zone the node checks, listed with their next run,
    // paused, resumed and removed; a bad rule is refused as invalid input.
    let spec = errand_ffi::ScheduleSpec {
        cron: Some("0 9 * * 1-5".into()),
        time_zone: Some("Europe/Paris".into()),
        text: "/sh date".into(),
        ..Default::default()
    };
    let schedule = phone
        .schedule_add(spec.clone())
        .await
        .expect("schedule_add");
    assert_eq!(schedule.rule, "cron 0 9 * * 1-5 (Europe/Paris)");
    assert_eq!(schedule.missed_rule, "run-once");
    assert!(schedule.next_run_ms.is_some(), "{schedule:?}");
    for bad in [
        errand_ffi::ScheduleSpec {
            cron: Some("0 25 * * *".into()),
            ..spec.clone()
        },
        errand_ffi::ScheduleSpec {
            time_zone: Some("Nowhere/Atlantis".into()),
            ..spec.clone()
        },
    ] {
        let e = phone.schedule_add(bad).await.unwrap_err();
        assert!(matches!(e, ErrandError::InvalidInput(_)), "{e:?}");
    }
    let paused = phone
        .schedule_pause(schedule.id.clone())
        .await
        .expect("pause");
    assert!(paused.paused && paused.next_run_ms.is_none(), "{paused:?}");
    let resumed = phone
        .schedule_resume(schedule.id.clone())
        .await
        .expect("resume");
    assert!(!resumed.paused && resumed.next_run_ms.is_some());
    assert_eq!(phone.schedule_list().await.expect("list").len(), 1);
    phone
        .schedule_remove(schedule.id.clone())
        .await
        .expect("remove");
    assert!(phone.schedule_list().await.expect("list").is_empty());

    let e = phone.revoke("nobody".into()).await.unwrap_err();
    assert!(matches!(e, ErrandError::NotFound(_)), "{e:?}");
    let e = phone.revoke("pocket".into()).await.unwrap_err();
    assert!(
        matches!(e, ErrandError::InvalidInput(ref m) if m.contains("itself")),
        "{e:?}"
    );

    let cancelled = phone.cancel(sent.task_id.clone()).await.expect("cancel");
    assert!(cancelled.cancel_requested);

    // The panicking and failing listener calls above did not stop the events.
    assert!(*recorder.calls.lock().expect("calls") >= 3);

    subscription.cancel();
    assert!(subscription.is_cancelled());
    phone.close().await;
    assert!(phone.is_closed());
    phone.close().await;
    let e = phone.status().await.unwrap_err();
    assert!(matches!(e, ErrandError::Closed(_)), "{e:?}");

    // Closing released the data directory: it opens again, still paired.
    let again = Node::open(phone_home, Some("127.0.0.1:0".into()), None, false)
        .await
        .expect("reopens");
    let status = again.status().await.expect("status");
    assert!(status.paired);
    assert_eq!(status.name, "pocket");
    again.close().await;
    desk.shutdown().await;
}
