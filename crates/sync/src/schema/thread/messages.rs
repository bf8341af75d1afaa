//! The desktop's side of a thread's conversation: answers and questions, in `messages`.
//!
//! ```text
//! messages: [ { id, kind: "agent", task, text, at, status, steps },           an answer
//!             { id, kind: "question", task, text, at, expires_at,
//!               answers: { <device>: { text, at, signature } } } ]          a question
//! ```
//!
//! Who owns what: the user's side of a turn is the task itself (its prompt, the sender's), so
//! it is not written twice. The desktop that runs a task appends one `agent` entry when the
//! task ends (its answer: the model's reply, a direct command's result, or why it failed) and
//! one `question` entry each time the model asks the user something, with the `answers` map
//! made at the same time (shared maps are made once, by their creator). Each answering device
//! writes only its own entry under `answers`, signed, exactly like an approval decision.
//!
//! An entry's author is the device whose actor created it, not a field: anyone can write a
//! field, nobody can create an object under another device's actor. Readers that act on an
//! entry (the executor building a model's context, a phone listing questions) check that its
//! author is the task's target.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ROOT, ReadDoc, hydrate};
use serde::{Deserialize, Serialize};

use super::{TaskStatus, creator, section};
use crate::schema::{Fields, get_obj};

/// An answer: how a task ended, written by the desktop that ran it.
pub const KIND_AGENT: &str = "agent";
/// A question the agent asks the user while a task runs.
pub const KIND_QUESTION: &str = "question";
/// Runs of a schedule that did not happen when they should have.
pub const KIND_MISSED: &str = "missed";

/// One entry of a thread's `messages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// [`KIND_AGENT`] or [`KIND_QUESTION`] (others may come from newer versions).
    pub kind: String,
    /// The task the entry belongs to.
    pub task: String,
    /// The device that created the entry (from the actor of the change that made it).
    pub author: String,
    pub text: String,
    pub at: i64,
    /// An answer: how the task ended.
    pub status: Option<TaskStatus>,
    /// An answer: one line per tool call and its outcome.
    pub steps: Vec<String>,
    /// A question: when it stops waiting.
    pub expires_at: Option<i64>,
    /// A question: every answer written so far, valid or not; see [`first_valid_answer`].
    pub answers: Vec<Answer>,
    /// A missed-runs notice: which schedule and which slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<MissedSlots>,
}

/// Slots of a schedule that passed without running, as its desktop recorded them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissedSlots {
    pub schedule: String,
    /// The first and last slot missed (Unix ms), and how many.
    pub first: i64,
    pub last: i64,
    pub count: i64,
    /// `off`, `asleep` or `late`.
    pub reason: String,
}

/// One device's answer to a question, signed by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub device: String,
    pub text: String,
    pub at: i64,
    pub signature: String,
}

/// What the desktop writes when a task ends.
#[derive(Clone, Debug)]
pub struct NewAgentMessage<'a> {
    pub id: &'a str,
    pub task: &'a str,
    pub text: &'a str,
    pub status: TaskStatus,
    pub steps: &'a [String],
    pub at: i64,
}

/// What the desktop writes to ask the user something.
#[derive(Clone, Debug)]
pub struct NewQuestion<'a> {
    pub id: &'a str,
    pub task: &'a str,
    pub text: &'a str,
    pub at: i64,
    pub expires_at: i64,
}

fn append(tx: &mut impl Transactable) -> Result<ObjId, AutomergeError> {
    let messages = section(tx, "messages")?;
    let len = tx.length(&messages);
    tx.insert_object(&messages, len, ObjType::Map)
}

/// Appends a message with its fields, in one batch (see the module docs of `schema`).
fn append_with(
    tx: &mut impl Transactable,
    fields: HashMap<&str, hydrate::Value>,
) -> Result<(), AutomergeError> {
    let messages = section(tx, "messages")?;
    let len = tx.length(&messages);
    tx.batch_create_object(&messages, len, &fields.into(), true)?;
    Ok(())
}

