//! Every rule of [`super`], each tried by the device that may and by one that may not.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ObjType, ROOT};

use super::*;
use crate::schema::thread::{self, NewApproval, NewTask};
use crate::schema::{DocId, index};

/// A device of the test space: its id and what the node knows of it.
#[derive(Clone)]
struct Dev {
    id: DeviceId,
    standing: Standing,
}

impl Dev {
    fn new(standing: Standing) -> Dev {
        Dev {
            id: iroh::SecretKey::generate().public(),
            standing,
        }
    }

    fn hex(&self) -> String {
        self.id.to_string()
    }

    fn actor(&self) -> ActorId {
        let mut bytes = self.id.as_bytes().to_vec();
        bytes.extend_from_slice(&rand::random::<[u8; 12]>());
        ActorId::from(bytes)
    }
}

struct World {
    desk: Dev,
    other_desk: Dev,
    phone: Dev,
    hostile: Dev,
    viewer: Dev,
}

fn world() -> World {
    World {
        desk: Dev::new(Standing::Member(Role::Desktop)),
        other_desk: Dev::new(Standing::Member(Role::Desktop)),
        phone: Dev::new(Standing::Member(Role::Phone)),
        hostile: Dev::new(Standing::Member(Role::Phone)),
        viewer: Dev::new(Standing::Member(Role::Viewer)),
    }
}

/// `by` makes one change to a copy of `doc`; the change is checked as a receiving node
/// checks it (applied to `doc`, then judged). On success `doc` keeps it.
fn attempt(
    doc: &mut Automerge,
    id: &DocId,
    by: &Dev,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
) -> Result<(), Violation> {
    let mut theirs = doc.fork().with_actor(by.actor());
    theirs
        .transact(f)
        .map_err(|e| e.error)
        .expect("the change applies");
    let change = theirs.get_last_local_change().expect("a change").clone();
    let mut after = doc.clone();
    after.apply_changes([change.clone()]).expect("apply");
    check(&after, id, &change.decode(), &by.id, by.standing)?;
    *doc = after;
    Ok(())
}

#[track_caller]
fn refused(result: Result<(), Violation>, what: &str) {
    let err = result.expect_err("refused");
    assert!(err.what.contains(what), "{err}");
}

const TASK: &str = "task-1";

/// A thread made by the phone with one task for the desktop, and an approval request.
fn thread_doc(w: &World) -> (Automerge, DocId) {
    let id = DocId::new_thread();
    let mut doc = Automerge::new();
    attempt(&mut doc, &id, &w.phone, |tx| {
        thread::create(tx, id.as_str(), "t")
    })
    .expect("the phone creates a thread");
    let target = w.desk.hex();
    attempt(&mut doc, &id, &w.phone, |tx| {
        thread::add_task(
            tx,
            &NewTask {
                id: TASK,
                prompt: "tidy up",
                target: &target,
                created: 1,
            },
        )
    })
    .expect("the phone sends a task");
    (doc, id)
}

fn task_obj(doc: &Automerge) -> automerge::ObjId {
    let tasks = crate::schema::get_obj(doc, &ROOT, "tasks").unwrap();
    let bucket = crate::schema::get_obj(doc, &tasks, &thread::task_bucket(TASK)).unwrap();
    crate::schema::get_obj(doc, &bucket, TASK).unwrap()
}

fn request(w: &World, doc: &mut Automerge, id: &DocId, by: &Dev) -> Result<(), Violation> {
    let asker = w.desk.hex();
    attempt(doc, id, by, |tx| {
        thread::request_approval(
            tx,
            &NewApproval {
                id: "ap-1",
                task: TASK,
                action: "shell: ls",
                class: "shell",
                requested_by: &asker,
                requested_at: 1,
                expires_at: 2,
            },
        )
    })
}

#[test]
fn tasks_are_sent_by_phones_and_desktops_only() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    let target = w.desk.hex();
    let send = |tx: &mut Transaction<'_>, task: &str| {
        thread::add_task(
            tx,
            &NewTask {
                id: task,
                prompt: "p",
                target: &target,
                created: 2,
            },
        )
    };
    attempt(&mut doc, &id, &w.desk, |tx| send(tx, "by-desk")).unwrap();
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| send(tx, "by-viewer")),
        "its role may not",
    );
}

