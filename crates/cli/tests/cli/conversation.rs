//! A thread as a conversation, across two homes as separate processes: a follow-up reaches the
//! (scripted) model with the thread's earlier turns, the model's question is answered from the
//! phone and the task finishes with the answer, and a question nobody answers ends its task.
//! The model is a script server in this test process speaking Anthropic's wire format; every
//! request it receives is recorded, which is how the tests see what the model was told.

use std::time::{Duration, Instant};

use errand_tests::model_server::{Provider, ScriptServer, anthropic_text, anthropic_tool_use};
use serde_json::{Value, json};

use crate::executor::{
    error_text, progress_texts, send_task, setup_home, status, wait_final, wait_status, workspace,
    write_model_config,
};
use crate::support::{Home, Paired, array, short, str_field};

/// A desktop whose model is `server` (and whose policy is `policy`), and a paired phone.
fn with_model(server: &ScriptServer, policy: Option<&str>) -> Paired {
    let desk = Home::new("desk");
    write_model_config(&desk, server, "anthropic");
    setup_home(desk, policy, &[("ERRAND_TEST_KEY", "test-key")]).0
}

/// The Anthropic `messages` of a recorded request.
fn messages(body: &Value) -> Vec<Value> {
    array(&body["messages"]).clone()
}

/// The text of a message whose content is a string or a list of text blocks.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("unexpected content {other:#}"),
    }
}

/// The conversation as the phone prints it: (kind, text) of each entry, in order.
fn phone_conversation(phone: &Home, thread: &str) -> Vec<Value> {
    array(&phone.json(&["thread", thread])).clone()
}

fn kinds_and_texts(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (str_field(e, "kind"), str_field(e, "text")))
        .collect()
}

#[test]
fn a_follow_up_reaches_the_model_with_the_earlier_turns() {
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![
            anthropic_tool_use("toolu_ls", "ls", json!({"path": "."})),
            anthropic_text("There is one file, notes.txt."),
            anthropic_text("It holds the word hello."),
        ],
    );
    let p = with_model(&server, None);
    let ws = workspace(&p.desk);

    // A direct command is a turn too: its result is the answer.
    let (first, thread) = send_task(&p.phone, "/write notes.txt hello", &[]);
    assert_eq!(status(&wait_final(&p.phone, &first)), "done");
    assert!(ws.join("notes.txt").exists());
    let (second, _) = send_task(
        &p.phone,
        "how many files are there?",
        &["--thread", &thread],
    );
    let second = wait_final(&p.phone, &second);
    assert_eq!(status(&second), "done", "{second:#}");
    let (third, _) = send_task(&p.phone, "and what is in it?", &["--thread", &thread]);
    let third = wait_final(&p.phone, &third);
    assert_eq!(third["result"], "It holds the word hello.", "{third:#}");

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    // The second task's first request: the direct command's turn, then the prompt.
    let sent = messages(&requests[0].body);
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_eq!(text_of(&sent[0]), "/write notes.txt hello");
    assert_eq!(sent[1]["role"], "assistant");
    assert!(
        text_of(&sent[1]).starts_with("wrote 5 bytes to "),
        "the command's result is its answer: {sent:#?}"
    );
    assert_eq!(text_of(&sent[2]), "how many files are there?");
    // The follow-up: both earlier turns, the model's with its account of the tool it used.
    let sent = messages(&requests[2].body);
    assert_eq!(sent.len(), 5, "{sent:#?}");
    assert_eq!(text_of(&sent[0]), "/write notes.txt hello");
    assert_eq!(text_of(&sent[2]), "how many files are there?");
    let reply = text_of(&sent[3]);
    assert!(
        reply.contains("list . → ok") && reply.ends_with("There is one file, notes.txt."),
        "the earlier answer, with its tool calls: {reply}"
    );
    assert_eq!(text_of(&sent[4]), "and what is in it?");

    // The phone reads the same conversation, in order.
    let entries = phone_conversation(&p.phone, &thread);
    let seen = kinds_and_texts(&entries);
    let expected_kinds = ["prompt", "answer", "prompt", "answer", "prompt", "answer"];
    assert_eq!(
        seen.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        expected_kinds,
        "{entries:#?}"
    );
    assert_eq!(seen[2].1, "how many files are there?");
    assert_eq!(seen[3].1, "There is one file, notes.txt.");
    assert_eq!(seen[5].1, "It holds the word hello.");
    assert_eq!(str_field(&entries[2], "by"), "phone");
    assert_eq!(str_field(&entries[3], "by"), "desk");
    let printed = p.phone.run(&["thread", &thread]).success().to_owned();
    let at = |text: &str| {
        printed
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} is not in the printed thread:\n{printed}"))
    };
    assert!(at("how many files are there?") < at("There is one file"));
    assert!(at("There is one file") < at("and what is in it?"));
}