/// Appends a task's answer. Executor only.
pub fn add_agent_message(
    tx: &mut impl Transactable,
    m: &NewAgentMessage<'_>,
) -> Result<(), AutomergeError> {
    let mut fields = HashMap::from([
        ("id", hydrate::Value::scalar(m.id)),
        ("kind", hydrate::Value::scalar(KIND_AGENT)),
        ("task", hydrate::Value::scalar(m.task)),
        ("text", hydrate::Value::scalar(m.text)),
        ("at", hydrate::Value::scalar(m.at)),
        ("status", hydrate::Value::scalar(m.status.as_str())),
    ]);
    if !m.steps.is_empty() {
        fields.insert("steps", hydrate::Value::scalar(m.steps.join("\n")));
    }
    append_with(tx, fields)
}

/// Appends a question, with the (empty) map its answers go into. Executor only.
pub fn ask_question(tx: &mut impl Transactable, q: &NewQuestion<'_>) -> Result<(), AutomergeError> {
    append_with(
        tx,
        HashMap::from([
            ("id", hydrate::Value::scalar(q.id)),
            ("kind", hydrate::Value::scalar(KIND_QUESTION)),
            ("task", hydrate::Value::scalar(q.task)),
            ("text", hydrate::Value::scalar(q.text)),
            ("at", hydrate::Value::scalar(q.at)),
            ("expires_at", hydrate::Value::scalar(q.expires_at)),
            ("answers", hydrate::Value::map()),
        ]),
    )
}

/// Records missed slots of a schedule in the thread; `task` is the catch-up run, if any (empty
/// when the schedule skips missed slots). Executor only.
pub fn add_missed(
    tx: &mut impl Transactable,
    id: &str,
    task: &str,
    text: &str,
    at: i64,
    m: &MissedSlots,
) -> Result<(), AutomergeError> {
    let obj = append(tx)?;
    tx.put(&obj, "id", id)?;
    tx.put(&obj, "kind", KIND_MISSED)?;
    tx.put(&obj, "task", task)?;
    tx.put(&obj, "text", text)?;
    tx.put(&obj, "at", at)?;
    tx.put(&obj, "schedule", m.schedule.as_str())?;
    tx.put(&obj, "first", m.first)?;
    tx.put(&obj, "last", m.last)?;
    tx.put(&obj, "count", m.count)?;
    tx.put(&obj, "reason", m.reason.as_str())?;
    Ok(())
}

/// The message objects, in list order.
fn objects(doc: &impl ReadDoc) -> Vec<ObjId> {
    let Some(list) = get_obj(doc, &ROOT, "messages") else {
        return Vec::new();
    };
    doc.list_range(&list, ..)
        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
        .map(|item| item.id())
        .collect()
}

/// Records one device's signed answer to a question. Fails if there is no such question.
pub fn answer_question(
    tx: &mut impl Transactable,
    question: &str,
    answer: &Answer,
) -> Result<(), AutomergeError> {
    let answers = objects(tx)
        .into_iter()
        .map(|obj| Fields::read(tx, &obj))
        .find(|f| {
            f.str("id").as_deref() == Some(question)
                && f.str("kind").as_deref() == Some(KIND_QUESTION)
        })
        .and_then(|f| f.obj("answers").cloned())
        .ok_or(AutomergeError::InvalidOp(ObjType::Map))?;
    let entry = tx.put_object(&answers, answer.device.as_str(), ObjType::Map)?;
    tx.put(&entry, "text", answer.text.as_str())?;
    tx.put(&entry, "at", answer.at)?;
    tx.put(&entry, "signature", answer.signature.as_str())?;
    Ok(())
}