#[test]
fn a_task_s_sender_fields_are_the_sender_s() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    for field in ["prompt", "target", "created", "cancel_requested"] {
        let obj = task_obj(&doc);
        refused(
            attempt(&mut doc, &id, &w.hostile, |tx| tx.put(&obj, field, "x")),
            "sender's",
        );
        refused(
            attempt(&mut doc, &id, &w.desk, |tx| tx.put(&obj, field, "x")),
            "sender's",
        );
    }
    attempt(&mut doc, &id, &w.phone, |tx| {
        thread::request_cancel(tx, TASK)
    })
    .unwrap();
}

#[test]
fn how_a_task_ran_is_its_target_desktop_s() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    for dev in [&w.hostile, &w.other_desk, &w.phone] {
        refused(
            attempt(&mut doc, &id, dev, |tx| {
                thread::finish(tx, TASK, Ok("forged"), thread::TaskStatus::Done, 5)
            }),
            "does not run",
        );
        refused(
            attempt(&mut doc, &id, dev, |tx| {
                thread::add_progress(tx, TASK, "x", 3)
            }),
            "does not run",
        );
        refused(
            attempt(&mut doc, &id, dev, |tx| {
                thread::add_artifact(
                    tx,
                    TASK,
                    &thread::Artifact {
                        hash: "h".into(),
                        size: 1,
                        mime: "text/plain".into(),
                        name: "n".into(),
                    },
                )
            }),
            "does not run",
        );
    }
    let obj = task_obj(&doc);
    attempt(&mut doc, &id, &w.desk, |tx| {
        thread::set_status(tx, TASK, thread::TaskStatus::Running, 2)?;
        thread::add_progress(tx, TASK, "step", 3)?;
        thread::finish(tx, TASK, Ok("done"), thread::TaskStatus::Done, 4)
    })
    .unwrap();
    // The sender may not re-queue its task after creating it.
    refused(
        attempt(&mut doc, &id, &w.phone, |tx| {
            tx.put(&obj, "status", "queued")
        }),
        "does not run",
    );
    // Items of the executor's lists are the executor's too.
    let progress = crate::schema::get_obj(&doc, &obj, "progress").unwrap();
    let item = doc.get(&progress, 0).unwrap().unwrap().1;
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put(&item, "text", "forged")
        }),
        "does not run",
    );
}

#[test]
fn a_task_cannot_be_replaced_deleted_or_hidden() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    let tasks = crate::schema::get_obj(&doc, &ROOT, "tasks").unwrap();
    let bucket = crate::schema::get_obj(&doc, &tasks, &thread::task_bucket(TASK)).unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put_object(&bucket, TASK, ObjType::Map).map(|_| ())
        }),
        "another device's entry",
    );
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| tx.delete(&bucket, TASK)),
        "deletes",
    );
    refused(
        attempt(&mut doc, &id, &w.phone, |tx| tx.delete(&bucket, TASK)),
        "deletes",
    );
    // Replacing the bucket or the whole task map, in a later change or a forged first one.
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put_object(&tasks, thread::task_bucket(TASK), ObjType::Map)
                .map(|_| ())
        }),
        "skeleton",
    );
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put_object(ROOT, "tasks", ObjType::Map).map(|_| ())
        }),
        "skeleton",
    );
    let mut rival = Automerge::new().with_actor(w.hostile.actor());
    rival
        .transact(|tx| tx.put_object(ROOT, "tasks", ObjType::Map).map(|_| ()))
        .unwrap();
    let change = rival.get_last_local_change().unwrap().clone();
    let mut after = doc.clone();
    after.apply_changes([change.clone()]).unwrap();
    let err = check(
        &after,
        &id,
        &change.decode(),
        &w.hostile.id,
        w.hostile.standing,
    )
    .expect_err("a second first change that rewrites the skeleton");
    assert!(err.what.contains("already holds"), "{err}");
    // The same task id written concurrently by another device.
    let before_task = doc.get_changes(&[])[1].deps().to_vec();
    let mut fork = doc
        .fork_at(&before_task)
        .unwrap()
        .with_actor(w.hostile.actor());
    fork.transact(|tx| {
        let tasks = crate::schema::get_obj(tx, &ROOT, "tasks").unwrap();
        let bucket = crate::schema::get_obj(tx, &tasks, &thread::task_bucket(TASK)).unwrap();
        tx.put_object(&bucket, TASK, ObjType::Map).map(|_| ())
    })
    .unwrap();
    let change = fork.get_last_local_change().unwrap().clone();
    let mut after = doc.clone();
    after.apply_changes([change.clone()]).unwrap();
    let err = check(
        &after,
        &id,
        &change.decode(),
        &w.hostile.id,
        w.hostile.standing,
    )
    .expect_err("a concurrent task under the same id");
    assert!(err.what.contains("already holds"), "{err}");
}

