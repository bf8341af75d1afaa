//! The Anthropic Messages API (`POST {base_url}/v1/messages`).
//!
//! Wire format, in short: the request carries `model`, `max_tokens`, a top-level `system`
//! string, `messages` (alternating `user` / `assistant`, content as a string or a list of
//! blocks) and `tools` (`name`, `description`, `input_schema`). The reply's `content` holds
//! `text` and `tool_use` blocks (`id`, `name`, `input`); tool results go back in a `user`
//! message of `tool_result` blocks (`tool_use_id`, `content`, `is_error`).

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    CompleteFuture, ModelBackend, ModelError, ModelReply, Provider, REQUEST_TIMEOUT, StopReason,
    ToolCall, ToolSpec, Turn, post_json,
};

/// Where requests go when the config names no base_url.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The API version this module speaks; Anthropic requires it on every request.
pub const API_VERSION: &str = "2023-06-01";

/// A model behind the Anthropic Messages API.
pub struct AnthropicBackend {
    client: reqwest::Client,
    url: String,
    api_key: String,
    model: String,
    max_tokens: u32,
    timeout: Duration,
}

impl fmt::Debug for AnthropicBackend {
    /// Leaves the API key out, so that logging the backend cannot leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicBackend")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AnthropicBackend {
    /// A backend using `client` (see [`super::http_client`]); `base_url` is the part before
    /// `/v1/messages`.
    pub fn with_client(
        client: reqwest::Client,
        base_url: &str,
        api_key: String,
        model: &str,
        max_tokens: u32,
    ) -> Self {
        AnthropicBackend {
            client,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            api_key,
            model: model.to_string(),
            max_tokens,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Overrides the per-request timeout ([`REQUEST_TIMEOUT`] by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn complete_inner(
        &self,
        system: &str,
        turns: &[Turn],
        tools: &[ToolSpec],
    ) -> Result<ModelReply, ModelError> {
        let body = request_body(&self.model, self.max_tokens, system, turns, tools);
        let headers = [
            ("x-api-key", self.api_key.as_str()),
            ("anthropic-version", API_VERSION),
            ("content-type", "application/json"),
        ];
        let reply = post_json(
            &self.client,
            Provider::Anthropic,
            &self.url,
            &headers,
            &body,
            self.timeout,
        )
        .await?;
        parse_reply(&reply)
    }
}

impl ModelBackend for AnthropicBackend {
    fn complete<'a>(
        &'a self,
        system: &'a str,
        turns: &'a [Turn],
        tools: &'a [ToolSpec],
    ) -> CompleteFuture<'a> {
        Box::pin(self.complete_inner(system, turns, tools))
    }
}

/// The JSON body of one Messages API request.
pub(crate) fn request_body(
    model: &str,
    max_tokens: u32,
    system: &str,
    turns: &[Turn],
    tools: &[ToolSpec],
) -> Value {
    let mut messages = Vec::with_capacity(turns.len());
    for turn in turns {
        match turn {
            Turn::User(text) => messages.push(json!({ "role": "user", "content": text })),
            Turn::Assistant { text, tool_calls } => {
                let mut content = Vec::with_capacity(tool_calls.len() + 1);
                if !text.is_empty() {
                    content.push(json!({ "type": "text", "text": text }));
                }
                for call in tool_calls {
                    // The API insists on an object; a call whose input was not one has already
                    // been answered with an error result, so an empty object loses nothing.
                    let input = if call.input.is_object() {
                        call.input.clone()
                    } else {
                        json!({})
                    };
                    content.push(json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": input,
                    }));
                }
                // The API refuses empty content; an empty assistant turn carries nothing anyway.
                if !content.is_empty() {
                    messages.push(json!({ "role": "assistant", "content": content }));
                }
            }
            Turn::ToolResults(results) => {
                let content: Vec<Value> = results
                    .iter()
                    .map(|result| {
                        json!({
                            "type": "tool_result",
                            "tool_use_id": result.call_id,
                            "content": result.content,
                            "is_error": result.is_error,
                        })
                    })
                    .collect();
                messages.push(json!({ "role": "user", "content": content }));
            }
        }
    }
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.input_schema,
                })
            })
            .collect();
    }
    body
}