/// Every message of the thread, in the order they were appended (concurrent appends in an
/// order every device agrees on).
pub fn messages(doc: &impl ReadDoc) -> Vec<Message> {
    objects(doc)
        .into_iter()
        .filter_map(|obj| {
            let f = Fields::read(doc, &obj);
            let answers = f
                .obj("answers")
                .map(|map| {
                    doc.map_range(map, ..)
                        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
                        .filter_map(|item| {
                            let e = Fields::read(doc, &item.id());
                            Some(Answer {
                                device: item.key.to_string(),
                                text: e.str("text")?,
                                at: e.i64("at")?,
                                signature: e.str("signature")?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Message {
                id: f.str("id")?,
                kind: f.str("kind")?,
                task: f.str("task").unwrap_or_default(),
                author: creator(&obj),
                text: f.str("text").unwrap_or_default(),
                at: f.i64("at").unwrap_or(0),
                status: f.str("status").and_then(|s| s.parse().ok()),
                steps: f
                    .str("steps")
                    .map(|s| s.lines().map(str::to_owned).collect())
                    .unwrap_or_default(),
                expires_at: f.i64("expires_at"),
                missed: (f.str("kind").as_deref() == Some(KIND_MISSED))
                    .then(|| {
                        Some(MissedSlots {
                            schedule: f.str("schedule")?,
                            first: f.i64("first")?,
                            last: f.i64("last")?,
                            count: f.i64("count")?,
                            reason: f.str("reason").unwrap_or_default(),
                        })
                    })
                    .flatten(),
                answers,
            })
        })
        .collect()
}

/// The bytes an answering device signs: the question in full and the answer, so a signature
/// cannot be replayed onto another question, task, thread or space, or another answer.
pub fn answer_signed_bytes(
    space: &str,
    thread: &str,
    question: &Message,
    text: &str,
    at: i64,
) -> Vec<u8> {
    let mut out = b"errand/answer/1".to_vec();
    for field in [
        space,
        thread,
        &question.id,
        &question.task,
        &question.text,
        text,
    ] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&at.to_be_bytes());
    out
}

/// Whether an answer carries a valid signature by the device it names, over this question.
pub fn answer_is_signed(space: &str, thread: &str, question: &Message, answer: &Answer) -> bool {
    let Ok(device) = answer.device.parse::<crate::DeviceId>() else {
        return false;
    };
    let Some(bytes) = crate::ids::parse_hex::<64>(&answer.signature) else {
        return false;
    };
    let signature = iroh::Signature::from_bytes(&bytes);
    let message = answer_signed_bytes(space, thread, question, &answer.text, answer.at);
    device.verify(&message, &signature).is_ok()
}

/// The answer that counts on a question: the earliest (by its time, then device) validly
/// signed by a device that `may_answer` (a member whose role may approve: phones and
/// desktops, not viewers). The same rule as [`super::first_valid_decision`].
pub fn first_valid_answer<'a>(
    space: &str,
    thread: &str,
    question: &'a Message,
    may_answer: impl Fn(&crate::DeviceId) -> bool,
) -> Option<&'a Answer> {
    let mut answers: Vec<&Answer> = question.answers.iter().collect();
    answers.sort_by(|a, b| (a.at, &a.device).cmp(&(b.at, &b.device)));
    answers.into_iter().find(|a| {
        answer_is_signed(space, thread, question, a)
            && a.device
                .parse::<crate::DeviceId>()
                .is_ok_and(|device| may_answer(&device))
    })
}

#[cfg(test)]
mod tests {
    use automerge::{ActorId, Automerge};

    use super::*;
    use crate::schema::thread::create;

    fn thread_doc(actor: u8) -> Automerge {
        let mut doc = Automerge::new().with_actor(ActorId::from([actor; 32]));
        doc.transact(|tx| create(tx, "t1", "title"))
            .expect("create the thread");
        doc
    }

    fn signed(key: &iroh::SecretKey, question: &Message, text: &str, at: i64) -> Answer {
        let bytes = answer_signed_bytes("space", "t1", question, text, at);
        Answer {
            device: key.public().to_string(),
            text: text.to_owned(),
            at,
            signature: crate::ids::hex(&key.sign(&bytes).to_bytes()),
        }
    }

    #[test]
    fn answers_and_questions_read_back_with_their_author() {
        let mut desk = thread_doc(2);
        desk.transact(|tx| {
            ask_question(
                tx,
                &NewQuestion {
                    id: "q1",
                    task: "k1",
                    text: "which folder?",
                    at: 5,
                    expires_at: 99,
                },
            )?;
            add_agent_message(
                tx,
                &NewAgentMessage {
                    id: "m1",
                    task: "k1",
                    text: "done in ~/photos",
                    status: TaskStatus::Done,
                    steps: &["list . → ok".to_owned(), "read a → error".to_owned()],
                    at: 9,
                },
            )
        })
        .expect("write");
        let all = messages(&desk);
        assert_eq!(all.len(), 2);
        let (q, a) = (&all[0], &all[1]);
        assert_eq!(q.kind, KIND_QUESTION);
        assert_eq!((q.text.as_str(), q.expires_at), ("which folder?", Some(99)));
        assert_eq!(q.author, "02".repeat(32), "the creating actor's device");
        assert!(q.answers.is_empty());
        assert_eq!(a.kind, KIND_AGENT);
        assert_eq!(a.status, Some(TaskStatus::Done));
        assert_eq!(a.steps, ["list . → ok", "read a → error"]);
        assert_eq!(a.task, "k1");
    }

    #[test]
    fn only_a_signed_answer_by_a_device_that_may_answer_counts() {
        let mut desk = thread_doc(2);
        desk.transact(|tx| {
            ask_question(
                tx,
                &NewQuestion {
                    id: "q1",
                    task: "k1",
                    text: "which folder?",
                    at: 5,
                    expires_at: 99,
                },
            )
        })
        .expect("ask");
        let question = messages(&desk).remove(0);
        let (phone, viewer) = (iroh::SecretKey::generate(), iroh::SecretKey::generate());
        let by_phone = signed(&phone, &question, "photos", 20);
        let by_viewer = signed(&viewer, &question, "/etc", 10);
        // A phone and a viewer answer concurrently; both entries survive the merge.
        let mut other = desk.fork().with_actor(ActorId::from([3; 32]));
        desk.transact(|tx| answer_question(tx, "q1", &by_phone))
            .expect("answer");
        other
            .transact(|tx| answer_question(tx, "q1", &by_viewer))
            .expect("answer");
        desk.merge(&mut other).expect("merge");
        let mut question = messages(&desk).remove(0);
        assert_eq!(question.answers.len(), 2, "{question:?}");
        let (phone_id, viewer_id) = (phone.public(), viewer.public());
        let counted = first_valid_answer("space", "t1", &question, |d| {
            *d == phone_id || *d == viewer_id
        });
        assert_eq!(
            counted.map(|a| a.text.as_str()),
            Some("/etc"),
            "the earliest"
        );
        // The viewer may not answer: its earlier answer is ignored.
        let counted = first_valid_answer("space", "t1", &question, |d| *d == phone_id);
        assert_eq!(counted, Some(&by_phone));
        // An even earlier answer in the phone's name that the phone did not sign.
        question.answers.push(Answer {
            text: "/".into(),
            at: 5,
            ..by_phone.clone()
        });
        let counted = first_valid_answer("space", "t1", &question, |d| *d == phone_id);
        assert_eq!(counted, Some(&by_phone));
        assert_eq!(
            first_valid_answer("space", "t1", &question, |_| false),
            None
        );

        // A signature holds for nothing else: another space, thread or text.
        assert!(answer_is_signed("space", "t1", &question, &by_phone));
        assert!(!answer_is_signed("other", "t1", &question, &by_phone));
        assert!(!answer_is_signed("space", "t2", &question, &by_phone));
        let changed = Answer {
            text: "elsewhere".into(),
            ..by_phone
        };
        assert!(!answer_is_signed("space", "t1", &question, &changed));
        assert!(
            desk.transact(|tx| answer_question(tx, "nope", &changed))
                .is_err(),
            "no such question"
        );
    }
}