#[test]
fn approval_requests_are_the_running_desktop_s_and_decisions_their_signer_s() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    refused(request(&w, &mut doc, &id, &w.hostile), "only a desktop");
    refused(
        request(&w, &mut doc, &id, &w.other_desk),
        "a task it does not run",
    );
    request(&w, &mut doc, &id, &w.desk).unwrap();
    let approvals = crate::schema::get_obj(&doc, &ROOT, "approvals").unwrap();
    let ap = crate::schema::get_obj(&doc, &approvals, "ap-1").unwrap();
    // Rewriting what is asked: by a member, or by another desktop.
    for dev in [&w.hostile, &w.other_desk] {
        refused(
            attempt(&mut doc, &id, dev, |tx| {
                tx.put(&ap, "action", "shell: true")
            }),
            "another desktop's approval",
        );
        refused(
            attempt(&mut doc, &id, dev, |tx| tx.put(&ap, "expired_at", 9)),
            "another desktop's approval",
        );
    }
    let decide = |tx: &mut Transaction<'_>, device: &str| {
        thread::decide(
            tx,
            "ap-1",
            &thread::Decision {
                device: device.to_owned(),
                approve: true,
                at: 1,
                signature: "00".into(),
            },
        )
    };
    let phone = w.phone.hex();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| decide(tx, &phone)),
        "another device's id",
    );
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| decide(tx, &w.viewer.hex())),
        "its role may not",
    );
    attempt(&mut doc, &id, &w.phone, |tx| decide(tx, &phone)).unwrap();
    // And nobody else writes inside the phone's decision.
    let decisions = crate::schema::get_obj(&doc, &ap, "decisions").unwrap();
    let mine = crate::schema::get_obj(&doc, &decisions, &phone).unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put(&mine, "approve", false)
        }),
        "another device's decision",
    );
}

#[test]
fn messages_are_desktops_and_answers_their_signer_s() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    let ask = |tx: &mut Transaction<'_>| {
        thread::ask_question(
            tx,
            &thread::NewQuestion {
                id: "q-1",
                task: TASK,
                text: "which folder?",
                at: 1,
                expires_at: 2,
            },
        )
    };
    refused(attempt(&mut doc, &id, &w.hostile, ask), "only a desktop");
    attempt(&mut doc, &id, &w.desk, ask).unwrap();
    let messages = crate::schema::get_obj(&doc, &ROOT, "messages").unwrap();
    let q = doc.get(&messages, 0).unwrap().unwrap().1;
    refused(
        attempt(&mut doc, &id, &w.other_desk, |tx| {
            tx.put(&q, "text", "forged")
        }),
        "another device's message",
    );
    let answer = |tx: &mut Transaction<'_>, device: &str| {
        thread::answer_question(
            tx,
            "q-1",
            &thread::Answer {
                device: device.to_owned(),
                text: "Documents".into(),
                at: 1,
                signature: "00".into(),
            },
        )
    };
    let phone = w.phone.hex();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| answer(tx, &phone)),
        "another device's id",
    );
    attempt(&mut doc, &id, &w.phone, |tx| answer(tx, &phone)).unwrap();
}

/// An index document as the desktop that made the space created it.
fn index_doc(w: &World) -> (Automerge, DocId) {
    let id = DocId::index();
    let mut doc = Automerge::new();
    let root = w.desk.hex();
    attempt(&mut doc, &id, &w.desk, |tx| {
        index::create(tx, "space", &root)
    })
    .unwrap();
    (doc, id)
}

