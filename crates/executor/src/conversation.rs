//! What the model is told of a thread's earlier turns (pure).
//!
//! A thread is a conversation: a task sent into it reaches the model after the thread's
//! earlier turns, each as the user's prompt and the agent's reply (its answer, preceded by a
//! short account of the tool calls it made and how each went, or how the task failed). The
//! history is bounded by [`HISTORY_BUDGET`]: the newest turns are kept whole, and as soon as
//! one does not fit, it and every older turn are left out, never cut in the middle; the first
//! message the model sees then says how many turns were left out (`[3 earlier turns
//! omitted]`), so the model knows the conversation started before what it is shown.

use errand_sync::schema::thread::TaskStatus;

use crate::model::Turn;

/// The most bytes of earlier turns (prompts, answers and tool accounts) sent with a task:
/// about 8,000 tokens, small enough for a local model's context and for a cloud model's bill,
/// large enough for a dozen ordinary turns.
pub const HISTORY_BUDGET: usize = 32 * 1024;

/// The most bytes of one tool call's line in the account kept with an answer.
pub const MAX_STEP_BYTES: usize = 200;

/// One earlier turn of a thread, as the executor read it from the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierTurn {
    pub prompt: String,
    /// The answer, or why the task failed.
    pub answer: String,
    pub status: TaskStatus,
    /// One line per tool call and its outcome.
    pub steps: Vec<String>,
}

impl EarlierTurn {
    /// The agent's side as the model reads it.
    fn reply(&self) -> String {
        let mut out = String::new();
        if !self.steps.is_empty() {
            out.push_str("[tool calls: ");
            out.push_str(&self.steps.join("; "));
            out.push_str("]\n");
        }
        match self.status {
            TaskStatus::Done if self.answer.trim().is_empty() => out.push_str("(no output)"),
            TaskStatus::Done => out.push_str(&self.answer),
            TaskStatus::Cancelled => out.push_str("[the user cancelled this task]"),
            _ => {
                out.push_str("[the task failed: ");
                out.push_str(&self.answer);
                out.push(']');
            }
        }
        out
    }
}

/// The turns to send for `prompt`: as many of the newest `earlier` turns (oldest first) as fit
/// in `budget` bytes, whole, then the prompt. Returns them with the number left out.
pub fn turns(earlier: &[EarlierTurn], prompt: &str, budget: usize) -> (Vec<Turn>, usize) {
    let mut used = 0;
    let mut kept: Vec<(String, String)> = Vec::new();
    for turn in earlier.iter().rev() {
        let reply = turn.reply();
        let size = turn.prompt.len() + reply.len();
        if used + size > budget {
            break;
        }
        used += size;
        kept.push((turn.prompt.clone(), reply));
    }
    kept.reverse();
    let omitted = earlier.len() - kept.len();
    let mut out = Vec::with_capacity(kept.len() * 2 + 1);
    for (prompt, reply) in kept {
        out.push(Turn::User(prompt));
        out.push(Turn::Assistant {
            text: reply,
            tool_calls: Vec::new(),
        });
    }
    out.push(Turn::User(prompt.to_owned()));
    if omitted > 0
        && let Some(Turn::User(first)) = out.first_mut()
    {
        let plural = if omitted == 1 { "turn" } else { "turns" };
        *first = format!("[{omitted} earlier {plural} omitted]\n\n{first}");
    }
    (out, omitted)
}

/// One line of the account of a tool call: what it was and how it went.
pub fn step_line(what: &str, outcome: Result<&str, &str>) -> String {
    let outcome = match outcome {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error: {}", e.lines().next().unwrap_or_default()),
    };
    crate::model::truncate(&format!("{what} → {outcome}"), MAX_STEP_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(n: usize, size: usize) -> EarlierTurn {
        EarlierTurn {
            prompt: format!("prompt {n}"),
            answer: format!("answer {n} {}", "x".repeat(size)),
            status: TaskStatus::Done,
            steps: Vec::new(),
        }
    }

    fn user_texts(turns: &[Turn]) -> Vec<String> {
        turns
            .iter()
            .filter_map(|t| match t {
                Turn::User(text) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_first_turn_is_the_prompt_alone() {
        let (out, omitted) = turns(&[], "hello", HISTORY_BUDGET);
        assert_eq!(out, vec![Turn::User("hello".into())]);
        assert_eq!(omitted, 0);
    }

    #[test]
    fn earlier_turns_come_first_with_their_tool_account() {
        let earlier = [
            EarlierTurn {
                prompt: "tidy ~/inbox".into(),
                answer: "moved 3 files".into(),
                status: TaskStatus::Done,
                steps: vec![
                    step_line("list inbox", Ok("a\nb")),
                    step_line("delete inbox/c", Err("denied by policy: delete\nmore")),
                ],
            },
            EarlierTurn {
                prompt: "/sh false".into(),
                answer: "exit status 1".into(),
                status: TaskStatus::Failed,
                steps: Vec::new(),
            },
        ];
        let (out, omitted) = turns(&earlier, "and now?", HISTORY_BUDGET);
        assert_eq!(omitted, 0);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], Turn::User("tidy ~/inbox".into()));
        assert_eq!(
            out[1],
            Turn::Assistant {
                text: "[tool calls: list inbox → ok; delete inbox/c → error: denied by policy: \
                       delete]\nmoved 3 files"
                    .into(),
                tool_calls: Vec::new(),
            }
        );
        assert_eq!(
            out[3],
            Turn::Assistant {
                text: "[the task failed: exit status 1]".into(),
                tool_calls: Vec::new(),
            }
        );
        assert_eq!(out[4], Turn::User("and now?".into()));
    }

    #[test]
    fn older_turns_are_dropped_whole_and_counted() {
        let earlier: Vec<EarlierTurn> = (1..=5).map(|n| turn(n, 1000)).collect();
        // Room for two turns and a half.
        let one = earlier[0].prompt.len() + earlier[0].reply().len();
        let (out, omitted) = turns(&earlier, "next", one * 5 / 2);
        assert_eq!(omitted, 3);
        let users = user_texts(&out);
        assert_eq!(
            users,
            ["[3 earlier turns omitted]\n\nprompt 4", "prompt 5", "next"]
        );
        // Every kept reply is whole.
        for t in &out {
            if let Turn::Assistant { text, .. } = t {
                assert!(text.ends_with(&"x".repeat(1000)), "{text}");
            }
        }
        // A big turn that does not fit ends the history there: no older turn is sent after a
        // gap, even one that would fit.
        let gap = [turn(1, 10), turn(2, 5000), turn(3, 10)];
        let (out, omitted) = turns(&gap, "next", 1000);
        assert_eq!(omitted, 2);
        assert_eq!(
            user_texts(&out),
            ["[2 earlier turns omitted]\n\nprompt 3", "next"]
        );
        // A turn larger than the whole budget leaves nothing but the note.
        let (out, omitted) = turns(&earlier, "next", 100);
        assert_eq!(omitted, 5);
        assert_eq!(user_texts(&out), ["[5 earlier turns omitted]\n\nnext"]);
        let (out, _) = turns(&earlier[..1], "next", 100);
        assert_eq!(user_texts(&out), ["[1 earlier turn omitted]\n\nnext"]);
    }

    #[test]
    fn step_lines_are_short() {
        let long = step_line(&"a".repeat(500), Ok(""));
        assert!(long.len() < MAX_STEP_BYTES + 30, "{long}");
        assert_eq!(step_line("read x", Ok("content")), "read x → ok");
    }
}
