//! A thread as a conversation, and the questions the agent asks: what `errand thread`,
//! `errand questions` and `errand answer` (and the app) use.

use std::collections::HashMap;

use errand_sync::schema::thread::{self, Task};
use errand_sync::schema::{self, DocId};
use serde::{Deserialize, Serialize};

use super::{Node, short};
use crate::error::NodeError;

/// A question the agent asks while a task runs, as the phone sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuestionInfo {
    pub id: String,
    pub thread: String,
    pub task: String,
    /// The question's text.
    pub question: String,
    /// The name of the desktop that asks.
    pub asked_by: String,
    pub asked_at: i64,
    pub expires_at: i64,
    /// pending, answered or expired.
    pub state: String,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
}

/// One entry of a thread's conversation, in order: a task's prompt, then what happened to it
/// (approvals asked, questions asked and answered), then its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationEntry {
    /// prompt, approval, question, answer, or missed (runs of a schedule that did not happen
    /// in time).
    pub kind: String,
    /// The task's, approval's, question's or answer's id.
    pub id: String,
    pub task: String,
    pub at: i64,
    /// The name of the device that wrote it.
    pub by: String,
    pub text: String,
    /// prompt: the task's status; answer: how the task ended (done, failed, cancelled);
    /// approval: pending, approved, denied or expired; question: pending, answered or expired.
    pub state: String,
    /// An approval's decider or a question's answerer.
    pub reply_by: Option<String>,
    /// A question's answer.
    pub reply: Option<String>,
}

/// A question's state from its counted answer (`None`: none counts) and the time.
fn question_state(answer: Option<&thread::Answer>, expires_at: i64, now: i64) -> &'static str {
    match answer {
        Some(_) => "answered",
        None if expires_at <= now => "expired",
        None => "pending",
    }
}

impl Node {
    fn name_of(&self, names: &HashMap<String, String>, device: &str) -> String {
        names
            .get(device)
            .cloned()
            .unwrap_or_else(|| short(device).to_owned())
    }

    /// The questions in every thread, oldest first; with `pending_only`, those still waiting.
    /// A question counts only when written by the desktop that runs its task.
    pub fn questions(&self, pending_only: bool) -> Result<Vec<QuestionInfo>, NodeError> {
        self.require_space()?;
        let names = self.names();
        let membership = self.membership();
        let now = schema::now_millis();
        let mut out = Vec::new();
        for t in self.threads()? {
            let Some(doc) = DocId::parse(&t.id) else {
                continue;
            };
            let Some((messages, tasks)) = self.repo.read(&doc, |d| {
                (thread::messages(d), thread::tasks(d, doc.as_str()))
            })?
            else {
                continue;
            };
            let targets: HashMap<String, String> =
                tasks.into_iter().map(|t| (t.id, t.target)).collect();
            for q in messages {
                if q.kind != thread::KIND_QUESTION || targets.get(&q.task) != Some(&q.author) {
                    continue;
                }
                let expires_at = q.expires_at.unwrap_or(0);
                let answer = crate::events::counted_answer(membership.as_deref(), doc.as_str(), &q);
                let state = question_state(answer, expires_at, now);
                if pending_only && state != "pending" {
                    continue;
                }
                out.push(QuestionInfo {
                    answer: answer.map(|a| a.text.clone()),
                    answered_by: answer.map(|a| self.name_of(&names, &a.device)),
                    state: state.to_owned(),
                    asked_by: self.name_of(&names, &q.author),
                    id: q.id,
                    thread: doc.to_string(),
                    task: q.task,
                    question: q.text,
                    asked_at: q.at,
                    expires_at,
                });
            }
        }
        out.sort_by(|a, b| (a.asked_at, &a.id).cmp(&(b.asked_at, &b.id)));
        Ok(out)
    }