/// Reads a Messages API reply. Block types this module does not know (thinking, server tools)
/// are skipped rather than refused, so that a newer model does not break the loop.
pub(crate) fn parse_reply(reply: &Value) -> Result<ModelReply, ModelError> {
    let bad = |detail: String| ModelError::BadResponse {
        provider: Provider::Anthropic,
        detail,
    };
    let blocks = reply
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `content` list in the reply".to_string()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(part) = block.get("text").and_then(Value::as_str) {
                    if !text.is_empty() && !part.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(part);
                }
            }
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(bad(format!("a tool_use block without id or name: {block}")));
                };
                tool_calls.push(ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    input: block.get("input").cloned().unwrap_or(Value::Null),
                });
            }
            _ => {}
        }
    }
    let stop = match reply.get("stop_reason").and_then(Value::as_str) {
        Some("tool_use") => StopReason::ToolUse,
        Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
        Some("max_tokens") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_string()),
        None => StopReason::Other("none".to_string()),
    };
    Ok(ModelReply {
        text,
        tool_calls,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use errand_tests::model_server::{self, Provider as ServerProvider, Reply, ScriptServer};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::action::Action;
    use crate::agent::{AgentError, Limits, ToolRunner, run_agent};
    use crate::model::{ModelConfig, build_backend_with_env, http_client, tool_specs};

    /// A runner that records what it is asked and answers with canned output; the real runner
    /// (policy, approvals, tools) is tested where it lives.
    #[derive(Default)]
    struct Recorder {
        actions: Vec<Action>,
    }

    impl ToolRunner for Recorder {
        fn run<'a>(
            &'a mut self,
            action: Action,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
            Box::pin(async move {
                let out = format!("ran {action}");
                self.actions.push(action);
                Ok(out)
            })
        }

        fn ask_user<'a>(
            &'a mut self,
            question: String,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, AgentError>> + Send + 'a>>
        {
            Box::pin(async move { Ok(format!("answer to {question}")) })
        }
    }

    fn backend(server: &ScriptServer, key: &str) -> AnthropicBackend {
        let client = http_client(&server.base_url()).expect("client");
        AnthropicBackend::with_client(
            client,
            &server.base_url(),
            key.to_string(),
            "claude-test",
            1000,
        )
    }

    fn limits() -> Limits {
        Limits {
            max_steps: 5,
            max_time: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn tool_call_then_answer_over_the_wire() {
        let server = ScriptServer::start(
            ServerProvider::Anthropic,
            vec![
                model_server::anthropic_tool_use("toolu_1", "sh", json!({"command": "ls"})),
                model_server::anthropic_text("There are two files."),
            ],
        );
        // Built from a config, as the executor does.
        let config = ModelConfig::parse(
            &format!(
                "[model]\nprovider = \"anthropic\"\nmodel = \"claude-test\"\n\
                 base_url = \"{}\"\napi_key_env = \"TEST_KEY\"\nmax_tokens = 1234\n",
                server.base_url()
            ),
            std::path::Path::new("test.toml"),
        )
        .expect("parses")
        .expect("has [model]");
        let backend = build_backend_with_env(&config, &|name| {
            (name == "TEST_KEY").then(|| "sk-ant-test".to_string())
        })
        .expect("backend");
        let mut runner = Recorder::default();
        let mut lines = Vec::new();
        let answer = run_agent(
            backend.as_ref(),
            vec![Turn::User("what is in the workspace?".into())],
            &mut runner,
            limits(),
            CancellationToken::new(),
            &mut |line| lines.push(line),
        )
        .await
        .expect("answer");
        assert_eq!(answer, "There are two files.");
        assert_eq!(
            runner.actions,
            vec![Action::Sh {
                command: "ls".into()
            }]
        );
        assert!(
            lines.contains(&"model asked to run shell command `ls`".to_string()),
            "{lines:?}"
        );

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for request in &requests {
            assert_eq!(request.path, "/v1/messages");
            assert_eq!(request.header("x-api-key"), Some("sk-ant-test"));
            assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(request.header("content-type"), Some("application/json"));
            assert!(request.header("authorization").is_none());
            assert_eq!(request.body["model"], "claude-test");
            assert_eq!(request.body["max_tokens"], 1234);
            assert!(
                request.body["system"]
                    .as_str()
                    .is_some_and(|s| s.contains("policy")),
                "system prompt: {}",
                request.body["system"]
            );
            let tools = request.body["tools"].as_array().expect("tools");
            assert_eq!(
                tools.len(),
                tool_specs().len() + 1,
                "the actions and ask_user"
            );
            let sh = tools.iter().find(|t| t["name"] == "sh").expect("sh tool");
            assert_eq!(sh["input_schema"]["required"], json!(["command"]));
            assert!(sh["description"].is_string());
        }
        assert_eq!(
            requests[0].body["messages"],
            json!([{"role": "user", "content": "what is in the workspace?"}])
        );
        let messages = requests[1].body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "sh", "input": {"command": "ls"}}
            ]})
        );
        assert_eq!(
            messages[2],
            json!({"role": "user", "content": [{
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": "ran run shell command `ls`",
                "is_error": false,
            }]})
        );
    }

    #[tokio::test]
    async fn text_and_several_tool_uses_in_one_reply() {
        let reply = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "a", "name": "ls", "input": {"path": "."}},
                {"type": "tool_use", "id": "b", "name": "read", "input": {"path": "x"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}
        });
        let parsed = parse_reply(&reply).expect("parses");
        assert_eq!(parsed.text, "Let me look.");
        assert_eq!(parsed.stop, StopReason::ToolUse);
        assert_eq!(parsed.tool_calls.len(), 2);
        assert_eq!(parsed.tool_calls[1].id, "b");
        assert_eq!(parsed.tool_calls[1].input, json!({"path": "x"}));

        // The assistant turn goes back with its text and both calls, in order.
        let turns = vec![
            Turn::User("hi".into()),
            Turn::Assistant {
                text: parsed.text.clone(),
                tool_calls: parsed.tool_calls.clone(),
            },
        ];
        let body = request_body("m", 10, "sys", &turns, &[]);
        assert!(body.get("tools").is_none());
        let content = &body["messages"][1]["content"];
        assert_eq!(content[0], json!({"type": "text", "text": "Let me look."}));
        assert_eq!(content[2]["id"], "b");
    }

    #[tokio::test]
    async fn unauthorized_is_a_clear_error() {
        let server = ScriptServer::start_replies(
            ServerProvider::Anthropic,
            vec![Reply::status(
                401,
                json!({"type": "error", "error": {
                    "type": "authentication_error", "message": "invalid x-api-key"}}),
            )],
        );
        let backend = backend(&server, "wrong");
        let error = backend
            .complete("sys", &[Turn::User("hi".into())], &[])
            .await
            .expect_err("401");
        assert!(
            matches!(error, ModelError::Status { status: 401, .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("401")
                && text.contains("invalid x-api-key")
                && text.contains("anthropic"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn unreachable_and_silent_endpoints() {
        // A port that was just free: nothing listens there.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = http_client(&url).expect("client");
        let backend = AnthropicBackend::with_client(client, &url, "k".into(), "m", 10);
        let error = backend
            .complete("", &[Turn::User("hi".into())], &[])
            .await
            .expect_err("refused");
        assert!(matches!(error, ModelError::Network { .. }), "{error:?}");
        assert!(error.to_string().contains(&url), "{error}");

        // A server that accepts and never answers: the per-request timeout ends the wait.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let client = http_client(&url).expect("client");
        let backend = AnthropicBackend::with_client(client, &url, "k".into(), "m", 10)
            .timeout(Duration::from_millis(300));
        let error = backend
            .complete("", &[Turn::User("hi".into())], &[])
            .await
            .expect_err("timeout");
        assert!(matches!(error, ModelError::Timeout { .. }), "{error:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn malformed_reply_is_a_bad_response() {
        let server = ScriptServer::start(ServerProvider::Anthropic, vec![json!({"hello": 1})]);
        let error = backend(&server, "k")
            .complete("", &[Turn::User("hi".into())], &[])
            .await
            .expect_err("bad");
        assert!(matches!(error, ModelError::BadResponse { .. }), "{error:?}");
    }

    #[test]
    fn debug_hides_the_key() {
        let client = http_client(DEFAULT_BASE_URL).expect("client");
        let backend =
            AnthropicBackend::with_client(client, DEFAULT_BASE_URL, "sk-secret".into(), "m", 1);
        assert!(!format!("{backend:?}").contains("sk-secret"));
    }
}
