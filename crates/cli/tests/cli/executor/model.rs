//! The model, played by a local script server speaking the provider's wire format: what it
//! may not do whatever it asks, and what a desktop without one says.

use super::*;
use crate::support::short;

/// Writes the model config for a script server into the desktop's home, before `up`.
pub(crate) fn write_model_config(desk: &Home, server: &ScriptServer, provider: &str) {
    fs::create_dir_all(desk.path()).expect("home");
    fs::write(
        desk.path().join("model.toml"),
        format!(
            "[model]\nprovider = \"{provider}\"\nmodel = \"script\"\nbase_url = \"{}\"\napi_key_env = \"ERRAND_TEST_KEY\"\nmax_seconds = 60\n",
            server.base_url()
        ),
    )
    .expect("write model.toml");
}

/// The text of every request body, to look for what must never leave the desktop.
fn bodies(requests: &[RecordedRequest]) -> String {
    requests
        .iter()
        .map(|r| r.body.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Anthropic `tool_result` block answering `id` in a request body.
pub(crate) fn anthropic_tool_result(body: &Value, id: &str) -> Value {
    array(&body["messages"])
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|block| block["type"] == "tool_result" && block["tool_use_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no tool_result for {id} in {body:#}"))
}

fn passwd_first_line() -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "root:x:0:0".to_owned())
}

#[test]
fn the_model_cannot_widen_the_policy() {
    let desk = Home::new("desk");
    let pwned = desk.path().join("workspace").join("pwned");
    let touch = format!("touch {}", pwned.display());
    let server = ScriptServer::start(
        Provider::Anthropic,
        vec![
            anthropic_tool_use("toolu_read", "read", json!({"path": "/etc/passwd"})),
            anthropic_tool_use("toolu_sh", "sh", json!({"command": touch})),
            anthropic_text("done"),
        ],
    );
    write_model_config(&desk, &server, "anthropic");
    let (p, _) = setup_home(
        desk,
        Some("approval_timeout_secs = 2\n"),
        &[("ERRAND_TEST_KEY", "test-key")],
    );
    let (task, _) = send_task(&p.phone, "look around this machine", &[]);
    let ended = wait_final(&p.phone, &task);
    assert_eq!(status(&ended), "done", "{ended:#}");
    assert_eq!(ended["result"], "done", "{ended:#}");

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "three model calls: {requests:#?}");
    for r in &requests {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some("test-key"), "{r:#?}");
    }
    let read = anthropic_tool_result(&requests[1].body, "toolu_read");
    assert_eq!(read["is_error"], true, "{read:#}");
    let read_text = read["content"].to_string();
    assert!(
        read_text.contains("policy") && read_text.contains("outside the folders"),
        "the model is told the policy refused the read: {read:#}"
    );
    let sh = anthropic_tool_result(&requests[2].body, "toolu_sh");
    assert_eq!(sh["is_error"], true, "{sh:#}");
    assert!(
        sh["content"].to_string().contains("counts as denied"),
        "the model is told nobody approved: {sh:#}"
    );
    let all = bodies(&requests);
    assert!(
        !all.contains(&passwd_first_line()),
        "/etc/passwd content reached the model"
    );
    assert!(!pwned.exists(), "the shell command ran");

    let approvals = phone_approvals(&p.phone, &task);
    assert_eq!(
        approvals.len(),
        1,
        "the shell call was asked about: {approvals:#?}"
    );
    assert_eq!(str_field(&approvals[0], "class"), "shell");
    assert!(
        str_field(&approvals[0], "action").contains(&touch),
        "{approvals:#?}"
    );
    assert_eq!(
        str_field(&approvals[0], "state"),
        "expired",
        "nobody answered: {approvals:#?}"
    );
}

#[test]
fn an_openai_compatible_model_gets_the_policy_refusal_too() {
    let server = ScriptServer::start(
        Provider::OpenAi,
        vec![
            openai_tool_call("call_1", "read", json!({"path": "/etc/passwd"})),
            openai_text("could not read it"),
        ],
    );
    let desk = Home::new("desk");
    write_model_config(&desk, &server, "openai");
    let (p, _) = setup_home(desk, None, &[("ERRAND_TEST_KEY", "test-key")]);
    let (task, _) = send_task(&p.phone, "what users are on this machine?", &[]);
    let ended = wait_final(&p.phone, &task);
    assert_eq!(status(&ended), "done", "{ended:#}");
    assert_eq!(ended["result"], "could not read it", "{ended:#}");

    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for r in &requests {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.header("authorization"), Some("Bearer test-key"), "{r:#?}");
    }
    let answer = array(&requests[1].body["messages"])
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == "call_1")
        .cloned()
        .unwrap_or_else(|| panic!("no tool message for call_1: {:#}", requests[1].body));
    let text = str_field(&answer, "content");
    assert!(
        text.contains("denied by policy"),
        "the model is told the policy refused the read: {answer:#}"
    );
    assert!(
        !bodies(&requests).contains(&passwd_first_line()),
        "/etc/passwd content reached the model"
    );
}

#[test]
fn without_a_model_a_prompt_fails_with_how_to_configure_one() {
    let (p, _) = setup(None, &[]);
    let (task, thread) = send_task(&p.phone, "tidy up my downloads", &[]);
    let failed = wait_final(&p.phone, &task);
    assert_eq!(status(&failed), "failed", "{failed:#}");
    let error = error_text(&failed);
    assert!(
        error.contains("model.toml") && error.contains("[model]") && error.contains("provider"),
        "the error tells how to configure a model: {failed:#}"
    );
    // Nothing ran, so nothing was claimed: the desktop wrote one change, the failure with its
    // answer, and the task never showed as running.
    assert!(failed["started"].is_null(), "{failed:#}");
    let history = p.desk.json(&["history", "--doc", &thread[..8]]);
    let desk_part: Vec<String> = array(&history)
        .iter()
        .filter(|e| e["device"] == "desk")
        .map(|e| str_field(e, "message"))
        .collect();
    assert_eq!(
        desk_part,
        [format!("task {} failed", short(&task))],
        "{history:#}"
    );
}
