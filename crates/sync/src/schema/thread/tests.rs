use std::collections::HashSet;

use automerge::{ActorId, Automerge};

use super::*;

fn signed(key: &iroh::SecretKey, space: &str, a: &Approval, approve: bool, at: i64) -> Decision {
    let bytes = approval_signed_bytes(space, a, approve, at);
    Decision {
        device: key.public().to_string(),
        approve,
        at,
        signature: crate::ids::hex(&key.sign(&bytes).to_bytes()),
    }
}

#[test]
fn only_a_signed_decision_by_a_device_that_may_decide_counts() {
    let (phone, viewer) = (iroh::SecretKey::generate(), iroh::SecretKey::generate());
    let mut approval = Approval {
        id: "a1".into(),
        thread: "t1".into(),
        task: "k1".into(),
        action: "sh rm -rf build".into(),
        class: "shell".into(),
        requested_by: "desk".into(),
        requested_at: 1,
        expires_at: 100,
        decisions: Vec::new(),
        expired: false,
    };
    let by_phone = signed(&phone, "space", &approval, true, 20);
    assert!(decision_is_signed("space", &approval, &by_phone));
    // The same signature says nothing about another decision, approval or space.
    let flipped = Decision {
        approve: false,
        ..by_phone.clone()
    };
    assert!(!decision_is_signed("space", &approval, &flipped));
    assert!(!decision_is_signed("other space", &approval, &by_phone));
    let other = Approval {
        id: "a2".into(),
        ..approval.clone()
    };
    assert!(!decision_is_signed("space", &other, &by_phone));
    let garbage = Decision {
        signature: "zz".into(),
        ..by_phone.clone()
    };
    assert!(!decision_is_signed("space", &approval, &garbage));

    // An earlier denial by the viewer, and an earlier forged one in the phone's name.
    let forged = Decision {
        approve: false,
        at: 5,
        ..by_phone.clone()
    };
    approval.decisions = vec![
        by_phone.clone(),
        signed(&viewer, "space", &approval, false, 10),
        forged,
    ];
    let phone_id = phone.public();
    let chosen = first_valid_decision("space", &approval, |d| *d == phone_id);
    assert_eq!(chosen, Some(&by_phone));
    assert_eq!(first_valid_decision("space", &approval, |_| false), None);
}

fn new_task<'a>(id: &'a str, prompt: &'a str, created: i64) -> NewTask<'a> {
    NewTask {
        id,
        prompt,
        target: "desk",
        created,
    }
}

fn thread_doc() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from([1; 32]));
    doc.transact(|tx| create(tx, "t1", "title"))
        .expect("create the thread");
    doc
}

#[test]
fn every_task_id_has_one_bucket_of_the_thread() {
    let doc = thread_doc();
    let tasks = get_obj(&doc, &ROOT, "tasks").expect("tasks");
    assert_eq!(doc.keys(&tasks).count(), TASK_BUCKETS as usize);
    let mut used = HashSet::new();
    for i in 0..2_000 {
        let id = format!("{i:016x}");
        let bucket = task_bucket(&id);
        assert_eq!(bucket, task_bucket(&id), "the same on every call");
        assert!(get_obj(&doc, &tasks, &bucket).is_some(), "{bucket} exists");
        used.insert(bucket);
    }
    assert_eq!(used.len(), TASK_BUCKETS as usize, "ids spread over all");
    // Ids a peer made up land somewhere too.
    for odd in ["", "é", "../..", "a very long id that is not hex at all"] {
        assert!(get_obj(&doc, &tasks, &task_bucket(odd)).is_some());
    }
}

#[test]
fn tasks_added_concurrently_to_one_bucket_all_survive() {
    let mut phone = thread_doc();
    let mut desk = phone.fork().with_actor(ActorId::from([2; 32]));
    // Two ids in the same bucket, one written on each side.
    let first = "0000000000000001".to_owned();
    let second = (2..)
        .map(|i| format!("{i:016x}"))
        .find(|id| task_bucket(id) == task_bucket(&first))
        .expect("another id in that bucket");
    phone
        .transact(|tx| add_task(tx, &new_task(&first, "from the phone", 1)))
        .expect("add on the phone");
    desk.transact(|tx| add_task(tx, &new_task(&second, "from the desk", 2)))
        .expect("add on the desk");
    phone.merge(&mut desk).expect("merge");
    desk.merge(&mut phone).expect("merge");
    for doc in [&phone, &desk] {
        let all = tasks(doc, "t1");
        let prompts: Vec<&str> = all.iter().map(|t| t.prompt.as_str()).collect();
        assert_eq!(prompts, ["from the phone", "from the desk"]);
        let senders: Vec<&str> = all.iter().map(|t| t.created_by.as_str()).collect();
        assert_eq!(
            senders,
            ["01".repeat(32), "02".repeat(32)],
            "each side's actor"
        );
        assert_eq!(task_count(doc), 2);
        assert_eq!(task_status(doc, &second), Some(TaskStatus::Queued));
        let states = task_states(doc, &HashSet::from([first.clone()]));
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].id, second);
    }
}