#[test]
fn the_index_root_is_written_once_and_each_entry_by_its_owner() {
    let w = world();
    let (mut doc, id) = index_doc(&w);
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| tx.put(ROOT, "root", "me")),
        "skeleton",
    );
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put_object(ROOT, "revoked", ObjType::Map).map(|_| ())
        }),
        "skeleton",
    );
    let addrs = |dev: &str| index::AddrEntry {
        device: dev.to_owned(),
        addrs: vec!["127.0.0.1:1".into()],
        relay: None,
    };
    // The host records a new device's addresses once; the device then owns its entry.
    let phone = w.phone.hex();
    attempt(&mut doc, &id, &w.desk, |tx| {
        index::set_addrs(tx, &addrs(&phone)).map(|_| ())
    })
    .unwrap();
    attempt(&mut doc, &id, &w.phone, |tx| {
        index::set_addrs(
            tx,
            &index::AddrEntry {
                addrs: vec!["127.0.0.1:2".into()],
                ..addrs(&phone)
            },
        )
        .map(|_| ())
    })
    .unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            index::set_addrs(
                tx,
                &index::AddrEntry {
                    addrs: vec!["10.0.0.1:9".into()],
                    ..addrs(&phone)
                },
            )
            .map(|_| ())
        }),
        "another device's addresses",
    );
    let desk = w.desk.hex();
    attempt(&mut doc, &id, &w.desk, |tx| {
        index::set_addrs(tx, &addrs(&desk)).map(|_| ())
    })
    .unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            index::set_addrs(
                tx,
                &index::AddrEntry {
                    addrs: vec!["10.0.0.1:9".into()],
                    ..addrs(&desk)
                },
            )
            .map(|_| ())
        }),
        "another device's addresses",
    );
    attempt(&mut doc, &id, &w.viewer, |tx| {
        index::set_addrs(tx, &addrs(&w.viewer.hex())).map(|_| ())
    })
    .unwrap();
    // Threads: added by phones and desktops, changed only by their creator.
    let entry = index::ThreadEntry {
        id: "th".into(),
        title: "t".into(),
        created: 1,
        created_by: phone.clone(),
        archived: false,
    };
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| index::add_thread(tx, &entry)),
        "its role may not",
    );
    attempt(&mut doc, &id, &w.phone, |tx| index::add_thread(tx, &entry)).unwrap();
    let threads = crate::schema::get_obj(&doc, &ROOT, "threads").unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| tx.delete(&threads, "th")),
        "deletes",
    );
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            index::add_thread(tx, &entry)
        }),
        "another device's entry",
    );
    let th = crate::schema::get_obj(&doc, &threads, "th").unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put(&th, "archived", true)
        }),
        "another device's thread entry",
    );
    // Certificates and revocations: passed on by phones and desktops, never deleted.
    let cert = index::MemberEntry {
        device: w.hostile.hex(),
        name: "n".into(),
        role: "desktop".into(),
        added_by: w.hostile.hex(),
        added_at: 1,
        signature: "00".into(),
    };
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| index::put_member(tx, &cert)),
        "its role may not",
    );
    attempt(&mut doc, &id, &w.hostile, |tx| index::put_member(tx, &cert)).unwrap();
    let members = crate::schema::get_obj(&doc, &ROOT, "members").unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.delete(&members, w.hostile.hex())
        }),
        "deletes",
    );
    // And nothing where errand writes nothing.
    refused(
        attempt(&mut doc, &id, &w.phone, |tx| tx.put(ROOT, "extra", 1)),
        "skeleton",
    );
}