#[test]
fn a_question_is_answered_from_the_phone_and_the_task_finishes_with_the_answer() {
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![
            anthropic_tool_use(
                "toolu_ask",
                "ask_user",
                json!({"question": "Which colour should the report be?"}),
            ),
            anthropic_text("The report is blue now."),
        ],
    );
    let p = with_model(&server, None);
    // The phone runs its node and watches, as an app would (see the approval watch test).
    let _phone_node = p.phone.serve();
    let mut watch = p.phone.spawn(&["--json", "watch"]);
    let listening = Instant::now() + Duration::from_secs(30);
    loop {
        send_task(&p.phone, "/ls", &[]);
        if watch.next_line_within(Duration::from_secs(2)).is_some() {
            break;
        }
        assert!(Instant::now() < listening, "the watch printed nothing");
    }
    let (task, thread) = send_task(&p.phone, "make the report", &[]);
    let line = watch.expect_line("an input_requested event for the task", |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|ev| ev["event"] == "input_requested" && ev["task"] == task.as_str())
    });
    let event: Value = serde_json::from_str(&line).expect("JSON event");
    assert_eq!(
        event["text"], "Which colour should the report be?",
        "{event:#}"
    );
    let waiting = wait_status(&p.phone, &task, "needs_input");
    assert!(waiting["result"].is_null(), "{waiting:#}");
    let listed = p.phone.json(&["questions"]);
    let pending: Vec<&Value> = array(&listed)
        .iter()
        .filter(|q| q["task"] == task.as_str())
        .collect();
    assert_eq!(pending.len(), 1, "{listed:#}");
    assert_eq!(str_field(pending[0], "state"), "pending");
    assert_eq!(str_field(pending[0], "asked_by"), "desk");
    let id = str_field(pending[0], "id");
    assert_eq!(id, str_field(&event, "question"));

    let bad = p.phone.run(&["answer", &id, "  "]);
    assert!(bad.failure().contains("needs some text"), "{bad:?}");
    p.phone.run(&["answer", short(&id), "blue"]).success();
    let done = wait_final(&p.phone, &task);
    assert_eq!(status(&done), "done", "{done:#}");
    assert_eq!(done["result"], "The report is blue now.", "{done:#}");
    assert!(
        progress_texts(&done)
            .iter()
            .any(|t| t == "answered by phone: blue"),
        "{done:#}"
    );

    // The answer went back to the model as the tool's result.
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let result = array(&requests[1].body["messages"])
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == "toolu_ask")
        .cloned()
        .expect("the ask_user result");
    assert_eq!(result["content"], "blue", "{result:#}");
    assert_eq!(result["is_error"], false, "{result:#}");

    // Answered once, it is no longer waiting; the conversation shows question and answer.
    assert!(
        array(&p.phone.json(&["questions"]))
            .iter()
            .all(|q| q["task"] != task.as_str()),
        "nothing is left waiting"
    );
    let again = p.phone.run(&["answer", &id, "red"]);
    assert!(again.failure().contains("already answered"), "{again:?}");
    let entries = phone_conversation(&p.phone, &thread);
    let seen = kinds_and_texts(&entries);
    assert_eq!(
        seen,
        [
            ("prompt".to_owned(), "make the report".to_owned()),
            (
                "question".to_owned(),
                "Which colour should the report be?".to_owned()
            ),
            ("answer".to_owned(), "The report is blue now.".to_owned()),
        ]
    );
    assert_eq!(str_field(&entries[1], "reply"), "blue");
    assert_eq!(str_field(&entries[1], "reply_by"), "phone");
    assert_eq!(str_field(&entries[1], "state"), "answered");
}

#[test]
fn a_question_nobody_answers_ends_the_task() {
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![anthropic_tool_use(
            "toolu_ask",
            "ask_user",
            json!({"question": "Delete the old drafts too?"}),
        )],
    );
    let p = with_model(&server, Some("approval_timeout_secs = 2\n"));
    let (task, _) = send_task(&p.phone, "tidy the drafts", &[]);
    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    let error = error_text(&failed);
    assert!(
        error.contains("nobody answered the question within 2 s"),
        "the task ends saying why: {failed:#}"
    );
    assert_eq!(server.requests().len(), 1, "the model is not asked again");
    let all = p.phone.json(&["questions", "--all"]);
    let mine: Vec<&Value> = array(&all)
        .iter()
        .filter(|q| q["task"] == task.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{all:#}");
    assert_eq!(str_field(mine[0], "state"), "expired", "{all:#}");
    let late = p.phone.run(&["answer", &str_field(mine[0], "id"), "yes"]);
    assert!(late.failure().contains("already expired"), "{late:?}");
}