/// `task` reads each object's entries in one pass; what it reads must be what a lookup of
/// each field gives, conflicts included.
#[test]
fn a_task_reads_whole_as_its_fields_read_one_by_one() {
    let mut phone = thread_doc();
    let id = "00000000000000aa";
    phone
        .transact(|tx| {
            add_task(tx, &new_task(id, "build it", 7))?;
            set_status(tx, id, TaskStatus::Running, 8)?;
            add_progress(tx, id, "compiling", 9)?;
            add_progress(tx, id, "linking", 10)?;
            add_artifact(
                tx,
                id,
                &Artifact {
                    hash: "ab".repeat(32),
                    size: 42,
                    mime: "image/png".into(),
                    name: "shot.png".into(),
                },
            )
        })
        .expect("task");
    // Both sides set the status and result at once: a conflict.
    let mut desk = phone.fork().with_actor(ActorId::from([2; 32]));
    phone
        .transact(|tx| finish(tx, id, Err("stopped"), TaskStatus::Failed, 11))
        .expect("fail on the phone");
    desk.transact(|tx| finish(tx, id, Ok("built"), TaskStatus::Done, 12))
        .expect("finish on the desk");
    phone.merge(&mut desk).expect("merge");
    let task = task(&phone, "t1", id).expect("the task");
    let obj = task_obj(&phone, id).expect("its object");
    assert_eq!(
        Some(task.status.as_str().to_owned()),
        get_str(&phone, &obj, "status")
    );
    assert_eq!(task.result, get_str(&phone, &obj, "result"));
    assert_eq!(task.error, get_str(&phone, &obj, "error"));
    assert_eq!(task.finished, get_i64(&phone, &obj, "finished"));
    assert_eq!((task.prompt.as_str(), task.created), ("build it", 7));
    assert_eq!(task.started, Some(8));
    let progress: Vec<(&str, i64)> = task
        .progress
        .iter()
        .map(|p| (p.text.as_str(), p.at))
        .collect();
    assert_eq!(progress, [("compiling", 9), ("linking", 10)]);
    assert_eq!(task.artifacts.len(), 1);
    assert_eq!(task.artifacts[0].size, 42);
    assert_eq!(task.artifacts[0].name, "shot.png");
    // What an event shows of it reads the same, in the same pass as its state.
    let headline = task_headline(&phone, id).expect("its headline");
    assert_eq!(
        (headline.prompt.as_str(), &headline.error),
        (task.prompt.as_str(), &task.error)
    );
    assert_eq!(Some(headline.state.clone()), task_state(&phone, id));
    assert_eq!(task_headlines(&phone), std::slice::from_ref(&headline));
    assert_eq!(
        task_headlines_of(&phone, [id, "no-such-task"].into_iter()),
        [headline]
    );
}

#[test]
fn headlines_of_some_tasks_are_those_tasks_in_the_order_asked() {
    let mut doc = thread_doc();
    let ids: Vec<String> = (0..40).map(|n| format!("task{n:02}")).collect();
    let prompts: Vec<String> = ids.iter().map(|id| format!("prompt of {id}")).collect();
    doc.transact(|tx| {
        ids.iter()
            .zip(&prompts)
            .enumerate()
            .try_for_each(|(n, (id, prompt))| add_task(tx, &new_task(id, prompt, n as i64)))
    })
    .expect("add the tasks");
    let asked: Vec<&str> = ids.iter().rev().step_by(3).map(String::as_str).collect();
    let got = task_headlines_of(&doc, asked.iter().copied());
    let got: Vec<(&str, &str)> = got
        .iter()
        .map(|h| (h.state.id.as_str(), h.prompt.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = asked
        .iter()
        .map(|id| {
            (
                *id,
                prompts[ids.iter().position(|i| i == id).unwrap()].as_str(),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_task_sent_after_another_arrived_comes_after_it_whatever_the_clocks_say() {
    let mut desk = thread_doc();
    let mut phone = desk.fork().with_actor(ActorId::from([2; 32]));
    desk.transact(|tx| add_task(tx, &new_task("00000000000000d1", "first", 5_000)))
        .expect("first");
    phone.merge(&mut desk).expect("merge");
    // The phone's clock is far behind: its task claims to be older.
    phone
        .transact(|tx| add_task(tx, &new_task("00000000000000a2", "second", 1)))
        .expect("second");
    desk.merge(&mut phone).expect("merge");
    for doc in [&phone, &desk] {
        let prompts: Vec<String> = tasks(doc, "t1").into_iter().map(|t| t.prompt).collect();
        assert_eq!(prompts, ["first", "second"]);
        let states: Vec<String> = task_states(doc, &HashSet::new())
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(states, ["00000000000000d1", "00000000000000a2"]);
    }
}

#[test]
fn only_the_asking_device_marks_its_approval_expired() {
    let mut desk = thread_doc();
    desk.transact(|tx| {
        request_approval(
            tx,
            &NewApproval {
                id: "a1",
                task: "k1",
                action: "sh ls",
                class: "shell",
                requested_by: "desk",
                requested_at: 1,
                expires_at: 2,
            },
        )
    })
    .expect("request");
    let mut other = desk.fork().with_actor(ActorId::from([3; 32]));
    other
        .transact(|tx| expire_approval(tx, "a1", 3))
        .expect("another device writes the mark");
    assert!(!approvals(&other, "t1")[0].expired, "not believed");
    desk.transact(|tx| expire_approval(tx, "a1", 3))
        .expect("the asking device writes it");
    assert!(approvals(&desk, "t1")[0].expired);
    // Merged with the other's concurrent write, the asking device's still counts.
    other.merge(&mut desk).expect("merge");
    assert!(approvals(&other, "t1")[0].expired);
}

#[test]
fn a_thread_without_its_buckets_refuses_new_tasks_and_lists_none() {
    let mut doc = Automerge::new();
    doc.transact(|tx| {
        tx.put_object(ROOT, "tasks", ObjType::Map)?;
        Ok::<_, AutomergeError>(())
    })
    .expect("a bare tasks map");
    let added = doc.transact(|tx| add_task(tx, &new_task("0000000000000001", "x", 1)));
    assert!(added.is_err());
    assert!(tasks(&doc, "t1").is_empty());
    assert_eq!(task_count(&doc), 0);
}