    /// Answers a pending question, signed with this device's key. Returns the question as it
    /// is now and the device that asked (to wait for delivery to it).
    pub fn answer(&self, needle: &str, text: &str) -> Result<(QuestionInfo, String), NodeError> {
        let space = self.require_space()?;
        if !self.membership().is_some_and(|m| m.may_approve(&self.id())) {
            return Err(NodeError::NotAllowed(
                "this device's role may not answer questions".into(),
            ));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(NodeError::BadInput("an answer needs some text".into()));
        }
        let needle = needle.trim();
        let all = self.questions(false)?;
        let matches: Vec<&QuestionInfo> = all
            .iter()
            .filter(|q| !needle.is_empty() && q.id.starts_with(needle))
            .collect();
        let mut info = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(NodeError::NotFound(format!("no question {needle:?}"))),
            _ => {
                return Err(NodeError::Ambiguous(format!(
                    "{needle:?} names more than one question"
                )));
            }
        };
        if info.state != "pending" {
            return Err(NodeError::BadInput(format!(
                "question {} is already {}",
                short(&info.id),
                info.state
            )));
        }
        let doc =
            DocId::parse(&info.thread).ok_or_else(|| NodeError::NotFound(info.thread.clone()))?;
        let question = self
            .repo
            .read(&doc, thread::messages)?
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.id == info.id && m.kind == thread::KIND_QUESTION)
            .ok_or_else(|| NodeError::NotFound(info.id.clone()))?;
        let at = schema::now_millis();
        let bytes =
            thread::answer_signed_bytes(&space.to_string(), doc.as_str(), &question, text, at);
        let answer = thread::Answer {
            device: self.id().to_string(),
            text: text.to_owned(),
            at,
            signature: errand_sync::ids::hex(&self.secret_key.sign(&bytes).to_bytes()),
        };
        self.repo.change(
            &doc,
            &format!("question {} answered by {}", short(&info.id), self.name()),
            |tx| thread::answer_question(tx, &info.id, &answer),
        )?;
        info.state = "answered".to_owned();
        info.answer = Some(text.to_owned());
        info.answered_by = Some(self.name());
        Ok((info, question.author))
    }

    /// A thread's conversation, in order: each task (oldest first) as its prompt, then its
    /// approval requests and questions (by time), then its answer. What the desktop wrote
    /// counts only when written by the desktop that runs the task, and decisions and answers
    /// only when validly signed by a device that may give them.
    pub fn conversation(&self, needle: &str) -> Result<Vec<ConversationEntry>, NodeError> {
        self.require_space()?;
        let doc = self.resolve_thread(needle)?;
        let names = self.names();
        let membership = self.membership();
        let now = schema::now_millis();
        let (tasks, messages, approvals) = self
            .repo
            .read(&doc, |d| {
                (
                    thread::tasks(d, doc.as_str()),
                    thread::messages(d),
                    thread::approvals(d, doc.as_str()),
                )
            })?
            .ok_or_else(|| NodeError::NotFound(format!("no thread {needle:?} here")))?;
        // A schedule's missed runs count only as recorded by the desktop that runs it.
        let schedule_targets: HashMap<String, String> = self
            .repo
            .read(&DocId::index(), errand_sync::schema::index::schedules::list)?
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.id, s.target))
            .collect();
        let mut missed: HashMap<&str, Vec<ConversationEntry>> = HashMap::new();
        let mut loose: Vec<ConversationEntry> = Vec::new();
        let mut during: HashMap<&str, Vec<ConversationEntry>> = HashMap::new();
        let mut answers: HashMap<&str, ConversationEntry> = HashMap::new();
        let targets: HashMap<&str, &str> = tasks
            .iter()
            .map(|t| (t.id.as_str(), t.target.as_str()))
            .collect();
        for a in &approvals {
            let decision = crate::events::counted_decision(membership.as_deref(), a);
            let state = match decision {
                Some(d) if d.approve => "approved",
                Some(_) => "denied",
                None if a.expires_at <= now => "expired",
                None => "pending",
            };
            during
                .entry(a.task.as_str())
                .or_default()
                .push(ConversationEntry {
                    kind: "approval".into(),
                    id: a.id.clone(),
                    task: a.task.clone(),
                    at: a.requested_at,
                    by: self.name_of(&names, &a.requested_by),
                    text: a.action.clone(),
                    state: state.into(),
                    reply_by: decision.map(|d| self.name_of(&names, &d.device)),
                    reply: None,
                });
        }
        for m in &messages {
            if let Some(slots) = &m.missed {
                if schedule_targets.get(&slots.schedule) != Some(&m.author) {
                    continue;
                }
                let entry = ConversationEntry {
                    kind: "missed".into(),
                    id: m.id.clone(),
                    task: m.task.clone(),
                    at: m.at,
                    by: self.name_of(&names, &m.author),
                    text: m.text.clone(),
                    state: slots.reason.clone(),
                    reply_by: None,
                    reply: None,
                };
                if m.task.is_empty() {
                    loose.push(entry);
                } else {
                    missed.entry(m.task.as_str()).or_default().push(entry);
                }
                continue;
            }
            if targets.get(m.task.as_str()) != Some(&m.author.as_str()) {
                continue;
            }
            let by = self.name_of(&names, &m.author);
            if m.kind == thread::KIND_QUESTION {
                let answer = crate::events::counted_answer(membership.as_deref(), doc.as_str(), m);
                during
                    .entry(m.task.as_str())
                    .or_default()
                    .push(ConversationEntry {
                        kind: "question".into(),
                        id: m.id.clone(),
                        task: m.task.clone(),
                        at: m.at,
                        by,
                        text: m.text.clone(),
                        state: question_state(answer, m.expires_at.unwrap_or(0), now).into(),
                        reply_by: answer.map(|a| self.name_of(&names, &a.device)),
                        reply: answer.map(|a| a.text.clone()),
                    });
            } else if m.kind == thread::KIND_AGENT {
                answers.insert(
                    m.task.as_str(),
                    ConversationEntry {
                        kind: "answer".into(),
                        id: m.id.clone(),
                        task: m.task.clone(),
                        at: m.at,
                        by,
                        text: m.text.clone(),
                        state: m.status.map(|s| s.to_string()).unwrap_or_default(),
                        reply_by: None,
                        reply: None,
                    },
                );
            }
        }
        let mut out = Vec::new();
        for task in &tasks {
            // Missed runs come before the run that catches up on them.
            if let Some(entries) = missed.remove(task.id.as_str()) {
                out.extend(entries);
            }
            out.push(prompt_entry(task, self.name_of(&names, &task.created_by)));
            if let Some(mut entries) = during.remove(task.id.as_str()) {
                entries.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
                out.extend(entries);
            }
            if let Some(answer) = answers.remove(task.id.as_str()) {
                out.push(answer);
            } else if let Some(answer) = task_outcome(task, self.name_of(&names, &task.target)) {
                // A task that ended before answers were written: its result is the answer.
                out.push(answer);
            }
        }
        loose.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        out.extend(loose);
        Ok(out)
    }
}

fn prompt_entry(task: &Task, by: String) -> ConversationEntry {
    ConversationEntry {
        kind: "prompt".into(),
        id: task.id.clone(),
        task: task.id.clone(),
        at: task.created,
        by,
        text: task.prompt.clone(),
        state: task.status.to_string(),
        reply_by: None,
        reply: None,
    }
}

fn task_outcome(task: &Task, by: String) -> Option<ConversationEntry> {
    if !task.status.is_final() {
        return None;
    }
    Some(ConversationEntry {
        kind: "answer".into(),
        id: task.id.clone(),
        task: task.id.clone(),
        at: task.finished.unwrap_or(task.created),
        by,
        text: task.result.clone().or_else(|| task.error.clone())?,
        state: task.status.to_string(),
        reply_by: None,
        reply: None,
    })
}
