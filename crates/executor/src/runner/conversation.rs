//! The runner's side of a thread's conversation: the earlier turns a model task is sent with,
//! the answer written when a task ends, and the questions the model asks the user.

use std::collections::HashMap;

use errand_sync::DeviceId;
use errand_sync::schema::thread::{self, Message, NewAgentMessage, NewQuestion, Task, TaskStatus};
use errand_sync::schema::{DocId, now_millis};
use tracing::warn;

use super::task::{TaskContext, shared_id};
use super::{Flush, Shared, short};
use crate::agent::AgentError;
use crate::conversation::EarlierTurn;

impl Shared {
    /// The turns of the thread before `current`, oldest first: every earlier task that has
    /// ended, with its answer. An answer counts only when written by the desktop that ran the
    /// task (any member can append to a thread's messages); without one, the task's own result
    /// or error stands in.
    pub(super) fn earlier_turns(&self, doc: &DocId, current: &Task) -> Vec<EarlierTurn> {
        let Some((tasks, messages)) = self
            .repo
            .read(doc, |d| {
                (thread::tasks(d, doc.as_str()), thread::messages(d))
            })
            .ok()
            .flatten()
        else {
            return Vec::new();
        };
        let targets: HashMap<&str, &str> = tasks
            .iter()
            .map(|t| (t.id.as_str(), t.target.as_str()))
            .collect();
        let answers: HashMap<&str, &Message> = messages
            .iter()
            .filter(|m| m.kind == thread::KIND_AGENT)
            .filter(|m| targets.get(m.task.as_str()) == Some(&m.author.as_str()))
            .map(|m| (m.task.as_str(), m))
            .collect();
        tasks
            .iter()
            .filter(|t| (t.created, &t.id) < (current.created, &current.id))
            .filter(|t| t.status.is_final())
            .map(|t| match answers.get(t.id.as_str()) {
                Some(m) => EarlierTurn {
                    prompt: t.prompt.clone(),
                    answer: m.text.clone(),
                    status: m.status.unwrap_or(t.status),
                    steps: m.steps.clone(),
                },
                None => EarlierTurn {
                    prompt: t.prompt.clone(),
                    answer: t
                        .result
                        .clone()
                        .or_else(|| t.error.clone())
                        .unwrap_or_default(),
                    status: t.status,
                    steps: Vec::new(),
                },
            })
            .collect()
    }
}

/// Writes a task's answer into the thread's messages (inside the transaction that ends it).
pub(super) fn add_answer(
    tx: &mut automerge::transaction::Transaction<'_>,
    task: &str,
    text: &str,
    status: TaskStatus,
    steps: &[String],
) -> Result<(), automerge::AutomergeError> {
    thread::add_agent_message(
        tx,
        &NewAgentMessage {
            id: &shared_id(),
            task,
            text,
            status,
            steps,
            at: now_millis(),
        },
    )
}

impl TaskContext {
    /// Writes the question into the thread, sets the task to `needs_input`, and waits for a
    /// valid signed answer, the expiry (the policy's approval timeout) or a cancel.
    pub(super) async fn ask_user(&mut self, question: &str) -> Result<String, AgentError> {
        let shared = self.shared.clone();
        let id = shared_id();
        let now = now_millis();
        let timeout = shared.config.policy.approval_timeout();
        let expires = now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let task = self.task.clone();
        let mut changes = shared.repo.subscribe();
        shared.record(
            &self.doc,
            Flush::Own,
            &format!("question {} asked for task {}", short(&id), short(&task)),
            |tx| {
                thread::ask_question(
                    tx,
                    &NewQuestion {
                        id: &id,
                        task: &task,
                        text: question,
                        at: now,
                        expires_at: expires,
                    },
                )?;
                thread::set_status(tx, &task, TaskStatus::NeedsInput, now)
            },
        );
        shared.notifier.notify(
            &self.doc,
            &task,
            crate::notify::Event::Question,
            Some(question),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let answered = loop {
            if let Some(answer) = self.answer_to(&id) {
                break Some(answer);
            }
            tokio::select! {
                _ = changes.recv() => {}
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = self.cancel.cancelled() => return Err(AgentError::Cancelled),
            }
        };
        let (line, outcome) = match answered {
            Some((by, text)) => (format!("answered by {by}: {text}"), Ok(text)),
            None => (
                "the question expired: nobody answered it".to_owned(),
                Err(AgentError::Unanswered {
                    seconds: timeout.as_secs(),
                }),
            ),
        };
        let verb = if outcome.is_ok() {
            "answered"
        } else {
            "expired"
        };
        shared.record(
            &self.doc,
            Flush::Own,
            &format!("question {} {verb}", short(&id)),
            |tx| {
                thread::add_progress(tx, &task, &crate::model::truncate(&line, 500), now_millis())?;
                thread::set_status(tx, &task, TaskStatus::Running, now_millis())
            },
        );
        outcome
    }

    /// The answer that counts on a question (who answered, and the text), if any. Answers with
    /// a bad signature, or by a device that may not answer, are ignored.
    fn answer_to(&self, question: &str) -> Option<(String, String)> {
        let shared = &self.shared;
        let messages = shared
            .repo
            .read(&self.doc, thread::messages)
            .ok()
            .flatten()?;
        let question = messages
            .into_iter()
            .find(|m| m.id == question && m.kind == thread::KIND_QUESTION)?;
        let answer =
            thread::first_valid_answer(&shared.space, self.doc.as_str(), &question, |device| {
                shared.authority.may_approve(device)
            });
        let Some(answer) = answer else {
            if !question.answers.is_empty() {
                warn!("ignoring answers with a bad signature or by a device that may not answer");
            }
            return None;
        };
        let name = answer
            .device
            .parse::<DeviceId>()
            .ok()
            .and_then(|device| shared.authority.name(&device))
            .unwrap_or_else(|| short(&answer.device).to_owned());
        Some((name, answer.text.clone()))
    }
}