#[test]
fn a_schedule_s_rule_is_its_creator_s_its_runs_its_target_s_and_pausing_anyone_s() {
    use crate::schema::index::schedules::{self, NewSchedule, RunRecord};
    let w = world();
    let (mut doc, id) = index_doc(&w);
    let desk = w.desk.hex();
    let new = NewSchedule {
        id: "s1",
        text: "/sh date",
        cron: Some("0 9 * * *"),
        every_ms: None,
        tz: "UTC",
        thread: None,
        target: &desk,
        missed: "run-once",
        created: 1,
    };
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| schedules::add(tx, &new)),
        "its role may not",
    );
    attempt(&mut doc, &id, &w.phone, |tx| schedules::add(tx, &new)).unwrap();
    // Someone else cannot take the id, nor change what runs or where.
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| schedules::add(tx, &new)),
        "another device",
    );
    let obj = crate::schema::get_obj(
        &doc,
        &crate::schema::get_obj(&doc, &ROOT, "schedules").unwrap(),
        "s1",
    )
    .unwrap();
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put(&obj, "text", "/sh rm -rf ~")
        }),
        "did not make",
    );
    refused(
        attempt(&mut doc, &id, &w.hostile, |tx| {
            tx.put(&obj, "target", w.hostile.hex().as_str())
        }),
        "did not make",
    );
    attempt(&mut doc, &id, &w.phone, |tx| {
        tx.put(&obj, "cron", "0 10 * * *")
    })
    .unwrap();
    // Pausing, resuming and removing: any phone or desktop, not a viewer.
    refused(
        attempt(&mut doc, &id, &w.viewer, |tx| {
            schedules::set_paused(tx, "s1", true, 5).map(|_| ())
        }),
        "its role may not",
    );
    attempt(&mut doc, &id, &w.hostile, |tx| {
        schedules::set_paused(tx, "s1", true, 5).map(|_| ())
    })
    .unwrap();
    attempt(&mut doc, &id, &w.other_desk, |tx| {
        schedules::set_paused(tx, "s1", false, 6).map(|_| ())
    })
    .unwrap();
    // What happened to the runs: the target desktop's alone.
    let record = RunRecord {
        last_slot: Some(10),
        ..RunRecord::default()
    };
    for by in [&w.phone, &w.other_desk, &w.hostile] {
        refused(
            attempt(&mut doc, &id, by, |tx| schedules::record(tx, "s1", &record)),
            "does not run",
        );
    }
    attempt(&mut doc, &id, &w.desk, |tx| {
        schedules::record(tx, "s1", &record)
    })
    .unwrap();
    let run = crate::schema::get_obj(&doc, &obj, "run").unwrap();
    refused(
        attempt(&mut doc, &id, &w.phone, |tx| tx.put(&run, "last_slot", 99)),
        "does not run",
    );
    refused(
        attempt(&mut doc, &id, &w.phone, |tx| tx.put(&obj, "owner", "me")),
        "errand does not have",
    );
    let listed = schedules::list(&doc);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].created_by, w.phone.hex());
    assert_eq!(listed[0].cron.as_deref(), Some("0 10 * * *"));
    assert_eq!(listed[0].resumed_at, Some(6));
    assert!(!listed[0].paused);
    assert_eq!(listed[0].run.last_slot, Some(10));
}

/// What a change made here wrote, as the executor and the event watcher are told.
fn touched_by(
    doc: &mut Automerge,
    id: &DocId,
    by: &Dev,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
) -> Touched {
    doc.set_actor(by.actor());
    let hash = doc
        .transact(f)
        .expect("the change applies")
        .hash
        .expect("it changed something");
    let change = doc.get_change_by_hash(&hash).expect("the change is held");
    Checker::new(doc, id, &mut Paths::default()).touched(&change.decode())
}

#[test]
fn a_change_says_which_tasks_and_approvals_it_wrote_and_nesting_cannot_make_that_costly() {
    let w = world();
    let (mut doc, id) = thread_doc(&w);
    let target = w.desk.hex();
    let t = touched_by(&mut doc, &id, &w.phone, |tx| {
        thread::add_task(
            tx,
            &NewTask {
                id: "t2",
                prompt: "again",
                target: &target,
                created: 2,
            },
        )
    });
    assert_eq!(t.tasks, ["t2".to_owned()].into());
    assert!(t.approvals.is_empty() && !t.messages && !t.other);
    let t = touched_by(&mut doc, &id, &w.desk, |tx| {
        thread::set_status(tx, TASK, thread::TaskStatus::Running, 3)?;
        thread::request_approval(
            tx,
            &NewApproval {
                id: "ap-2",
                task: TASK,
                action: "shell: ls",
                class: "shell",
                requested_by: &target,
                requested_at: 3,
                expires_at: 4,
            },
        )
    });
    assert_eq!(t.tasks, [TASK.to_owned()].into());
    assert_eq!(t.approvals, ["ap-2".to_owned()].into());
    // Twenty thousand maps, each inside the last: told as "something else", at once. (Keeping
    // the path of each made object cost memory in the square of the depth: 16 GB here.)
    let t = touched_by(&mut doc, &id, &w.phone, |tx| {
        let mut obj = tx.put_object(ROOT, "deep", ObjType::Map)?;
        for _ in 1..20_000 {
            obj = tx.put_object(&obj, "deeper", ObjType::Map)?;
        }
        Ok(())
    });
    assert!(t.other && t.tasks.is_empty());
}
